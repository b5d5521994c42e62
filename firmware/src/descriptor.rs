//! Serde types of a QEMU firmware descriptor, the JSON interop format QEMU
//! documents in `docs/interop/firmware.json` (the `Firmware` root element).
//!
//! Descriptors come from distro packages written against different QEMU
//! versions, so parsing is forward compatible: an interface type, feature,
//! flash mode or mapping device this code does not know is kept by name
//! (`Other`) instead of failing the whole file; matching decides what an
//! unknown value means (unknown features are ignored, an unknown device or
//! mode cannot be used). Unknown object members are ignored for the same
//! reason.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;

/// One firmware descriptor file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Descriptor {
    #[serde(default)]
    pub description: String,
    /// Most native interface first.
    pub interface_types: Vec<InterfaceType>,
    pub mapping: Mapping,
    #[serde(default)]
    pub targets: Vec<Target>,
    #[serde(default)]
    pub features: Vec<Feature>,
    /// For debugging only; QEMU tells management software to ignore them.
    #[serde(default)]
    pub tags: Vec<String>,
}

impl Descriptor {
    /// Parses a descriptor from JSON text.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    pub fn has_feature(&self, feature: &Feature) -> bool {
        self.features.contains(feature)
    }
}

/// `FirmwareOSInterface`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(from = "String", into = "String")]
pub enum InterfaceType {
    Bios,
    OpenFirmware,
    Uboot,
    Uefi,
    Other(String),
}

impl From<String> for InterfaceType {
    fn from(s: String) -> Self {
        match s.as_str() {
            "bios" => InterfaceType::Bios,
            "openfirmware" => InterfaceType::OpenFirmware,
            "uboot" => InterfaceType::Uboot,
            "uefi" => InterfaceType::Uefi,
            _ => InterfaceType::Other(s),
        }
    }
}

impl InterfaceType {
    pub fn as_str(&self) -> &str {
        match self {
            InterfaceType::Bios => "bios",
            InterfaceType::OpenFirmware => "openfirmware",
            InterfaceType::Uboot => "uboot",
            InterfaceType::Uefi => "uefi",
            InterfaceType::Other(s) => s,
        }
    }
}

impl From<InterfaceType> for String {
    fn from(i: InterfaceType) -> Self {
        i.as_str().to_owned()
    }
}

impl fmt::Display for InterfaceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `FirmwareFeature`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(from = "String", into = "String")]
pub enum Feature {
    AcpiS3,
    AcpiS4,
    AmdSev,
    AmdSevEs,
    AmdSevSnp,
    IntelTdx,
    EnrolledKeys,
    RequiresSmm,
    SecureBoot,
    VerboseDynamic,
    VerboseStatic,
    /// A feature newer than this code (e.g. `host-uefi-vars`); ignored by
    /// matching.
    Other(String),
}

impl From<String> for Feature {
    fn from(s: String) -> Self {
        match s.as_str() {
            "acpi-s3" => Feature::AcpiS3,
            "acpi-s4" => Feature::AcpiS4,
            "amd-sev" => Feature::AmdSev,
            "amd-sev-es" => Feature::AmdSevEs,
            "amd-sev-snp" => Feature::AmdSevSnp,
            "intel-tdx" => Feature::IntelTdx,
            "enrolled-keys" => Feature::EnrolledKeys,
            "requires-smm" => Feature::RequiresSmm,
            "secure-boot" => Feature::SecureBoot,
            "verbose-dynamic" => Feature::VerboseDynamic,
            "verbose-static" => Feature::VerboseStatic,
            _ => Feature::Other(s),
        }
    }
}

impl Feature {
    pub fn as_str(&self) -> &str {
        match self {
            Feature::AcpiS3 => "acpi-s3",
            Feature::AcpiS4 => "acpi-s4",
            Feature::AmdSev => "amd-sev",
            Feature::AmdSevEs => "amd-sev-es",
            Feature::AmdSevSnp => "amd-sev-snp",
            Feature::IntelTdx => "intel-tdx",
            Feature::EnrolledKeys => "enrolled-keys",
            Feature::RequiresSmm => "requires-smm",
            Feature::SecureBoot => "secure-boot",
            Feature::VerboseDynamic => "verbose-dynamic",
            Feature::VerboseStatic => "verbose-static",
            Feature::Other(s) => s,
        }
    }
}

impl From<Feature> for String {
    fn from(f: Feature) -> Self {
        f.as_str().to_owned()
    }
}

impl fmt::Display for Feature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `FirmwareTarget`: an emulator target and the machine types (glob
/// patterns such as `pc-q35-*`) that can run the firmware.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Target {
    /// QEMU's `SysEmuTarget` name: `x86_64`, `aarch64`, `s390x`, ...
    pub architecture: String,
    #[serde(default)]
    pub machines: Vec<String>,
}

/// `FirmwareFlashFile`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct FlashFile {
    pub filename: PathBuf,
    /// A block driver name, `raw` or `qcow2` in practice.
    pub format: String,
}

/// `FirmwareFlashMode`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(from = "String", into = "String")]
pub enum FlashMode {
    /// Read-only code plus a per-VM copy of an NVRAM template.
    Split,
    /// Code and variables in one file that each VM must copy.
    Combined,
    /// Read-only code, variables are not persisted.
    Stateless,
    Other(String),
}

impl From<String> for FlashMode {
    fn from(s: String) -> Self {
        match s.as_str() {
            "split" => FlashMode::Split,
            "combined" => FlashMode::Combined,
            "stateless" => FlashMode::Stateless,
            _ => FlashMode::Other(s),
        }
    }
}

impl FlashMode {
    pub fn as_str(&self) -> &str {
        match self {
            FlashMode::Split => "split",
            FlashMode::Combined => "combined",
            FlashMode::Stateless => "stateless",
            FlashMode::Other(s) => s,
        }
    }
}

impl From<FlashMode> for String {
    fn from(m: FlashMode) -> Self {
        m.as_str().to_owned()
    }
}

impl fmt::Display for FlashMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `FirmwareMapping`: how the firmware is loaded, discriminated by `device`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RawMapping", into = "RawMapping")]
pub enum Mapping {
    /// Mapped into pflash chips. `mode` defaults to `split` when absent, as
    /// the schema says.
    Flash {
        mode: FlashMode,
        executable: FlashFile,
        /// Present for `split` only.
        nvram_template: Option<FlashFile>,
    },
    /// Mapped into memory (`-bios`).
    Memory { filename: PathBuf },
    /// Loaded like a Linux kernel (`-kernel`).
    Kernel { filename: PathBuf },
    /// A device this code does not know.
    Other { device: String },
}

impl Mapping {
    /// The file QEMU executes.
    pub fn executable(&self) -> Option<&std::path::Path> {
        match self {
            Mapping::Flash { executable, .. } => Some(&executable.filename),
            Mapping::Memory { filename } | Mapping::Kernel { filename } => Some(filename),
            Mapping::Other { .. } => None,
        }
    }

    /// Short human form: `flash (split)`, `memory`, ...
    pub fn kind_label(&self) -> String {
        match self {
            Mapping::Flash { mode, .. } => format!("flash ({mode})"),
            Mapping::Memory { .. } => "memory".to_owned(),
            Mapping::Kernel { .. } => "kernel".to_owned(),
            Mapping::Other { device } => format!("unknown device {device:?}"),
        }
    }
}

/// The flat wire form of [`Mapping`]; serde's internally tagged enums cannot
/// keep an unknown tag, so the union is resolved by hand.
#[derive(Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
struct RawMapping {
    device: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<FlashMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    executable: Option<FlashFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nvram_template: Option<FlashFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filename: Option<PathBuf>,
}

impl TryFrom<RawMapping> for Mapping {
    type Error = String;
    fn try_from(raw: RawMapping) -> Result<Self, Self::Error> {
        match raw.device.as_str() {
            "flash" => Ok(Mapping::Flash {
                mode: raw.mode.unwrap_or(FlashMode::Split),
                executable: raw
                    .executable
                    .ok_or("mapping.executable is required for device \"flash\"")?,
                nvram_template: raw.nvram_template,
            }),
            "memory" => Ok(Mapping::Memory {
                filename: raw
                    .filename
                    .ok_or("mapping.filename is required for device \"memory\"")?,
            }),
            "kernel" => Ok(Mapping::Kernel {
                filename: raw
                    .filename
                    .ok_or("mapping.filename is required for device \"kernel\"")?,
            }),
            _ => Ok(Mapping::Other { device: raw.device }),
        }
    }
}

impl From<Mapping> for RawMapping {
    fn from(m: Mapping) -> Self {
        let empty = |device: &str| RawMapping {
            device: device.to_owned(),
            mode: None,
            executable: None,
            nvram_template: None,
            filename: None,
        };
        match m {
            Mapping::Flash {
                mode,
                executable,
                nvram_template,
            } => RawMapping {
                mode: Some(mode),
                executable: Some(executable),
                nvram_template,
                ..empty("flash")
            },
            Mapping::Memory { filename } => RawMapping {
                filename: Some(filename),
                ..empty("memory")
            },
            Mapping::Kernel { filename } => RawMapping {
                filename: Some(filename),
                ..empty("kernel")
            },
            Mapping::Other { device } => empty(&device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_feature_interface_and_members_deserialize() {
        let d = Descriptor::from_json(
            r#"{
                "description": "x",
                "interface-types": ["uefi", "future-if"],
                "mapping": {"device": "memory", "filename": "/fw.bin"},
                "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}],
                "features": ["amd-sev-snp", "host-uefi-vars"],
                "some-new-member": 1
            }"#,
        )
        .expect("parses");
        assert_eq!(
            d.interface_types,
            vec![
                InterfaceType::Uefi,
                InterfaceType::Other("future-if".into())
            ]
        );
        assert_eq!(
            d.features,
            vec![Feature::AmdSevSnp, Feature::Other("host-uefi-vars".into())]
        );
        assert_eq!(
            d.mapping,
            Mapping::Memory {
                filename: "/fw.bin".into()
            }
        );
    }

    #[test]
    fn flash_mode_defaults_to_split() {
        let d = Descriptor::from_json(
            r#"{"interface-types": ["uefi"],
                "mapping": {"device": "flash",
                    "executable": {"filename": "/c.fd", "format": "raw"},
                    "nvram-template": {"filename": "/v.fd", "format": "raw"}}}"#,
        )
        .expect("parses");
        match d.mapping {
            Mapping::Flash {
                mode,
                nvram_template,
                ..
            } => {
                assert_eq!(mode, FlashMode::Split);
                assert_eq!(nvram_template.map(|t| t.filename), Some("/v.fd".into()));
            }
            other => panic!("expected flash, got {other:?}"),
        }
    }

    #[test]
    fn unknown_device_is_kept_and_missing_executable_is_an_error() {
        let d = Descriptor::from_json(
            r#"{"interface-types": ["uefi"], "mapping": {"device": "igvm", "filename": "/x"}}"#,
        )
        .expect("parses");
        assert_eq!(
            d.mapping,
            Mapping::Other {
                device: "igvm".into()
            }
        );
        let err = Descriptor::from_json(
            r#"{"interface-types": ["uefi"], "mapping": {"device": "flash"}}"#,
        )
        .expect_err("flash without executable");
        assert!(err.to_string().contains("mapping.executable"), "{err}");
    }

    #[test]
    fn round_trips_through_json() {
        let text = r#"{"description":"d","interface-types":["uefi"],
            "mapping":{"device":"flash","mode":"stateless",
                "executable":{"filename":"/c.fd","format":"raw"}},
            "targets":[{"architecture":"x86_64","machines":["pc-q35-*"]}],
            "features":["intel-tdx","x-new"],"tags":[]}"#;
        let d = Descriptor::from_json(text).expect("parses");
        let again = Descriptor::from_json(&serde_json::to_string(&d).expect("serializes"))
            .expect("parses again");
        assert_eq!(d, again);
    }
}
