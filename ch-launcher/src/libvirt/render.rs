//! Pure translation of a [`Domain`] into libvirt domain XML.
//!
//! No I/O: host facts (the VM's directory, the firmware files chosen for an
//! EFI boot) come in as [`RenderContext`]. The document mirrors what
//! KubeVirt's virt-launcher gives libvirt where the two overlap: the domain is
//! named `<namespace>_<name>`, ACPI is on, the serial console is a unix socket
//! QEMU binds at `virt-serial0` with every byte logged to `virt-serial0-log`,
//! the balloon is off, and user aliases carry the `ua-` prefix.
//!
//! Anything in the `Domain` that cannot be expressed here is an error naming
//! the spec field, never dropped.

use super::cpu;
use super::launch_security::{self, ConfidentialHost};
use super::xml::*;
use crate::host::cpu::MsrQuirk;
use crate::paths::VmPaths;
use domain_model::{
    Architecture, Boot, ClockOffset, CpuModel, DiskBus, DiskDevice, Domain, ImageFormat,
    SpecErrors, TimerName,
};
use firmware::LibvirtFirmware;
use std::path::{Path, PathBuf};

/// Host facts the translation needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderContext {
    /// Where the VM's sockets and logs live.
    pub paths: VmPaths,
    /// The firmware the firmware crate chose from the host's QEMU firmware
    /// descriptors ([`firmware::LibvirtFirmware::from_selection`]). Required
    /// when the Domain boots with EFI.
    pub firmware: Option<LibvirtFirmware>,
    /// The host's confidential-computing parameters, for a Domain with
    /// launch security.
    pub confidential: ConfidentialHost,
    /// Feature MSRs this host's KVM reports but refuses
    /// ([`crate::host::cpu::CpuProbe::quirks`]); their features are disabled.
    pub cpu_quirks: Vec<MsrQuirk>,
}

/// Why a Domain could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Parts of the spec the libvirt backend cannot express, each with its path.
    #[error("{0}")]
    Spec(SpecErrors),
    #[error("cannot serialize the libvirt domain XML: {0}")]
    Xml(String),
}

/// The libvirt domain name for a VMI, as KubeVirt forms it.
pub fn domain_name(domain: &Domain) -> String {
    format!("{}_{}", domain.namespace, domain.name)
}

/// Where the per-VM copy of the EFI variable store goes (the firmware crate
/// names the file).
pub fn nvram_dir(paths: &VmPaths) -> &Path {
    &paths.dir
}

/// Where QEMU binds the VNC socket (KubeVirt's `virt-vnc`).
pub fn vnc_socket_path(paths: &VmPaths) -> PathBuf {
    paths.dir.join("virt-vnc")
}

/// Guest memory hotplug granularity: virtio-mem blocks must be at least the
/// transparent hugepage size, which KubeVirt fixes at 2 MiB.
const VIRTIO_MEM_BLOCK: u64 = 2 << 20;
/// Memory hotplug slots, as KubeVirt reserves them.
const MEMORY_HOTPLUG_SLOTS: u32 = 16;

/// Renders `domain` as a libvirt domain XML document.
pub fn render(domain: &Domain, ctx: &RenderContext) -> Result<String, RenderError> {
    let doc = build(domain, ctx).map_err(RenderError::Spec)?;
    let mut out = String::new();
    let mut ser = quick_xml::se::Serializer::new(&mut out);
    ser.indent(' ', 2);
    serde::Serialize::serialize(&doc, ser).map_err(|e| RenderError::Xml(e.to_string()))?;
    out.push('\n');
    Ok(out)
}

impl RenderContext {
    /// The same context with the VM directory and the NVRAM path made
    /// absolute against the current directory: libvirtd and QEMU run
    /// elsewhere, so a relative `--private-dir` would name other files.
    pub fn absolute(&self) -> std::io::Result<RenderContext> {
        let mut ctx = self.clone();
        ctx.paths.dir = std::path::absolute(&self.paths.dir)?;
        if let Some(LibvirtFirmware::Loader {
            nvram: Some(nvram), ..
        }) = &mut ctx.firmware
        {
            nvram.path = std::path::absolute(&nvram.path)?;
        }
        Ok(ctx)
    }
}

/// The typed document, or every problem found.
pub fn build(domain: &Domain, ctx: &RenderContext) -> Result<DomainXml, SpecErrors> {
    let mut errors = SpecErrors::default();
    let absolute = ctx.absolute();
    let ctx = match &absolute {
        Ok(abs) => abs,
        Err(e) => {
            errors.push(
                "--private-dir",
                format!(
                    "cannot make {} absolute for libvirt: {e}",
                    ctx.paths.dir.display()
                ),
            );
            ctx
        }
    };

    if !is_uuid(&domain.firmware.uuid) {
        errors.push(
            "spec.domain.firmware.uuid",
            format!(
                "{:?} is not a UUID; libvirt needs one for the domain and SMBIOS",
                domain.firmware.uuid
            ),
        );
    }
    // What libvirt can do is decided in one place, the support table.
    if let Err(refused) = domain_model::check_support(domain) {
        errors.0.extend(refused.0);
    }

    check_paths_are_utf8(domain, ctx, &mut errors);
    let (arch, default_machine) = arch_and_machine(domain.architecture);
    let machine = domain
        .machine_type
        .clone()
        .unwrap_or_else(|| default_machine.to_string());
    let os = os(domain, ctx, arch, machine, &mut errors);
    let efi_needs_smm = matches!(domain.boot, Boot::Efi { .. })
        && matches!(
            ctx.firmware,
            Some(LibvirtFirmware::Loader { smm: true, .. })
        );
    if efi_needs_smm && !domain.features.smm {
        errors.push(
            "spec.domain.features.smm",
            "the chosen EFI firmware (secure boot) requires SMM; enable spec.domain.features.smm",
        );
    }

    let cpu = &domain.cpu;
    let hotplug_memory = domain
        .memory
        .max_guest
        .filter(|max| *max > domain.memory.guest);
    let numa = hotplug_memory.map(|_| Numa {
        // virtio-mem plugs memory into a NUMA node, so one node must exist.
        cell: vec![NumaCell {
            id: 0,
            cpus: format!("0-{}", cpu.max_vcpus().saturating_sub(1)),
            memory: domain.memory.guest,
            unit: "b",
        }],
    });
    let mut memory_devices = Vec::new();
    if let Some(max) = hotplug_memory {
        let extra = max - domain.memory.guest;
        if !extra.is_multiple_of(VIRTIO_MEM_BLOCK) {
            errors.push(
                "spec.domain.memory.maxGuest",
                format!(
                    "maxGuest minus guest ({extra} bytes) must be a multiple of 2 MiB for \
                     virtio-mem hotplug"
                ),
            );
        }
        memory_devices.push(MemoryDevice {
            model: "virtio-mem",
            target: MemoryTarget {
                size: SizeInBytes::kib(extra / 1024),
                node: 0,
                block: SizeInBytes::kib(VIRTIO_MEM_BLOCK / 1024),
                requested: SizeInBytes::kib(0),
            },
        });
    }

    let (mode, match_, model) = match &cpu.model {
        CpuModel::HostPassthrough => ("host-passthrough", None, None),
        CpuModel::HostModel => ("host-model", None, None),
        CpuModel::Named(name) => (
            "custom",
            Some("exact"),
            Some(CpuModelXml {
                fallback: "forbid",
                name: name.clone(),
            }),
        ),
    };

    let feature = match cpu::plan(domain, &ctx.cpu_quirks) {
        Ok(plan) => plan
            .features
            .into_iter()
            .map(|f| CpuFeatureXml {
                policy: f.policy.as_str(),
                name: f.name,
            })
            .collect(),
        Err(e) => {
            errors.0.extend(e.0);
            Vec::new()
        }
    };

    let mut sysinfo_entries = vec![SysinfoEntry {
        name: "uuid",
        value: domain.firmware.uuid.clone(),
    }];
    if let Some(serial) = &domain.firmware.serial {
        sysinfo_entries.push(SysinfoEntry {
            name: "serial",
            value: serial.clone(),
        });
    }

    let devices = devices(domain, ctx, memory_devices, &mut errors);
    let clock = clock(domain);

    let mut doc = DomainXml {
        kind: "kvm",
        name: domain_name(domain),
        uuid: domain.firmware.uuid.clone(),
        max_memory: hotplug_memory.map(|max| MaxMemory {
            slots: MEMORY_HOTPLUG_SLOTS,
            unit: "b",
            value: max,
        }),
        memory: SizeInBytes::bytes(domain.memory.guest),
        current_memory: SizeInBytes::bytes(domain.memory.guest),
        memory_backing: domain.memory.hugepage_size.map(|size| MemoryBacking {
            hugepages: Hugepages {
                page: HugePage {
                    size: size / 1024,
                    unit: "KiB",
                },
            },
        }),
        vcpu: Vcpu {
            placement: "static",
            current: (cpu.max_vcpus() > cpu.vcpus()).then_some(cpu.vcpus()),
            max: cpu.max_vcpus(),
        },
        sysinfo: Sysinfo {
            kind: "smbios",
            system: SysinfoSystem {
                entry: sysinfo_entries,
            },
        },
        os,
        features: FeaturesXml {
            acpi: domain.features.acpi.then_some(Empty {}),
            smm: (domain.features.smm || efi_needs_smm).then_some(State { state: "on" }),
            pmu: None,
        },
        cpu: CpuXml {
            mode,
            match_,
            model,
            // libvirt wants the topology of the maximum vCPU count.
            topology: Topology {
                sockets: cpu.max_sockets,
                cores: cpu.cores,
                threads: cpu.threads,
            },
            feature,
            numa,
        },
        clock,
        on_poweroff: "destroy",
        on_reboot: "restart",
        on_crash: "destroy",
        devices,
        launch_security: None,
    };
    launch_security::apply(domain, &ctx.confidential, &mut doc);
    errors.into_result(doc)
}

/// QEMU's target and the machine type KubeVirt uses for it.
fn arch_and_machine(arch: Architecture) -> (&'static str, &'static str) {
    match arch {
        Architecture::Amd64 => ("x86_64", "q35"),
        Architecture::Arm64 => ("aarch64", "virt"),
        Architecture::S390x => ("s390x", "s390-ccw-virtio"),
    }
}

fn os(
    domain: &Domain,
    ctx: &RenderContext,
    arch: &'static str,
    machine: String,
    errors: &mut SpecErrors,
) -> Os {
    let mut os = Os {
        os_type: OsType {
            arch,
            machine,
            value: "hvm",
        },
        loader: None,
        nvram: None,
        kernel: None,
        initrd: None,
        cmdline: None,
        smbios: Smbios { mode: "sysinfo" },
    };
    match &domain.boot {
        Boot::Kernel {
            kernel,
            initrd,
            cmdline,
            // Pulled before a real run; a dry run shows the in-image paths.
            image: _,
        } => {
            os.kernel = Some(path_text(kernel));
            os.initrd = initrd.as_deref().map(path_text);
            os.cmdline = cmdline.clone();
        }
        Boot::Efi { secure_boot, .. } => match &ctx.firmware {
            Some(LibvirtFirmware::Loader {
                loader,
                nvram,
                secure_boot: firmware_secure_boot,
                ..
            }) => {
                if *secure_boot && !firmware_secure_boot {
                    errors.push(
                        "spec.domain.firmware.bootloader.efi.secureBoot",
                        format!(
                            "secure boot was asked for but the chosen firmware {} does not \
                             support it",
                            loader.path.display()
                        ),
                    );
                }
                os.loader = Some(Loader {
                    readonly: yes_no(loader.readonly),
                    secure: yes_no(loader.secure),
                    kind: loader.loader_type.as_str(),
                    // raw is libvirt's default; naming it would need libvirt >= 9.2.
                    format: loader
                        .format
                        .as_deref()
                        .filter(|f| *f != "raw")
                        .map(str::to_owned),
                    stateless: loader.stateless.then_some("yes"),
                    path: path_text(&loader.path),
                });
                os.nvram = nvram.as_ref().map(|n| Nvram {
                    template: path_text(&n.template),
                    path: path_text(&n.path),
                });
            }
            Some(LibvirtFirmware::Kernel { path }) => errors.push(
                "spec.domain.firmware.bootloader.efi",
                format!(
                    "the chosen firmware {} is loaded as a kernel, which only confidential VMs \
                     use",
                    path.display()
                ),
            ),
            None => errors.push(
                "spec.domain.firmware.bootloader.efi",
                "no EFI firmware was found for this VM (install OVMF, or check the QEMU \
                 firmware descriptors)",
            ),
        },
        // libvirt gives q35 SeaBIOS when no loader is named.
        Boot::Bios => {}
    }
    os
}

fn devices(
    domain: &Domain,
    ctx: &RenderContext,
    memory: Vec<MemoryDevice>,
    errors: &mut SpecErrors,
) -> DevicesXml {
    let mut names = TargetNames::default();
    let mut disks = Vec::new();
    for disk in &domain.disks {
        let (kind, source) = match disk.device {
            // A block-mode PVC is a device node, handed over as one.
            _ if disk.source.block_device => (
                "block",
                DiskSourceXml {
                    file: None,
                    dev: Some(path_text(&disk.source.path)),
                },
            ),
            DiskDevice::Lun => (
                "block",
                DiskSourceXml {
                    file: None,
                    dev: Some(path_text(&disk.source.path)),
                },
            ),
            _ => (
                "file",
                DiskSourceXml {
                    file: Some(path_text(&disk.source.path)),
                    dev: None,
                },
            ),
        };
        disks.push(DiskXml {
            kind,
            device: match disk.device {
                DiskDevice::Disk => "disk",
                DiskDevice::Cdrom => "cdrom",
                DiskDevice::Lun => "lun",
            },
            driver: DiskDriver {
                name: "qemu",
                format: match disk.source.format {
                    ImageFormat::Raw => "raw",
                    ImageFormat::Qcow2 => "qcow2",
                },
                iommu: None,
                cache: disk.options.cache.clone(),
                io: disk.options.io.clone(),
            },
            source,
            target: DiskTarget {
                dev: names.next(disk.bus),
                bus: disk.bus.as_str(),
            },
            readonly: (disk.readonly || disk.device == DiskDevice::Cdrom).then_some(Empty {}),
            shareable: disk.options.shareable.then_some(Empty {}),
            serial: disk.serial.clone(),
            boot: disk.boot_order.map(|order| BootOrder { order }),
            blockio: disk
                .options
                .block_size
                .map(|(logical, physical)| BlockIo { logical, physical }),
            alias: user_alias(&disk.name),
        });
    }

    let inputs: Vec<InputXml> = domain
        .devices
        .inputs
        .iter()
        .map(|input| InputXml {
            kind: input.kind.as_str(),
            bus: input.bus.as_str(),
            alias: None,
            driver: None,
        })
        .collect();

    let mut graphics = Vec::new();
    let mut video = Vec::new();
    if let Some(g) = &domain.devices.graphics {
        if g.kind == "vnc" {
            graphics.push(GraphicsXml {
                kind: "vnc",
                listen: GraphicsListen {
                    kind: "socket",
                    socket: path_text(&vnc_socket_path(&ctx.paths)),
                },
            });
            video.push(VideoXml {
                model: VideoModel {
                    kind: "vga",
                    heads: 1,
                },
            });
        } else {
            errors.push(
                &g.spec_path,
                format!(
                    "graphics {:?} is not supported by the libvirt backend (only vnc)",
                    g.kind
                ),
            );
        }
    }

    let mut controllers = Vec::new();
    let needs_usb =
        domain.disks.iter().any(|d| d.bus == DiskBus::Usb) || inputs.iter().any(|i| i.bus == "usb");
    // KubeVirt removes the USB controller libvirt would add by default unless
    // something needs it.
    controllers.push(Controller {
        kind: "usb",
        index: 0,
        model: if needs_usb { "qemu-xhci" } else { "none" },
        driver: None,
    });
    if domain.disks.iter().any(|d| d.bus == DiskBus::Scsi) {
        controllers.push(Controller {
            kind: "scsi",
            index: 0,
            model: "virtio-scsi",
            driver: None,
        });
    }

    let (serial, console) = if domain.devices.serial_console {
        (
            vec![SerialXml {
                kind: "unix",
                source: UnixSource {
                    mode: "bind",
                    path: path_text(&ctx.paths.serial_socket()),
                },
                log: ChardevLog {
                    file: path_text(&ctx.paths.serial_log()),
                    append: "on",
                },
                target: SerialTarget { port: 0 },
            }],
            vec![ConsoleXml {
                kind: "pty",
                target: ConsoleTarget {
                    kind: "serial",
                    port: 0,
                },
            }],
        )
    } else {
        (Vec::new(), Vec::new())
    };

    DevicesXml {
        disk: disks,
        controller: controllers,
        interface: interfaces(domain),
        serial,
        console,
        input: inputs,
        graphics,
        video,
        rng: if domain.devices.rng {
            vec![RngXml {
                model: "virtio",
                backend: RngBackend {
                    model: "random",
                    source: "/dev/urandom",
                },
                driver: None,
            }]
        } else {
            Vec::new()
        },
        memballoon: Memballoon {
            model: "none",
            driver: None,
        },
        memory,
    }
}

fn clock(domain: &Domain) -> Option<ClockXml> {
    let clock = domain.clock.as_ref()?;
    let (offset, timezone, adjustment) = match &clock.offset {
        ClockOffset::Utc {
            adjustment_seconds: 0,
        } => ("utc", None, None),
        ClockOffset::Utc { adjustment_seconds } => ("utc", None, Some(*adjustment_seconds)),
        ClockOffset::Timezone { name } => ("timezone", Some(name.clone()), None),
    };
    let timer = clock
        .timers
        .iter()
        .map(|t| Timer {
            // KubeVirt's timer names, and libvirt's for the same clocks.
            name: match t.name {
                TimerName::Hpet => "hpet",
                TimerName::Pit => "pit",
                TimerName::Rtc => "rtc",
                TimerName::Kvm => "kvmclock",
                TimerName::Hyperv => "hypervclock",
            },
            present: t.present.map(|p| if p { "yes" } else { "no" }),
            tickpolicy: t.tick_policy.map(|p| p.as_str().to_owned()),
            track: t.track.map(|k| k.as_str().to_owned()),
        })
        .collect();
    Some(ClockXml {
        offset,
        timezone,
        adjustment,
        timer,
    })
}

/// libvirt's user aliases must match `ua-[a-zA-Z0-9_-]+`; a name that does
/// not fit gets no alias rather than a rejected domain.
/// Each interface on the tap the launcher made for it (`crate::net`).
fn interfaces(domain: &Domain) -> Vec<InterfaceXml> {
    domain
        .devices
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, nic)| InterfaceXml {
            kind: "ethernet",
            mac: MacXml {
                address: nic.mac.clone(),
            },
            target: InterfaceTarget {
                dev: crate::net::tap_name(i),
                managed: "no",
            },
            model: InterfaceModel {
                kind: nic.model.clone(),
            },
            boot: nic.boot_order.map(|order| BootOrder { order }),
            // domain-model checked the DDDD:BB:SS.F form.
            address: nic.pci_address.as_deref().and_then(|a| {
                let (domain, rest) = a.split_once(':')?;
                let (bus, rest) = rest.split_once(':')?;
                let (slot, function) = rest.split_once('.')?;
                Some(PciAddressXml {
                    kind: "pci",
                    domain: format!("0x{domain}"),
                    bus: format!("0x{bus}"),
                    slot: format!("0x{slot}"),
                    function: format!("0x{function}"),
                })
            }),
            alias: user_alias(&nic.name),
        })
        .collect()
}

fn user_alias(name: &str) -> Option<Alias> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    ok.then(|| Alias {
        name: format!("ua-{name}"),
    })
}

/// The guest device name of each disk, in order (`vda`, `sdb`...), as the
/// domain XML names them and KubeVirt reports them in the Domain's
/// `Devices.Disks[].Target.Device`.
pub fn disk_targets(disks: &[domain_model::Disk]) -> Vec<String> {
    let mut names = TargetNames::default();
    disks.iter().map(|d| names.next(d.bus)).collect()
}

/// Guest device names per bus family: virtio disks are `vd*`, SATA, SCSI and
/// USB disks share the `sd*` namespace (as in KubeVirt).
#[derive(Default)]
struct TargetNames {
    vd: usize,
    sd: usize,
}

impl TargetNames {
    fn next(&mut self, bus: DiskBus) -> String {
        let (prefix, counter) = match bus {
            DiskBus::Virtio => ("vd", &mut self.vd),
            DiskBus::Sata | DiskBus::Scsi | DiskBus::Usb => ("sd", &mut self.sd),
        };
        let name = format!("{prefix}{}", disk_letters(*counter));
        *counter += 1;
        name
    }
}

/// 0 -> a, 25 -> z, 26 -> aa, as the Linux kernel names disks.
fn disk_letters(mut index: usize) -> String {
    let mut letters = Vec::new();
    loop {
        letters.push(b'a' + (index % 26) as u8);
        if index < 26 {
            break;
        }
        index = index / 26 - 1;
    }
    letters.reverse();
    String::from_utf8_lossy(&letters).into_owned()
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "yes"
    } else {
        "no"
    }
}

/// libvirt XML is UTF-8 text; a path that is not cannot be named in it.
fn check_paths_are_utf8(domain: &Domain, ctx: &RenderContext, errors: &mut SpecErrors) {
    let mut check = |field: &str, path: &Path| {
        if path.to_str().is_none() {
            errors.push(
                field,
                format!(
                    "path {} is not valid UTF-8; libvirt cannot name it",
                    path.display()
                ),
            );
        }
    };
    if let Boot::Kernel { kernel, initrd, .. } = &domain.boot {
        check(
            "spec.domain.firmware.kernelBoot.container.kernelPath",
            kernel,
        );
        if let Some(initrd) = initrd {
            check(
                "spec.domain.firmware.kernelBoot.container.initrdPath",
                initrd,
            );
        }
    }
    for disk in &domain.disks {
        check(&disk.source.spec_path, &disk.source.path);
    }
    check("--private-dir", &ctx.paths.dir);
}

/// Lossless for every path [`check_paths_are_utf8`] accepted.
fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    let lens = [8, 4, 4, 4, 12];
    groups.len() == lens.len()
        && groups
            .iter()
            .zip(lens)
            .all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

#[cfg(test)]
pub(super) mod tests_support {
    use super::*;

    pub fn target_names() -> impl FnMut(DiskBus) -> String {
        let mut names = TargetNames::default();
        move |bus| names.next(bus)
    }
}
