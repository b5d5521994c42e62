//! What a chosen QEMU firmware means for libvirt domain XML: the facts of
//! `<os><loader>`, `<nvram>` and `<kernel>`, so the libvirt backend renders
//! them without knowing descriptor rules.
//!
//! Only split flash gets an NVRAM: a memory-mapped (`rom`) or stateless image
//! keeps no variables, and giving it `<nvram>` makes QEMU map a second pflash
//! the firmware does not expect.

use crate::select::{MappingKind, Selection};
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoaderType {
    /// `type='pflash'`
    Pflash,
    /// `type='rom'`
    Rom,
}

impl LoaderType {
    pub fn as_str(self) -> &'static str {
        match self {
            LoaderType::Pflash => "pflash",
            LoaderType::Rom => "rom",
        }
    }
}

/// `<loader readonly='yes' secure='..' type='..' stateless='..' format='..'>path</loader>`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LibvirtLoader {
    pub path: PathBuf,
    pub loader_type: LoaderType,
    pub readonly: bool,
    /// `secure='yes'`: pflash writes only from SMM (firmware `requires-smm`).
    pub secure: bool,
    /// `stateless='yes'`: no NVRAM (stateless flash and ROM images).
    pub stateless: bool,
    /// `format='raw'|'qcow2'` for flash; `None` for ROM.
    pub format: Option<String>,
}

/// `<nvram template='..' templateFormat='..' format='..'>path</nvram>`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LibvirtNvram {
    pub template: PathBuf,
    pub template_format: Option<String>,
    /// The per-VM copy libvirt creates from the template.
    pub path: PathBuf,
    pub format: Option<String>,
}

/// The firmware part of `<os>` for one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum LibvirtFirmware {
    Loader {
        loader: LibvirtLoader,
        nvram: Option<LibvirtNvram>,
        /// The domain must have `<features><smm state='on'/></features>`.
        smm: bool,
        /// For `<os firmware='efi'><firmware><feature name='secure-boot' enabled=..>`.
        secure_boot: bool,
        enrolled_keys: bool,
    },
    /// `<os><kernel>path</kernel>`: firmware loaded like a kernel.
    Kernel { path: PathBuf },
}

impl LibvirtFirmware {
    /// The `<loader>`/`<nvram>` facts for `selection`. The per-VM NVRAM is
    /// `<nvram_dir>/<vm_name>_VARS.<ext>`, libvirt's own naming, with the
    /// extension following the template's format; a `/` in `vm_name` is
    /// replaced so the file stays inside `nvram_dir`.
    pub fn from_selection(selection: &Selection, vm_name: &str, nvram_dir: &Path) -> Self {
        let stateless = !selection.has_nvram();
        let (loader_type, format) = match selection.mapping {
            MappingKind::Kernel => {
                return LibvirtFirmware::Kernel {
                    path: selection.executable.clone(),
                }
            }
            MappingKind::FlashSplit | MappingKind::FlashStateless => {
                (LoaderType::Pflash, selection.executable_format.clone())
            }
            MappingKind::Memory => (LoaderType::Rom, None),
        };
        let nvram = match (&selection.mapping, &selection.nvram_template) {
            (MappingKind::FlashSplit, Some(template)) => {
                let ext = match selection.nvram_template_format.as_deref() {
                    Some("qcow2") => "qcow2",
                    _ => "fd",
                };
                let file = format!("{}_VARS.{ext}", vm_name.replace('/', "_"));
                Some(LibvirtNvram {
                    template: template.clone(),
                    template_format: selection.nvram_template_format.clone(),
                    path: nvram_dir.join(file),
                    format: selection.nvram_template_format.clone(),
                })
            }
            _ => None,
        };
        LibvirtFirmware::Loader {
            loader: LibvirtLoader {
                path: selection.executable.clone(),
                loader_type,
                readonly: true,
                secure: selection.requires_smm() && loader_type == LoaderType::Pflash,
                stateless,
                format,
            },
            nvram,
            smm: selection.requires_smm(),
            secure_boot: selection.secure_boot(),
            enrolled_keys: selection.enrolled_keys(),
        }
    }
}
