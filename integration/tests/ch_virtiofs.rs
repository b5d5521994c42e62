//! virtio-fs under the real Cloud Hypervisor: a PVC volume shared through
//! `filesystems[].virtiofs` gets a virtiofsd the launcher starts (QEMU's or
//! Debian's), CH attaches it (its own `vm.info` shows the tag, the socket
//! and shared guest memory), and the daemon and its socket are gone with
//! the VM.
//!
//! Needs the real Cloud Hypervisor and a virtiofsd; otherwise a SKIP line.

mod ch_support;

use ch_support::{wait_file_contains, Launcher, VmOptions, SLOW};
use std::path::Path;
use std::time::{Duration, Instant};

fn spec(kernel: &Path) -> String {
    format!(
        "\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: virtiofs
spec:
  hypervisor: cloud-hypervisor
  domain:
    memory:
      guest: 64Mi
    firmware:
      kernelBoot:
        container:
          kernelPath: {kernel}
    devices:
      filesystems:
      - name: share
        virtiofs: {{}}
  volumes:
  - name: share
    persistentVolumeClaim:
      claimName: shared-data
  terminationGracePeriodSeconds: 1
",
        kernel = kernel.display()
    )
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn a_shared_volume_gets_a_supervised_virtiofsd_that_goes_with_the_vm() {
    if std::env::var_os(ch_support::CH_BIN_ENV).is_none_or(|v| v.is_empty()) {
        eprintln!(
            "SKIP: needs the real cloud-hypervisor ({})",
            ch_support::CH_BIN_ENV
        );
        return;
    }
    if let Err(why) = ch_launcher::virtiofs::binary() {
        eprintln!("SKIP: {why}");
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let mounts = scratch.path().join("mounts");
    let shared = mounts.join("vmi-disks/share");
    std::fs::create_dir_all(&shared).expect("mkdir");
    std::fs::write(shared.join("hello.txt"), "from the host\n").expect("write");
    let mut launcher = Launcher::start(VmOptions {
        spec: Some(spec(images::test_guest())),
        run_args: vec!["--mounts-dir".into(), mounts.display().to_string()],
        ..VmOptions::default()
    });
    wait_file_contains(&launcher.serial_log(), "TINY-GUEST-UP");
    let info = integration::unix_http::ch_vm_info(&launcher.vm_dir().join("ch-api.sock"))
        .expect("vm.info");
    let fs = &info["config"]["fs"][0];
    assert_eq!(fs["tag"], "share", "{info}");
    let socket = launcher.vm_dir().join("virtiofs-0.sock");
    assert_eq!(fs["socket"], socket.display().to_string());
    assert_eq!(
        info["config"]["memory"]["shared"], true,
        "vhost-user needs shared memory"
    );
    let daemons = processes_with(&socket.display().to_string());
    assert!(
        !daemons.is_empty(),
        "no virtiofsd serving {}",
        socket.display()
    );
    // No disk was made of the shared volume.
    assert!(
        info["config"]["disks"]
            .as_array()
            .is_none_or(|d| d.is_empty()),
        "{info}"
    );

    let mut console = launcher.console();
    console.send(b"q");
    let exit = launcher.expect_exit(SLOW);
    assert_eq!(exit.code(), Some(0), "{}", launcher.logs_text());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_with(&socket.display().to_string()).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        processes_with(&socket.display().to_string()).is_empty(),
        "virtiofsd outlived the VM"
    );
    assert!(!socket.exists(), "the socket outlived the VM");
}
