//! Which firmware for this Domain on this host, and why.
//!
//! Every EFI, Secure Boot and confidential launch needs the right firmware
//! file, and the wrong one fails late and obscurely inside the hypervisor.
//! Both backends take firmware only through this crate:
//!
//! - [`descriptor`]: QEMU's firmware descriptor JSON (`docs/interop/firmware.json`).
//! - [`search`]: where descriptors live, override/hiding rules, candidate order.
//! - [`select`]: [`Requirements`] from a Domain, libvirt's matching rules,
//!   the [`Selection`] with its reasons.
//! - [`libvirt`]: the `<loader>`/`<nvram>` facts of a selection.
//! - [`cloud_hypervisor`]: Cloud Hypervisor's firmware files and their choice.
//!
//! Choosing never needs the files to exist (a dry run gets warnings);
//! `require_present` is the check before running. [`choose`] is the one
//! entry point the launcher uses: strict for a run, and for a dry run it
//! falls back to the pod image's well-known paths ([`expected`]).

pub mod cloud_hypervisor;
pub mod descriptor;
pub mod error;
pub mod expected;
pub mod libvirt;
pub mod search;
pub mod select;

pub use cloud_hypervisor::{
    select_cloud_hypervisor, select_cloud_hypervisor_or_expected, ChFirmwareFile, ChFirmwareKind,
    ChFirmwarePaths, ChSelection, EfiFirmware,
};
pub use descriptor::{Descriptor, Feature, FlashMode, InterfaceType, Mapping};
pub use error::{FirmwareError, MissingFile, NoMatch, Rejected};
pub use libvirt::{LibvirtFirmware, LibvirtLoader, LibvirtNvram, LoaderType};
pub use search::{Catalog, CatalogEntry, DescriptorSummary, HiddenName, SearchPaths};
pub use select::{select, Confidential, Interface, MappingKind, Requirements, Selection};

use domain_model::{Architecture, Domain, Hypervisor};
use serde::Serialize;
use std::fmt;

/// Where to look for firmware, for both backends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FirmwareConfig {
    /// QEMU firmware descriptor directories (libvirt backend).
    pub qemu: SearchPaths,
    /// Cloud Hypervisor's firmware files.
    pub cloud_hypervisor: ChFirmwarePaths,
    /// Machine type for descriptor matching; the architecture's default alias
    /// (`q35`, `virt`) when `None`.
    pub machine: Option<String>,
}

impl Default for FirmwareConfig {
    /// QEMU's standard directories (from the environment) and the pod
    /// image's Cloud Hypervisor paths.
    fn default() -> Self {
        FirmwareConfig {
            qemu: SearchPaths::from_env(),
            cloud_hypervisor: ChFirmwarePaths::default(),
            machine: None,
        }
    }
}

impl FirmwareConfig {
    /// The launcher's configuration: `descriptor_dirs` (highest precedence
    /// first) replace QEMU's standard directories when not empty; otherwise
    /// the standard ones, with the user's config directory only for a
    /// libvirt session daemon (`libvirt_uri` is `qemu:///session`), as
    /// libvirt itself reads them. `ch_dir` holds Cloud Hypervisor's files
    /// under their standard names ([`ChFirmwarePaths::under_dir`]).
    pub fn for_launcher(
        descriptor_dirs: Vec<std::path::PathBuf>,
        ch_dir: Option<&std::path::Path>,
        libvirt_uri: &str,
    ) -> Self {
        let qemu = if descriptor_dirs.is_empty() {
            SearchPaths::standard(is_session_uri(libvirt_uri))
        } else {
            SearchPaths::new(descriptor_dirs)
        };
        FirmwareConfig {
            qemu,
            cloud_hypervisor: ch_dir.map(ChFirmwarePaths::under_dir).unwrap_or_default(),
            machine: None,
        }
    }
}

/// Whether a libvirt URI names a per-user session daemon
/// (`qemu:///session`, `qemu+unix:///session?socket=...`).
pub fn is_session_uri(uri: &str) -> bool {
    let path = uri
        .split_once("://")
        .map(|(_, rest)| rest.split_once('/').map(|(_, p)| p).unwrap_or(""))
        .unwrap_or("");
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.trim_end_matches('/') == "session"
}

/// What the choice is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The VM starts: every file must exist.
    Run,
    /// `render`/`validate`: missing files are warnings, and when nothing on
    /// this host fits, the pod image's expected firmware stands in.
    DryRun,
}

/// The firmware decision for `domain` for `purpose`: for a run, only what
/// this host has ([`Choice::require_present`] passed); for a dry run, what
/// it has or else what the pod image would have ([`Choice::warnings`] say
/// which).
pub fn choose(
    domain: &Domain,
    config: &FirmwareConfig,
    purpose: Purpose,
) -> Result<Choice, FirmwareError> {
    match purpose {
        Purpose::Run => {
            let choice = choose_for_domain(domain, config)?;
            choice.require_present()?;
            Ok(choice)
        }
        Purpose::DryRun => choose_inner(domain, config, true),
    }
}

/// The firmware decision for one Domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "backend")]
pub enum Choice {
    /// The VM boots without a firmware file from this crate.
    NotNeeded {
        reason: String,
    },
    /// A QEMU firmware descriptor, for the libvirt backend.
    Qemu(Selection),
    CloudHypervisor(ChSelection),
}

impl Choice {
    /// Missing files, as warnings for a dry run.
    pub fn warnings(&self) -> Vec<String> {
        match self {
            Choice::NotNeeded { .. } => Vec::new(),
            Choice::Qemu(s) => s.warnings(),
            Choice::CloudHypervisor(s) => s.warnings(),
        }
    }

    /// Before running: every chosen file must exist.
    pub fn require_present(&self) -> Result<(), FirmwareError> {
        match self {
            Choice::NotNeeded { .. } => Ok(()),
            Choice::Qemu(s) => s.require_present(),
            Choice::CloudHypervisor(s) => s.require_present(),
        }
    }
}

impl fmt::Display for Choice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Choice::NotNeeded { reason } => writeln!(f, "no firmware file: {reason}"),
            Choice::Qemu(s) => write!(f, "{s}"),
            Choice::CloudHypervisor(s) => write!(f, "{s}"),
        }
    }
}

/// Everything `ch-launcher firmware list` shows: the visible QEMU
/// descriptors (after overrides) and Cloud Hypervisor's configured files.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FirmwareListing {
    /// Rendered as text by `Display`; JSON carries the summaries instead.
    #[serde(skip)]
    pub qemu: Catalog,
    /// Descriptor directories, highest precedence first.
    pub qemu_searched: Vec<std::path::PathBuf>,
    /// In candidate order.
    pub qemu_descriptors: Vec<DescriptorSummary>,
    pub qemu_hidden: Vec<HiddenName>,
    pub qemu_problems: Vec<String>,
    pub cloud_hypervisor: Vec<ChFirmwareFile>,
}

/// Reads both backends' firmware as configured.
pub fn list(config: &FirmwareConfig) -> FirmwareListing {
    let qemu = Catalog::load(&config.qemu);
    FirmwareListing {
        qemu_searched: qemu.searched.clone(),
        qemu_descriptors: qemu.summaries(),
        qemu_hidden: qemu.hidden.clone(),
        qemu_problems: qemu.problems.clone(),
        qemu,
        cloud_hypervisor: config.cloud_hypervisor.list(),
    }
}

impl fmt::Display for FirmwareListing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.qemu)?;
        writeln!(f, "\nCloud Hypervisor firmware:")?;
        for file in &self.cloud_hypervisor {
            writeln!(f, "  {file}")?;
        }
        Ok(())
    }
}

/// Chooses the firmware for `domain` on the backend it names
/// (`domain.hypervisor`). Libvirt: direct kernel boot, legacy BIOS without
/// launch security and s390x need no descriptor (QEMU's built-in firmware
/// serves them, as KubeVirt's domains rely on); everything else is matched
/// against the QEMU descriptors. Cloud Hypervisor: see
/// [`select_cloud_hypervisor`].
pub fn choose_for_domain(
    domain: &Domain,
    config: &FirmwareConfig,
) -> Result<Choice, FirmwareError> {
    choose_inner(domain, config, false)
}

fn choose_inner(
    domain: &Domain,
    config: &FirmwareConfig,
    allow_expected: bool,
) -> Result<Choice, FirmwareError> {
    let Some(mut req) = Requirements::from_domain(domain) else {
        return Ok(Choice::NotNeeded {
            reason: "direct kernel boot: the hypervisor loads the kernel itself".to_owned(),
        });
    };
    if let Some(m) = &config.machine {
        req = req.with_machine(m.clone());
    }
    match domain.hypervisor {
        Hypervisor::CloudHypervisor => {
            let selection = if allow_expected {
                select_cloud_hypervisor_or_expected(&req, &config.cloud_hypervisor)?
            } else {
                select_cloud_hypervisor(&req, &config.cloud_hypervisor)?
            };
            Ok(Choice::CloudHypervisor(selection))
        }
        Hypervisor::Libvirt => {
            if domain.architecture == Architecture::S390x {
                return Ok(Choice::NotNeeded {
                    reason: "s390x: QEMU loads its built-in s390-ccw firmware".to_owned(),
                });
            }
            if req.interface == Interface::Bios && req.confidential.is_none() {
                return Ok(Choice::NotNeeded {
                    reason:
                        "legacy BIOS: QEMU loads its built-in SeaBIOS, libvirt needs no <loader>"
                            .to_owned(),
                });
            }
            let catalog = Catalog::load(&config.qemu);
            match select(&catalog, &req) {
                Ok(selection) => Ok(Choice::Qemu(selection)),
                Err(no_match) if allow_expected => match expected::qemu(&req, no_match.clone()) {
                    Some(selection) => Ok(Choice::Qemu(selection)),
                    None => Err(no_match.into()),
                },
                Err(no_match) => Err(no_match.into()),
            }
        }
    }
}
