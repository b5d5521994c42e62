//! Devices other than disks, and the networking that is refused for now.

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
            if input.kind != "tablet" {
                self.err(
                    format!("{path}.type"),
                    format!("unknown input type {:?}: expected tablet", input.kind),
                );
                continue;
            }
            let bus = match input.bus.as_deref() {
                None | Some("") | Some("usb") => "usb",
                Some("virtio") => "virtio",
                Some(other) => {
                    self.err(
                        format!("{path}.bus"),
                        format!("unknown input bus {other:?}: expected usb or virtio"),
                    );
                    continue;
                }
            };
            inputs.push(SpecFeature {
                spec_path: path,
                kind: format!("tablet:{bus}"),
            });
        }
        for (i, iface) in devices.interfaces.iter().enumerate() {
            let name = iface
                .get("name")
                .and_then(|n| n.as_str())
                .map(|n| format!(" {n:?}"))
                .unwrap_or_default();
            self.err(
                format!("{base}.interfaces[{i}]"),
                format!(
                    "network interface{name} is not supported yet (networking is not implemented); \
                     remove it"
                ),
            );
        }
        Devices {
            rng: devices.rng.is_some(),
            serial_console: devices.autoattach_serial_console.unwrap_or(true),
            graphics,
            inputs,
            interfaces: Vec::new(),
        }
    }

    pub(super) fn networks(&mut self, networks: &[serde_json::Value]) {
        for (i, net) in networks.iter().enumerate() {
            let name = net
                .get("name")
                .and_then(|n| n.as_str())
                .map(|n| format!(" {n:?}"))
                .unwrap_or_default();
            self.err(
                format!("spec.networks[{i}]"),
                format!(
                    "network{name} is not supported yet (networking is not implemented); remove it"
                ),
            );
        }
    }
}
