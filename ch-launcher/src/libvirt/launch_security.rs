//! Confidential launches in libvirt domain XML, as KubeVirt's virt-launcher
//! renders them: AMD SEV and SEV-ES (`<launchSecurity type='sev'>`), SEV-SNP
//! (`type='sev-snp'`), Intel TDX (`type='tdx'`, with the PMU off) and IBM Z
//! Secure Execution (no element; the guest image switches itself into
//! protected mode).
//!
//! SEV guests and Secure Execution guests keep their memory from the
//! hypervisor, so every virtio device must use the IOMMU-aware DMA path
//! (`iommu='on'`), otherwise the guest cannot see the devices at all. TDX
//! guests get bounce buffers from the guest kernel and need no such flag.
//!
//! The C-bit position and the physical address bits lost to encryption are
//! the host's (from `virsh domcapabilities` or the native probe, see
//! [`crate::host`]), never constants: a wrong value makes QEMU refuse to start
//! or the guest fault early.
//!
//! [`check`] finds what cannot be rendered, [`apply`] changes the document;
//! `render::build` calls both.

use super::xml::{DeviceDriver, DomainXml, LaunchSecurityXml, QuoteGenerationService, State};
use crate::host::SevParameters;
use domain_model::{Architecture, Boot, Domain, LaunchSecurity, SpecErrors};
use std::path::PathBuf;

/// Host facts a confidential launch needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfidentialHost {
    /// The host's SEV parameters; required for SEV, SEV-ES and SEV-SNP.
    pub sev: Option<SevParameters>,
    /// The TDX Quote Generation Service socket the guest's attestation quotes
    /// go to; rendered only when configured.
    pub tdx_quote_generation_socket: Option<PathBuf>,
}

const BASE: &str = "spec.domain.launchSecurity";

/// AMD SEV API, guest policy: debugging the guest is forbidden.
const SEV_POLICY_NO_DEBUG: u32 = 1 << 0;
/// AMD SEV API, guest policy: the vCPU state is encrypted too (SEV-ES).
const SEV_POLICY_ENCRYPTED_STATE: u32 = 1 << 2;
/// SEV-SNP ABI, guest policy: SMT is allowed.
const SNP_POLICY_SMT: u64 = 1 << 16;
/// SEV-SNP ABI, guest policy: bit 17 is reserved and must be one.
const SNP_POLICY_RESERVED: u64 = 1 << 17;

/// The SEV policy word KubeVirt uses: never debuggable, plus SEV-ES when
/// the vCPU state is encrypted.
pub fn sev_policy(encrypted_state: bool) -> u32 {
    if encrypted_state {
        SEV_POLICY_NO_DEBUG | SEV_POLICY_ENCRYPTED_STATE
    } else {
        SEV_POLICY_NO_DEBUG
    }
}

/// The SEV-SNP policy KubeVirt uses (QEMU's default): SMT allowed.
pub fn snp_policy() -> u64 {
    SNP_POLICY_SMT | SNP_POLICY_RESERVED
}

/// The spec field a launch-security kind is set at.
fn kind_path(ls: &LaunchSecurity) -> String {
    match ls {
        LaunchSecurity::Sev { .. } => format!("{BASE}.sev"),
        // SEV-SNP may be `snp: {}` or `sev.secureNestedPaging`; Secure
        // Execution is the empty `launchSecurity: {}`.
        LaunchSecurity::SevSnp { .. } | LaunchSecurity::SecureExecution => BASE.to_string(),
        LaunchSecurity::Tdx => format!("{BASE}.tdx"),
    }
}

/// Everything about `domain`'s launch security this backend cannot render.
pub fn check(domain: &Domain, host: &ConfidentialHost, errors: &mut SpecErrors) {
    let Some(ls) = &domain.launch_security else {
        return;
    };
    let path = kind_path(ls);
    let name = crate::host::launch_security_name(ls);
    let sev_family = matches!(ls, LaunchSecurity::Sev { .. } | LaunchSecurity::SevSnp { .. });

    if sev_family && host.sev.is_none() {
        errors.push(
            &path,
            format!(
                "{name} needs the host's SEV parameters (cbitpos, reducedPhysBits), but the \
                 host capabilities show no SEV; run on an SEV host or give the domain \
                 capabilities recorded on one (--domcapabilities)"
            ),
        );
    }
    match ls {
        LaunchSecurity::SecureExecution => {
            if domain.architecture != Architecture::S390x {
                errors.push(
                    &path,
                    "IBM Z Secure Execution needs spec.architecture: s390x",
                );
            }
        }
        _ => {
            if domain.architecture != Architecture::Amd64 {
                errors.push(&path, format!("{name} needs spec.architecture: amd64"));
            }
            // The firmware measures (SEV) or is (TDX, SNP) the guest's root
            // of trust; without it there is nothing to launch.
            if !matches!(domain.boot, Boot::Efi { .. }) {
                errors.push(
                    &path,
                    format!(
                        "{name} needs EFI firmware: set spec.domain.firmware.bootloader.efi"
                    ),
                );
            }
        }
    }
    let encrypted_state = match ls {
        LaunchSecurity::Sev {
            encrypted_state, ..
        } => *encrypted_state,
        LaunchSecurity::SevSnp { .. } | LaunchSecurity::Tdx => true,
        LaunchSecurity::SecureExecution => false,
    };
    if encrypted_state && domain.features.smm {
        errors.push(
            "spec.domain.features.smm",
            format!("{name} guests cannot use SMM: their vCPU state is encrypted"),
        );
    }
    if matches!(ls, LaunchSecurity::Tdx) && domain.cpu.max_vcpus() > domain.cpu.vcpus() {
        errors.push(
            "spec.domain.cpu.maxSockets",
            "Intel TDX guests cannot hotplug vCPUs: every vCPU is measured before the guest \
             starts",
        );
    }
    if !matches!(ls, LaunchSecurity::SecureExecution)
        && domain
            .memory
            .max_guest
            .is_some_and(|max| max > domain.memory.guest)
    {
        errors.push(
            "spec.domain.memory.maxGuest",
            format!(
                "memory hotplug (virtio-mem) does not work with {name}: QEMU cannot discard \
                 encrypted guest memory"
            ),
        );
    }
    if let LaunchSecurity::SevSnp {
        host_data: Some(data),
    } = ls
    {
        if let Err(reason) = host_data_base64(data) {
            errors.push(format!("{BASE}.snp.hostData"), reason);
        }
    }
}

/// Adds the launch-security element and the device flags to a document
/// built for `domain`. Call after [`check`] found nothing.
pub fn apply(domain: &Domain, host: &ConfidentialHost, doc: &mut DomainXml) {
    let Some(ls) = &domain.launch_security else {
        return;
    };
    let cbitpos = host.sev.map(|s| s.cbitpos);
    let reduced_phys_bits = host.sev.map(|s| s.reduced_phys_bits);
    doc.launch_security = match ls {
        LaunchSecurity::Sev {
            encrypted_state,
            dh_cert,
            session,
            attestation: _,
        } => Some(LaunchSecurityXml {
            cbitpos,
            reduced_phys_bits,
            policy: Some(format!("0x{:04x}", sev_policy(*encrypted_state))),
            dh_cert: dh_cert.clone(),
            session: session.clone(),
            ..LaunchSecurityXml::of_kind("sev")
        }),
        LaunchSecurity::SevSnp { host_data } => Some(LaunchSecurityXml {
            cbitpos,
            reduced_phys_bits,
            policy: Some(format!("0x{:08x}", snp_policy())),
            host_data: host_data
                .as_deref()
                .and_then(|data| host_data_base64(data).ok()),
            ..LaunchSecurityXml::of_kind("sev-snp")
        }),
        LaunchSecurity::Tdx => Some(LaunchSecurityXml {
            quote_generation_service: host.tdx_quote_generation_socket.as_ref().map(|p| {
                QuoteGenerationService {
                    path: p.to_string_lossy().into_owned(),
                }
            }),
            ..LaunchSecurityXml::of_kind("tdx")
        }),
        // KubeVirt leaves the element out: libvirt's `s390-pv` type only
        // turns on the IOMMU flags below, and it fails in a privileged pod.
        LaunchSecurity::SecureExecution => None,
    };
    if matches!(ls, LaunchSecurity::Tdx) {
        // TDX does not virtualize the PMU; QEMU refuses a TD with it on.
        doc.features.pmu = Some(State { state: "off" });
    }
    if matches!(ls, LaunchSecurity::Tdx) {
        return;
    }
    let on = || Some(DeviceDriver { iommu: "on" });
    let devices = &mut doc.devices;
    for disk in &mut devices.disk {
        if disk.target.bus == "virtio" {
            disk.driver.iommu = Some("on");
        }
    }
    for controller in &mut devices.controller {
        if controller.model.starts_with("virtio") {
            controller.driver = on();
        }
    }
    for input in &mut devices.input {
        if input.bus == "virtio" {
            input.driver = on();
        }
    }
    for rng in &mut devices.rng {
        if rng.model.starts_with("virtio") {
            rng.driver = on();
        }
    }
    if devices.memballoon.model.starts_with("virtio") {
        devices.memballoon.driver = on();
    }
}

/// libvirt takes SEV-SNP host data as base64 of its 32 bytes; the spec (and
/// Cloud Hypervisor) as 64 hexadecimal characters.
fn host_data_base64(hex: &str) -> Result<String, String> {
    use base64::Engine;
    if let Some((i, c)) = hex.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        return Err(format!(
            "host data must be 64 hexadecimal characters: {c:?} at position {i} is not one"
        ));
    }
    if hex.len() != 64 {
        return Err(format!(
            "host data must be 64 hexadecimal characters (32 bytes), got {}",
            hex.len()
        ));
    }
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect();
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sev_policies_match_kubevirt() {
        assert_eq!(sev_policy(false), 0x1);
        assert_eq!(sev_policy(true), 0x5);
        assert_eq!(snp_policy(), 0x30000);
    }

    #[test]
    fn host_data_hex_becomes_base64_of_its_bytes() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(
            host_data_base64(&hex).unwrap(),
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAP8="
        );
        assert!(host_data_base64(&"ab".repeat(31)).unwrap_err().contains("got 62"));
        assert!(host_data_base64(&format!("{}zz", "ab".repeat(31)))
            .unwrap_err()
            .contains("position 62"));
    }
}
