//! The launcher's configuration end to end through the binary: feature
//! gates (`--feature-gates`, the config file), firmware locations
//! (`--firmware-descriptor-dir`, `--ch-firmware-dir`), `firmware list` and
//! `firmware select`, and dry runs that render the expected firmware paths
//! where this host has none while `run` refuses.

mod common;

use common::{assert_stderr_contains, efi_vmi, sample, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory with spec files, an empty descriptor directory and
/// an empty Cloud Hypervisor firmware directory.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("descriptors")).unwrap();
        std::fs::create_dir_all(dir.path().join("ch-firmware")).unwrap();
        Scratch { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An EFI VMI on `hypervisor` with `launch_security` (YAML), or none.
    fn spec(&self, name: &str, hypervisor: &str, launch_security: Option<&str>) -> PathBuf {
        let path = self.path(&format!("{name}.yaml"));
        let ls = launch_security
            .map(|ls| format!("    launchSecurity: {ls}\n"))
            .unwrap_or_default();
        std::fs::write(&path, efi_vmi(name, hypervisor, &ls)).unwrap();
        path
    }

    /// The launcher with this scratch's firmware directories and private dir.
    fn launcher(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ch-launcher"))
            .env_remove("CH_LAUNCHER_CONFIG")
            .arg("--firmware-descriptor-dir")
            .arg(self.path("descriptors"))
            .arg("--ch-firmware-dir")
            .arg(self.path("ch-firmware"))
            .arg("--private-dir")
            .arg(self.path("private"))
            .args(args)
            .output()
            .expect("ch-launcher runs")
    }

    /// The launcher's `args` for `spec`, then `--domcapabilities caps`: the
    /// host those capabilities describe instead of this one.
    fn on_host(&self, args: &[&str], spec: &Path, caps: &Path) -> Output {
        let mut all = args.to_vec();
        all.extend([arg(spec), "--domcapabilities", arg(caps)]);
        self.launcher(&all)
    }

    /// `render` of a Cloud Hypervisor spec, which must succeed: the
    /// `vm.create` JSON and what was said on stderr.
    fn render_json(&self, spec: &Path) -> (serde_json::Value, String) {
        let out = self.launcher(&["render", arg(spec)]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let json = serde_json::from_slice(&out.stdout).expect("vm.create JSON");
        (json, text(&out.stderr))
    }
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

// ---- feature gates ---------------------------------------------------------

#[test]
fn tdx_needs_the_alpha_gate_and_feature_gates_enables_it() {
    let s = Scratch::new();
    let tdx_caps = sample("domcapabilities_tdx.xml");
    for hypervisor in ["libvirt", "cloud-hypervisor"] {
        let spec = s.spec("tdx", hypervisor, Some("{tdx: {}}"));
        let off = s.on_host(&["validate"], &spec, &tdx_caps);
        assert_eq!(
            off.status.code(),
            Some(2),
            "{hypervisor}: {}",
            text(&off.stderr)
        );
        let stderr = text(&off.stderr);
        assert!(
            stderr.contains("WorkloadEncryptionTDX")
                && stderr.contains("--feature-gates WorkloadEncryptionTDX"),
            "{stderr}"
        );

        // What the gate's error message tells the user to do works.
        let on = s.on_host(
            &["validate", "--feature-gates", "WorkloadEncryptionTDX"],
            &spec,
            &tdx_caps,
        );
        assert!(on.status.success(), "{hypervisor}: {}", text(&on.stderr));
        assert!(text(&on.stdout).contains("is valid"));
    }
}

#[test]
fn beta_sev_gate_is_on_by_default_and_minus_name_disables_it() {
    let s = Scratch::new();
    let spec = s.spec("sev", "libvirt", Some("{sev: {}}"));
    let caps = sample("domcapabilities_sev.xml");
    let on = s.on_host(&["validate"], &spec, &caps);
    assert!(on.status.success(), "{}", text(&on.stderr));

    // `-Name` right after the option is a value, not an unknown flag.
    let off = s.on_host(
        &["validate", "--feature-gates", "-WorkloadEncryptionSEV"],
        &spec,
        &caps,
    );
    assert_eq!(off.status.code(), Some(2), "{}", text(&off.stderr));
    assert_stderr_contains(&off, "remove -WorkloadEncryptionSEV");

    // A bad gate list is the launcher's configuration, not the spec: exit 1.
    let bogus = s.launcher(&["validate", "--feature-gates", "Bogus", arg(&spec)]);
    assert_eq!(bogus.status.code(), Some(1));
    assert_stderr_contains(&bogus, "--feature-gates: unknown feature gate \"Bogus\"");
}

#[test]
fn config_file_gates_apply_and_the_command_line_wins() {
    let s = Scratch::new();
    let spec = s.spec("tdx", "libvirt", Some("{tdx: {}}"));
    let caps = sample("domcapabilities_tdx.xml");
    let config = s.path("config.yaml");
    std::fs::write(&config, "featureGates: [WorkloadEncryptionTDX]\n").unwrap();
    let on = s.on_host(&["validate", "--config", arg(&config)], &spec, &caps);
    assert!(on.status.success(), "{}", text(&on.stderr));

    let off = s.on_host(
        &[
            "validate",
            "--config",
            arg(&config),
            "--feature-gates=-WorkloadEncryptionTDX",
        ],
        &spec,
        &caps,
    );
    assert_eq!(off.status.code(), Some(2), "{}", text(&off.stderr));
}

#[test]
fn config_file_errors_name_the_file_and_the_key() {
    let s = Scratch::new();
    let spec = s.spec("plain", "libvirt", None);
    let config = s.path("config.yaml");
    for (body, key) in [
        (
            "featureGates: [WorkloadEncryptionTDX, Nope]\n",
            "featureGates[1]",
        ),
        ("firmwareDescriptorDir: [/x]\n", "firmwareDescriptorDir"),
        (
            "cloudHypervisorFirmwareDir: [1, 2]\n",
            "cloudHypervisorFirmwareDir",
        ),
    ] {
        std::fs::write(&config, body).unwrap();
        let out = s.launcher(&["validate", "--config", arg(&config), arg(&spec)]);
        // A configuration file error is a launcher failure (1), not a spec's (2).
        assert_eq!(out.status.code(), Some(1), "{body}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("{}: ", config.display())) && stderr.contains(key),
            "{body}: {stderr}"
        );
    }
    let missing = s.launcher(&["validate", "--config", "/nonexistent/c.yaml", arg(&spec)]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("/nonexistent/c.yaml: cannot read"));
}

// ---- firmware locations, list and select ------------------------------------

/// A split-flash OVMF descriptor whose files exist under `dir`.
fn write_plain_descriptor(dir: &Path, images: &Path, name: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::create_dir_all(images).unwrap();
    for f in ["CODE.fd", "VARS.fd"] {
        std::fs::write(images.join(f), b"fw").unwrap();
    }
    std::fs::write(
        dir.join(name),
        format!(
            r#"{{"description": "test OVMF", "interface-types": ["uefi"],
                "mapping": {{"device": "flash",
                    "executable": {{"filename": {:?}, "format": "raw"}},
                    "nvram-template": {{"filename": {:?}, "format": "raw"}}}},
                "targets": [{{"architecture": "x86_64", "machines": ["pc-q35-*"]}}],
                "features": [], "tags": []}}"#,
            images.join("CODE.fd"),
            images.join("VARS.fd")
        ),
    )
    .unwrap();
}

#[test]
fn firmware_list_shows_the_configured_directories() {
    let s = Scratch::new();
    write_plain_descriptor(&s.path("descriptors"), &s.path("images"), "60-test.json");
    std::fs::write(s.path("ch-firmware/CLOUDHV.fd"), b"fw").unwrap();
    let out = s.launcher(&["firmware", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listing = text(&out.stdout);
    assert!(listing.contains("60-test.json"), "{listing}");
    assert!(
        listing.contains(&s.path("ch-firmware/CLOUDHV.fd").display().to_string()),
        "{listing}"
    );

    let out = s.launcher(&["firmware", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        json["qemu_searched"],
        serde_json::json!([s.path("descriptors")])
    );
    assert_eq!(json["qemu_descriptors"][0]["file_name"], "60-test.json");
    assert_eq!(json["cloud_hypervisor"][0]["present"], true);
}

#[test]
fn firmware_select_prints_the_choice_and_why() {
    let s = Scratch::new();
    write_plain_descriptor(&s.path("descriptors"), &s.path("images"), "60-test.json");
    let spec = s.spec("plain", "libvirt", None);
    let out = s.launcher(&["firmware", "select", arg(&spec)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("60-test.json") && stdout.contains("why:"),
        "{stdout}"
    );
    assert!(stdout.contains(&s.path("images/CODE.fd").display().to_string()));

    let out = s.launcher(&["firmware", "select", "--json", arg(&spec)]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["backend"], "qemu");
    assert_eq!(
        json["executable"],
        serde_json::json!(s.path("images/CODE.fd"))
    );
}

#[test]
fn firmware_select_without_a_match_explains_the_search_and_exits_1() {
    let s = Scratch::new();
    write_plain_descriptor(&s.path("descriptors"), &s.path("images"), "60-test.json");
    let spec = s.spec("snp", "libvirt", Some("{snp: {}}"));
    let out = s.launcher(&["firmware", "select", arg(&spec)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    // What the Domain asked for, what was searched, what each candidate lacked.
    assert!(
        stderr.contains("no firmware fits: uefi firmware for x86_64"),
        "{stderr}"
    );
    assert!(stderr.contains("AMD SEV-SNP"), "{stderr}");
    assert!(
        stderr.contains(&format!("searched: {}", s.path("descriptors").display())),
        "{stderr}"
    );
    assert!(
        stderr.contains("60-test.json: ") && stderr.contains("needs amd-sev-snp"),
        "{stderr}"
    );

    let out = s.launcher(&["firmware", "select", "--json", arg(&spec)]);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let lacks = json["noMatch"]["rejected"][0]["lacks"]
        .as_array()
        .expect("lacks")
        .clone();
    assert!(
        lacks.contains(&serde_json::json!("AMD SEV-SNP needs amd-sev-snp")),
        "{lacks:?}"
    );
    assert!(json["noMatch"]["asked"]
        .as_str()
        .is_some_and(|a| a.contains("AMD SEV-SNP")));
}

#[test]
fn user_descriptor_directory_counts_only_for_session_daemons() {
    let s = Scratch::new();
    let xdg = s.path("xdg");
    write_plain_descriptor(
        &xdg.join("qemu/firmware"),
        &s.path("images"),
        "10-user.json",
    );
    let spec = s.spec("plain", "libvirt", None);
    let select = |uri: &str| {
        Command::new(env!("CARGO_BIN_EXE_ch-launcher"))
            .env_remove("CH_LAUNCHER_CONFIG")
            .env("XDG_CONFIG_HOME", &xdg)
            .args(["firmware", "select", "--libvirt-uri", uri])
            .arg(&spec)
            .output()
            .expect("runs")
    };
    let session = select("qemu:///session");
    assert!(session.status.success(), "{}", text(&session.stderr));
    assert!(text(&session.stdout).contains("10-user.json"));
    let system = select("qemu:///system");
    assert!(
        !text(&system.stdout).contains("10-user.json")
            && !text(&system.stderr).contains("10-user.json"),
        "qemu:///system read the user directory:\n{}{}",
        text(&system.stdout),
        text(&system.stderr)
    );
}

// ---- dry runs: expected firmware paths --------------------------------------

#[test]
fn render_snp_without_firmware_renders_kubevirts_expected_path_and_run_refuses() {
    let s = Scratch::new();
    let spec = s.spec("snp", "libvirt", Some("{snp: {}}"));
    let caps = sample("domcapabilities_sevsnp.xml");
    let out = s.on_host(&["render"], &spec, &caps);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let xml = text(&out.stdout);
    assert!(
        xml.contains("/usr/share/OVMF/OVMF.amdsev.fd</loader>"),
        "{xml}"
    );
    assert!(xml.contains("<policy>0x30000</policy>"), "{xml}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("rendering the expected path /usr/share/OVMF/OVMF.amdsev.fd")
            && stderr.contains("no firmware fits"),
        "{stderr}"
    );

    let out = s.on_host(&["run", "--no-attach"], &spec, &caps);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("firmware: no firmware fits"), "{stderr}");
    assert!(
        !s.path("private").exists(),
        "refused after making the VM directory"
    );
}

#[test]
fn render_cloud_hypervisor_snp_without_igvm_names_the_expected_file() {
    let s = Scratch::new();
    let spec = s.spec("snp", "cloud-hypervisor", Some("{snp: {}}"));
    let (json, stderr) = s.render_json(&spec);
    assert_eq!(
        json["payload"]["igvm"],
        serde_json::json!(s.path("ch-firmware/sev-snp.igvm"))
    );
    assert!(stderr.contains("no *.igvm file there"), "{stderr}");
}

#[test]
fn validate_checks_the_translation_even_when_the_host_lacks_sev() {
    let s = Scratch::new();
    let caps = sample("this-machine-qemu-7.2-kvm.xml");
    let path = s.path("sev-smm.yaml");
    // SEV-ES forbids SMM: a spec error the libvirt translation finds.
    std::fs::write(
        &path,
        efi_vmi(
            "sev-smm",
            "libvirt",
            "    launchSecurity: {sev: {policy: {encryptedState: true}}}
    features:
      smm: {enabled: true}
",
        ),
    )
    .unwrap();
    let out = s.on_host(&["validate"], &path, &caps);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_stderr_contains(&out, "spec.domain.features.smm");
}

#[test]
fn render_cloud_hypervisor_efi_without_firmware_directory_warns_and_renders() {
    let s = Scratch::new();
    let spec = s.spec("efi", "cloud-hypervisor", None);
    let (json, stderr) = s.render_json(&spec);
    assert_eq!(
        json["payload"]["firmware"],
        serde_json::json!(s.path("ch-firmware/CLOUDHV.fd"))
    );
    assert!(stderr.contains("CLOUDHV.fd does not exist"), "{stderr}");
}
