//! Choosing a QEMU firmware descriptor for a Domain, the way libvirt does.
//!
//! [`Requirements`] is what the Domain asks of its firmware; [`select`] walks
//! the visible descriptors in file-name order and takes the first that fits,
//! recording why it fits ([`Selection::reasons`]) and what every earlier one
//! lacked. When none fits, the [`NoMatch`] error lists all of it.
//!
//! The rules follow libvirt's `qemuFirmwareMatchDomain`, with the Domain's
//! yes/no choices treated as explicit: secure boot off refuses `secure-boot`
//! firmware, a guest without launch security refuses an image that only
//! makes sense for SEV-SNP/TDX, and a UEFI guest that keeps UEFI variables
//! only takes split flash with an NVRAM template.

use crate::descriptor::{Descriptor, Feature, FlashMode, InterfaceType, Mapping};
use crate::error::{FirmwareError, MissingFile, NoMatch, Rejected};
use crate::search::{Catalog, CatalogEntry};
use domain_model::{Architecture, Boot, Domain, LaunchSecurity};
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// The firmware-to-OS interface the guest expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Interface {
    Bios,
    Uefi,
}

impl Interface {
    fn descriptor_type(self) -> InterfaceType {
        match self {
            Interface::Bios => InterfaceType::Bios,
            Interface::Uefi => InterfaceType::Uefi,
        }
    }
}

impl fmt::Display for Interface {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Interface::Bios => "bios",
            Interface::Uefi => "uefi",
        })
    }
}

/// The confidential-computing technology the guest launches under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Confidential {
    Sev,
    SevEs,
    SevSnp,
    Tdx,
    SecureExecution,
}

impl Confidential {
    pub fn from_launch_security(ls: &LaunchSecurity) -> Self {
        match ls {
            LaunchSecurity::Sev {
                encrypted_state: false,
                ..
            } => Confidential::Sev,
            LaunchSecurity::Sev {
                encrypted_state: true,
                ..
            } => Confidential::SevEs,
            LaunchSecurity::SevSnp { .. } => Confidential::SevSnp,
            LaunchSecurity::Tdx => Confidential::Tdx,
            LaunchSecurity::SecureExecution => Confidential::SecureExecution,
        }
    }

    /// KVM gives SEV-ES, SEV-SNP and TDX guests no System Management Mode.
    pub fn forbids_smm(self) -> bool {
        matches!(
            self,
            Confidential::SevEs | Confidential::SevSnp | Confidential::Tdx
        )
    }

    /// SEV-SNP and TDX guests take an image whose variables are not kept: the
    /// host cannot be trusted with a writable NVRAM (and QEMU maps TDVF with
    /// `-bios`).
    pub fn needs_stateless(self) -> bool {
        matches!(self, Confidential::SevSnp | Confidential::Tdx)
    }

    /// The descriptor features the firmware must have.
    pub fn required_features(self) -> &'static [Feature] {
        match self {
            Confidential::Sev => &[Feature::AmdSev],
            Confidential::SevEs => &[Feature::AmdSev, Feature::AmdSevEs],
            Confidential::SevSnp => &[Feature::AmdSevSnp],
            Confidential::Tdx => &[Feature::IntelTdx],
            // s390x firmware is built into QEMU; descriptors have no feature for it.
            Confidential::SecureExecution => &[],
        }
    }
}

impl fmt::Display for Confidential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Confidential::Sev => "AMD SEV",
            Confidential::SevEs => "AMD SEV-ES",
            Confidential::SevSnp => "AMD SEV-SNP",
            Confidential::Tdx => "Intel TDX",
            Confidential::SecureExecution => "IBM Secure Execution",
        })
    }
}

/// What a Domain asks of its firmware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Requirements {
    /// QEMU target name: `x86_64`, `aarch64`, `s390x`.
    pub architecture: String,
    /// A concrete machine type (`pc-q35-7.2`) or an alias (`q35`, `pc`,
    /// `virt`); an alias matches the patterns of its versioned family.
    pub machine: String,
    pub interface: Interface,
    pub secure_boot: bool,
    /// `Some(true)`: the NVRAM template must have Secure Boot keys enrolled;
    /// `Some(false)`: must not; `None`: either.
    pub enrolled_keys: Option<bool>,
    pub confidential: Option<Confidential>,
    /// Whether firmware that `requires-smm` may be used.
    pub smm_allowed: bool,
    /// The image must keep no variables (no NVRAM).
    pub stateless: bool,
    /// `efi.persistent`: UEFI variables are kept across boots, so there must be
    /// an NVRAM to keep.
    pub persistent_nvram: bool,
    /// The Domain boots a kernel directly; firmware is needed only for the
    /// confidential launch.
    pub direct_kernel: bool,
    pub acpi_s3: bool,
    pub acpi_s4: bool,
}

/// QEMU's target name for a Domain architecture.
pub fn qemu_architecture(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Amd64 => "x86_64",
        Architecture::Arm64 => "aarch64",
        Architecture::S390x => "s390x",
    }
}

/// The machine type KubeVirt gives a VM of this architecture, as an alias.
pub fn default_machine(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Amd64 => "q35",
        Architecture::Arm64 => "virt",
        Architecture::S390x => "s390-ccw-virtio",
    }
}

impl Requirements {
    /// The request a Domain makes, on the default machine type of its
    /// architecture (change it with [`Requirements::with_machine`]). `None`
    /// when the Domain needs no firmware: direct kernel boot without a
    /// confidential launch. SEV, SEV-SNP and TDX guests need firmware even
    /// when they boot a kernel directly (it measures or loads the kernel).
    pub fn from_domain(domain: &Domain) -> Option<Requirements> {
        let confidential = domain
            .launch_security
            .as_ref()
            .map(Confidential::from_launch_security);
        let (interface, secure_boot, persistent_nvram, direct_kernel) = match &domain.boot {
            Boot::Efi {
                secure_boot,
                persistent,
            } => (Interface::Uefi, *secure_boot, *persistent, false),
            Boot::Bios => (Interface::Bios, false, false, false),
            Boot::Kernel { .. } => match confidential {
                Some(c) if c != Confidential::SecureExecution => {
                    (Interface::Uefi, false, false, true)
                }
                _ => return None,
            },
        };
        Some(Requirements {
            architecture: qemu_architecture(domain.architecture).to_owned(),
            machine: default_machine(domain.architecture).to_owned(),
            interface,
            secure_boot,
            // KubeVirt's secure boot means keys enrolled (Microsoft's), and a
            // guest without secure boot must not get an enforcing varstore.
            enrolled_keys: Some(secure_boot),
            confidential,
            smm_allowed: domain.features.smm
                && !confidential.is_some_and(Confidential::forbids_smm),
            stateless: confidential.is_some_and(Confidential::needs_stateless),
            persistent_nvram,
            direct_kernel,
            acpi_s3: false,
            acpi_s4: false,
        })
    }

    pub fn with_machine(mut self, machine: impl Into<String>) -> Self {
        self.machine = machine.into();
        self
    }

    fn smm_refusal(&self) -> String {
        match self.confidential {
            Some(c) if c.forbids_smm() => format!("{c} guests have no SMM"),
            _ => "the Domain does not enable SMM (features.smm)".to_owned(),
        }
    }

    fn stateless_cause(&self) -> String {
        match self.confidential {
            Some(c) if c.needs_stateless() => format!("{c} needs a stateless image"),
            _ => "the request is for a stateless image".to_owned(),
        }
    }
}

impl fmt::Display for Requirements {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} firmware for {} machine {}",
            self.interface, self.architecture, self.machine
        )?;
        if self.secure_boot {
            write!(f, ", secure boot")?;
        } else {
            write!(f, ", no secure boot")?;
        }
        match self.enrolled_keys {
            Some(true) => write!(f, " with enrolled keys")?,
            Some(false) if self.secure_boot => write!(f, " without enrolled keys")?,
            _ => {}
        }
        if let Some(c) = self.confidential {
            write!(f, ", {c}")?;
        }
        if self.direct_kernel {
            write!(f, ", direct kernel boot")?;
        }
        if self.stateless {
            write!(f, ", stateless (no NVRAM)")?;
        }
        if self.persistent_nvram {
            write!(f, ", persistent NVRAM")?;
        }
        if !self.smm_allowed {
            write!(f, ", SMM not allowed")?;
        }
        if self.acpi_s3 {
            write!(f, ", ACPI S3")?;
        }
        if self.acpi_s4 {
            write!(f, ", ACPI S4")?;
        }
        Ok(())
    }
}

/// How the chosen image is mapped. Combined flash is never chosen: it needs
/// a writable per-VM copy of the code, which nothing in a Domain asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MappingKind {
    /// Read-only pflash code plus a per-VM NVRAM made from a template.
    FlashSplit,
    /// Read-only pflash code, no NVRAM.
    FlashStateless,
    /// Loaded into memory (`-bios`, libvirt `<loader type='rom'>`), no NVRAM.
    Memory,
    /// Loaded like a kernel (`-kernel`), no NVRAM.
    Kernel,
}

impl fmt::Display for MappingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MappingKind::FlashSplit => "flash (split: code + NVRAM template)",
            MappingKind::FlashStateless => "flash (stateless: no NVRAM)",
            MappingKind::Memory => "memory (ROM, no NVRAM)",
            MappingKind::Kernel => "kernel (no NVRAM)",
        })
    }
}

/// The chosen descriptor and what it means for the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Selection {
    pub descriptor_path: PathBuf,
    pub description: String,
    pub mapping: MappingKind,
    pub executable: PathBuf,
    /// Block format of a flash executable (`raw`, `qcow2`).
    pub executable_format: Option<String>,
    /// Only for [`MappingKind::FlashSplit`].
    pub nvram_template: Option<PathBuf>,
    pub nvram_template_format: Option<String>,
    pub features: Vec<Feature>,
    /// Why this descriptor fits, one fact per line.
    pub reasons: Vec<String>,
    /// Candidates tried first, in order, and what each lacked.
    pub passed_over: Vec<Rejected>,
    /// Set for a dry run's stand-in when nothing on this host fits: the
    /// paths are where the pod image ships the firmware
    /// ([`crate::expected`]), and this says what was searched here.
    pub expected_not_found: Option<NoMatch>,
}

impl Selection {
    pub fn has_nvram(&self) -> bool {
        self.nvram_template.is_some()
    }

    /// The VM must enable SMM and restrict pflash writes to SMM.
    pub fn requires_smm(&self) -> bool {
        self.features.contains(&Feature::RequiresSmm)
    }

    pub fn secure_boot(&self) -> bool {
        self.features.contains(&Feature::SecureBoot)
    }

    pub fn enrolled_keys(&self) -> bool {
        self.features.contains(&Feature::EnrolledKeys)
    }

    /// Every file the VM will read, with its role.
    pub fn files(&self) -> Vec<(&'static str, &Path)> {
        let mut files = vec![("executable", self.executable.as_path())];
        if let Some(t) = &self.nvram_template {
            files.push(("NVRAM template", t.as_path()));
        }
        files
    }

    /// Files that do not exist on this host.
    pub fn missing_files(&self) -> Vec<MissingFile> {
        missing(self.files())
    }

    /// One line per missing file, for a dry run that must not fail.
    pub fn warnings(&self) -> Vec<String> {
        if let Some(not_found) = &self.expected_not_found {
            return vec![expected_warning(&self.executable, not_found)];
        }
        self.missing_files()
            .iter()
            .map(|m| format!("{m} (named by {})", self.descriptor_path.display()))
            .collect()
    }

    /// For `run`: every file must exist, and an expected stand-in is never
    /// enough.
    pub fn require_present(&self) -> Result<(), FirmwareError> {
        require(
            self.expected_not_found.as_ref(),
            self.missing_files(),
            || self.descriptor_path.display().to_string(),
        )
    }
}

/// The check before a run: an expected stand-in is refused with the search
/// that found nothing, and chosen files must all exist.
pub(crate) fn require(
    expected_not_found: Option<&NoMatch>,
    missing_files: Vec<MissingFile>,
    source_name: impl FnOnce() -> String,
) -> Result<(), FirmwareError> {
    if let Some(not_found) = expected_not_found {
        return Err(FirmwareError::NoMatch(not_found.clone()));
    }
    if missing_files.is_empty() {
        Ok(())
    } else {
        Err(FirmwareError::Missing {
            source_name: source_name(),
            files: missing_files,
        })
    }
}

/// The dry-run warning for an expected stand-in.
pub(crate) fn expected_warning(path: &Path, not_found: &NoMatch) -> String {
    format!(
        "rendering the expected path {} although it is not on this host: {not_found}",
        path.display()
    )
}

pub(crate) fn missing(files: Vec<(&'static str, &Path)>) -> Vec<MissingFile> {
    files
        .into_iter()
        .filter(|(_, p)| !p.exists())
        .map(|(role, p)| MissingFile {
            role: role.to_owned(),
            path: p.to_path_buf(),
        })
        .collect()
}

impl fmt::Display for Selection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "descriptor:     {}", self.descriptor_path.display())?;
        if !self.description.is_empty() {
            writeln!(f, "description:    {}", self.description)?;
        }
        writeln!(f, "mapping:        {}", self.mapping)?;
        let fmt_suffix =
            |fmt: &Option<String>| fmt.as_ref().map(|x| format!(" ({x})")).unwrap_or_default();
        writeln!(
            f,
            "executable:     {}{}",
            self.executable.display(),
            fmt_suffix(&self.executable_format)
        )?;
        if let Some(t) = &self.nvram_template {
            writeln!(
                f,
                "nvram template: {}{}",
                t.display(),
                fmt_suffix(&self.nvram_template_format)
            )?;
        }
        writeln!(f, "why:")?;
        for r in &self.reasons {
            writeln!(f, "  - {r}")?;
        }
        if !self.passed_over.is_empty() {
            writeln!(f, "passed over:")?;
            for r in &self.passed_over {
                writeln!(f, "  - {}: {}", r.path.display(), r.lacks.join("; "))?;
            }
        }
        for w in self.warnings() {
            writeln!(f, "warning: {w}")?;
        }
        Ok(())
    }
}

/// The first visible descriptor (in file-name order) that fits `req`.
pub fn select(catalog: &Catalog, req: &Requirements) -> Result<Selection, NoMatch> {
    let mut rejected = Vec::new();
    let total = catalog.entries.len();
    for (index, entry) in catalog.entries.iter().enumerate() {
        let descriptor = match &entry.descriptor {
            Ok(d) => d,
            Err(e) => {
                rejected.push(Rejected {
                    path: entry.path.clone(),
                    lacks: vec![format!("unusable: {e}")],
                });
                continue;
            }
        };
        match evaluate(descriptor, req) {
            Ok(mut reasons) => {
                reasons.insert(
                    0,
                    format!(
                        "first fitting descriptor in file-name order ({} of {total} visible)",
                        index + 1
                    ),
                );
                if !entry.overrides.is_empty() {
                    let o: Vec<String> = entry
                        .overrides
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect();
                    reasons.push(format!("overrides {}", o.join(", ")));
                }
                return Ok(selection(entry, descriptor, reasons, rejected));
            }
            Err(lacks) => rejected.push(Rejected {
                path: entry.path.clone(),
                lacks,
            }),
        }
    }
    for h in &catalog.hidden {
        for p in &h.hidden {
            rejected.push(Rejected {
                path: p.clone(),
                lacks: vec![format!("hidden by empty file {}", h.by.display())],
            });
        }
    }
    let mut searched = catalog.searched.clone();
    if !catalog.problems.is_empty() {
        rejected.extend(catalog.problems.iter().map(|p| Rejected {
            path: PathBuf::from("(search)"),
            lacks: vec![p.clone()],
        }));
    }
    searched.dedup();
    Err(NoMatch {
        chooser: "QEMU firmware descriptors".to_owned(),
        searched,
        asked: req.to_string(),
        rejected,
    })
}

fn selection(
    entry: &CatalogEntry,
    d: &Descriptor,
    reasons: Vec<String>,
    passed_over: Vec<Rejected>,
) -> Selection {
    let mut s = Selection {
        descriptor_path: entry.path.clone(),
        description: d.description.clone(),
        mapping: MappingKind::Memory,
        executable: PathBuf::new(),
        executable_format: None,
        nvram_template: None,
        nvram_template_format: None,
        features: d.features.clone(),
        reasons,
        passed_over,
        expected_not_found: None,
    };
    match &d.mapping {
        Mapping::Flash {
            mode,
            executable,
            nvram_template,
        } => {
            s.executable = executable.filename.clone();
            s.executable_format = Some(executable.format.clone());
            if *mode == FlashMode::Split {
                s.mapping = MappingKind::FlashSplit;
                if let Some(t) = nvram_template {
                    s.nvram_template = Some(t.filename.clone());
                    s.nvram_template_format = Some(t.format.clone());
                }
            } else {
                // `evaluate` admits only split and stateless flash.
                s.mapping = MappingKind::FlashStateless;
            }
        }
        Mapping::Memory { filename } => s.executable = filename.clone(),
        Mapping::Kernel { filename } => {
            s.mapping = MappingKind::Kernel;
            s.executable = filename.clone();
        }
        // `evaluate` rejects unknown devices.
        Mapping::Other { .. } => {}
    }
    s
}

/// Why `d` fits `req` (Ok), or everything it lacks (Err).
fn evaluate(d: &Descriptor, req: &Requirements) -> Result<Vec<String>, Vec<String>> {
    let mut reasons = Vec::new();
    let mut lacks = Vec::new();

    let want = req.interface.descriptor_type();
    if d.interface_types.contains(&want) {
        reasons.push(format!("offers the {want} interface"));
    } else {
        let have: Vec<&str> = d
            .interface_types
            .iter()
            .map(InterfaceType::as_str)
            .collect();
        lacks.push(format!(
            "no {want} interface (interface-types: {})",
            have.join(", ")
        ));
    }

    check_target(d, req, &mut reasons, &mut lacks);
    check_mapping(d, req, &mut reasons, &mut lacks);
    check_features(d, req, &mut reasons, &mut lacks);

    if lacks.is_empty() {
        Ok(reasons)
    } else {
        Err(lacks)
    }
}

fn check_target(
    d: &Descriptor,
    req: &Requirements,
    reasons: &mut Vec<String>,
    lacks: &mut Vec<String>,
) {
    let targets: Vec<_> = d
        .targets
        .iter()
        .filter(|t| t.architecture == req.architecture)
        .collect();
    if targets.is_empty() {
        let have: Vec<&str> = d.targets.iter().map(|t| t.architecture.as_str()).collect();
        lacks.push(format!(
            "no target for architecture {} (targets: {})",
            req.architecture,
            if have.is_empty() {
                "none".to_owned()
            } else {
                have.join(", ")
            }
        ));
        return;
    }
    let matched = targets
        .iter()
        .flat_map(|t| t.machines.iter())
        .find(|pattern| machine_matches(pattern, &req.machine));
    match matched {
        Some(pattern) => reasons.push(format!(
            "{} machine {} matches {pattern}",
            req.architecture, req.machine
        )),
        None => {
            let patterns: Vec<&str> = targets
                .iter()
                .flat_map(|t| t.machines.iter().map(String::as_str))
                .collect();
            lacks.push(format!(
                "{} machine {} matches none of {}",
                req.architecture,
                req.machine,
                patterns.join(", ")
            ));
        }
    }
}

/// Machine type aliases and the versioned family each stands for.
const MACHINE_ALIASES: &[(&str, &str)] = &[
    ("q35", "pc-q35-"),
    ("pc", "pc-i440fx-"),
    ("virt", "virt-"),
    ("s390-ccw-virtio", "s390-ccw-virtio-"),
];

/// Glob match as QEMU documents it (`fnmatch`), plus aliases: libvirt
/// expands `q35` to the concrete `pc-q35-X.Y` before matching, which this
/// code cannot do without asking QEMU, so an alias matches any pattern of
/// its family.
pub fn machine_matches(pattern: &str, machine: &str) -> bool {
    let glob = match glob::Pattern::new(pattern) {
        Ok(p) => p.matches(machine),
        Err(_) => pattern == machine,
    };
    glob || MACHINE_ALIASES
        .iter()
        .any(|(alias, family)| machine == *alias && pattern.starts_with(family))
}

fn supported_format(format: &str) -> bool {
    format == "raw" || format == "qcow2"
}

fn check_mapping(
    d: &Descriptor,
    req: &Requirements,
    reasons: &mut Vec<String>,
    lacks: &mut Vec<String>,
) {
    // Whether the image keeps UEFI variables in an NVRAM.
    let has_nvram = match &d.mapping {
        Mapping::Other { device } => {
            lacks.push(format!("unknown mapping device {device:?}"));
            return;
        }
        Mapping::Flash {
            mode,
            executable,
            nvram_template,
        } => {
            if !supported_format(&executable.format) {
                lacks.push(format!(
                    "executable format {:?} is neither raw nor qcow2",
                    executable.format
                ));
            }
            match mode {
                FlashMode::Split => match nvram_template {
                    None => {
                        lacks.push(
                            "split flash without nvram-template (malformed descriptor)".to_owned(),
                        );
                        return;
                    }
                    Some(t) => {
                        if !supported_format(&t.format) {
                            lacks.push(format!(
                                "nvram-template format {:?} is neither raw nor qcow2",
                                t.format
                            ));
                        }
                        true
                    }
                },
                FlashMode::Stateless => false,
                FlashMode::Combined => {
                    lacks.push(
                        "combined flash (a writable per-VM copy of code and variables) is not supported"
                            .to_owned(),
                    );
                    return;
                }
                FlashMode::Other(m) => {
                    lacks.push(format!("unknown flash mode {m:?}"));
                    return;
                }
            }
        }
        Mapping::Memory { .. } | Mapping::Kernel { .. } => false,
    };
    let kind = d.mapping.kind_label();
    if req.stateless {
        if has_nvram {
            lacks.push(format!(
                "{kind} keeps UEFI variables in an NVRAM, but {}",
                req.stateless_cause()
            ));
        } else {
            reasons.push(format!("{kind}: stateless, no NVRAM"));
        }
    } else if req.interface == Interface::Uefi && !has_nvram {
        lacks.push(format!(
            "{kind} keeps no UEFI variables; a UEFI guest without SEV-SNP/TDX gets an NVRAM"
        ));
    } else if has_nvram {
        reasons.push(format!(
            "{kind}: read-only code, per-VM NVRAM from the template"
        ));
    } else {
        reasons.push(kind.clone());
    }
    if req.persistent_nvram && !has_nvram && (req.stateless || req.interface != Interface::Uefi) {
        lacks.push(format!("{kind} has no NVRAM to persist (efi.persistent)"));
    }
}

/// An image only for SEV-SNP/TDX guests: it advertises one of them and keeps
/// no variables, so a plain guest would boot without its UEFI variables.
fn confidential_only(d: &Descriptor) -> bool {
    let confidential = d.has_feature(&Feature::AmdSevSnp) || d.has_feature(&Feature::IntelTdx);
    let keeps_variables = matches!(
        &d.mapping,
        Mapping::Flash {
            mode: FlashMode::Split | FlashMode::Combined,
            ..
        }
    );
    confidential && !keeps_variables
}

fn check_features(
    d: &Descriptor,
    req: &Requirements,
    reasons: &mut Vec<String>,
    lacks: &mut Vec<String>,
) {
    let has = |f: &Feature| d.has_feature(f);

    match (req.secure_boot, has(&Feature::SecureBoot)) {
        (true, true) => reasons.push("has secure-boot".to_owned()),
        (true, false) => lacks.push("no secure-boot".to_owned()),
        (false, true) => {
            lacks.push("has secure-boot, which the Domain does not ask for".to_owned())
        }
        (false, false) => {}
    }
    match (req.enrolled_keys, has(&Feature::EnrolledKeys)) {
        (Some(true), true) => reasons.push("has enrolled-keys".to_owned()),
        (Some(true), false) => {
            lacks.push("no enrolled-keys (its NVRAM template has no Secure Boot keys)".to_owned())
        }
        (Some(false), true) => {
            lacks.push("has enrolled-keys, which the Domain does not ask for".to_owned())
        }
        _ => {}
    }
    if has(&Feature::RequiresSmm) {
        if req.smm_allowed {
            reasons.push("requires-smm: the Domain enables SMM".to_owned());
        } else {
            lacks.push(format!("requires-smm, but {}", req.smm_refusal()));
        }
    }
    match req.confidential {
        Some(c) => {
            let missing: Vec<&str> = c
                .required_features()
                .iter()
                .filter(|f| !has(f))
                .map(Feature::as_str)
                .collect();
            if missing.is_empty() {
                let names: Vec<&str> = c.required_features().iter().map(Feature::as_str).collect();
                if !names.is_empty() {
                    reasons.push(format!("{c}: has {}", names.join(", ")));
                }
            } else {
                lacks.push(format!("{c} needs {}", missing.join(", ")));
            }
        }
        None => {
            if confidential_only(d) {
                lacks.push(format!(
                    "confidential-only image ({}, no NVRAM) but the Domain has no launch security",
                    d.features
                        .iter()
                        .filter(|f| matches!(f, Feature::AmdSevSnp | Feature::IntelTdx))
                        .map(Feature::as_str)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
        }
    }
    if req.acpi_s3 && !has(&Feature::AcpiS3) {
        lacks.push("no acpi-s3 (suspend to RAM)".to_owned());
    }
    if req.acpi_s4 && !has(&Feature::AcpiS4) {
        lacks.push("no acpi-s4 (suspend to disk)".to_owned());
    }
}
