//! Cloud Hypervisor firmware choice: which file each kind of Domain boots
//! from, and the refusals for what Cloud Hypervisor cannot do.

mod common;

use common::*;
use domain_model::{Boot, Hypervisor, LaunchSecurity};
use firmware::{
    select_cloud_hypervisor, ChFirmwareKind, ChFirmwarePaths, EfiFirmware, FirmwareError,
    Requirements,
};
use std::path::Path;

fn req(d: &domain_model::Domain) -> Requirements {
    Requirements::from_domain(d).expect("needs firmware")
}

fn ch(boot: Boot) -> domain_model::Domain {
    domain(Hypervisor::CloudHypervisor, boot)
}

fn touch(dir: &Path, name: &str) {
    std::fs::write(dir.join(name), b"fw").expect("write");
}

#[test]
fn pod_image_defaults_are_fixed_paths() {
    let p = ChFirmwarePaths::default();
    assert_eq!(
        p.cloudhv_efi,
        Path::new("/usr/share/cloud-hypervisor/CLOUDHV.fd")
    );
    assert_eq!(
        p.rust_hypervisor_firmware,
        Path::new("/usr/share/cloud-hypervisor/hypervisor-fw")
    );
    assert_eq!(p.tdvf, Path::new("/usr/share/cloud-hypervisor/tdvf.fd"));
    assert_eq!(p.igvm_dir, Path::new("/usr/share/cloud-hypervisor"));
    assert_eq!(p.efi, EfiFirmware::CloudHv);
}

#[test]
fn efi_boot_gets_cloudhv_or_configured_rust_hypervisor_firmware() {
    let t = tempfile::tempdir().expect("tempdir");
    touch(t.path(), "CLOUDHV.fd");
    let mut paths = ChFirmwarePaths::under_dir(t.path());
    let s = select_cloud_hypervisor(&req(&ch(efi(false))), &paths).expect("efi");
    assert_eq!(s.kind, ChFirmwareKind::CloudHvEfi);
    assert_eq!(s.path, t.path().join("CLOUDHV.fd"));
    assert_eq!(s.kind.payload_field(), "firmware");
    assert!(s.warnings().is_empty());
    s.require_present().expect("present");

    paths.efi = EfiFirmware::RustHypervisorFirmware;
    let s = select_cloud_hypervisor(&req(&ch(efi(false))), &paths).expect("rhf");
    assert_eq!(s.kind, ChFirmwareKind::RustHypervisorFirmware);
    assert_eq!(s.path, t.path().join("hypervisor-fw"));
    // Absent: a dry run still gets the choice, with a warning; run refuses.
    assert_eq!(s.warnings().len(), 1, "{:?}", s.warnings());
    assert!(matches!(
        s.require_present(),
        Err(FirmwareError::Missing { .. })
    ));
}

#[test]
fn efi_boot_falls_back_to_rust_hypervisor_firmware_when_cloudhv_is_absent() {
    let t = tempfile::tempdir().expect("tempdir");
    let paths = ChFirmwarePaths::under_dir(t.path());
    // Neither: CLOUDHV.fd is named (and missing) for the error.
    let s = select_cloud_hypervisor(&req(&ch(efi(false))), &paths).expect("efi");
    assert_eq!(s.kind, ChFirmwareKind::CloudHvEfi);
    assert!(s.require_present().is_err());
    touch(t.path(), "hypervisor-fw");
    let s = select_cloud_hypervisor(&req(&ch(efi(false))), &paths).expect("efi");
    assert_eq!(s.kind, ChFirmwareKind::RustHypervisorFirmware);
    assert!(
        s.reasons[0].contains("CLOUDHV.fd is not on this host"),
        "{:?}",
        s.reasons
    );
    s.require_present().expect("present");
}

#[test]
fn bios_boot_gets_rust_hypervisor_firmware_with_the_reason() {
    let t = tempfile::tempdir().expect("tempdir");
    touch(t.path(), "hypervisor-fw");
    touch(t.path(), "CLOUDHV.fd");
    let paths = ChFirmwarePaths::under_dir(t.path());
    let s = select_cloud_hypervisor(&req(&ch(Boot::Bios)), &paths).expect("bios");
    assert_eq!(s.kind, ChFirmwareKind::RustHypervisorFirmware);
    assert_eq!(s.path, t.path().join("hypervisor-fw"));
    assert!(s.reasons[0].starts_with("BIOS boot: Cloud Hypervisor has no legacy BIOS"));
    assert!(s.reasons[0].contains("an MBR-only disk does not boot"));
}

#[test]
fn tdx_gets_tdvf_but_not_with_direct_kernel_boot() {
    let t = tempfile::tempdir().expect("tempdir");
    let paths = ChFirmwarePaths::under_dir(t.path());
    let d = ch(efi(false)).with_launch_security(LaunchSecurity::Tdx);
    let s = select_cloud_hypervisor(&req(&d), &paths).expect("tdx");
    assert_eq!(s.kind, ChFirmwareKind::Tdvf);
    assert_eq!(s.path, t.path().join("tdvf.fd"));

    let d = ch(kernel_boot()).with_launch_security(LaunchSecurity::Tdx);
    let err = select_cloud_hypervisor(&req(&d), &paths).expect_err("tdx + kernel");
    assert!(
        err.to_string()
            .contains("refuses a directly booted kernel next to TDVF"),
        "{err}"
    );
}

#[test]
fn sev_snp_gets_first_igvm_by_name_or_the_configured_one() {
    let t = tempfile::tempdir().expect("tempdir");
    touch(t.path(), "b-svsm.igvm");
    touch(t.path(), "a-ovmf.igvm");
    touch(t.path(), "CLOUDHV.fd");
    let mut paths = ChFirmwarePaths::under_dir(t.path());
    let d = ch(efi(false)).with_launch_security(snp());
    let s = select_cloud_hypervisor(&req(&d), &paths).expect("snp");
    assert_eq!(s.kind, ChFirmwareKind::Igvm);
    assert_eq!(s.kind.payload_field(), "igvm");
    assert_eq!(s.path, t.path().join("a-ovmf.igvm"));
    assert!(
        s.reasons
            .iter()
            .any(|r| r.contains("first of 2 *.igvm files")),
        "{:?}",
        s.reasons
    );

    paths.igvm = Some(t.path().join("b-svsm.igvm"));
    let s = select_cloud_hypervisor(&req(&d), &paths).expect("snp configured");
    assert_eq!(s.path, t.path().join("b-svsm.igvm"));
}

#[test]
fn sev_snp_without_igvm_file_lists_the_directory() {
    let t = tempfile::tempdir().expect("tempdir");
    let paths = ChFirmwarePaths::under_dir(t.path());
    let d = ch(efi(false)).with_launch_security(snp());
    let err = select_cloud_hypervisor(&req(&d), &paths).expect_err("no igvm");
    let text = err.to_string();
    assert!(text.contains("AMD SEV-SNP"), "{text}");
    assert!(
        text.contains(&format!("{}: no *.igvm file there", t.path().display())),
        "{text}"
    );
}

#[test]
fn sev_snp_refuses_direct_kernel_boot() {
    let t = tempfile::tempdir().expect("tempdir");
    touch(t.path(), "x.igvm");
    let d = ch(kernel_boot()).with_launch_security(snp());
    let err = select_cloud_hypervisor(&req(&d), &ChFirmwarePaths::under_dir(t.path()))
        .expect_err("igvm + kernel");
    assert!(
        err.to_string()
            .contains("cannot combine payload.igvm with a directly booted kernel"),
        "{err}"
    );
}

#[test]
fn refuses_what_cloud_hypervisor_firmware_cannot_do() {
    let paths = ChFirmwarePaths::under_dir(Path::new("/nonexistent"));
    let cases: Vec<(domain_model::Domain, &str)> = vec![
        (ch(efi(true)), "has no UEFI Secure Boot"),
        (
            ch(Boot::Efi {
                secure_boot: false,
                persistent: true,
            }),
            "UEFI variables cannot persist (efi.persistent)",
        ),
        (
            ch(efi(false)).with_launch_security(sev(false)),
            "supports AMD SEV-SNP and Intel TDX, not AMD SEV",
        ),
        (
            ch(efi(false)).with_launch_security(sev(true)),
            "not AMD SEV-ES",
        ),
    ];
    for (d, expected) in cases {
        let err = select_cloud_hypervisor(&req(&d), &paths).expect_err(expected);
        let text = err.to_string();
        assert!(text.contains(expected), "{expected:?} not in {text}");
        assert!(text.starts_with("no firmware fits: "), "{text}");
    }
}

#[test]
fn list_reports_presence_of_each_file() {
    let t = tempfile::tempdir().expect("tempdir");
    touch(t.path(), "CLOUDHV.fd");
    touch(t.path(), "snp.igvm");
    let list = ChFirmwarePaths::under_dir(t.path()).list();
    let kinds: Vec<(ChFirmwareKind, bool)> = list.iter().map(|f| (f.kind, f.present)).collect();
    assert_eq!(
        kinds,
        vec![
            (ChFirmwareKind::CloudHvEfi, true),
            (ChFirmwareKind::RustHypervisorFirmware, false),
            (ChFirmwareKind::Tdvf, false),
            (ChFirmwareKind::Igvm, true),
        ]
    );
    assert!(list[2].to_string().ends_with("(MISSING)"), "{}", list[2]);
}
