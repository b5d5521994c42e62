//! Selection against the real descriptors and images of Debian's `ovmf`
//! package installed on this machine (`/usr/share/qemu/firmware`,
//! `/usr/share/OVMF`). Each test prints a `SKIP:` line and passes when the
//! package is not installed.

mod common;

use common::*;
use domain_model::{Hypervisor, LaunchSecurity};
use firmware::{
    select, Catalog, Feature, LibvirtFirmware, LoaderType, MappingKind, Requirements, SearchPaths,
};
use std::path::Path;

const PLAIN: &str = "/usr/share/qemu/firmware/60-edk2-x86_64.json";

/// The system directories only, so a developer's own overrides in
/// `~/.config/qemu/firmware` cannot change the outcome.
fn debian_catalog(test: &str) -> Option<Catalog> {
    if !Path::new(PLAIN).is_file() {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            (format!("SKIP: {test}: Debian's ovmf package is not installed ({PLAIN} absent)")
                + "\n")
                .as_bytes(),
        );
        return None;
    }
    Some(Catalog::load(&SearchPaths::under_root(Path::new("/"))))
}

fn req(d: &domain_model::Domain) -> Requirements {
    Requirements::from_domain(d).expect("needs firmware")
}

#[test]
fn debian_descriptors_all_parse_and_name_existing_files() {
    let Some(c) = debian_catalog("debian_descriptors_all_parse_and_name_existing_files") else {
        return;
    };
    let summaries = c.summaries();
    assert!(summaries.len() >= 3, "{c}");
    for s in &summaries {
        assert_eq!(s.error, None, "{s}");
        assert!(s.missing_files.is_empty(), "{s}");
    }
}

#[test]
fn debian_plain_efi_q35_picks_ovmf_code_4m_with_existing_vars_template() {
    let Some(c) =
        debian_catalog("debian_plain_efi_q35_picks_ovmf_code_4m_with_existing_vars_template")
    else {
        return;
    };
    let d = domain(Hypervisor::Libvirt, efi(false));
    let s = select(&c, &req(&d)).expect("plain EFI");
    assert_eq!(s.descriptor_path, Path::new(PLAIN));
    assert_eq!(s.executable, Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd"));
    assert_eq!(s.mapping, MappingKind::FlashSplit);
    let vars = s
        .nvram_template
        .clone()
        .expect("split flash has a template");
    assert_eq!(vars, Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd"));
    assert!(vars.is_file());
    s.require_present().expect("Debian ships the files");

    // What the libvirt backend renders for this EFI guest: files that exist.
    match LibvirtFirmware::from_selection(
        &s,
        "default_vm1",
        Path::new("/var/lib/libvirt/qemu/nvram"),
    ) {
        LibvirtFirmware::Loader {
            loader,
            nvram,
            smm,
            secure_boot,
            ..
        } => {
            assert_eq!(loader.loader_type, LoaderType::Pflash);
            assert!(loader.path.is_file() && loader.readonly && !loader.secure);
            assert!(!smm && !secure_boot);
            let nvram = nvram.expect("NVRAM");
            assert!(nvram.template.is_file());
            assert_eq!(
                nvram.path,
                Path::new("/var/lib/libvirt/qemu/nvram/default_vm1_VARS.fd")
            );
        }
        other => panic!("expected a loader, got {other:?}"),
    }
}

#[test]
fn debian_secure_boot_picks_ms_enrolled_image() {
    let Some(c) = debian_catalog("debian_secure_boot_picks_ms_enrolled_image") else {
        return;
    };
    let d = domain(Hypervisor::Libvirt, efi(true)).with_smm();
    let s = select(&c, &req(&d)).expect("secure boot");
    assert_eq!(
        s.descriptor_path,
        Path::new("/usr/share/qemu/firmware/40-edk2-x86_64-secure-enrolled.json")
    );
    assert_eq!(
        s.executable,
        Path::new("/usr/share/OVMF/OVMF_CODE_4M.ms.fd")
    );
    assert_eq!(
        s.nvram_template.as_deref(),
        Some(Path::new("/usr/share/OVMF/OVMF_VARS_4M.ms.fd"))
    );
    assert!(s.requires_smm() && s.secure_boot() && s.enrolled_keys());
    s.require_present().expect("Debian ships the files");

    let mut r = req(&d);
    r.enrolled_keys = Some(false);
    let s = select(&c, &r).expect("secure boot, empty varstore");
    assert_eq!(
        s.executable,
        Path::new("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
    );
}

#[test]
fn debian_sev_picks_an_amd_sev_image_without_secure_boot() {
    let Some(c) = debian_catalog("debian_sev_picks_an_amd_sev_image_without_secure_boot") else {
        return;
    };
    let d = domain(Hypervisor::Libvirt, efi(false)).with_launch_security(sev(false));
    let s = select(&c, &req(&d)).expect("SEV");
    assert!(s.features.contains(&Feature::AmdSev), "{s}");
    assert!(!s.secure_boot());
    // Debian bookworm's ovmf has no separate OVMF.amdsev.fd: its plain 4M
    // image is the one built with SEV support.
    assert_eq!(s.executable, Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd"));
    s.require_present().expect("Debian ships the files");
}

#[test]
fn debian_has_no_sev_es_snp_or_tdx_image_and_says_what_each_lacks() {
    let Some(c) = debian_catalog("debian_has_no_sev_es_snp_or_tdx_image_and_says_what_each_lacks")
    else {
        return;
    };
    let has = |f: Feature| {
        c.entries
            .iter()
            .any(|e| e.descriptor.as_ref().is_ok_and(|d| d.has_feature(&f)))
    };
    let cases = [
        (sev(true), Feature::AmdSevEs, "AMD SEV-ES needs amd-sev-es"),
        (snp(), Feature::AmdSevSnp, "AMD SEV-SNP needs amd-sev-snp"),
        (
            LaunchSecurity::Tdx,
            Feature::IntelTdx,
            "Intel TDX needs intel-tdx",
        ),
    ];
    for (ls, feature, lack) in cases {
        if has(feature.clone()) {
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                (format!(
                    "SKIP: a descriptor here has {feature}; the no-match case does not apply"
                ) + "\n")
                    .as_bytes(),
            );
            continue;
        }
        let d = domain(Hypervisor::Libvirt, efi(false)).with_launch_security(ls);
        let err = select(&c, &req(&d)).expect_err(lack);
        assert_eq!(err.rejected.len(), c.entries.len(), "{err}");
        for r in &err.rejected {
            assert!(
                r.lacks.iter().any(|l| l == lack),
                "{}: {:?}",
                r.path.display(),
                r.lacks
            );
        }
    }
}
