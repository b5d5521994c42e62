//! Changing a running VM in place under the real Cloud Hypervisor, from the
//! CLI: vCPUs up and down (`vm.resize`), memory up by ACPI hotplug, a disk
//! hot-added (`vm.add-disk`) and removed (`vm.remove-device`), each checked
//! in CH's own `vm.info`, with `status` showing what is in effect; and the
//! limits (past maxSockets/maxGuest, shrinking memory, the spec's disk, a
//! second attach) refused with the VM untouched.
//!
//! Needs the real Cloud Hypervisor (`CLOUD_HYPERVISOR_BIN`); otherwise a
//! SKIP line.

mod ch_support;

use ch_support::{wait_file_contains, Launcher, VmOptions, SLOW};
use serde_json::Value;
use std::path::Path;

const MI: u64 = 1 << 20;

fn spec(kernel: &Path, root: &Path) -> String {
    format!(
        "\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: hotplug
spec:
  hypervisor: cloud-hypervisor
  domain:
    cpu:
      sockets: 1
      cores: 1
      threads: 1
      maxSockets: 4
    memory:
      guest: 64Mi
      maxGuest: 320Mi
    firmware:
      kernelBoot:
        container:
          kernelPath: {kernel}
    devices:
      disks:
      - name: root
        disk: {{bus: virtio}}
  volumes:
  - name: root
    hostDisk:
      path: {root}
      type: DiskOrCreate
      capacity: 8Mi
  terminationGracePeriodSeconds: 1
",
        kernel = kernel.display(),
        root = root.display()
    )
}

fn vm_info(launcher: &Launcher) -> Value {
    integration::unix_http::ch_vm_info(&launcher.vm_dir().join("ch-api.sock")).expect("vm.info")
}

fn disk_ids(info: &Value) -> Vec<String> {
    info["config"]["disks"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|d| d["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Runs a control command that must succeed; its printed status.
fn ok(launcher: &Launcher, command: &str, args: &[&str]) -> Value {
    let out = launcher.ctl_args(command, args);
    assert!(
        out.status.success(),
        "`{command} {args:?}` failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        launcher.logs_text()
    );
    serde_json::from_slice(&out.stdout).expect("status JSON")
}

/// Runs a control command that must be refused; its message.
fn refused(launcher: &Launcher, command: &str, args: &[&str]) -> String {
    let out = launcher.ctl_args(command, args);
    assert!(!out.status.success(), "`{command} {args:?}` was accepted");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn vcpus_memory_and_disks_change_in_place_and_limits_leave_the_vm_untouched() {
    if std::env::var_os(ch_support::CH_BIN_ENV).is_none_or(|v| v.is_empty()) {
        eprintln!(
            "SKIP: needs the real cloud-hypervisor ({})",
            ch_support::CH_BIN_ENV
        );
        return;
    }
    let scratch = tempfile::tempdir().expect("tempdir");
    let data = scratch.path().join("data.img");
    std::fs::File::create(&data)
        .and_then(|f| f.set_len(4 * MI))
        .expect("data image");
    let mut launcher = Launcher::start(VmOptions {
        spec: Some(spec(images::test_guest(), &scratch.path().join("root.img"))),
        ..VmOptions::default()
    });
    wait_file_contains(&launcher.serial_log(), "TINY-GUEST-UP");
    let status = ok(&launcher, "status", &[]);
    assert_eq!(status["resources"]["vcpus"], 1, "{status}");
    assert_eq!(status["resources"]["memory"], 64 * MI);

    // Up: 3 vCPUs and 64Mi + 2 x 128Mi ACPI sections.
    let status = ok(
        &launcher,
        "resize",
        &["--sockets", "3", "--memory", "320Mi"],
    );
    assert_eq!(status["resources"]["vcpus"], 3, "{status}");
    assert_eq!(status["resources"]["memory"], 320 * MI);
    let info = vm_info(&launcher);
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 3, "{info}");
    assert_eq!(info["config"]["memory"]["size"], 320 * MI);
    assert_eq!(info["memory_actual_size"], 320 * MI);

    // Down again in vCPUs.
    let status = ok(&launcher, "resize", &["--sockets", "2"]);
    assert_eq!(status["resources"]["sockets"], 2);
    assert_eq!(vm_info(&launcher)["config"]["cpus"]["boot_vcpus"], 2);

    // Limits: refused before CH is asked, nothing changes.
    for (args, want) in [
        (&["--sockets", "5"][..], "maxSockets (4)"),
        (&["--memory", "448Mi"][..], "maxGuest (320Mi)"),
        (&["--memory", "192Mi"][..], "cannot shrink"),
        (&["--memory", "32Mi"][..], "spec.domain.memory.guest (64Mi)"),
    ] {
        let message = refused(&launcher, "resize", args);
        assert!(message.contains(want), "{args:?}: {message}");
    }
    let info = vm_info(&launcher);
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 2);
    assert_eq!(info["config"]["memory"]["size"], 320 * MI);

    // A disk, hot-added and removed.
    let data_arg = data.to_str().expect("utf-8");
    let status = ok(
        &launcher,
        "attach-disk",
        &["--name", "data", "--path", data_arg],
    );
    let disks = status["resources"]["disks"]
        .as_array()
        .expect("disks")
        .clone();
    let hot = disks
        .iter()
        .find(|d| d["name"] == "data")
        .expect("data in status");
    assert_eq!(hot["hotplugged"], true);
    let bdf = hot["guest_address"]
        .as_str()
        .expect("the PCI address CH gave");
    assert!(bdf.starts_with("0000:00:"), "{bdf}");
    let info = vm_info(&launcher);
    assert!(disk_ids(&info).contains(&"data".to_string()), "{info}");
    assert!(
        info["device_tree"].get("data").is_some(),
        "not in CH's device tree: {info}"
    );

    for (command, args, want) in [
        (
            "attach-disk",
            vec!["--name", "data", "--path", data_arg],
            "already attached",
        ),
        (
            "attach-disk",
            vec!["--name", "again", "--path", data_arg],
            "one image, one disk",
        ),
        ("detach-disk", vec!["--name", "root"], "from the spec"),
        ("detach-disk", vec!["--name", "nope"], "no disk named"),
    ] {
        let message = refused(&launcher, command, &args);
        assert!(message.contains(want), "{command} {args:?}: {message}");
    }
    assert_eq!(disk_ids(&vm_info(&launcher)), ["root", "data"]);

    let status = ok(&launcher, "detach-disk", &["--name", "data"]);
    let names: Vec<&str> = status["resources"]["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(names, ["root"]);
    assert_eq!(disk_ids(&vm_info(&launcher)), ["root"]);

    // The guest still runs and answers.
    let mut console = launcher.console();
    console.send(b"hp");
    console.expect(b"hp");
    console.send(b"q");
    let exit = launcher.expect_exit(SLOW);
    assert_eq!(exit.code(), Some(0), "{}", launcher.logs_text());
}

/// The vCPU thread of `ch_pid` named `vcpu<N>`: its allowed CPUs.
fn vcpu_affinity(ch_pid: u32, n: u32) -> Option<String> {
    for task in std::fs::read_dir(format!("/proc/{ch_pid}/task"))
        .ok()?
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == format!("vcpu{n}") {
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            return status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|s| s.trim().to_string());
        }
    }
    None
}

#[test]
fn dedicated_cpu_placement_pins_each_vcpu_to_a_cpu_of_the_pods_cpuset() {
    if std::env::var_os(ch_support::CH_BIN_ENV).is_none_or(|v| v.is_empty()) {
        eprintln!(
            "SKIP: needs the real cloud-hypervisor ({})",
            ch_support::CH_BIN_ENV
        );
        return;
    }
    let cpuset = ch_launcher::host::pod_cpuset().expect("cpuset");
    let scratch = tempfile::tempdir().expect("tempdir");
    let text = spec(images::test_guest(), &scratch.path().join("root.img")).replace(
        "      maxSockets: 4\n",
        "      maxSockets: 1\n      dedicatedCpuPlacement: true\n",
    );
    let mut launcher = Launcher::start(VmOptions {
        spec: Some(text.clone()),
        ..VmOptions::default()
    });
    wait_file_contains(&launcher.serial_log(), "TINY-GUEST-UP");
    let info = vm_info(&launcher);
    let affinity = &info["config"]["cpus"]["affinity"];
    assert_eq!(affinity[0]["vcpu"], 0, "{info}");
    assert_eq!(affinity[0]["host_cpus"][0], cpuset[0], "{info}");
    let allowed = vcpu_affinity(launcher.vmm_pid().as_raw() as u32, 0).expect("vcpu0 thread");
    assert_eq!(
        allowed,
        cpuset[0].to_string(),
        "vcpu0 runs where it was pinned"
    );
    let mut console = launcher.console();
    console.send(b"q");
    assert_eq!(launcher.expect_exit(SLOW).code(), Some(0));

    // More vCPUs than the cpuset has CPUs: refused before CH starts.
    let too_many = (cpuset.len() + 1).to_string();
    let text = text
        .replace(
            "      sockets: 1\n",
            &format!("      sockets: {too_many}\n"),
        )
        .replace(
            "      maxSockets: 1\n",
            &format!("      maxSockets: {too_many}\n"),
        );
    let spec_file = scratch.path().join("too-many.yaml");
    std::fs::write(&spec_file, text).expect("write");
    let out = std::process::Command::new(integration::launcher_path())
        .arg("render")
        .arg(&spec_file)
        .output()
        .expect("render");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.domain.cpu.dedicatedCpuPlacement"),
        "{err}"
    );
    assert!(err.contains("a dedicated CPU each"), "{err}");
}
