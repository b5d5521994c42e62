//! An EFI guest rendered for libvirt through the whole `ch-launcher` binary
//! with this host's real firmware descriptors (Debian's `ovmf` package in
//! `/usr/share/qemu/firmware`): the chosen loader and NVRAM template exist on
//! disk, a memory or stateless image gets no NVRAM, secure boot picks a
//! secure-boot build, and the document passes libvirt's schema.
//!
//! Without the package these tests print a SKIP line, unless
//! `CH_LAUNCHER_REQUIRE_LIBVIRT=1` (set by `.ci/test`, which installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

const DESCRIPTORS: &str = "/usr/share/qemu/firmware";

fn ovmf_installed(test: &str) -> bool {
    let present = Path::new(DESCRIPTORS).join("60-edk2-x86_64.json").is_file();
    if !present {
        assert!(
            std::env::var_os("CH_LAUNCHER_REQUIRE_LIBVIRT").is_none(),
            "{test}: Debian's ovmf descriptors are missing but CH_LAUNCHER_REQUIRE_LIBVIRT is set"
        );
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            (format!("SKIP: {test}: Debian's ovmf package is not installed ({DESCRIPTORS})")
                + "\n")
                .as_bytes(),
        );
    }
    present
}

fn spec(dir: &Path, efi: &str, smm: bool) -> PathBuf {
    let features = if smm {
        "\n    features:\n      smm: {}"
    } else {
        ""
    };
    let text = format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: efi-guest
spec:
  hypervisor: libvirt
  domain:
    memory:
      guest: 128Mi
    firmware:
      bootloader:
        efi: {efi}{features}
    devices: {{}}
"
    );
    let path = dir.join("efi.yaml");
    std::fs::write(&path, text).expect("write spec");
    path
}

/// Renders `spec` for libvirt with only the host's distribution descriptors.
fn render(dir: &Path, spec: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ch-launcher"))
        .arg("--private-dir")
        .arg(dir.join("private"))
        .args(["--firmware-descriptor-dir", DESCRIPTORS, "render"])
        .arg(spec)
        .output()
        .expect("run ch-launcher render");
    assert!(
        out.status.success(),
        "render failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("XML is UTF-8")
}

/// The text content and attributes of the first `<name ...>...</name>`.
fn element<'a>(xml: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    let start = xml
        .find(&format!("<{name} "))
        .or_else(|| xml.find(&format!("<{name}>")))?;
    let rest = &xml[start + name.len() + 1..];
    let open_end = rest.find('>')?;
    let attrs = &rest[..open_end];
    let body = &rest[open_end + 1..];
    let close = body.find(&format!("</{name}>"))?;
    Some((attrs, body[..close].trim()))
}

fn assert_schema_valid(dir: &Path, xml: &str) {
    let Ok(status) = Command::new("virt-xml-validate").arg("--version").output() else {
        assert!(
            std::env::var_os("CH_LAUNCHER_REQUIRE_LIBVIRT").is_none(),
            "virt-xml-validate is missing but CH_LAUNCHER_REQUIRE_LIBVIRT is set"
        );
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            concat!("SKIP: virt-xml-validate is not installed", "\n").as_bytes(),
        );
        return;
    };
    let _ = status;
    let file = dir.join("domain.xml");
    std::fs::write(&file, xml).expect("write XML");
    let out = Command::new("virt-xml-validate")
        .arg(&file)
        .arg("domain")
        .output()
        .expect("run virt-xml-validate");
    assert!(
        out.status.success(),
        "virt-xml-validate rejected the document:\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        xml
    );
}

#[test]
fn efi_guest_gets_an_existing_ovmf_loader_and_vars_template() {
    if !ovmf_installed("efi_guest_gets_an_existing_ovmf_loader_and_vars_template") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let xml = render(dir.path(), &spec(dir.path(), "{secureBoot: false}", false));

    let (loader_attrs, loader) = element(&xml, "loader").expect("a <loader> element");
    assert!(
        Path::new(loader).is_file(),
        "loader {loader} does not exist"
    );
    assert!(loader_attrs.contains("type='pflash'") || loader_attrs.contains("type=\"pflash\""));
    assert!(
        !loader.contains("secboot") && !loader.contains(".ms."),
        "plain EFI got {loader}"
    );

    let (nvram_attrs, _) = element(&xml, "nvram")
        .or_else(|| {
            xml.find("<nvram ")
                .map(|i| (&xml[i..i + xml[i..].find('>').unwrap()], ""))
        })
        .expect("an <nvram> element");
    let template = nvram_attrs
        .split("template=")
        .nth(1)
        .and_then(|s| s.get(1..))
        .and_then(|s| s.split(['\'', '"']).next())
        .expect("nvram has a template attribute");
    assert!(
        Path::new(template).is_file(),
        "NVRAM template {template} does not exist"
    );

    assert_schema_valid(dir.path(), &xml);
}

#[test]
fn secure_boot_guest_gets_the_secure_boot_ovmf_build_with_smm() {
    if !ovmf_installed("secure_boot_guest_gets_the_secure_boot_ovmf_build_with_smm") {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let xml = render(dir.path(), &spec(dir.path(), "{secureBoot: true}", true));

    let (loader_attrs, loader) = element(&xml, "loader").expect("a <loader> element");
    assert!(
        Path::new(loader).is_file(),
        "loader {loader} does not exist"
    );
    assert!(
        loader_attrs.contains("secure='yes'") || loader_attrs.contains("secure=\"yes\""),
        "secure boot loader not marked secure: {loader_attrs}"
    );
    assert!(xml.contains("<smm"), "secure boot needs SMM in <features>");
    assert_schema_valid(dir.path(), &xml);
}
