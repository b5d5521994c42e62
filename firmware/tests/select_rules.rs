//! Descriptor matching on synthesized descriptor trees: every rule of
//! QEMU's interop format and libvirt's selection, one test each.

mod common;

use common::*;
use domain_model::{Hypervisor, LaunchSecurity};
use firmware::{
    choose_for_domain, select, Catalog, ChFirmwarePaths, Choice, FirmwareConfig, FirmwareError,
    Interface, LibvirtFirmware, LoaderType, MappingKind, Requirements,
};
use std::path::PathBuf;

/// Debian's three OVMF descriptors, pointing at files that exist.
fn debian_like(t: &Tree) {
    let code = t.image("CODE.fd");
    let sb_code = t.image("CODE.secboot.fd");
    let vars = t.image("VARS.fd");
    let ms_vars = t.image("VARS.ms.fd");
    t.write(
        "share",
        "40-secure-enrolled.json",
        &descriptor(
            &split(&sb_code, &ms_vars),
            &["pc-q35-*"],
            &[
                "acpi-s3",
                "amd-sev",
                "enrolled-keys",
                "requires-smm",
                "secure-boot",
                "verbose-dynamic",
            ],
        ),
    );
    t.write(
        "share",
        "50-secure.json",
        &descriptor(
            &split(&sb_code, &vars),
            &["pc-q35-*"],
            &["acpi-s3", "amd-sev", "requires-smm", "secure-boot"],
        ),
    );
    t.write(
        "share",
        "60-plain.json",
        &descriptor(
            &split(&code, &vars),
            &["pc-i440fx-*", "pc-q35-*"],
            &["acpi-s3", "amd-sev", "verbose-dynamic"],
        ),
    );
}

fn req(d: &domain_model::Domain) -> Requirements {
    Requirements::from_domain(d).expect("needs firmware")
}

#[test]
fn plain_efi_skips_secure_boot_images_and_picks_split_flash() {
    let t = Tree::new();
    debian_like(&t);
    let d = domain(Hypervisor::Libvirt, efi(false));
    let s = select(&t.catalog(), &req(&d)).expect("match");
    assert_eq!(s.descriptor_path, t.dir("share").join("60-plain.json"));
    assert_eq!(s.mapping, MappingKind::FlashSplit);
    assert_eq!(s.executable, t.dir("images").join("CODE.fd"));
    assert_eq!(s.nvram_template, Some(t.dir("images").join("VARS.fd")));
    assert_eq!(s.passed_over.len(), 2);
    assert!(s.passed_over[0]
        .lacks
        .iter()
        .any(|l| l.contains("has secure-boot")));
    assert!(
        s.reasons.iter().any(|r| r.contains("matches pc-q35-*")),
        "{:?}",
        s.reasons
    );
    assert!(s.warnings().is_empty());
    s.require_present().expect("files exist");
}

#[test]
fn secure_boot_picks_enrolled_keys_when_smm_is_enabled() {
    let t = Tree::new();
    debian_like(&t);
    let d = domain(Hypervisor::Libvirt, efi(true)).with_smm();
    let s = select(&t.catalog(), &req(&d)).expect("match");
    assert_eq!(
        s.descriptor_path,
        t.dir("share").join("40-secure-enrolled.json")
    );
    assert!(s.secure_boot() && s.enrolled_keys() && s.requires_smm());
}

#[test]
fn secure_boot_without_enrolled_keys_picks_empty_varstore() {
    let t = Tree::new();
    debian_like(&t);
    let d = domain(Hypervisor::Libvirt, efi(true)).with_smm();
    let mut r = req(&d);
    r.enrolled_keys = Some(false);
    let s = select(&t.catalog(), &r).expect("match");
    assert_eq!(s.descriptor_path, t.dir("share").join("50-secure.json"));
}

#[test]
fn secure_boot_without_smm_fails_naming_requires_smm() {
    let t = Tree::new();
    debian_like(&t);
    let d = domain(Hypervisor::Libvirt, efi(true));
    let err = select(&t.catalog(), &req(&d)).expect_err("needs SMM");
    let text = err.to_string();
    assert!(
        text.contains("40-secure-enrolled.json: requires-smm, but the Domain does not enable SMM (features.smm)"),
        "{text}"
    );
    assert!(text.contains("60-plain.json: no secure-boot"), "{text}");
}

#[test]
fn architecture_and_machine_globs_must_match() {
    let t = Tree::new();
    let code = t.image("c.fd");
    let vars = t.image("v.fd");
    t.write(
        "share",
        "10-arm.json",
        &descriptor_for("uefi", "aarch64", &split(&code, &vars), &["virt-*"], &[]),
    );
    t.write(
        "share",
        "20-i440fx.json",
        &descriptor(&split(&code, &vars), &["pc-i440fx-*"], &[]),
    );
    let c = t.catalog();
    let d = domain(Hypervisor::Libvirt, efi(false));

    let err = select(&c, &req(&d)).expect_err("q35 matches neither");
    let text = err.to_string();
    assert!(
        text.contains("10-arm.json: no target for architecture x86_64 (targets: aarch64)"),
        "{text}"
    );
    assert!(
        text.contains("20-i440fx.json: x86_64 machine q35 matches none of pc-i440fx-*"),
        "{text}"
    );

    for machine in ["pc", "pc-i440fx-7.2"] {
        let s = select(&c, &req(&d).with_machine(machine)).expect("i440fx matches");
        assert_eq!(
            s.descriptor_path,
            t.dir("share").join("20-i440fx.json"),
            "{machine}"
        );
    }
    let s = select(&c, &req(&d).with_machine("pc-q35-7.2"));
    assert!(s.is_err(), "pc-q35-7.2 must not match pc-i440fx-*");

    let mut arm = req(&d).with_machine("virt-8.2");
    arm.architecture = "aarch64".into();
    let s = select(&c, &arm).expect("arm matches");
    assert_eq!(s.descriptor_path, t.dir("share").join("10-arm.json"));
}

#[test]
fn concrete_q35_version_matches_glob() {
    assert!(firmware::select::machine_matches("pc-q35-*", "pc-q35-7.2"));
    assert!(firmware::select::machine_matches("pc-q35-*", "q35"));
    assert!(!firmware::select::machine_matches(
        "pc-q35-*",
        "pc-i440fx-7.2"
    ));
    assert!(!firmware::select::machine_matches("pc-i440fx-*", "q35"));
    assert!(firmware::select::machine_matches("virt-*", "virt"));
}

#[test]
fn interface_type_must_match() {
    let t = Tree::new();
    let bios = t.image("bios-256k.bin");
    t.write(
        "share",
        "50-seabios.json",
        &descriptor_for(
            "bios",
            "x86_64",
            &memory(&bios),
            &["pc-q35-*"],
            &["acpi-s3", "acpi-s4"],
        ),
    );
    let d = domain(Hypervisor::Libvirt, efi(false));
    let err = select(&t.catalog(), &req(&d)).expect_err("bios is not uefi");
    assert!(
        err.to_string()
            .contains("no uefi interface (interface-types: bios)"),
        "{err}"
    );

    let mut r = req(&d);
    r.interface = Interface::Bios;
    r.enrolled_keys = None;
    let s = select(&t.catalog(), &r).expect("bios matches");
    assert_eq!(s.mapping, MappingKind::Memory);
    assert!(!s.has_nvram());
}

#[test]
fn sev_needs_amd_sev_and_sev_es_needs_amd_sev_es() {
    let t = Tree::new();
    let code = t.image("c.fd");
    let vars = t.image("v.fd");
    t.write(
        "share",
        "10-nosev.json",
        &descriptor(&split(&code, &vars), &["pc-q35-*"], &[]),
    );
    t.write(
        "share",
        "20-sev.json",
        &descriptor(&split(&code, &vars), &["pc-q35-*"], &["amd-sev"]),
    );
    t.write(
        "share",
        "30-sev-es.json",
        &descriptor(
            &split(&code, &vars),
            &["pc-q35-*"],
            &["amd-sev", "amd-sev-es"],
        ),
    );
    let c = t.catalog();

    let d = domain(Hypervisor::Libvirt, efi(false)).with_launch_security(sev(false));
    let s = select(&c, &req(&d)).expect("sev");
    assert_eq!(s.descriptor_path, t.dir("share").join("20-sev.json"));
    assert_eq!(
        s.passed_over[0].lacks,
        vec!["AMD SEV needs amd-sev".to_owned()]
    );

    let d = domain(Hypervisor::Libvirt, efi(false)).with_launch_security(sev(true));
    let s = select(&c, &req(&d)).expect("sev-es");
    assert_eq!(s.descriptor_path, t.dir("share").join("30-sev-es.json"));
    assert!(s.passed_over[1]
        .lacks
        .contains(&"AMD SEV-ES needs amd-sev-es".to_owned()));
}

/// Fedora-style confidential images next to a plain one, sorted first.
fn confidential_tree(t: &Tree) {
    let code = t.image("c.fd");
    let vars = t.image("v.fd");
    let amdsev = t.image("OVMF.amdsev.fd");
    let tdx = t.image("OVMF.inteltdx.fd");
    t.write(
        "share",
        "10-amdsev.json",
        &descriptor(
            &memory(&amdsev),
            &["pc-q35-*"],
            &["amd-sev", "amd-sev-es", "amd-sev-snp"],
        ),
    );
    t.write(
        "share",
        "11-tdx-smm.json",
        &descriptor(
            &stateless_flash(&tdx),
            &["pc-q35-*"],
            &["intel-tdx", "requires-smm"],
        ),
    );
    t.write(
        "share",
        "12-tdx.json",
        &descriptor(&stateless_flash(&tdx), &["pc-q35-*"], &["intel-tdx"]),
    );
    t.write(
        "share",
        "15-snp-split.json",
        &descriptor(
            &split(&code, &vars),
            &["pc-q35-*"],
            &["amd-sev", "amd-sev-snp"],
        ),
    );
    t.write(
        "share",
        "60-plain.json",
        &descriptor(&split(&code, &vars), &["pc-q35-*"], &["amd-sev"]),
    );
}

#[test]
fn plain_efi_never_picks_confidential_only_image() {
    let t = Tree::new();
    confidential_tree(&t);
    let d = domain(Hypervisor::Libvirt, efi(false));
    let s = select(&t.catalog(), &req(&d)).expect("plain");
    // 15-snp-split keeps variables, so it also serves plain guests.
    assert_eq!(s.descriptor_path, t.dir("share").join("15-snp-split.json"));
    let amdsev = &s.passed_over[0];
    assert!(
        amdsev
            .lacks
            .iter()
            .any(|l| l.starts_with("confidential-only image (amd-sev-snp")),
        "{:?}",
        amdsev.lacks
    );

    let mut r = req(&d);
    r.stateless = true;
    let err = select(&t.catalog(), &r).expect_err("no plain stateless image");
    assert!(
        err.to_string()
            .contains("10-amdsev.json: confidential-only image"),
        "{err}"
    );
}

#[test]
fn sev_snp_picks_stateless_amdsev_image_never_nvram() {
    let t = Tree::new();
    confidential_tree(&t);
    let d = domain(Hypervisor::Libvirt, efi(false)).with_launch_security(snp());
    let r = req(&d);
    assert!(r.stateless && !r.smm_allowed);
    let s = select(&t.catalog(), &r).expect("snp");
    assert_eq!(s.descriptor_path, t.dir("share").join("10-amdsev.json"));
    assert_eq!(s.mapping, MappingKind::Memory);
    assert_eq!(s.nvram_template, None);
    match LibvirtFirmware::from_selection(&s, "vm1", &t.dir("nvram")) {
        LibvirtFirmware::Loader { loader, nvram, .. } => {
            assert_eq!(loader.loader_type, LoaderType::Rom);
            assert!(loader.stateless);
            assert_eq!(nvram, None);
        }
        other => panic!("expected a loader, got {other:?}"),
    }
}

#[test]
fn sev_snp_rejects_split_flash_because_it_keeps_nvram() {
    let t = Tree::new();
    let code = t.image("c.fd");
    let vars = t.image("v.fd");
    t.write(
        "share",
        "15-snp-split.json",
        &descriptor(&split(&code, &vars), &["pc-q35-*"], &["amd-sev-snp"]),
    );
    let d = domain(Hypervisor::Libvirt, efi(false)).with_launch_security(snp());
    let err = select(&t.catalog(), &req(&d)).expect_err("split keeps NVRAM");
    assert!(
        err.to_string().contains("flash (split) keeps UEFI variables in an NVRAM, but AMD SEV-SNP needs a stateless image"),
        "{err}"
    );
}

#[test]
fn tdx_picks_intel_tdx_stateless_flash_and_refuses_smm() {
    let t = Tree::new();
    confidential_tree(&t);
    let d = domain(Hypervisor::Libvirt, efi(false))
        .with_launch_security(LaunchSecurity::Tdx)
        .with_smm();
    let s = select(&t.catalog(), &req(&d)).expect("tdx");
    assert_eq!(s.descriptor_path, t.dir("share").join("12-tdx.json"));
    assert_eq!(s.mapping, MappingKind::FlashStateless);
    let smm = s
        .passed_over
        .iter()
        .find(|r| r.path.ends_with("11-tdx-smm.json"))
        .expect("11 was tried");
    assert_eq!(
        smm.lacks,
        vec!["requires-smm, but Intel TDX guests have no SMM".to_owned()]
    );
    match LibvirtFirmware::from_selection(&s, "vm1", &t.dir("nvram")) {
        LibvirtFirmware::Loader {
            loader, nvram, smm, ..
        } => {
            assert_eq!(loader.loader_type, LoaderType::Pflash);
            assert!(loader.stateless && loader.readonly && !loader.secure && !smm);
            assert_eq!(nvram, None);
        }
        other => panic!("expected a loader, got {other:?}"),
    }
}

#[test]
fn tdx_with_direct_kernel_boot_still_needs_firmware() {
    let d = domain(Hypervisor::Libvirt, kernel_boot()).with_launch_security(LaunchSecurity::Tdx);
    let r = req(&d);
    assert!(r.direct_kernel && r.stateless && r.interface == Interface::Uefi);
    assert_eq!(
        Requirements::from_domain(&domain(Hypervisor::Libvirt, kernel_boot())),
        None
    );
}

#[test]
fn persistent_nvram_cannot_be_stateless() {
    let t = Tree::new();
    confidential_tree(&t);
    let mut d = domain(Hypervisor::Libvirt, efi(false)).with_launch_security(snp());
    d.boot = domain_model::Boot::Efi {
        secure_boot: false,
        persistent: true,
    };
    let err = select(&t.catalog(), &req(&d)).expect_err("persistent + SNP");
    assert!(
        err.to_string()
            .contains("has no NVRAM to persist (efi.persistent)"),
        "{err}"
    );
}

#[test]
fn unknown_feature_is_ignored() {
    let t = Tree::new();
    let code = t.image("c.fd");
    let vars = t.image("v.fd");
    t.write(
        "share",
        "50-new.json",
        &descriptor(
            &split(&code, &vars),
            &["pc-q35-*"],
            &["host-uefi-vars", "acpi-s3"],
        ),
    );
    let d = domain(Hypervisor::Libvirt, efi(false));
    let s = select(&t.catalog(), &req(&d)).expect("unknown feature ignored");
    assert_eq!(s.descriptor_path, t.dir("share").join("50-new.json"));
}

#[test]
fn combined_flash_unknown_mode_and_unknown_device_are_not_chosen() {
    let t = Tree::new();
    let code = t.image("c.fd");
    t.write(
        "share",
        "10-combined.json",
        &descriptor(
            &format!(
                r#"{{"device": "flash", "mode": "combined", "executable": {{"filename": {:?}, "format": "raw"}}}}"#,
                code.display().to_string()
            ),
            &["pc-q35-*"],
            &[],
        ),
    );
    t.write(
        "share",
        "20-mode.json",
        &descriptor(
            &format!(
                r#"{{"device": "flash", "mode": "future", "executable": {{"filename": {:?}, "format": "raw"}}}}"#,
                code.display().to_string()
            ),
            &["pc-q35-*"],
            &[],
        ),
    );
    t.write(
        "share",
        "30-igvm.json",
        &descriptor(
            r#"{"device": "igvm", "filename": "/x.igvm"}"#,
            &["pc-q35-*"],
            &[],
        ),
    );
    t.write(
        "share",
        "40-vmdk.json",
        &descriptor(
            &format!(
                r#"{{"device": "flash", "executable": {{"filename": {:?}, "format": "vmdk"}},
                     "nvram-template": {{"filename": {:?}, "format": "raw"}}}}"#,
                code.display().to_string(),
                code.display().to_string()
            ),
            &["pc-q35-*"],
            &[],
        ),
    );
    let d = domain(Hypervisor::Libvirt, efi(false));
    let text = select(&t.catalog(), &req(&d))
        .expect_err("none usable")
        .to_string();
    assert!(text.contains("10-combined.json: combined flash"), "{text}");
    assert!(
        text.contains("20-mode.json: unknown flash mode \"future\""),
        "{text}"
    );
    assert!(
        text.contains("30-igvm.json: unknown mapping device \"igvm\""),
        "{text}"
    );
    assert!(
        text.contains("40-vmdk.json: executable format \"vmdk\" is neither raw nor qcow2"),
        "{text}"
    );
}

#[test]
fn memory_image_never_gets_nvram_for_plain_uefi() {
    let t = Tree::new();
    let fw = t.image("OVMF.fd");
    t.write(
        "share",
        "50-mem.json",
        &descriptor(&memory(&fw), &["pc-q35-*"], &[]),
    );
    let d = domain(Hypervisor::Libvirt, efi(false));
    let err = select(&t.catalog(), &req(&d)).expect_err("memory image keeps no variables");
    assert!(
        err.to_string().contains("memory keeps no UEFI variables"),
        "{err}"
    );
}

#[test]
fn acpi_sleep_states_are_required_when_asked() {
    let t = Tree::new();
    let code = t.image("c.fd");
    let vars = t.image("v.fd");
    t.write(
        "share",
        "10-s3.json",
        &descriptor(&split(&code, &vars), &["pc-q35-*"], &["acpi-s3"]),
    );
    t.write(
        "share",
        "20-s3s4.json",
        &descriptor(&split(&code, &vars), &["pc-q35-*"], &["acpi-s3", "acpi-s4"]),
    );
    let d = domain(Hypervisor::Libvirt, efi(false));
    let mut r = req(&d);
    r.acpi_s4 = true;
    let s = select(&t.catalog(), &r).expect("s4");
    assert_eq!(s.descriptor_path, t.dir("share").join("20-s3s4.json"));
    assert_eq!(
        s.passed_over[0].lacks,
        vec!["no acpi-s4 (suspend to disk)".to_owned()]
    );
}

#[test]
fn override_by_name_and_empty_file_hiding_change_the_choice() {
    let t = Tree::new();
    let code = t.image("c.fd");
    let vars = t.image("v.fd");
    let admin_code = t.image("admin.fd");
    t.write(
        "share",
        "50-ovmf.json",
        &descriptor(&split(&code, &vars), &["pc-q35-*"], &[]),
    );
    t.write(
        "share",
        "60-other.json",
        &descriptor(&split(&code, &vars), &["pc-q35-*"], &[]),
    );
    let d = domain(Hypervisor::Libvirt, efi(false));

    t.write(
        "etc",
        "50-ovmf.json",
        &descriptor(&split(&admin_code, &vars), &["pc-q35-*"], &[]),
    );
    let s = select(&t.catalog(), &req(&d)).expect("admin override");
    assert_eq!(s.descriptor_path, t.dir("etc").join("50-ovmf.json"));
    assert_eq!(s.executable, admin_code);
    assert!(
        s.reasons.iter().any(|r| r.starts_with("overrides ")),
        "{:?}",
        s.reasons
    );

    t.write("user", "50-ovmf.json", "");
    let s = select(&t.catalog(), &req(&d)).expect("hidden falls through");
    assert_eq!(s.descriptor_path, t.dir("share").join("60-other.json"));
}

#[test]
fn higher_priority_file_name_wins_across_directories() {
    let t = Tree::new();
    let code = t.image("c.fd");
    let vars = t.image("v.fd");
    let first = t.image("first.fd");
    t.write(
        "share",
        "50-ovmf.json",
        &descriptor(&split(&code, &vars), &["pc-q35-*"], &[]),
    );
    t.write(
        "etc",
        "10-ovmf.json",
        &descriptor(&split(&first, &vars), &["pc-q35-*"], &[]),
    );
    let d = domain(Hypervisor::Libvirt, efi(false));
    let s = select(&t.catalog(), &req(&d)).expect("match");
    assert_eq!(s.executable, first);
}

#[test]
fn no_match_lists_searched_dirs_request_and_every_candidate() {
    let t = Tree::new();
    debian_like(&t);
    t.write("share", "70-broken.json", "{");
    t.write(
        "share",
        "80-hidden.json",
        &descriptor(r#"{"device":"memory","filename":"/x"}"#, &[], &[]),
    );
    t.write("etc", "80-hidden.json", "");
    let d = domain(Hypervisor::Libvirt, efi(false)).with_launch_security(LaunchSecurity::Tdx);
    let err = select(&t.catalog(), &req(&d)).expect_err("no TDX firmware");
    let text = err.to_string();
    assert!(
        text.starts_with(
            "no firmware fits: uefi firmware for x86_64 machine q35, no secure boot, Intel TDX, stateless (no NVRAM), SMM not allowed"
        ),
        "{text}"
    );
    for dir in ["user", "etc", "share"] {
        assert!(text.contains(&t.dir(dir).display().to_string()), "{text}");
    }
    assert!(text.contains("60-plain.json: flash (split) keeps UEFI variables in an NVRAM, but Intel TDX needs a stateless image; Intel TDX needs intel-tdx"), "{text}");
    assert!(
        text.contains("70-broken.json: unusable: invalid descriptor"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "80-hidden.json: hidden by empty file {}",
            t.dir("etc").join("80-hidden.json").display()
        )),
        "{text}"
    );
    assert_eq!(err.rejected.len(), 5);
}

#[test]
fn no_descriptors_at_all_says_so() {
    let t = Tree::new();
    let d = domain(Hypervisor::Libvirt, efi(false));
    let text = select(&Catalog::load(&t.paths()), &req(&d))
        .expect_err("empty")
        .to_string();
    assert!(text.contains("no candidates found there"), "{text}");
}

#[test]
fn dry_run_warns_about_missing_files_and_run_check_fails() {
    let t = Tree::new();
    let absent = t.dir("images").join("absent-code.fd");
    let vars = t.image("v.fd");
    t.write(
        "share",
        "50-ovmf.json",
        &descriptor(&split(&absent, &vars), &["pc-q35-*"], &[]),
    );
    let d = domain(Hypervisor::Libvirt, efi(false));
    let s = select(&t.catalog(), &req(&d)).expect("selection works without the file");
    assert_eq!(s.warnings().len(), 1);
    assert!(
        s.warnings()[0].contains("absent-code.fd does not exist"),
        "{:?}",
        s.warnings()
    );
    match s.require_present() {
        Err(FirmwareError::Missing { files, .. }) => {
            assert_eq!(files.len(), 1);
            assert_eq!(files[0].path, absent);
            assert_eq!(files[0].role, "executable");
        }
        other => panic!("expected Missing, got {other:?}"),
    }
}

#[test]
fn libvirt_split_flash_gets_pflash_and_per_vm_nvram() {
    let t = Tree::new();
    debian_like(&t);
    let d = domain(Hypervisor::Libvirt, efi(true)).with_smm();
    let s = select(&t.catalog(), &req(&d)).expect("sb");
    let nvram_dir = PathBuf::from("/var/lib/nvram");
    match LibvirtFirmware::from_selection(&s, "default_vm1", &nvram_dir) {
        LibvirtFirmware::Loader {
            loader,
            nvram,
            smm,
            secure_boot,
            enrolled_keys,
        } => {
            assert_eq!(loader.loader_type, LoaderType::Pflash);
            assert_eq!(loader.path, t.dir("images").join("CODE.secboot.fd"));
            assert!(loader.readonly && loader.secure && !loader.stateless);
            assert_eq!(loader.format.as_deref(), Some("raw"));
            assert!(smm && secure_boot && enrolled_keys);
            let nvram = nvram.expect("split flash has NVRAM");
            assert_eq!(nvram.template, t.dir("images").join("VARS.ms.fd"));
            assert_eq!(
                nvram.path,
                PathBuf::from("/var/lib/nvram/default_vm1_VARS.fd")
            );
        }
        other => panic!("expected a loader, got {other:?}"),
    }
}

#[test]
fn choose_for_domain_routes_by_backend_and_boot() {
    let t = Tree::new();
    debian_like(&t);
    let ch_dir = t.dir("images");
    let config = FirmwareConfig {
        qemu: t.paths(),
        cloud_hypervisor: ChFirmwarePaths::under_dir(&ch_dir),
        machine: None,
    };
    let libvirt_efi =
        choose_for_domain(&domain(Hypervisor::Libvirt, efi(false)), &config).expect("libvirt");
    assert!(matches!(&libvirt_efi, Choice::Qemu(s) if s.executable.ends_with("CODE.fd")));

    let bios = choose_for_domain(
        &domain(Hypervisor::Libvirt, domain_model::Boot::Bios),
        &config,
    )
    .expect("bios");
    assert!(matches!(bios, Choice::NotNeeded { .. }), "{bios:?}");

    let kernel = choose_for_domain(&domain(Hypervisor::CloudHypervisor, kernel_boot()), &config)
        .expect("kernel");
    assert!(matches!(kernel, Choice::NotNeeded { .. }), "{kernel:?}");

    let ch =
        choose_for_domain(&domain(Hypervisor::CloudHypervisor, efi(false)), &config).expect("ch");
    match &ch {
        Choice::CloudHypervisor(s) => assert_eq!(s.path, ch_dir.join("CLOUDHV.fd")),
        other => panic!("expected CH, got {other:?}"),
    }
    assert_eq!(ch.warnings().len(), 1, "CLOUDHV.fd is absent in the tree");
    assert!(ch.require_present().is_err());

    let pinned = FirmwareConfig {
        machine: Some("pc-i440fx-7.2".into()),
        ..config
    };
    let s = choose_for_domain(&domain(Hypervisor::Libvirt, efi(false)), &pinned).expect("i440fx");
    assert!(
        s.to_string()
            .contains("x86_64 machine pc-i440fx-7.2 matches pc-i440fx-*"),
        "{s}"
    );
}

#[test]
fn list_shows_visible_descriptors_hidden_names_and_ch_files() {
    let t = Tree::new();
    debian_like(&t);
    t.write("etc", "50-secure.json", "");
    std::fs::write(t.dir("images").join("CLOUDHV.fd"), b"fw").expect("write");
    let config = FirmwareConfig {
        qemu: t.paths(),
        cloud_hypervisor: ChFirmwarePaths::under_dir(&t.dir("images")),
        machine: None,
    };
    let listing = firmware::list(&config);
    let names: Vec<&str> = listing
        .qemu_descriptors
        .iter()
        .map(|d| d.file_name.as_str())
        .collect();
    assert_eq!(names, vec!["40-secure-enrolled.json", "60-plain.json"]);
    assert_eq!(listing.qemu_hidden.len(), 1);
    assert_eq!(
        listing.qemu_descriptors[0].features,
        vec![
            "acpi-s3",
            "amd-sev",
            "enrolled-keys",
            "requires-smm",
            "secure-boot",
            "verbose-dynamic"
        ]
    );
    assert!(listing.cloud_hypervisor[0].present);
    let text = listing.to_string();
    assert!(
        text.contains("hidden: 50-secure.json (empty file"),
        "{text}"
    );
    assert!(text.contains("Cloud Hypervisor firmware:"), "{text}");
    assert!(text.contains("hypervisor-fw  (MISSING)"), "{text}");
    let json = serde_json::to_value(&listing).expect("serializes");
    assert_eq!(json["qemu_descriptors"][1]["mapping"], "flash (split)");
}

#[test]
fn plain_efi_refuses_secure_boot_image_even_when_nothing_else_differs() {
    let t = Tree::new();
    let code = t.image("c.fd");
    let vars = t.image("v.fd");
    t.write(
        "share",
        "10-sb.json",
        &descriptor(&split(&code, &vars), &["pc-q35-*"], &["secure-boot"]),
    );
    t.write(
        "share",
        "20-plain.json",
        &descriptor(&split(&code, &vars), &["pc-q35-*"], &[]),
    );
    let d = domain(Hypervisor::Libvirt, efi(false)).with_smm();
    let s = select(&t.catalog(), &req(&d)).expect("plain");
    assert_eq!(s.descriptor_path, t.dir("share").join("20-plain.json"));
    assert_eq!(
        s.passed_over[0].lacks,
        vec!["has secure-boot, which the Domain does not ask for".to_owned()]
    );
}
