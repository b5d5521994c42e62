//! Spec-level rendering corpus: VMI specs go through the real CLI
//! (`ch-launcher render --hypervisor libvirt`: parsing, defaults, resolution,
//! firmware choice, translation) and every resulting document must validate
//! against libvirt's schema (`virt-xml-validate`, SKIP when absent, a
//! failure under `CH_LAUNCHER_REQUIRE_LIBVIRT=1`).
//! Features only QEMU has are accepted for libvirt and refused for Cloud
//! Hypervisor, each refusal naming its field.

use integration::launcher_path;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Specs covering what the libvirt backend maps; `@DIR@` is the scratch
/// directory (disk images are created there by DiskOrCreate at run time,
/// so rendering needs no file).
const SPECS: &[(&str, &str)] = &[
    (
        "disks-cdrom-efi-rng-cpu-model",
        "\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: many-devices
spec:
  domain:
    cpu:
      sockets: 2
      cores: 2
      threads: 1
      model: Skylake-Server
    memory:
      guest: 1Gi
    firmware:
      serial: SN-0001
      bootloader:
        efi:
          secureBoot: false
    devices:
      rng: {}
      disks:
      - name: installer
        bootOrder: 1
        cdrom:
          bus: sata
      - name: root
        serial: ROOT-1
        bootOrder: 2
        disk:
          bus: virtio
      - name: data
        cache: none
        io: native
        shareable: true
        blockSize:
          custom:
            logical: 512
            physical: 4096
        disk:
          bus: scsi
  volumes:
  - name: installer
    hostDisk:
      path: @DIR@/installer.iso
      type: DiskOrCreate
      capacity: 1Mi
  - name: root
    hostDisk:
      path: @DIR@/root.img
      type: DiskOrCreate
      capacity: 1Gi
  - name: data
    hostDisk:
      path: @DIR@/data.img
      type: DiskOrCreate
      capacity: 1Gi
",
    ),
    (
        "hugepages-clock-tablet-host-passthrough",
        "\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: clock-and-inputs
  namespace: tenant-a
spec:
  domain:
    cpu:
      model: host-passthrough
    memory:
      guest: 512Mi
      hugepages:
        pageSize: 2Mi
    clock:
      timezone: Europe/Berlin
      timer:
        rtc:
          tickPolicy: catchup
          track: guest
        hpet:
          present: false
        kvm: {}
    devices:
      inputs:
      - name: tablet0
        type: tablet
        bus: virtio
    firmware:
      kernelBoot:
        container:
          kernelPath: @DIR@/vmlinuz
          initrdPath: @DIR@/initrd
        kernelArgs: console=ttyS0 root=/dev/vda
",
    ),
    (
        "masquerade-interfaces-models-pci-boot",
        "\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: nics
spec:
  domain:
    memory:
      guest: 256Mi
    devices:
      interfaces:
      - name: default
        masquerade: {}
        ports:
        - port: 22
      - name: second
        masquerade: {}
        model: e1000
        macAddress: 02:00:00:00:00:07
        pciAddress: 0000:00:09.0
        bootOrder: 1
  networks:
  - name: default
    pod: {}
  - name: second
    pod:
      vmNetworkCIDR: 10.1.0.0/24
",
    ),
];

fn write_spec(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    let text = text.replace("@DIR@", &dir.display().to_string());
    std::fs::write(&path, text).expect("write spec");
    // Direct kernel boot names files that must exist.
    for file in ["vmlinuz", "initrd"] {
        std::fs::write(dir.join(file), b"").expect("write boot file");
    }
    path
}

fn cli(dir: &Path, args: &[&str], spec: &Path) -> Output {
    Command::new(launcher_path())
        .arg("--private-dir")
        .arg(dir.join("private"))
        .args(args)
        .arg(spec)
        .output()
        .expect("ch-launcher runs")
}

fn virt_xml_validate() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("virt-xml-validate"))
        .find(|p| p.is_file())
}

#[test]
fn every_spec_renders_to_schema_valid_libvirt_xml() {
    let dir = tempfile::tempdir().unwrap();
    let validator = virt_xml_validate();
    if validator.is_none() {
        assert!(
            std::env::var("CH_LAUNCHER_REQUIRE_LIBVIRT").as_deref() != Ok("1"),
            "virt-xml-validate not installed, and CH_LAUNCHER_REQUIRE_LIBVIRT=1 requires it \
             (apt-get install libvirt-clients libxml2-utils)"
        );
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            concat!(
                "SKIP: virt-xml-validate not installed; only checking that rendering succeeds",
                "\n"
            )
            .as_bytes(),
        );
    }
    let test_guest = images::TestGuestSpec::new(
        domain_model::Hypervisor::Libvirt,
        images::Variant::Interactive,
    )
    .write(dir.path())
    .expect("test guest spec");
    let mut specs = vec![("test-guest".to_owned(), test_guest)];
    for (name, text) in SPECS {
        specs.push((name.to_string(), write_spec(dir.path(), name, text)));
    }
    for (name, spec) in specs {
        let out = cli(dir.path(), &["render", "--hypervisor", "libvirt"], &spec);
        assert!(
            out.status.success(),
            "{name}: render failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let xml = String::from_utf8(out.stdout).expect("UTF-8 XML");
        assert!(xml.starts_with("<domain type=\"kvm\">"), "{name}: {xml}");
        let file = dir.path().join(format!("{name}.xml"));
        std::fs::write(&file, &xml).unwrap();
        if let Some(validator) = &validator {
            let v = Command::new(validator)
                .arg(&file)
                .arg("domain")
                .output()
                .expect("virt-xml-validate runs");
            assert!(
                v.status.success(),
                "{name}: not valid libvirt XML:\n{}{}\n{xml}",
                String::from_utf8_lossy(&v.stdout),
                String::from_utf8_lossy(&v.stderr)
            );
        }
    }
}

#[test]
fn qemu_only_features_pass_for_libvirt_and_are_refused_for_cloud_hypervisor() {
    let dir = tempfile::tempdir().unwrap();
    let spec = write_spec(dir.path(), SPECS[0].0, SPECS[0].1);

    let libvirt = cli(dir.path(), &["validate", "--hypervisor", "libvirt"], &spec);
    assert!(
        libvirt.status.success(),
        "{}",
        String::from_utf8_lossy(&libvirt.stderr)
    );

    let ch = cli(
        dir.path(),
        &["validate", "--hypervisor", "cloud-hypervisor"],
        &spec,
    );
    assert_eq!(ch.status.code(), Some(2));
    let errors = String::from_utf8_lossy(&ch.stderr);
    for field in [
        "spec.domain.devices.disks[0].cdrom",
        "spec.domain.devices.disks[2].disk",
        "spec.domain.cpu.model",
    ] {
        assert!(errors.contains(field), "{field} not named in:\n{errors}");
    }

    let explain = cli(dir.path(), &["validate", "--explain"], &spec);
    let table = String::from_utf8_lossy(&explain.stdout);
    assert!(explain.status.success(), "{table}");
    assert!(
        table.contains("cdrom disks (spec.domain.devices.disks[0].cdrom)"),
        "{table}"
    );
    assert!(table.contains("cloud-hypervisor  no:"), "{table}");
}
