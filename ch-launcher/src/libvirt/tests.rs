//! Rendering tests: a corpus of Domains covering every mapped feature, golden
//! assertions on elements and attributes (the XML is parsed back), and
//! validation of every document against libvirt's own schema.

use super::render::{build, nvram_dir, render, vnc_socket_path, RenderContext};
use crate::paths::VmPaths;
use domain_model::fixtures;
use domain_model::*;
use firmware::{LibvirtFirmware, LibvirtLoader, LibvirtNvram, LoaderType};
use quick_xml::events::Event as XmlEvent;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const UUID: &str = "5a9fc181-957e-5c32-9e5a-2de5e9673531";

/// The tiny test guest: direct kernel boot, serial console, nothing else.
fn tiny_guest() -> Domain {
    fixtures::domain()
        .with_hypervisor(Hypervisor::Libvirt)
        .with_uid(UUID)
        .with_cpu_model(CpuModel::HostPassthrough)
        .with_boot(fixtures::kernel_boot("/var/lib/images/tiny-guest.elf"))
}

fn disk(index: usize, name: &str, device: DiskDevice, bus: DiskBus, path: &str) -> Disk {
    Disk {
        device,
        bus,
        ..fixtures::disk(index, name, path)
    }
}

fn ctx() -> RenderContext {
    RenderContext {
        paths: VmPaths::new(Path::new("/var/run/kubevirt-private"), "0f4c-uid"),
        firmware: None,
        confidential: Default::default(),
        cpu_quirks: Vec::new(),
    }
}

/// A host whose KVM refuses IA32_ARCH_CAPABILITIES, as the recorded AMD
/// EPYC probe in `tests/data/cpu-probe/` shows.
fn quirky_host() -> RenderContext {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/cpu-probe/amd-epyc-nested-arch-capabilities-refused.json");
    RenderContext {
        cpu_quirks: crate::host::cpu::CpuProbe::load(&path).unwrap().quirks(),
        ..ctx()
    }
}

fn with_cpu_features(features: &[(&str, CpuFeaturePolicy)]) -> Domain {
    tiny_guest().with_cpu_features(features)
}

fn with_firmware(firmware: LibvirtFirmware) -> RenderContext {
    RenderContext {
        firmware: Some(firmware),
        ..ctx()
    }
}

/// An EFI guest booting its one virtio disk.
fn efi_guest(secure_boot: bool) -> Domain {
    tiny_guest()
        .with_boot(fixtures::efi_boot(secure_boot))
        .with_disks(vec![fixtures::disk(0, "rootdisk", "/img/root.raw")])
}

/// What the firmware crate makes of Debian's OVMF descriptors.
fn ovmf_firmware(code: &str, vars: &str, secure: bool) -> LibvirtFirmware {
    LibvirtFirmware::Loader {
        loader: LibvirtLoader {
            path: code.into(),
            loader_type: LoaderType::Pflash,
            readonly: true,
            secure,
            stateless: false,
            format: Some("raw".into()),
        },
        nvram: Some(LibvirtNvram {
            template: vars.into(),
            template_format: Some("raw".into()),
            path: nvram_dir(&ctx().paths).join("default_tiny_VARS.fd"),
            format: Some("raw".into()),
        }),
        smm: secure,
        secure_boot: secure,
        enrolled_keys: secure,
    }
}

fn ovmf() -> LibvirtFirmware {
    ovmf_firmware(
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
        false,
    )
}

fn ovmf_secure() -> LibvirtFirmware {
    ovmf_firmware(
        "/usr/share/OVMF/OVMF_CODE_4M.ms.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
        true,
    )
}

/// Every spec shape the libvirt backend renders, each with its context.
/// The corpus document called `name`.
fn corpus_case(name: &str) -> (&'static str, Domain, RenderContext) {
    corpus()
        .into_iter()
        .find(|(n, _, _)| *n == name)
        .unwrap_or_else(|| panic!("no corpus case {name:?}"))
}

fn corpus() -> Vec<(&'static str, Domain, RenderContext)> {
    let mut out = vec![("tiny-guest", tiny_guest(), ctx())];

    let mut d = tiny_guest();
    d.disks = vec![
        disk(
            0,
            "rootdisk",
            DiskDevice::Disk,
            DiskBus::Virtio,
            "/img/root.qcow2",
        ),
        disk(1, "data", DiskDevice::Disk, DiskBus::Sata, "/img/data.raw"),
        disk(
            2,
            "scratch",
            DiskDevice::Disk,
            DiskBus::Scsi,
            "/img/scratch.raw",
        ),
        disk(3, "stick", DiskDevice::Disk, DiskBus::Usb, "/img/stick.raw"),
        disk(
            4,
            "second",
            DiskDevice::Disk,
            DiskBus::Virtio,
            "/img/second.raw",
        ),
    ];
    d.disks[0].source.format = ImageFormat::Qcow2;
    d.disks[0].boot_order = Some(1);
    d.disks[0].serial = Some("ROOT-0001".into());
    d.disks[4].readonly = true;
    out.push(("disks-every-bus", d, ctx()));

    let mut d = tiny_guest();
    d.boot = Boot::Bios;
    d.disks = vec![
        disk(
            0,
            "installer",
            DiskDevice::Cdrom,
            DiskBus::Sata,
            "/img/install.iso",
        ),
        disk(
            1,
            "rootdisk",
            DiskDevice::Disk,
            DiskBus::Virtio,
            "/img/root.raw",
        ),
    ];
    d.disks[0].boot_order = Some(1);
    d.disks[1].boot_order = Some(2);
    out.push(("cdrom-bios", d, ctx()));

    out.push(("efi", efi_guest(false), with_firmware(ovmf())));

    let mut d = tiny_guest();
    d.machine_type = Some("pc-q35-7.2".into());
    out.push(("machine-type", d, ctx()));

    out.push((
        "efi-secure-boot",
        efi_guest(true).with_smm(),
        with_firmware(ovmf_secure()),
    ));

    let mut d = tiny_guest();
    d.memory = Memory {
        guest: 1 << 30,
        max_guest: None,
        hugepage_size: Some(2 << 20),
    };
    out.push(("hugepages", d, ctx()));

    let mut d = tiny_guest();
    d.memory.guest = 1 << 30;
    d.memory.max_guest = Some(4 << 30);
    out.push(("memory-hotplug", d, ctx()));

    let mut d = tiny_guest();
    d.cpu = Cpu {
        sockets: 2,
        cores: 2,
        threads: 2,
        max_sockets: 4,
        model: CpuModel::Named("Skylake-Server".into()),
        features: Vec::new(),
        dedicated: false,
    };
    out.push(("topology-named-model", d, ctx()));

    for (name, model) in [
        ("cpu-features-host-model", CpuModel::HostModel),
        ("cpu-features-host-passthrough", CpuModel::HostPassthrough),
        ("cpu-features-named-model", CpuModel::Named("EPYC".into())),
    ] {
        let mut d = with_cpu_features(&[
            ("avx2", CpuFeaturePolicy::Require),
            ("vmx", CpuFeaturePolicy::Disable),
            ("pcid", CpuFeaturePolicy::Optional),
            ("x2apic", CpuFeaturePolicy::Force),
            ("svm", CpuFeaturePolicy::Forbid),
        ]);
        d.cpu.model = model;
        out.push((name, d, quirky_host()));
    }

    let mut d = tiny_guest();
    d.cpu.model = CpuModel::HostModel;
    d.devices.rng = true;
    d.firmware.serial = Some("SN-<&>'\"-42".into());
    d.clock = Some(Clock {
        spec_path: "spec.domain.clock".into(),
        offset: ClockOffset::Timezone {
            name: "Europe/Paris".into(),
        },
        timers: vec![
            Timer {
                name: TimerName::Hpet,
                present: Some(false),
                tick_policy: None,
                track: None,
            },
            Timer {
                name: TimerName::Rtc,
                present: Some(true),
                tick_policy: Some(TickPolicy::Catchup),
                track: Some(TimerTrack::Guest),
            },
            Timer {
                name: TimerName::Pit,
                present: None,
                tick_policy: Some(TickPolicy::Delay),
                track: None,
            },
            Timer {
                name: TimerName::Kvm,
                present: None,
                tick_policy: None,
                track: None,
            },
        ],
    });
    if let Boot::Kernel {
        initrd, cmdline, ..
    } = &mut d.boot
    {
        *initrd = Some("/var/lib/images/initrd.img".into());
        *cmdline = Some("console=ttyS0 quiet a=\"<b>\" & c".into());
    }
    out.push(("host-model-rng-clock-smbios-initrd", d, ctx()));

    let mut d = tiny_guest();
    d.devices.graphics = Some(SpecFeature {
        spec_path: "spec.domain.devices.autoattachGraphicsDevice".into(),
        kind: "vnc".into(),
    });
    d.devices.inputs = vec![
        Input {
            spec_path: "spec.domain.devices.inputs[0]".into(),
            kind: InputKind::Tablet,
            bus: InputBus::Usb,
        },
        Input {
            spec_path: "spec.domain.devices.inputs[1]".into(),
            kind: InputKind::Tablet,
            bus: InputBus::Virtio,
        },
    ];
    out.push(("vnc-inputs", d, ctx()));

    let mut d = tiny_guest();
    d.devices.serial_console = false;
    d.features.acpi = false;
    out.push(("no-console-no-acpi", d, ctx()));

    let mut d = tiny_guest();
    d.clock = Some(Clock {
        spec_path: "spec.domain.clock".into(),
        offset: ClockOffset::Utc {
            adjustment_seconds: -1800,
        },
        timers: vec![Timer {
            name: TimerName::Hyperv,
            present: Some(true),
            tick_policy: None,
            track: None,
        }],
    });
    out.push(("utc-offset-clock", d, ctx()));

    out
}

/// A parsed element, enough to assert on structure (shared with the
/// launch security tests).
#[derive(Debug, Default)]
pub(crate) struct Node {
    pub(crate) name: String,
    attrs: BTreeMap<String, String>,
    pub(crate) text: String,
    pub(crate) children: Vec<Node>,
}

impl Node {
    pub(crate) fn parse(xml: &str) -> Node {
        let mut reader = quick_xml::Reader::from_str(xml);
        let mut stack = vec![Node::default()];
        loop {
            match reader.read_event().expect("rendered XML parses") {
                XmlEvent::Start(e) => stack.push(Node::from_start(&e)),
                XmlEvent::Empty(e) => {
                    let node = Node::from_start(&e);
                    stack.last_mut().unwrap().children.push(node);
                }
                XmlEvent::Text(t) => {
                    let text = t.unescape().expect("text unescapes");
                    stack.last_mut().unwrap().text.push_str(text.trim());
                }
                XmlEvent::End(_) => {
                    let node = stack.pop().unwrap();
                    stack.last_mut().unwrap().children.push(node);
                }
                XmlEvent::Eof => break,
                _ => {}
            }
        }
        let mut root = stack.pop().unwrap();
        assert_eq!(root.children.len(), 1, "one root element");
        root.children.remove(0)
    }

    fn from_start(e: &quick_xml::events::BytesStart) -> Node {
        Node {
            name: String::from_utf8_lossy(e.name().as_ref()).into_owned(),
            attrs: e
                .attributes()
                .map(|a| {
                    let a = a.expect("attribute parses");
                    (
                        String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                        a.unescape_value().expect("value unescapes").into_owned(),
                    )
                })
                .collect(),
            ..Node::default()
        }
    }

    /// Every element at a `/`-separated path below this one.
    pub(crate) fn all(&self, path: &str) -> Vec<&Node> {
        let mut current = vec![self];
        for step in path.split('/') {
            current = current
                .into_iter()
                .flat_map(|n| n.children.iter().filter(|c| c.name == step))
                .collect();
        }
        current
    }

    /// The first element at `path`, if any.
    pub(crate) fn get(&self, path: &str) -> Option<&Node> {
        self.all(path).into_iter().next()
    }

    pub(crate) fn one(&self, path: &str) -> &Node {
        let found = self.all(path);
        assert_eq!(
            found.len(),
            1,
            "exactly one <{path}> expected, found {}",
            found.len()
        );
        found[0]
    }

    pub(crate) fn attr(&self, name: &str) -> &str {
        self.attr_opt(name)
            .unwrap_or_else(|| panic!("<{}> has no attribute {name}", self.name))
    }

    pub(crate) fn attr_opt(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str)
    }
}

fn rendered(domain: &Domain, ctx: &RenderContext) -> Node {
    let xml = render(domain, ctx).unwrap_or_else(|e| panic!("render failed: {e}"));
    Node::parse(&xml)
}

fn cpu_features_of(dom: &Node) -> Vec<(String, String)> {
    dom.all("cpu/feature")
        .iter()
        .map(|f| (f.attr("name").to_string(), f.attr("policy").to_string()))
        .collect()
}

#[test]
fn cpu_features_render_in_spec_order_with_their_policies() {
    let d = with_cpu_features(&[
        ("avx2", CpuFeaturePolicy::Require),
        ("vmx", CpuFeaturePolicy::Disable),
        ("pcid", CpuFeaturePolicy::Optional),
        ("x2apic", CpuFeaturePolicy::Force),
        ("svm", CpuFeaturePolicy::Forbid),
    ]);
    let dom = rendered(&d, &ctx());
    let want: Vec<(String, String)> = [
        ("avx2", "require"),
        ("vmx", "disable"),
        ("pcid", "optional"),
        ("x2apic", "force"),
        ("svm", "forbid"),
    ]
    .iter()
    .map(|(n, p)| (n.to_string(), p.to_string()))
    .collect();
    assert_eq!(cpu_features_of(&dom), want);
}

#[test]
fn a_host_that_refuses_arch_capabilities_gets_it_disabled_in_every_cpu_mode() {
    for model in [
        CpuModel::HostModel,
        CpuModel::HostPassthrough,
        CpuModel::Named("EPYC".into()),
    ] {
        let mut d = tiny_guest();
        d.cpu.model = model.clone();
        let dom = rendered(&d, &quirky_host());
        assert_eq!(
            cpu_features_of(&dom),
            vec![("arch-capabilities".to_string(), "disable".to_string())],
            "{model:?}"
        );
        // The same guest on a host without the quirk keeps its CPU as is.
        assert!(cpu_features_of(&rendered(&d, &ctx())).is_empty());
    }
}

#[test]
fn requiring_arch_capabilities_on_a_host_that_refuses_it_is_refused() {
    let d = with_cpu_features(&[("arch-capabilities", CpuFeaturePolicy::Require)]);
    let errors = build(&d, &quirky_host()).unwrap_err();
    assert_eq!(errors.0.len(), 1, "{errors}");
    assert_eq!(errors.0[0].path, "spec.domain.cpu.features[0]");
    assert!(
        errors.0[0].message.contains("IA32_ARCH_CAPABILITIES"),
        "{errors}"
    );
    assert!(build(&d, &ctx()).is_ok());
}

#[test]
fn tiny_guest_renders_like_kubevirt_virt_launcher() {
    let dom = rendered(&tiny_guest(), &ctx());
    assert_eq!(dom.name, "domain");
    assert_eq!(dom.attr("type"), "kvm");
    assert_eq!(dom.one("name").text, "default_tiny");
    assert_eq!(dom.one("uuid").text, UUID);
    assert_eq!(dom.one("memory").text, (64u64 << 20).to_string());
    assert_eq!(dom.one("memory").attr("unit"), "b");
    assert_eq!(dom.one("vcpu").text, "1");
    assert!(!dom.one("vcpu").attrs.contains_key("current"));

    let os_type = dom.one("os/type");
    assert_eq!(os_type.attr("arch"), "x86_64");
    assert_eq!(os_type.attr("machine"), "q35");
    assert_eq!(os_type.text, "hvm");
    assert_eq!(dom.one("os/kernel").text, "/var/lib/images/tiny-guest.elf");
    assert!(dom.all("os/initrd").is_empty());
    assert!(dom.all("os/loader").is_empty());
    assert_eq!(dom.one("os/smbios").attr("mode"), "sysinfo");
    assert_eq!(dom.one("sysinfo").attr("type"), "smbios");
    let entries = dom.all("sysinfo/system/entry");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].attr("name"), "uuid");
    assert_eq!(entries[0].text, UUID);

    dom.one("features/acpi");
    assert!(dom.all("features/smm").is_empty());
    assert_eq!(dom.one("cpu").attr("mode"), "host-passthrough");
    assert_eq!(dom.one("on_poweroff").text, "destroy");
    assert_eq!(dom.one("on_reboot").text, "restart");
    assert_eq!(dom.one("on_crash").text, "destroy");

    let serial = dom.one("devices/serial");
    assert_eq!(serial.attr("type"), "unix");
    assert_eq!(serial.one("source").attr("mode"), "bind");
    assert_eq!(
        serial.one("source").attr("path"),
        "/var/run/kubevirt-private/0f4c-uid/virt-serial0"
    );
    assert_eq!(
        serial.one("log").attr("file"),
        "/var/run/kubevirt-private/0f4c-uid/virt-serial0-log"
    );
    assert_eq!(serial.one("log").attr("append"), "on");
    assert_eq!(serial.one("target").attr("port"), "0");
    let console = dom.one("devices/console");
    assert_eq!(console.attr("type"), "pty");
    assert_eq!(console.one("target").attr("type"), "serial");
    assert_eq!(dom.one("devices/memballoon").attr("model"), "none");
    assert_eq!(dom.one("devices/controller").attr("model"), "none");
    assert!(dom.all("devices/disk").is_empty());
    assert!(dom.all("devices/rng").is_empty());
    assert!(dom.all("devices/graphics").is_empty());
    assert!(dom.all("clock").is_empty());
}

#[test]
fn disks_get_bus_specific_targets_and_keep_readonly_serial_boot_order() {
    let (_, d, c) = corpus_case("disks-every-bus");
    let dom = rendered(&d, &c);
    let disks = dom.all("devices/disk");
    assert_eq!(disks.len(), 5);
    let targets: Vec<(&str, &str)> = disks
        .iter()
        .map(|d| (d.one("target").attr("dev"), d.one("target").attr("bus")))
        .collect();
    assert_eq!(
        targets,
        [
            ("vda", "virtio"),
            ("sda", "sata"),
            ("sdb", "scsi"),
            ("sdc", "usb"),
            ("vdb", "virtio")
        ]
    );
    let root = disks[0];
    assert_eq!(root.attr("type"), "file");
    assert_eq!(root.attr("device"), "disk");
    assert_eq!(root.one("driver").attr("type"), "qcow2");
    assert_eq!(root.one("source").attr("file"), "/img/root.qcow2");
    assert_eq!(root.one("serial").text, "ROOT-0001");
    assert_eq!(root.one("boot").attr("order"), "1");
    assert_eq!(root.one("alias").attr("name"), "ua-rootdisk");
    assert!(root.all("readonly").is_empty());
    disks[4].one("readonly");
    assert!(disks[4].all("boot").is_empty());

    let controllers: Vec<(&str, &str)> = dom
        .all("devices/controller")
        .iter()
        .map(|c| (c.attr("type"), c.attr("model")))
        .collect();
    assert_eq!(controllers, [("usb", "qemu-xhci"), ("scsi", "virtio-scsi")]);
}

#[test]
fn cdrom_is_readonly_and_bios_boot_names_no_loader() {
    let (_, d, c) = corpus_case("cdrom-bios");
    let dom = rendered(&d, &c);
    let cdrom = dom.all("devices/disk")[0];
    assert_eq!(cdrom.attr("device"), "cdrom");
    assert_eq!(cdrom.one("target").attr("bus"), "sata");
    cdrom.one("readonly");
    assert!(dom.all("os/kernel").is_empty());
    assert!(dom.all("os/loader").is_empty());
}

#[test]
fn efi_boot_uses_the_chosen_firmware_and_a_per_vm_nvram() {
    let (_, d, c) = corpus_case("efi");
    let dom = rendered(&d, &c);
    let loader = dom.one("os/loader");
    assert_eq!(loader.text, "/usr/share/OVMF/OVMF_CODE_4M.fd");
    assert_eq!(loader.attr("type"), "pflash");
    assert_eq!(loader.attr("readonly"), "yes");
    assert_eq!(loader.attr("secure"), "no");
    let nvram = dom.one("os/nvram");
    assert_eq!(nvram.attr("template"), "/usr/share/OVMF/OVMF_VARS_4M.fd");
    assert_eq!(
        nvram.text,
        "/var/run/kubevirt-private/0f4c-uid/default_tiny_VARS.fd"
    );
    assert!(dom.all("features/smm").is_empty());
}

#[test]
fn efi_secure_boot_enables_smm_and_a_secure_loader() {
    let (_, d, c) = corpus_case("efi-secure-boot");
    let dom = rendered(&d, &c);
    assert_eq!(dom.one("os/loader").attr("secure"), "yes");
    assert_eq!(dom.one("features/smm").attr("state"), "on");
}

#[test]
fn efi_without_firmware_is_an_error_naming_the_field() {
    let mut d = tiny_guest();
    d.boot = fixtures::efi_boot(false);
    let errors = build(&d, &ctx()).unwrap_err();
    assert_eq!(errors.0.len(), 1);
    assert_eq!(errors.0[0].path, "spec.domain.firmware.bootloader.efi");
}

#[test]
fn secure_boot_firmware_without_smm_in_the_spec_is_refused() {
    let mut d = tiny_guest();
    d.boot = fixtures::efi_boot(true);
    let c = with_firmware(ovmf_secure());
    let errors = build(&d, &c).unwrap_err();
    assert_eq!(errors.0[0].path, "spec.domain.features.smm");
}

#[test]
fn hugepages_back_guest_memory() {
    let (_, d, c) = corpus_case("hugepages");
    let dom = rendered(&d, &c);
    let page = dom.one("memoryBacking/hugepages/page");
    assert_eq!(page.attr("size"), "2048");
    assert_eq!(page.attr("unit"), "KiB");
    assert_eq!(dom.one("memory").text, (1u64 << 30).to_string());
}

#[test]
fn memory_hotplug_adds_max_memory_a_numa_cell_and_virtio_mem() {
    let (_, d, c) = corpus_case("memory-hotplug");
    let dom = rendered(&d, &c);
    assert_eq!(dom.one("maxMemory").text, (4u64 << 30).to_string());
    assert_eq!(dom.one("maxMemory").attr("slots"), "16");
    assert_eq!(
        dom.one("cpu/numa/cell").attr("memory"),
        (1u64 << 30).to_string()
    );
    let mem = dom.one("devices/memory");
    assert_eq!(mem.attr("model"), "virtio-mem");
    assert_eq!(mem.one("target/size").text, (3u64 << 20).to_string());
    assert_eq!(mem.one("target/size").attr("unit"), "KiB");
}

#[test]
fn topology_uses_max_sockets_and_current_vcpus() {
    let (_, d, c) = corpus_case("topology-named-model");
    let dom = rendered(&d, &c);
    assert_eq!(dom.one("vcpu").text, "16");
    assert_eq!(dom.one("vcpu").attr("current"), "8");
    let topo = dom.one("cpu/topology");
    assert_eq!(
        (
            topo.attr("sockets"),
            topo.attr("cores"),
            topo.attr("threads")
        ),
        ("4", "2", "2")
    );
    assert_eq!(dom.one("cpu").attr("mode"), "custom");
    assert_eq!(dom.one("cpu/model").text, "Skylake-Server");
    assert_eq!(dom.one("cpu/model").attr("fallback"), "forbid");
}

#[test]
fn user_text_is_escaped_and_survives_the_round_trip() {
    let (_, d, c) = corpus_case("host-model-rng-clock-smbios-initrd");
    let xml = render(&d, &c).unwrap();
    assert!(!xml.contains("<b>"), "markup from the spec must be escaped");
    let dom = Node::parse(&xml);
    assert_eq!(
        dom.one("os/cmdline").text,
        "console=ttyS0 quiet a=\"<b>\" & c"
    );
    assert_eq!(dom.one("os/initrd").text, "/var/lib/images/initrd.img");
    let serial = dom
        .all("sysinfo/system/entry")
        .into_iter()
        .find(|e| e.attr("name") == "serial")
        .expect("SMBIOS serial entry");
    assert_eq!(serial.text, "SN-<&>'\"-42");
    assert_eq!(dom.one("cpu").attr("mode"), "host-model");
    assert_eq!(dom.one("devices/rng").attr("model"), "virtio");
    assert_eq!(dom.one("devices/rng/backend").text, "/dev/urandom");
    assert_eq!(dom.one("clock").attr("offset"), "timezone");
    assert_eq!(dom.one("clock").attr("timezone"), "Europe/Paris");
    let timers: Vec<&str> = dom
        .all("clock/timer")
        .iter()
        .map(|t| t.attr("name"))
        .collect();
    assert_eq!(timers, ["hpet", "rtc", "pit", "kvmclock"]);
    let timer = |i: usize| dom.all("clock/timer")[i];
    assert_eq!(timer(0).attr("present"), "no");
    assert_eq!(timer(1).attr("present"), "yes");
    assert_eq!(timer(1).attr("tickpolicy"), "catchup");
    assert_eq!(timer(1).attr("track"), "guest");
    assert_eq!(timer(2).attr("tickpolicy"), "delay");
    assert!(!timer(3).attrs.contains_key("present"));
}

#[test]
fn utc_offset_seconds_become_a_clock_adjustment() {
    let mut d = tiny_guest();
    d.clock = Some(Clock {
        spec_path: "spec.domain.clock".into(),
        offset: ClockOffset::Utc {
            adjustment_seconds: 3600,
        },
        timers: Vec::new(),
    });
    let dom = rendered(&d, &ctx());
    assert_eq!(dom.one("clock").attr("offset"), "utc");
    assert_eq!(dom.one("clock").attr("adjustment"), "3600");
}

#[test]
fn vnc_listens_on_a_socket_in_the_vm_directory_with_inputs() {
    let (_, d, c) = corpus_case("vnc-inputs");
    let dom = rendered(&d, &c);
    let listen = dom.one("devices/graphics/listen");
    assert_eq!(listen.attr("type"), "socket");
    assert_eq!(
        listen.attr("socket"),
        vnc_socket_path(&c.paths).to_str().unwrap()
    );
    dom.one("devices/video/model");
    let inputs: Vec<(&str, &str)> = dom
        .all("devices/input")
        .iter()
        .map(|i| (i.attr("type"), i.attr("bus")))
        .collect();
    assert_eq!(inputs, [("tablet", "usb"), ("tablet", "virtio")]);
    assert_eq!(dom.one("devices/controller").attr("model"), "qemu-xhci");
}

#[test]
fn without_serial_console_or_acpi_nothing_is_rendered_for_them() {
    let (_, d, c) = corpus_case("no-console-no-acpi");
    let dom = rendered(&d, &c);
    assert!(dom.all("devices/serial").is_empty());
    assert!(dom.all("devices/console").is_empty());
    assert!(dom.all("features/acpi").is_empty());
}

#[test]
fn unsupported_parts_are_all_reported_with_their_paths() {
    let mut d = tiny_guest();
    d.firmware.uuid = "not-a-uuid".into();
    d.disks = vec![
        disk(0, "cd", DiskDevice::Cdrom, DiskBus::Virtio, "/img/cd.iso"),
        disk(1, "ro", DiskDevice::Disk, DiskBus::Sata, "/img/ro.raw"),
    ];
    d.disks[1].readonly = true;
    d.devices.graphics = Some(SpecFeature {
        spec_path: "spec.domain.devices.graphics".into(),
        kind: "spice".into(),
    });
    let paths: Vec<String> = build(&d, &ctx())
        .unwrap_err()
        .0
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert_eq!(
        paths,
        [
            "spec.domain.firmware.uuid",
            "spec.domain.devices.disks[0].cdrom.bus",
            "spec.domain.devices.disks[1].disk.readonly",
            "spec.domain.devices.graphics",
        ]
    );
}

#[test]
fn disk_letters_continue_past_z() {
    let mut names = super::render::tests_support::target_names();
    let all: Vec<String> = (0..28).map(|_| names(DiskBus::Virtio)).collect();
    assert_eq!(all[0], "vda");
    assert_eq!(all[25], "vdz");
    assert_eq!(all[26], "vdaa");
    assert_eq!(all[27], "vdab");
}

/// Every document of the corpus validates against libvirt's schema.
#[test]
fn every_corpus_document_validates_against_libvirt_schema() {
    let Some(validator) = validator() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (name, d, c) in corpus() {
        let xml = render(&d, &c).unwrap_or_else(|e| panic!("{name}: render failed: {e}"));
        let file = dir.path().join(format!("{name}.xml"));
        std::fs::write(&file, &xml).unwrap();
        let out = std::process::Command::new(&validator)
            .arg(&file)
            .arg("domain")
            .output()
            .expect("virt-xml-validate runs");
        failures.extend(validation_failure(name, &xml, &out));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// What to report when a validator run on `name`'s document `xml` failed.
pub(crate) fn validation_failure(
    name: &str,
    xml: &str,
    out: &std::process::Output,
) -> Option<String> {
    (!out.status.success()).then(|| {
        format!(
            "{name}:\n{}{}\n{xml}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// `virt-xml-validate`, or `None` after a SKIP line (a failure under
/// `CH_LAUNCHER_REQUIRE_LIBVIRT=1`).
fn validator() -> Option<PathBuf> {
    let found = which("virt-xml-validate");
    if found.is_none() {
        skip("virt-xml-validate not installed (apt-get install libvirt-clients libxml2-utils)");
    }
    found
}

/// CI sets `CH_LAUNCHER_REQUIRE_LIBVIRT=1`: there a missing libvirt tool or
/// an unreachable libvirtd fails the test instead of skipping it, so that a
/// broken host set-up cannot pass unnoticed.
pub(crate) fn skip(why: &str) {
    let required = std::env::var("CH_LAUNCHER_REQUIRE_LIBVIRT").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{why}; CH_LAUNCHER_REQUIRE_LIBVIRT=1 requires it"
    );
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        (format!("SKIP: {why}") + "\n").as_bytes(),
    );
}

/// A relative `--private-dir` still gives libvirt absolute paths (libvirtd
/// and QEMU do not share the launcher's working directory), and the
/// document still validates.
#[test]
fn relative_private_dir_renders_absolute_paths_that_validate() {
    let (_, mut d, _) = corpus_case("vnc-inputs");
    d.boot = fixtures::efi_boot(false);
    let paths = VmPaths::new(Path::new("rel/private"), "0f4c-uid");
    let mut firmware = ovmf();
    if let LibvirtFirmware::Loader {
        nvram: Some(nvram), ..
    } = &mut firmware
    {
        nvram.path = nvram_dir(&paths).join("default_tiny_VARS.fd");
    }
    let c = RenderContext {
        paths,
        firmware: Some(firmware),
        confidential: Default::default(),
        cpu_quirks: Vec::new(),
    };
    let xml = render(&d, &c).unwrap();
    let dom = Node::parse(&xml);
    let cwd = std::env::current_dir().unwrap();
    let vm_dir = cwd.join("rel/private/0f4c-uid");
    for (what, path) in [
        (
            "serial source",
            dom.one("devices/serial/source").attr("path"),
        ),
        ("serial log", dom.one("devices/serial/log").attr("file")),
        (
            "vnc socket",
            dom.one("devices/graphics/listen").attr("socket"),
        ),
        ("nvram", dom.one("os/nvram").text.as_str()),
    ] {
        assert!(
            Path::new(path).is_absolute() && Path::new(path).starts_with(&vm_dir),
            "{what}: {path} is not under {}",
            vm_dir.display()
        );
    }
    let Some(validator) = validator() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("relative.xml");
    std::fs::write(&file, &xml).unwrap();
    let out = std::process::Command::new(validator)
        .arg(&file)
        .arg("domain")
        .output()
        .expect("virt-xml-validate runs");
    assert!(
        out.status.success(),
        "{}{}\n{xml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `tool`'s path when it is on `PATH`.
pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file())
}

/// libvirtd checks more than the schema when it defines a domain (device
/// placement, topology against the vCPU count, machine features). Each
/// corpus document is defined and undefined again under a unique name.
#[test]
fn every_corpus_document_is_accepted_by_libvirtd() {
    let uri = std::env::var("LIBVIRT_URI").unwrap_or_else(|_| "qemu:///system".into());
    let reachable = which("virsh").is_some()
        && std::process::Command::new("virsh")
            .args(["-c", &uri, "version"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !reachable {
        skip(&format!(
            "libvirtd not reachable at {uri} (run .ci/setup-host.sh)"
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (name, mut d, c) in corpus() {
        d.namespace = "ch-launcher-render-test".into();
        d.name = format!("{name}-{}", std::process::id());
        let xml = render(&d, &c).unwrap();
        let file = dir.path().join(format!("{name}.xml"));
        std::fs::write(&file, &xml).unwrap();
        let defined = std::process::Command::new("virsh")
            .args(["-c", &uri, "define"])
            .arg(&file)
            .output()
            .expect("virsh runs");
        if defined.status.success() {
            let _ = std::process::Command::new("virsh")
                .args(["-c", &uri, "undefine", "--nvram"])
                .arg(super::render::domain_name(&d))
                .output();
        } else {
            failures.push(format!(
                "{name}: {}\n{xml}",
                String::from_utf8_lossy(&defined.stderr)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_specs_machine_type_replaces_the_default_q35() {
    let (_, d, c) = corpus_case("machine-type");
    let xml = render(&d, &c).unwrap();
    assert!(xml.contains("machine=\"pc-q35-7.2\""), "{xml}");
    let xml = render(&tiny_guest(), &ctx()).unwrap();
    assert!(xml.contains("machine=\"q35\""), "{xml}");
}
