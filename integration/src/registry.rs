//! A real OCI registry on loopback for tests: Debian's `docker-registry`
//! (the CNCF distribution registry) on a free 127.0.0.1 port, storage in a
//! temporary directory, optionally with htpasswd basic auth; images pushed
//! to it with `skopeo copy` from an OCI layout. Stopped (and its storage
//! removed) when dropped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Set to 1 (as `.ci/test` does) to fail instead of skipping when the
/// registry or skopeo is missing.
pub const REQUIRE_ENV: &str = "CH_LAUNCHER_REQUIRE_REGISTRY";

pub struct Registry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Basic-auth user and password, when the registry wants them.
    pub credentials: Option<(String, String)>,
}

/// Whether `program` runs at all.
fn runs(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// `Err(why)` when docker-registry or skopeo is not installed: the caller
/// prints a SKIP line, or fails under [`REQUIRE_ENV`].
pub fn available() -> Result<(), String> {
    for (program, arg, package) in [
        ("docker-registry", "--version", "docker-registry"),
        ("skopeo", "--version", "skopeo"),
    ] {
        if !runs(program, arg) {
            let why = format!("{program} is not installed (Debian package {package}; .ci/setup-host.sh installs it)");
            if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
                panic!("{why}, and {REQUIRE_ENV}=1 requires it");
            }
            return Err(why);
        }
    }
    Ok(())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Registry {
    /// Starts a registry; with `credentials`, one that wants them (htpasswd).
    pub fn start(credentials: Option<(&str, &str)>) -> Result<Registry, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let port = free_port().map_err(|e| e.to_string())?;
        let addr = format!("127.0.0.1:{port}");
        let mut auth = String::new();
        if let Some((user, pass)) = credentials {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .map_err(|e| format!("htpasswd (apache2-utils): {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "htpasswd: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).map_err(|e| e.to_string())?;
            auth = format!(
                "auth:\n  htpasswd:\n    realm: ch-launcher-tests\n    path: {}\n",
                file.display()
            );
        }
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let log =
            std::fs::File::create(dir.path().join("registry.log")).map_err(|e| e.to_string())?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .spawn()
            .map_err(|e| format!("docker-registry: {e}"))?;
        let mut registry = Registry {
            child: Some(child),
            dir,
            addr,
            credentials: credentials.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        registry.wait_ready()?;
        Ok(registry)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(mut s) = TcpStream::connect(&self.addr) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
                let mut head = [0u8; 12];
                if s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") {
                    return Ok(());
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(format!(
                    "docker-registry exited with {status}: {}",
                    self.log()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "docker-registry does not answer on {}: {}",
                    self.addr,
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the registry logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `REGISTRY/REPO:TAG`.
    pub fn image(&self, repo: &str, tag: &str) -> String {
        format!("{}/{repo}:{tag}", self.addr)
    }

    /// Pushes the OCI layout `layout` (tag `tag`) as `repo:tag`, with
    /// skopeo over plain HTTP, and returns the image reference.
    pub fn push(&self, layout: &Path, tag: &str, repo: &str) -> String {
        let image = self.image(repo, tag);
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.credentials {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        // skopeo writes its signature store under $HOME; keep it here.
        cmd.env("HOME", self.dir.path());
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{image}"));
        let out = cmd.output().expect("run skopeo");
        assert!(
            out.status.success(),
            "skopeo copy to {image}: {}\nregistry log: {}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        image
    }

    /// Stops the registry now (its storage stays until drop).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A docker `config.json` holding this registry's credentials.
    pub fn write_auth_file(&self, path: &Path) -> PathBuf {
        use base64::Engine as _;
        let encode = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let (u, p) = self.credentials.clone().unwrap_or_default();
        let json = format!(
            "{{\"auths\": {{\"{}\": {{\"auth\": \"{}\"}}}}}}",
            self.addr,
            encode(format!("{u}:{p}").as_bytes())
        );
        std::fs::write(path, json).expect("write config.json");
        path.to_path_buf()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}
