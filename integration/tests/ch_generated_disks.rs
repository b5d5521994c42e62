//! `emptyDisk`, `cloudInitNoCloud`, `cloudInitConfigDrive`, `configMap` and
//! a filesystem-mode `persistentVolumeClaim` under the real Cloud Hypervisor: the launcher makes the images in the ephemeral disk
//! directory, CH attaches them (its own `vm.info` names them), the
//! cloud-init images are ISO 9660 that `isoinfo` (genisoimage) reads with
//! KubeVirt's volume ids and files, and all of it is gone once the VM is.
//!
//! Needs the real Cloud Hypervisor (`CLOUD_HYPERVISOR_BIN`); otherwise a
//! SKIP line.

mod ch_support;

use ch_support::{wait_file_contains, Launcher, VmOptions, SLOW};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BANNER: &str = "TINY-GUEST-UP";

fn spec(kernel: &Path) -> String {
    format!(
        "\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: gen-disks
  namespace: tests
spec:
  hypervisor: cloud-hypervisor
  domain:
    memory:
      guest: 64Mi
    firmware:
      uuid: 0b6a2a8e-8a8e-4f57-9a43-3a7c36f0e0a1
      kernelBoot:
        container:
          kernelPath: {kernel}
    devices:
      disks:
      - name: scratch
        disk: {{bus: virtio}}
      - name: cidata
        disk: {{bus: virtio}}
      - name: config
        disk: {{bus: virtio}}
      - name: settings
        disk: {{bus: virtio}}
      - name: data
        disk: {{bus: virtio}}
  volumes:
  - name: settings
    configMap:
      name: app-settings
      volumeLabel: SETTINGS
  - name: data
    persistentVolumeClaim:
      claimName: data-claim
  - name: scratch
    emptyDisk:
      capacity: 64Mi
  - name: cidata
    cloudInitNoCloud:
      userData: |
        #cloud-config
        password: from-the-test
      networkDataBase64: dmVyc2lvbjogMgo=
  - name: config
    cloudInitConfigDrive:
      userData: |
        #cloud-config
        hostname: config-drive
  terminationGracePeriodSeconds: 1
",
        kernel = kernel.display()
    )
}

/// `isoinfo` from genisoimage, or a SKIP line.
fn isoinfo(image: &Path, args: &[&str]) -> Option<String> {
    let out = match Command::new("isoinfo")
        .args(args)
        .arg("-i")
        .arg(image)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("SKIP: isoinfo (genisoimage) not runnable ({e}); the ISO check is left out");
            return None;
        }
    };
    assert!(out.status.success(), "isoinfo {args:?}: {out:?}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn launcher_made_disks_are_attached_readable_and_removed_with_the_vm() {
    if std::env::var_os(ch_support::CH_BIN_ENV).is_none_or(|v| v.is_empty()) {
        eprintln!(
            "SKIP: needs the real cloud-hypervisor ({})",
            ch_support::CH_BIN_ENV
        );
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let ephemeral = scratch.path().join("ephemeral");
    // The pod's mounts: a ConfigMap as Kubernetes lays it out (files are
    // symlinks into a `..data` directory) and a filesystem-mode PVC.
    let mounts = scratch.path().join("mounts");
    let cm = mounts.join("config-map/settings");
    std::fs::create_dir_all(cm.join("..2026_12_03_00_00_00.1")).expect("mkdir");
    std::fs::write(cm.join("..2026_12_03_00_00_00.1/app.conf"), "mode=fast\n").expect("write");
    std::os::unix::fs::symlink("..2026_12_03_00_00_00.1", cm.join("..data")).expect("symlink");
    std::os::unix::fs::symlink("..data/app.conf", cm.join("app.conf")).expect("symlink");
    let pvc = mounts.join("vmi-disks/data/disk.img");
    std::fs::create_dir_all(pvc.parent().expect("parent")).expect("mkdir");
    std::fs::File::create(&pvc)
        .and_then(|f| f.set_len(8 << 20))
        .expect("pvc image");
    let mut launcher = Launcher::start(VmOptions {
        spec: Some(spec(images::test_guest())),
        run_args: vec![
            "--ephemeral-disk-dir".into(),
            ephemeral.display().to_string(),
            "--mounts-dir".into(),
            mounts.display().to_string(),
        ],
        ..VmOptions::default()
    });
    wait_file_contains(&launcher.serial_log(), BANNER);
    let images = ephemeral.join(launcher.uid());

    // Cloud Hypervisor's own view: all three are its disks.
    let info = integration::unix_http::ch_vm_info(&launcher.vm_dir().join("ch-api.sock"))
        .expect("vm.info");
    let attached: Vec<&str> = info["config"]["disks"]
        .as_array()
        .expect("disks in vm.info")
        .iter()
        .filter_map(|d| d["path"].as_str())
        .collect();
    assert!(
        attached.contains(&pvc.to_str().expect("utf-8")),
        "the PVC's disk.img is attached as it is: {attached:?}"
    );
    assert!(
        attached.contains(&images.join("settings.iso").to_str().expect("utf-8")),
        "{attached:?}"
    );
    for volume in ["scratch", "cidata", "config"] {
        let path = images.join(format!("{volume}.img"));
        assert!(
            attached.contains(&path.to_str().expect("utf-8")),
            "{volume} not attached: {attached:?}"
        );
    }

    // emptyDisk: sparse, of its capacity.
    let meta = std::fs::metadata(images.join("scratch.img")).expect("scratch image");
    assert_eq!(meta.len(), 64 << 20);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 1 << 20,
        "emptyDisk is not sparse"
    );

    // cloud-init: what cloud-init's NoCloud and ConfigDrive sources look for.
    let cidata = images.join("cidata.img");
    if let Some(d) = isoinfo(&cidata, &["-d"]) {
        assert!(d.contains("Volume id: cidata"), "{d}");
        assert!(d.contains("Rock Ridge"), "no Rock Ridge names: {d}");
        let user = isoinfo(&cidata, &["-R", "-x", "/user-data"]).expect("isoinfo");
        assert!(user.contains("password: from-the-test"), "{user}");
        let meta = isoinfo(&cidata, &["-R", "-x", "/meta-data"]).expect("isoinfo");
        let meta: serde_json::Value = serde_json::from_str(&meta).expect("meta-data JSON");
        assert_eq!(meta["instance-id"], "0b6a2a8e-8a8e-4f57-9a43-3a7c36f0e0a1");
        assert_eq!(meta["local-hostname"], "gen-disks");
        let net = isoinfo(&cidata, &["-R", "-x", "/network-config"]).expect("isoinfo");
        assert_eq!(net, "version: 2\n");

        let config = images.join("config.img");
        let d = isoinfo(&config, &["-d"]).expect("isoinfo");
        assert!(d.contains("Volume id: config-2"), "{d}");
        let user = isoinfo(&config, &["-R", "-x", "/openstack/latest/user_data"]).expect("isoinfo");
        assert!(user.contains("hostname: config-drive"), "{user}");
        let meta =
            isoinfo(&config, &["-R", "-x", "/openstack/latest/meta_data.json"]).expect("isoinfo");
        let meta: serde_json::Value = serde_json::from_str(&meta).expect("meta_data.json");
        assert_eq!(meta["instance_id"], "gen-disks.tests");

        let settings = images.join("settings.iso");
        let d = isoinfo(&settings, &["-d"]).expect("isoinfo");
        assert!(d.contains("Volume id: SETTINGS"), "{d}");
        let conf = isoinfo(&settings, &["-R", "-x", "/app.conf"]).expect("isoinfo");
        assert_eq!(conf, "mode=fast\n");
        let listing = isoinfo(&settings, &["-R", "-l"]).expect("isoinfo");
        assert!(
            !listing.contains("..data"),
            "Kubernetes' own entries copied: {listing}"
        );
    }

    let mut console = launcher.console();
    console.send(b"q");
    let exit = launcher.expect_exit(SLOW);
    assert_eq!(exit.code(), Some(0), "{}", launcher.logs_text());
    let deadline = std::time::Instant::now() + SLOW;
    while images.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !images.exists(),
        "launcher-made images left behind: {:?}",
        std::fs::read_dir(&images).map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
    );
}
