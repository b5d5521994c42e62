//! Confidential specs through the whole `ch-launcher` binary on the libvirt
//! backend: KubeVirt YAML in, domain XML out, with the host's SEV parameters
//! taken from recorded `virsh domcapabilities` (`--domcapabilities`) or from
//! libvirt itself, and runs refused on a host without the feature.
//!
//! Firmware comes from QEMU descriptors in a private directory given with
//! `--firmware-descriptor-dir`, which replaces the host's, so the choice
//! does not depend on what this machine has installed.

mod common;

use common::{assert_stderr_contains, efi_vmi, sample, text};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A temporary host: descriptors for SEV (split flash) and SEV-SNP/TDX
/// (stateless ROM images), firmware files that exist, and spec files.
struct Host {
    dir: tempfile::TempDir,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        let descriptors = dir.path().join("xdg/qemu/firmware");
        let images = dir.path().join("images");
        std::fs::create_dir_all(&descriptors).unwrap();
        std::fs::create_dir_all(&images).unwrap();
        for name in ["CODE.fd", "VARS.fd", "amdsev.fd", "inteltdx.fd"] {
            std::fs::write(images.join(name), b"firmware").unwrap();
        }
        let img = |name: &str| images.join(name).display().to_string();
        let descriptor = |mapping: String, features: &str| {
            format!(
                r#"{{"description": "test", "interface-types": ["uefi"], "mapping": {mapping},
                    "targets": [{{"architecture": "x86_64", "machines": ["pc-q35-*"]}}],
                    "features": [{features}], "tags": []}}"#
            )
        };
        std::fs::write(
            descriptors.join("01-sev.json"),
            descriptor(
                format!(
                    r#"{{"device": "flash", "executable": {{"filename": {:?}, "format": "raw"}},
                        "nvram-template": {{"filename": {:?}, "format": "raw"}}}}"#,
                    img("CODE.fd"),
                    img("VARS.fd")
                ),
                r#""amd-sev", "amd-sev-es""#,
            ),
        )
        .unwrap();
        std::fs::write(
            descriptors.join("02-amdsev.json"),
            descriptor(
                format!(
                    r#"{{"device": "memory", "filename": {:?}}}"#,
                    img("amdsev.fd")
                ),
                r#""amd-sev", "amd-sev-es", "amd-sev-snp""#,
            ),
        )
        .unwrap();
        std::fs::write(
            descriptors.join("03-inteltdx.json"),
            descriptor(
                format!(
                    r#"{{"device": "memory", "filename": {:?}}}"#,
                    img("inteltdx.fd")
                ),
                r#""intel-tdx""#,
            ),
        )
        .unwrap();
        Host { dir }
    }

    /// A libvirt VMI spec with `launch_security` (YAML under
    /// `launchSecurity:`) and a virtio-rng, booting EFI without secure boot.
    fn spec(&self, name: &str, launch_security: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.yaml"));
        let domain_lines = format!(
            "    launchSecurity: {launch_security}
    devices:
      rng: {{}}
"
        );
        std::fs::write(&path, efi_vmi(name, "libvirt", &domain_lines)).unwrap();
        path
    }

    fn launcher(&self, args: &[&str], spec: &Path) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ch-launcher"))
            .arg("--firmware-descriptor-dir")
            .arg(self.dir.path().join("xdg/qemu/firmware"))
            .args(args)
            .arg(spec)
            .args(["--private-dir"])
            .arg(self.dir.path().join("private"))
            .output()
            .expect("ch-launcher runs")
    }
}

#[test]
fn render_sev_uses_cbitpos_from_recorded_domcapabilities() {
    let host = Host::new();
    let spec = host.spec("sev", "{sev: {}}");
    let caps = sample("domcapabilities_sev.xml");
    let out = host.launcher(
        &["render", "--domcapabilities", caps.to_str().unwrap()],
        &spec,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let xml = text(&out.stdout);
    for expected in [
        "<launchSecurity type=\"sev\">",
        "<cbitpos>47</cbitpos>",
        "<reducedPhysBits>1</reducedPhysBits>",
        "<policy>0x1</policy>",
        "<driver iommu=\"on\"/>",
        "CODE.fd</loader>",
    ] {
        assert!(xml.contains(expected), "{expected} missing from:\n{xml}");
    }
}

#[test]
fn render_sev_es_and_snp_follow_kubevirt_policies() {
    let host = Host::new();
    let caps = sample("domcapabilities_sevsnp.xml");
    let es = host.spec("sev-es", "{sev: {policy: {encryptedState: true}}}");
    let out = host.launcher(
        &["render", "--domcapabilities", caps.to_str().unwrap()],
        &es,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("<policy>0x5</policy>"));

    for (name, ls) in [
        ("snp", "{snp: {}}"),
        ("snp-via-sev", "{sev: {secureNestedPaging: true}}"),
    ] {
        let spec = host.spec(name, ls);
        let out = host.launcher(
            &["render", "--domcapabilities", caps.to_str().unwrap()],
            &spec,
        );
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let xml = text(&out.stdout);
        assert!(
            xml.contains("<launchSecurity type=\"sev-snp\">"),
            "{name}:\n{xml}"
        );
        assert!(xml.contains("<policy>0x30000</policy>"), "{name}:\n{xml}");
        assert!(
            xml.contains("type=\"rom\""),
            "{name}: stateless ROM firmware:\n{xml}"
        );
        assert!(!xml.contains("<nvram"), "{name}: no NVRAM:\n{xml}");
    }
}

/// A host without SEV is a host problem, not an invalid spec: exit 1 with
/// the way to a dry run, never exit 2.
#[test]
fn render_sev_on_a_host_without_sev_is_a_host_failure_not_a_spec_error() {
    let host = Host::new();
    let spec = host.spec("sev", "{sev: {}}");
    let caps = sample("this-machine-qemu-7.2-kvm.xml");
    let out = host.launcher(
        &["render", "--domcapabilities", caps.to_str().unwrap()],
        &spec,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("host lacks SEV") && stderr.contains("pass --domcapabilities FILE"),
        "{stderr}"
    );
    assert!(stderr.contains("cbitpos"), "{stderr}");
    assert!(out.stdout.is_empty());

    // validate warns about the host and still checks the spec.
    let out = host.launcher(
        &["validate", "--domcapabilities", caps.to_str().unwrap()],
        &spec,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_stderr_contains(&out, "host lacks SEV");
}

/// `<sev supported='yes'>` without cbitpos: labelled like KubeVirt does, but
/// nothing can be rendered from it.
#[test]
fn render_sev_without_recorded_cbitpos_asks_for_capabilities_from_an_sev_host() {
    let host = Host::new();
    let spec = host.spec("sev", "{sev: {}}");
    let caps = host.dir.path().join("sev-bare.xml");
    std::fs::write(
        &caps,
        "<domainCapabilities><arch>x86_64</arch><features><sev supported='yes'/>\
         </features></domainCapabilities>",
    )
    .unwrap();
    let out = host.launcher(
        &["render", "--domcapabilities", caps.to_str().unwrap()],
        &spec,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("host lacks SEV"), "{stderr}");
    assert!(
        !stderr.contains("cannot run on this host"),
        "labelled SEV: {stderr}"
    );
}

#[test]
fn run_refuses_snp_on_a_host_without_snp_before_starting_anything() {
    let host = Host::new();
    let spec = host.spec("snp", "{snp: {}}");
    // SEV and SEV-ES, but no SEV-SNP.
    let caps = sample("domcapabilities_sev.xml");
    let out = host.launcher(
        &[
            "run",
            "--no-attach",
            "--domcapabilities",
            caps.to_str().unwrap(),
        ],
        &spec,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("SEV-SNP cannot run on this host")
            && stderr.contains("kubevirt.io/sev-snp"),
        "{stderr}"
    );
    assert!(
        !host.dir.path().join("private").exists(),
        "the refusal came after the VM directory was made"
    );
}

/// Without `--domcapabilities` the libvirt backend asks libvirt itself.
#[test]
fn render_without_recorded_capabilities_asks_libvirt() {
    let uri = std::env::var("LIBVIRT_URI").unwrap_or_else(|_| "qemu:///system".into());
    let reachable = Command::new("virsh")
        .args(["-c", &uri, "version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !reachable {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            (format!("SKIP: libvirtd not reachable at {uri}") + "\n").as_bytes(),
        );
        return;
    }
    let host = Host::new();
    let spec = host.spec("sev", "{sev: {}}");
    let out = host.launcher(&["render", "--libvirt-uri", &uri], &spec);
    let stderr = text(&out.stderr);
    let source = format!("(libvirt {uri})");
    if out.status.success() {
        // An SEV host: the XML carries libvirt's parameters.
        assert!(text(&out.stdout).contains("<cbitpos>"));
    } else {
        // A host without SEV: a launcher failure naming where the facts
        // came from, not a spec error.
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&source), "{stderr}");
        assert!(stderr.contains("host lacks SEV"), "{stderr}");
    }
}
