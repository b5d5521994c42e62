//! Cloud Hypervisor's firmware: where the files are and which one a Domain
//! gets.
//!
//! Cloud Hypervisor has no firmware descriptors and no BIOS, pflash or NVRAM:
//! it loads one firmware file (`payload.firmware`) or an IGVM file
//! (`payload.igvm`). The launcher's pod image ships the files at fixed paths
//! ([`ChFirmwarePaths::default`]); other hosts and tests configure them.
//!
//! Rules: UEFI boot gets the edk2 `CLOUDHV.fd` where the host has it, else
//! rust-hypervisor-firmware (it offers the EFI services an
//! `\EFI\BOOT\BOOTX64.EFI` needs), or the one configured; BIOS boot
//! (KubeVirt's default, which Cloud Hypervisor has no firmware for) gets
//! rust-hypervisor-firmware, which boots the first bootable virtio disk as a
//! BIOS would, provided the disk has a GPT with an EFI system partition (a
//! Boot Loader Specification entry or `BOOTX64.EFI`): an MBR-only image with
//! a legacy boot sector does not boot there. Intel TDX gets TDVF; AMD SEV-SNP
//! gets an IGVM file; plain direct kernel boot gets no firmware. Cloud Hypervisor takes no kernel next
//! to firmware or an IGVM file, so a confidential guest cannot boot a kernel
//! directly there. Everything the firmware cannot
//! do (Secure Boot, persistent variables, BIOS, SEV/SEV-ES) is a [`NoMatch`]
//! naming the file and the reason, never silently dropped.

use crate::error::{FirmwareError, MissingFile, NoMatch, Rejected};
use crate::select::{expected_warning, missing, require, Confidential, Interface, Requirements};
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the pod image installs Cloud Hypervisor's firmware.
pub const DEFAULT_DIR: &str = "/usr/share/cloud-hypervisor";
pub const CLOUDHV_EFI_NAME: &str = "CLOUDHV.fd";
pub const RUST_HYPERVISOR_FIRMWARE_NAME: &str = "hypervisor-fw";
pub const TDVF_NAME: &str = "tdvf.fd";
pub const IGVM_EXTENSION: &str = "igvm";

/// Which UEFI-capable firmware a UEFI Domain boots with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EfiFirmware {
    /// edk2's `OvmfPkg/CloudHv` build, `CLOUDHV.fd`.
    CloudHv,
    /// rust-hypervisor-firmware, `hypervisor-fw`.
    RustHypervisorFirmware,
}

/// Configurable locations of Cloud Hypervisor's firmware files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChFirmwarePaths {
    /// `/usr/share/cloud-hypervisor/CLOUDHV.fd`
    pub cloudhv_efi: PathBuf,
    /// `/usr/share/cloud-hypervisor/hypervisor-fw`
    pub rust_hypervisor_firmware: PathBuf,
    /// `/usr/share/cloud-hypervisor/tdvf.fd` (Intel TDX Virtual Firmware)
    pub tdvf: PathBuf,
    /// A fixed IGVM file for SEV-SNP; when `None`, the first `*.igvm` in
    /// `igvm_dir` by file name.
    pub igvm: Option<PathBuf>,
    /// `/usr/share/cloud-hypervisor`
    pub igvm_dir: PathBuf,
    /// UEFI firmware of choice; `CloudHv` by default.
    pub efi: EfiFirmware,
}

impl Default for ChFirmwarePaths {
    /// The pod image's fixed paths under [`DEFAULT_DIR`].
    fn default() -> Self {
        ChFirmwarePaths::under_dir(Path::new(DEFAULT_DIR))
    }
}

impl ChFirmwarePaths {
    /// The standard file names in `dir`.
    pub fn under_dir(dir: &Path) -> Self {
        ChFirmwarePaths {
            cloudhv_efi: dir.join(CLOUDHV_EFI_NAME),
            rust_hypervisor_firmware: dir.join(RUST_HYPERVISOR_FIRMWARE_NAME),
            tdvf: dir.join(TDVF_NAME),
            igvm: None,
            igvm_dir: dir.to_path_buf(),
            efi: EfiFirmware::CloudHv,
        }
    }

    /// `*.igvm` files in `igvm_dir`, ordered by file name, or why the
    /// directory could not be read.
    pub fn igvm_files(&self) -> Result<Vec<PathBuf>, String> {
        let read = std::fs::read_dir(&self.igvm_dir)
            .map_err(|e| format!("cannot read {}: {e}", self.igvm_dir.display()))?;
        let mut files: Vec<PathBuf> = read
            .filter_map(|item| item.ok().map(|i| i.path()))
            .filter(|p| p.extension().is_some_and(|e| e == IGVM_EXTENSION) && p.is_file())
            .collect();
        files.sort();
        Ok(files)
    }

    /// Every configured file and whether it is present (`firmware list`).
    pub fn list(&self) -> Vec<ChFirmwareFile> {
        let mut out = vec![
            ChFirmwareFile::new(ChFirmwareKind::CloudHvEfi, &self.cloudhv_efi),
            ChFirmwareFile::new(
                ChFirmwareKind::RustHypervisorFirmware,
                &self.rust_hypervisor_firmware,
            ),
            ChFirmwareFile::new(ChFirmwareKind::Tdvf, &self.tdvf),
        ];
        match &self.igvm {
            Some(p) => out.push(ChFirmwareFile::new(ChFirmwareKind::Igvm, p)),
            None => {
                for p in self.igvm_files().unwrap_or_default() {
                    out.push(ChFirmwareFile::new(ChFirmwareKind::Igvm, &p));
                }
            }
        }
        out
    }
}

/// The kinds of file Cloud Hypervisor boots from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ChFirmwareKind {
    CloudHvEfi,
    RustHypervisorFirmware,
    Tdvf,
    Igvm,
}

impl ChFirmwareKind {
    /// The `payload` member of Cloud Hypervisor's `VmConfig` that takes the
    /// file: `firmware` or `igvm`.
    pub fn payload_field(self) -> &'static str {
        match self {
            ChFirmwareKind::Igvm => "igvm",
            _ => "firmware",
        }
    }
}

impl fmt::Display for ChFirmwareKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChFirmwareKind::CloudHvEfi => "EFI (CLOUDHV.fd)",
            ChFirmwareKind::RustHypervisorFirmware => "rust-hypervisor-firmware",
            ChFirmwareKind::Tdvf => "TDVF (Intel TDX)",
            ChFirmwareKind::Igvm => "IGVM (AMD SEV-SNP)",
        })
    }
}

/// One configured firmware file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChFirmwareFile {
    pub kind: ChFirmwareKind,
    pub path: PathBuf,
    pub present: bool,
}

impl ChFirmwareFile {
    fn new(kind: ChFirmwareKind, path: &Path) -> Self {
        ChFirmwareFile {
            kind,
            path: path.to_path_buf(),
            present: path.is_file(),
        }
    }
}

impl fmt::Display for ChFirmwareFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<26} {}{}",
            self.kind.to_string(),
            self.path.display(),
            if self.present { "" } else { "  (MISSING)" }
        )
    }
}

/// The file Cloud Hypervisor will boot from, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChSelection {
    pub kind: ChFirmwareKind,
    pub path: PathBuf,
    pub reasons: Vec<String>,
    /// Set for a dry run's stand-in when the file was not found
    /// ([`crate::expected`]): what was searched here.
    pub expected_not_found: Option<NoMatch>,
}

impl ChSelection {
    pub fn missing_files(&self) -> Vec<MissingFile> {
        missing(vec![(self.role(), self.path.as_path())])
    }

    fn role(&self) -> &'static str {
        match self.kind {
            ChFirmwareKind::CloudHvEfi => "Cloud Hypervisor EFI firmware",
            ChFirmwareKind::RustHypervisorFirmware => "rust-hypervisor-firmware",
            ChFirmwareKind::Tdvf => "TDVF",
            ChFirmwareKind::Igvm => "IGVM file",
        }
    }

    /// One line per missing file, for a dry run that must not fail.
    pub fn warnings(&self) -> Vec<String> {
        if let Some(not_found) = &self.expected_not_found {
            return vec![expected_warning(&self.path, not_found)];
        }
        self.missing_files().iter().map(|m| m.to_string()).collect()
    }

    /// For `run`: the file must exist, and an expected stand-in is never
    /// enough.
    pub fn require_present(&self) -> Result<(), FirmwareError> {
        require(
            self.expected_not_found.as_ref(),
            self.missing_files(),
            || "Cloud Hypervisor firmware paths".to_owned(),
        )
    }
}

impl fmt::Display for ChSelection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "firmware:       {} {}", self.kind, self.path.display())?;
        writeln!(f, "payload field:  {}", self.kind.payload_field())?;
        writeln!(f, "why:")?;
        for r in &self.reasons {
            writeln!(f, "  - {r}")?;
        }
        for w in self.warnings() {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

/// The firmware file Cloud Hypervisor boots `req` with. Files need not exist
/// (a dry run warns through [`ChSelection::warnings`]), except that finding
/// an IGVM file in `igvm_dir` needs the directory.
pub fn select_cloud_hypervisor(
    req: &Requirements,
    paths: &ChFirmwarePaths,
) -> Result<ChSelection, NoMatch> {
    select_inner(req, paths, false)
}

/// Like [`select_cloud_hypervisor`], for a dry run: when no IGVM file is
/// found, the expected one stands in ([`crate::expected::IGVM_EXPECTED_NAME`]). What the
/// request itself cannot have is still an error.
pub fn select_cloud_hypervisor_or_expected(
    req: &Requirements,
    paths: &ChFirmwarePaths,
) -> Result<ChSelection, NoMatch> {
    select_inner(req, paths, true)
}

/// The IGVM file a dry run names when the IGVM directory has none.
fn expected_igvm(paths: &ChFirmwarePaths, not_found: NoMatch) -> ChSelection {
    let path = paths.igvm_dir.join(crate::expected::IGVM_EXPECTED_NAME);
    ChSelection {
        kind: ChFirmwareKind::Igvm,
        reasons: vec![format!(
            "no IGVM file on this host; {} is where the pod image ships it",
            path.display()
        )],
        path,
        expected_not_found: Some(not_found),
    }
}

fn select_inner(
    req: &Requirements,
    paths: &ChFirmwarePaths,
    allow_expected: bool,
) -> Result<ChSelection, NoMatch> {
    let mut not_found = None;
    let no_match = |path: &Path, lacks: Vec<String>| NoMatch {
        chooser: "Cloud Hypervisor firmware".to_owned(),
        searched: vec![path.to_path_buf()],
        asked: req.to_string(),
        rejected: vec![Rejected {
            path: path.to_path_buf(),
            lacks,
        }],
    };

    let (kind, path, mut reasons, mut lacks) = match req.confidential {
        Some(Confidential::Tdx) => {
            let reasons = vec![
                "Intel TDX: Cloud Hypervisor starts trust domains from TDVF (platform.tdx)"
                    .to_owned(),
            ];
            let mut lacks = Vec::new();
            if req.architecture != "x86_64" {
                lacks.push(format!("Intel TDX needs x86_64, not {}", req.architecture));
            }
            if req.direct_kernel {
                // QEMU can hand a kernel to TDVF; Cloud Hypervisor's payload
                // validation refuses firmware next to a kernel
                // (FirmwarePlusOtherPayloads), TDX or not.
                lacks.push(
                    "Cloud Hypervisor refuses a directly booted kernel next to TDVF \
                     (payload.firmware with payload.kernel)"
                        .to_owned(),
                );
            }
            (ChFirmwareKind::Tdvf, paths.tdvf.clone(), reasons, lacks)
        }
        Some(Confidential::SevSnp) => {
            let mut lacks = Vec::new();
            if req.architecture != "x86_64" {
                lacks.push(format!(
                    "AMD SEV-SNP needs x86_64, not {}",
                    req.architecture
                ));
            }
            if req.direct_kernel {
                lacks.push(
                    "an IGVM file carries the guest's own kernel: Cloud Hypervisor cannot combine \
                     payload.igvm with a directly booted kernel"
                        .to_owned(),
                );
            }
            let (path, why) = match &paths.igvm {
                Some(p) => (p.clone(), "the configured IGVM file".to_owned()),
                None => match paths.igvm_files() {
                    Ok(files) if !files.is_empty() => {
                        let why = if files.len() == 1 {
                            format!("the only *.igvm file in {}", paths.igvm_dir.display())
                        } else {
                            let others: Vec<String> =
                                files[1..].iter().map(|p| p.display().to_string()).collect();
                            format!(
                                "first of {} *.igvm files in {} by name (not: {})",
                                files.len(),
                                paths.igvm_dir.display(),
                                others.join(", ")
                            )
                        };
                        (files[0].clone(), why)
                    }
                    found => {
                        let why = match found {
                            Ok(_) => "no *.igvm file there".to_owned(),
                            Err(e) => e,
                        };
                        if !allow_expected {
                            lacks.push(why);
                            return Err(no_match(&paths.igvm_dir, lacks));
                        }
                        let absent = no_match(&paths.igvm_dir, vec![why]);
                        let stand_in = expected_igvm(paths, absent.clone());
                        not_found = Some(absent);
                        (stand_in.path, stand_in.reasons.join("; "))
                    }
                },
            };
            let reasons = vec![
                "AMD SEV-SNP: Cloud Hypervisor launches SNP guests from an IGVM file (payload.igvm)"
                    .to_owned(),
                why,
            ];
            (ChFirmwareKind::Igvm, path, reasons, lacks)
        }
        Some(c @ (Confidential::Sev | Confidential::SevEs | Confidential::SecureExecution)) => {
            return Err(no_match(
                &paths.igvm_dir,
                vec![format!(
                    "Cloud Hypervisor supports AMD SEV-SNP and Intel TDX, not {c}"
                )],
            ));
        }
        None => {
            let rhf = (
                ChFirmwareKind::RustHypervisorFirmware,
                paths.rust_hypervisor_firmware.clone(),
            );
            let cloudhv = (ChFirmwareKind::CloudHvEfi, paths.cloudhv_efi.clone());
            let mut lacks = Vec::new();
            if req.direct_kernel {
                lacks.push("a directly booted kernel needs no firmware".to_owned());
            }
            let ((kind, path), reasons) = match req.interface {
                Interface::Bios => (
                    rhf,
                    vec![
                        "BIOS boot: Cloud Hypervisor has no legacy BIOS; rust-hypervisor-firmware \
                         boots the first bootable virtio disk instead (GPT with an EFI system \
                         partition: a Boot Loader Specification entry or \\EFI\\BOOT\\BOOTX64.EFI; \
                         an MBR-only disk does not boot)"
                            .to_owned(),
                    ],
                ),
                Interface::Uefi => match paths.efi {
                    EfiFirmware::RustHypervisorFirmware => (
                        rhf,
                        vec!["UEFI boot: rust-hypervisor-firmware, as configured".to_owned()],
                    ),
                    EfiFirmware::CloudHv if paths.cloudhv_efi.is_file() => (
                        cloudhv,
                        vec!["UEFI boot: edk2's Cloud Hypervisor firmware".to_owned()],
                    ),
                    EfiFirmware::CloudHv if paths.rust_hypervisor_firmware.is_file() => (
                        rhf,
                        vec![format!(
                            "UEFI boot: {} is not on this host; rust-hypervisor-firmware offers \
                             the EFI services \\EFI\\BOOT\\BOOTX64.EFI needs (no Secure Boot, no \
                             variable store)",
                            paths.cloudhv_efi.display()
                        )],
                    ),
                    EfiFirmware::CloudHv => (
                        cloudhv,
                        vec![format!(
                            "UEFI boot: edk2's Cloud Hypervisor firmware (neither it nor \
                             rust-hypervisor-firmware at {} is on this host)",
                            paths.rust_hypervisor_firmware.display()
                        )],
                    ),
                },
            };
            (kind, path, reasons, lacks)
        }
    };

    if req.secure_boot {
        lacks.push(format!(
            "{kind} has no UEFI Secure Boot (Cloud Hypervisor has no SMM or pflash to protect its keys)"
        ));
    }
    if req.persistent_nvram {
        lacks.push(
            "Cloud Hypervisor has no NVRAM device: UEFI variables cannot persist (efi.persistent)"
                .to_owned(),
        );
    }
    if !matches!(req.architecture.as_str(), "x86_64" | "aarch64") {
        lacks.push(format!(
            "Cloud Hypervisor runs x86_64 and aarch64 guests, not {}",
            req.architecture
        ));
    }
    if !lacks.is_empty() {
        return Err(no_match(&path, lacks));
    }
    if path.is_file() {
        reasons.push(format!("{} is present", path.display()));
    }
    Ok(ChSelection {
        kind,
        path,
        reasons,
        expected_not_found: not_found,
    })
}
