//! Dry runs on hosts without the firmware a Domain needs: the pod image's
//! well-known paths stand in, marked as expected and explained, and a run
//! refuses them.

mod common;

use common::{domain, efi, kernel_boot, sev, snp};
use domain_model::{Hypervisor, LaunchSecurity};
use firmware::{
    choose, is_session_uri, ChFirmwareKind, ChFirmwarePaths, Choice, FirmwareConfig, FirmwareError,
    MappingKind, Purpose, SearchPaths,
};
use std::path::{Path, PathBuf};

/// A host with no QEMU descriptors and an empty Cloud Hypervisor directory.
fn bare_host(dir: &Path) -> FirmwareConfig {
    FirmwareConfig {
        qemu: SearchPaths::new(vec![dir.join("descriptors")]),
        cloud_hypervisor: ChFirmwarePaths::under_dir(dir),
        machine: None,
    }
}

#[test]
fn dry_run_renders_kubevirts_ovmf_paths_for_each_confidential_kind() {
    let t = tempfile::tempdir().expect("tempdir");
    let config = bare_host(t.path());
    let cases = [
        (
            sev(false),
            "/usr/share/OVMF/OVMF_CODE.cc.fd",
            MappingKind::FlashSplit,
        ),
        (
            sev(true),
            "/usr/share/OVMF/OVMF_CODE.cc.fd",
            MappingKind::FlashSplit,
        ),
        (snp(), "/usr/share/OVMF/OVMF.amdsev.fd", MappingKind::Memory),
        (
            LaunchSecurity::Tdx,
            "/usr/share/OVMF/OVMF.inteltdx.fd",
            MappingKind::Memory,
        ),
    ];
    for (ls, executable, mapping) in cases {
        let d = domain(Hypervisor::Libvirt, efi(false)).with_launch_security(ls.clone());
        let choice = choose(&d, &config, Purpose::DryRun).expect("dry run");
        let Choice::Qemu(s) = &choice else {
            panic!("{ls:?}: {choice:?}")
        };
        assert_eq!(s.executable, PathBuf::from(executable), "{ls:?}");
        assert_eq!(s.mapping, mapping, "{ls:?}");
        let not_found = s.expected_not_found.as_ref().expect("marked as expected");
        assert_eq!(not_found.searched, vec![t.path().join("descriptors")]);
        let warnings = choice.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains(executable) && warnings[0].contains("no firmware fits"),
            "{warnings:?}"
        );
        // A run never takes the stand-in: it gets the search's explanation.
        match choose(&d, &config, Purpose::Run) {
            Err(FirmwareError::NoMatch(nm)) => assert_eq!(&nm, not_found),
            other => panic!("{ls:?}: run got {other:?}"),
        }
        assert!(choice.require_present().is_err());
    }
}

#[test]
fn dry_run_keeps_the_error_when_even_the_pod_image_has_nothing_that_fits() {
    let t = tempfile::tempdir().expect("tempdir");
    // Secure Boot with SEV: no firmware anywhere offers both.
    let d = domain(Hypervisor::Libvirt, efi(true)).with_launch_security(sev(false));
    let err = choose(&d, &bare_host(t.path()), Purpose::DryRun).expect_err("impossible");
    assert!(matches!(err, FirmwareError::NoMatch(_)), "{err:?}");
}

#[test]
fn dry_run_prefers_what_the_host_has() {
    let t = tempfile::tempdir().expect("tempdir");
    let dir = t.path().join("descriptors");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(
        dir.join("60-plain.json"),
        r#"{"interface-types": ["uefi"],
            "mapping": {"device": "flash",
                "executable": {"filename": "/host/CODE.fd", "format": "raw"},
                "nvram-template": {"filename": "/host/VARS.fd", "format": "raw"}},
            "targets": [{"architecture": "x86_64", "machines": ["pc-q35-*"]}],
            "features": [], "tags": []}"#,
    )
    .expect("write");
    let d = domain(Hypervisor::Libvirt, efi(false));
    let Choice::Qemu(s) = choose(&d, &bare_host(t.path()), Purpose::DryRun).expect("dry run")
    else {
        panic!("not QEMU")
    };
    assert_eq!(s.executable, PathBuf::from("/host/CODE.fd"));
    assert!(s.expected_not_found.is_none());
}

#[test]
fn cloud_hypervisor_snp_dry_run_names_the_expected_igvm_file() {
    let t = tempfile::tempdir().expect("tempdir");
    let config = bare_host(&t.path().join("absent"));
    let d = domain(Hypervisor::CloudHypervisor, efi(false)).with_launch_security(snp());
    let choice = choose(&d, &config, Purpose::DryRun).expect("dry run");
    let Choice::CloudHypervisor(s) = &choice else {
        panic!("{choice:?}")
    };
    assert_eq!(s.kind, ChFirmwareKind::Igvm);
    assert_eq!(s.path, t.path().join("absent/sev-snp.igvm"));
    assert!(s.expected_not_found.is_some());
    assert!(
        choice.warnings()[0].contains("cannot read"),
        "{:?}",
        choice.warnings()
    );
    assert!(matches!(
        choose(&d, &config, Purpose::Run),
        Err(FirmwareError::NoMatch(_))
    ));
    // What Cloud Hypervisor cannot do at all stays an error in a dry run.
    let kernel = domain(Hypervisor::CloudHypervisor, kernel_boot()).with_launch_security(snp());
    assert!(choose(&kernel, &config, Purpose::DryRun).is_err());
}

#[test]
fn cloud_hypervisor_efi_dry_run_warns_and_run_refuses() {
    let t = tempfile::tempdir().expect("tempdir");
    let config = bare_host(t.path());
    let d = domain(Hypervisor::CloudHypervisor, efi(false));
    let choice = choose(&d, &config, Purpose::DryRun).expect("dry run");
    assert_eq!(choice.warnings().len(), 1);
    assert!(matches!(
        choose(&d, &config, Purpose::Run),
        Err(FirmwareError::Missing { .. })
    ));
}

#[test]
fn session_uris_are_told_from_system_ones() {
    for uri in [
        "qemu:///session",
        "qemu+unix:///session?socket=/run/user/1000/libvirt/virtqemud-sock",
        "qemu+ssh://host/session",
    ] {
        assert!(is_session_uri(uri), "{uri}");
    }
    for uri in [
        "qemu:///system",
        "qemu+ssh://host/system",
        "test:///default",
        "qemu:///",
    ] {
        assert!(!is_session_uri(uri), "{uri}");
    }
}

#[test]
fn launcher_config_reads_the_user_directory_only_for_session_daemons() {
    let system = FirmwareConfig::for_launcher(vec![], None, "qemu:///system");
    assert_eq!(
        system.qemu.dirs,
        vec![
            PathBuf::from("/etc/qemu/firmware"),
            PathBuf::from("/usr/share/qemu/firmware")
        ]
    );
    let session = FirmwareConfig::for_launcher(vec![], None, "qemu:///session");
    if std::env::var_os("HOME").is_some() || std::env::var_os("XDG_CONFIG_HOME").is_some() {
        assert_eq!(session.qemu.dirs.len(), 3);
        assert!(session.qemu.dirs[0].ends_with("qemu/firmware"));
    }
    let explicit = FirmwareConfig::for_launcher(
        vec!["/a".into(), "/b".into()],
        Some(Path::new("/ch")),
        "qemu:///session",
    );
    assert_eq!(
        explicit.qemu.dirs,
        vec![PathBuf::from("/a"), PathBuf::from("/b")]
    );
    assert_eq!(
        explicit.cloud_hypervisor.cloudhv_efi,
        PathBuf::from("/ch/CLOUDHV.fd")
    );
    assert_eq!(explicit.cloud_hypervisor.igvm_dir, PathBuf::from("/ch"));
}
