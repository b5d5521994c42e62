//! The libvirt backend: the same [`Domain`](domain_model::Domain) as libvirt
//! domain XML ([`render`]), run under libvirtd + QEMU ([`driver`]), with
//! libvirt's domain lifecycle events mapped onto the launcher's neutral
//! [`Event`](crate::lifecycle::Event)s ([`events`]).

pub mod cpu;
pub mod driver;
pub mod events;
pub mod launch_security;
pub mod render;
pub mod rpc;
pub mod xml;

pub use driver::{create, LibvirtBackend, LibvirtOptions, DEFAULT_URI};
pub use launch_security::ConfidentialHost;
pub use render::{domain_name, render, RenderContext, RenderError};

use crate::paths::VmPaths;
use domain_model::Domain;

impl LibvirtOptions {
    /// Options for running (or rendering) `domain` under `uri` with the
    /// firmware the firmware crate chose (`firmware::choose`, which also
    /// decided whether missing files are acceptable).
    pub fn for_domain(
        domain: &Domain,
        paths: &VmPaths,
        uri: &str,
        choice: &firmware::Choice,
    ) -> Result<LibvirtOptions, String> {
        let firmware = match choice {
            firmware::Choice::Qemu(selection) => Some(firmware::LibvirtFirmware::from_selection(
                selection,
                &domain_name(domain),
                render::nvram_dir(paths),
            )),
            firmware::Choice::NotNeeded { .. } => None,
            firmware::Choice::CloudHypervisor(_) => {
                return Err("firmware: chose Cloud Hypervisor firmware for a libvirt VM".into())
            }
        };
        Ok(LibvirtOptions {
            uri: uri.to_owned(),
            firmware,
            confidential: ConfidentialHost::default(),
            cpu_quirks: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests;
