//! Devices other than disks and network interfaces.

use super::*;

impl Resolver<'_> {
    pub(super) fn devices(&mut self, devices: &api::Devices, hypervisor: Hypervisor) -> Devices {
        let base = "spec.domain.devices";
        let graphics_path = format!("{base}.autoattachGraphicsDevice");
        let graphics = match devices.autoattach_graphics_device {
            Some(false) => None,
            Some(true) => Some(()),
            None if hypervisor == Hypervisor::Libvirt => Some(()),
            None => None,
        }
        .map(|()| SpecFeature {
            spec_path: graphics_path,
            kind: "vnc".to_string(),
        });
        let mut inputs = Vec::new();
        let mut names = BTreeSet::new();
        for (i, input) in devices.inputs.iter().enumerate() {
            let path = format!("{base}.inputs[{i}]");
            if input.name.is_empty() {
                self.err(
                    format!("{path}.name"),
                    "required: a name for the input device",
                );
            } else if !names.insert(input.name.as_str()) {
                self.err(
                    format!("{path}.name"),
                    format!("duplicate input name {:?}", input.name),
                );
            }
            // KubeVirt's setDefaults_Input: an empty type is a tablet.
            if !input.kind.is_empty() && input.kind != "tablet" {
                self.err(
                    format!("{path}.type"),
                    format!("unknown input type {:?}: expected tablet", input.kind),
                );
                continue;
            }
            let bus = match input.bus.as_deref() {
                None | Some("") | Some("usb") => InputBus::Usb,
                Some("virtio") => InputBus::Virtio,
                Some(other) => {
                    self.err(
                        format!("{path}.bus"),
                        format!("unknown input bus {other:?}: expected usb or virtio"),
                    );
                    continue;
                }
            };
            inputs.push(Input {
                spec_path: path,
                kind: InputKind::Tablet,
                bus,
            });
        }
        Devices {
            rng: devices.rng.is_some(),
            serial_console: devices.autoattach_serial_console.unwrap_or(true),
            graphics,
            inputs,
            interfaces: Vec::new(),
            filesystems: Vec::new(),
        }
    }
}
