//! The launcher's own configuration: feature gates and firmware locations,
//! from a YAML file ([`DEFAULT_PATH`] or `--config FILE`) with the command
//! line on top, resolved once into [`Settings`] that every subcommand uses.
//!
//! ```yaml
//! featureGates: [WorkloadEncryptionTDX, -WorkloadEncryptionSEV]
//! firmwareDescriptorDirs: [/etc/qemu/firmware, /usr/share/qemu/firmware]
//! cloudHypervisorFirmwareDir: /usr/share/cloud-hypervisor
//! ```
//!
//! Gates start from KubeVirt's defaults by maturity, then the file's list,
//! then each `--feature-gates` list, in order ([`FeatureGates::apply`]).
//! Firmware directories given on the command line replace the file's.

use domain_model::gates::FeatureGates;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// Read when present and no `--config` is given.
pub const DEFAULT_PATH: &str = "/etc/ch-launcher/config.yaml";

/// The file's keys; unknown keys are errors so a typo is not silently
/// ignored.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    /// Gate names, `-Name` to disable a beta gate.
    #[serde(default)]
    pub feature_gates: Vec<String>,
    /// QEMU firmware descriptor directories, highest precedence first;
    /// replace QEMU's standard ones.
    #[serde(default)]
    pub firmware_descriptor_dirs: Vec<PathBuf>,
    /// Cloud Hypervisor's firmware directory.
    pub cloud_hypervisor_firmware_dir: Option<PathBuf>,
}

/// A configuration problem, naming the file and the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}: {message}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    pub message: String,
}

impl ConfigFile {
    /// Parses `text` read from `file`.
    pub fn parse(text: &str, file: &Path) -> Result<ConfigFile, ConfigError> {
        let error = |message: String| ConfigError {
            file: file.to_path_buf(),
            message,
        };
        // An empty file (or one of comments only) is an empty configuration.
        if text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        }) {
            return Ok(ConfigFile::default());
        }
        let value: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| {
            let full = e.to_string();
            error(full.lines().next().unwrap_or_default().to_string())
        })?;
        serde_path_to_error::deserialize::<_, ConfigFile>(value).map_err(|e| {
            let key = e.path().to_string();
            if key == "." {
                error(e.inner().to_string())
            } else {
                error(format!("{key}: {}", e.inner()))
            }
        })
    }

    /// Reads `explicit`, else [`DEFAULT_PATH`] when it exists, else nothing.
    pub fn load(explicit: Option<&Path>) -> Result<Option<(PathBuf, ConfigFile)>, ConfigError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None if Path::new(DEFAULT_PATH).exists() => PathBuf::from(DEFAULT_PATH),
            None => return Ok(None),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| ConfigError {
            file: path.clone(),
            message: format!("cannot read: {e}"),
        })?;
        let parsed = ConfigFile::parse(&text, &path)?;
        Ok(Some((path, parsed)))
    }
}

/// What the command line adds to the file.
#[derive(Debug, Default, Clone)]
pub struct Overrides<'a> {
    pub feature_gates: &'a [String],
    pub firmware_descriptor_dirs: &'a [PathBuf],
    pub ch_firmware_dir: Option<&'a Path>,
    pub libvirt_uri: &'a str,
}

/// The resolved configuration every subcommand uses.
#[derive(Debug, Clone)]
pub struct Settings {
    pub gates: FeatureGates,
    pub firmware: firmware::FirmwareConfig,
}

impl Settings {
    /// Defaults, then `file` (with the path its errors name), then the
    /// command line.
    pub fn resolve(
        file: Option<(&Path, &ConfigFile)>,
        cli: &Overrides<'_>,
    ) -> Result<Settings, ConfigError> {
        let mut gates = FeatureGates::default();
        let mut descriptor_dirs = Vec::new();
        let mut ch_dir = None;
        if let Some((path, config)) = file {
            for (i, gate) in config.feature_gates.iter().enumerate() {
                gates.apply(gate).map_err(|e| ConfigError {
                    file: path.to_path_buf(),
                    message: format!("featureGates[{i}]: {e}"),
                })?;
            }
            descriptor_dirs = config.firmware_descriptor_dirs.clone();
            ch_dir = config.cloud_hypervisor_firmware_dir.clone();
        }
        for list in cli.feature_gates {
            gates.apply(list).map_err(|e| ConfigError {
                file: PathBuf::from("--feature-gates"),
                message: e.to_string(),
            })?;
        }
        if !cli.firmware_descriptor_dirs.is_empty() {
            descriptor_dirs = cli.firmware_descriptor_dirs.to_vec();
        }
        if let Some(dir) = cli.ch_firmware_dir {
            ch_dir = Some(dir.to_path_buf());
        }
        Ok(Settings {
            gates,
            firmware: firmware::FirmwareConfig::for_launcher(
                descriptor_dirs,
                ch_dir.as_deref(),
                cli.libvirt_uri,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain_model::gates::{WORKLOAD_ENCRYPTION_SEV, WORKLOAD_ENCRYPTION_TDX};

    fn parse(text: &str) -> Result<ConfigFile, ConfigError> {
        ConfigFile::parse(text, Path::new("/etc/ch-launcher/config.yaml"))
    }

    fn cli<'a>(gates: &'a [String], dirs: &'a [PathBuf]) -> Overrides<'a> {
        Overrides {
            feature_gates: gates,
            firmware_descriptor_dirs: dirs,
            ch_firmware_dir: None,
            libvirt_uri: "qemu:///system",
        }
    }

    #[test]
    fn config_file_keys_are_read() {
        let file = parse(
            "featureGates: [WorkloadEncryptionTDX, -WorkloadEncryptionSEV]\n\
             firmwareDescriptorDirs: [/fw/a, /fw/b]\n\
             cloudHypervisorFirmwareDir: /fw/ch\n",
        )
        .unwrap();
        let s = Settings::resolve(Some((Path::new("c.yaml"), &file)), &cli(&[], &[])).unwrap();
        assert!(s.gates.is_enabled(WORKLOAD_ENCRYPTION_TDX));
        assert!(!s.gates.is_enabled(WORKLOAD_ENCRYPTION_SEV));
        assert_eq!(
            s.firmware.qemu.dirs,
            [PathBuf::from("/fw/a"), "/fw/b".into()]
        );
        assert_eq!(
            s.firmware.cloud_hypervisor.tdvf,
            PathBuf::from("/fw/ch/tdvf.fd")
        );
    }

    #[test]
    fn command_line_applies_after_the_file() {
        let file =
            parse("featureGates: [WorkloadEncryptionTDX]\nfirmwareDescriptorDirs: [/fw/a]\n")
                .unwrap();
        let gates = ["-WorkloadEncryptionTDX".to_string()];
        let dirs = [PathBuf::from("/cli")];
        let s = Settings::resolve(Some((Path::new("c.yaml"), &file)), &cli(&gates, &dirs)).unwrap();
        assert!(!s.gates.is_enabled(WORKLOAD_ENCRYPTION_TDX));
        assert_eq!(s.firmware.qemu.dirs, [PathBuf::from("/cli")]);
    }

    #[test]
    fn defaults_follow_kubevirt_maturity_without_any_configuration() {
        let s = Settings::resolve(None, &cli(&[], &[])).unwrap();
        assert!(s.gates.is_enabled(WORKLOAD_ENCRYPTION_SEV));
        assert!(!s.gates.is_enabled(WORKLOAD_ENCRYPTION_TDX));
        assert_eq!(
            s.firmware.cloud_hypervisor.cloudhv_efi,
            PathBuf::from("/usr/share/cloud-hypervisor/CLOUDHV.fd")
        );
        // qemu:///system: libvirt reads no user directory.
        assert_eq!(
            s.firmware.qemu.dirs,
            [
                PathBuf::from("/etc/qemu/firmware"),
                "/usr/share/qemu/firmware".into()
            ]
        );
    }

    #[test]
    fn config_errors_name_the_file_and_the_key() {
        let err = parse("featureGate: [WorkloadEncryptionTDX]\n").unwrap_err();
        assert_eq!(err.file, Path::new("/etc/ch-launcher/config.yaml"));
        assert!(err.to_string().contains("featureGate"), "{err}");

        let err = parse("featureGates: WorkloadEncryptionTDX\n").unwrap_err();
        assert!(err.message.starts_with("featureGates"), "{err}");

        let err = parse("cloudHypervisorFirmwareDir: [a]\n").unwrap_err();
        assert!(
            err.message.starts_with("cloudHypervisorFirmwareDir"),
            "{err}"
        );

        let file = parse("featureGates: [WorkloadEncryptionTDX, Bogus]\n").unwrap();
        let err =
            Settings::resolve(Some((Path::new("/c.yaml"), &file)), &cli(&[], &[])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/c.yaml: featureGates[1]: unknown feature gate \"Bogus\"; known gates: \
             SecureExecution (GA), WorkloadEncryptionSEV (beta), WorkloadEncryptionTDX (alpha)"
        );

        let gates = ["-SecureExecution".to_string()];
        let err = Settings::resolve(None, &cli(&gates, &[])).unwrap_err();
        assert!(err.to_string().starts_with("--feature-gates: "), "{err}");
    }

    #[test]
    fn empty_file_is_an_empty_configuration() {
        assert_eq!(parse("").unwrap(), ConfigFile::default());
        assert_eq!(parse("# nothing\n").unwrap(), ConfigFile::default());
    }
}
