//! Registry credentials from a docker `config.json`.

use base64::Engine as _;
use domain_model::ImageRef;
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use std::path::{Path, PathBuf};

/// Docker Hub's names for itself, any of which a `config.json` may use.
const DOCKER_HUB: &[&str] = &["docker.io", "index.docker.io", "registry-1.docker.io"];

/// The credentials for `reference`: from the pod's `imagePullSecret` when
/// the spec names one (it must exist), else from the first docker config
/// file found. No entry for the registry is an anonymous pull.
pub fn for_image(
    reference: &Reference,
    image: &ImageRef,
    auth_file: Option<&Path>,
) -> Result<RegistryAuth, (PathBuf, String)> {
    if let Some(secret) = &image.pull_secret {
        let text = std::fs::read_to_string(secret).map_err(|e| {
            (
                secret.clone(),
                format!("cannot read the imagePullSecret's .dockerconfigjson: {e}"),
            )
        })?;
        return from_config(&text, reference).map_err(|e| (secret.clone(), e));
    }
    for file in candidates(auth_file) {
        match std::fs::read_to_string(&file) {
            Ok(text) => return from_config(&text, reference).map_err(|e| (file, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err((file, e.to_string())),
        }
    }
    Ok(RegistryAuth::Anonymous)
}

/// Where credentials are looked for, in order.
fn candidates(auth_file: Option<&Path>) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(f) = auth_file {
        out.push(f.to_path_buf());
    }
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE") {
        out.push(PathBuf::from(f));
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        out.push(PathBuf::from(d).join("config.json"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        out.push(PathBuf::from(h).join(".docker/config.json"));
    }
    out
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: std::collections::BTreeMap<String, AuthEntry>,
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: std::collections::BTreeMap<String, String>,
}

#[derive(serde::Deserialize, Default)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

/// `https://index.docker.io/v1/` → `index.docker.io`.
fn host_of(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

fn same_registry(key: &str, registry: &str) -> bool {
    let host = host_of(key);
    host == registry || (DOCKER_HUB.contains(&host) && DOCKER_HUB.contains(&registry))
}

fn from_config(text: &str, reference: &Reference) -> Result<RegistryAuth, String> {
    let config: DockerConfig =
        serde_json::from_str(text).map_err(|e| format!("not a docker config.json: {e}"))?;
    let registry = reference.registry();
    let entry = config
        .auths
        .iter()
        .find(|(k, _)| same_registry(k, registry))
        .map(|(_, v)| v);
    let Some(entry) = entry else {
        if let Some((_, helper)) = config
            .cred_helpers
            .iter()
            .find(|(k, _)| same_registry(k, registry))
        {
            return Err(format!(
                "credHelpers names docker-credential-{helper} for {registry}: credential \
                 helpers are not supported; put the credentials in auths"
            ));
        }
        if let Some(store) = &config.creds_store {
            tracing::warn!(%registry, store = %store,
                "credsStore is not consulted: pulling anonymously");
        }
        return Ok(RegistryAuth::Anonymous);
    };
    if let Some(token) = entry.registrytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(RegistryAuth::Bearer(token.to_string()));
    }
    if entry
        .identitytoken
        .as_deref()
        .is_some_and(|t| !t.is_empty())
    {
        return Err(format!(
            "auths.{registry}.identitytoken (an OAuth refresh token) is not supported: \
             use auth or username/password"
        ));
    }
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
    }
    if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| format!("auths.{registry}.auth is not base64: {e}"))?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| format!("auths.{registry}.auth is not UTF-8"))?;
        let (user, pass) = decoded
            .split_once(':')
            .ok_or_else(|| format!("auths.{registry}.auth is not base64 of user:password"))?;
        return Ok(RegistryAuth::Basic(user.to_string(), pass.to_string()));
    }
    Err(format!(
        "auths.{registry} has no auth, username/password or registrytoken"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(config: &str, image: &str) -> Result<RegistryAuth, String> {
        from_config(config, &image.parse().unwrap())
    }

    fn basic(a: RegistryAuth) -> (String, String) {
        match a {
            RegistryAuth::Basic(u, p) => (u, p),
            other => panic!("not basic: {other:?}"),
        }
    }

    #[test]
    fn auth_field_is_base64_user_and_password_for_that_registry() {
        // base64("me:s3cr:et")
        let config = r#"{"auths": {"127.0.0.1:5000": {"auth": "bWU6czNjcjpldA=="}}}"#;
        assert_eq!(
            basic(auth(config, "127.0.0.1:5000/disks/tiny:1").unwrap()),
            ("me".into(), "s3cr:et".into())
        );
        assert!(matches!(
            auth(config, "127.0.0.1:5001/disks/tiny:1").unwrap(),
            RegistryAuth::Anonymous
        ));
    }

    #[test]
    fn docker_hub_keys_match_in_any_spelling() {
        let config =
            r#"{"auths": {"https://index.docker.io/v1/": {"username": "u", "password": "p"}}}"#;
        assert_eq!(
            basic(auth(config, "library/alpine:3").unwrap()),
            ("u".into(), "p".into())
        );
    }

    #[test]
    fn unsupported_credential_kinds_are_refused_by_name() {
        let e = auth(
            r#"{"credHelpers": {"quay.io": "ecr-login"}}"#,
            "quay.io/a/b:1",
        )
        .unwrap_err();
        assert!(e.contains("docker-credential-ecr-login"), "{e}");
        let e = auth(
            r#"{"auths": {"quay.io": {"identitytoken": "t"}}}"#,
            "quay.io/a/b:1",
        )
        .unwrap_err();
        assert!(e.contains("identitytoken"), "{e}");
        let e = auth(r#"{"auths": {"quay.io": {"auth": "!!"}}}"#, "quay.io/a/b:1").unwrap_err();
        assert!(e.contains("not base64"), "{e}");
        assert!(matches!(
            auth(r#"{"auths": {"quay.io": {"registrytoken": "tok"}}}"#, "quay.io/a/b:1").unwrap(),
            RegistryAuth::Bearer(t) if t == "tok"
        ));
    }
}
