//! Network interfaces and the networks they attach to.

use super::*;
use crate::{Binding, DhcpExtras, Interface, PortForward, Protocol};
use std::net::Ipv4Addr;

/// KubeVirt's masquerade defaults: the guest's network and its gateway.
const DEFAULT_VM_CIDR: &str = "10.0.2.0/24";

impl Resolver<'_> {
    pub(super) fn interfaces(
        &mut self,
        interfaces: &[api::Interface],
        networks: &[api::Network],
        uid: &str,
    ) -> Vec<Interface> {
        let mut net_names = BTreeMap::new();
        for (j, n) in networks.iter().enumerate() {
            let path = format!("spec.networks[{j}]");
            if n.name.is_empty() {
                self.err(format!("{path}.name"), "required: the network's name");
                continue;
            }
            if net_names.insert(n.name.as_str(), j).is_some() {
                self.err(
                    format!("{path}.name"),
                    format!("duplicate network name {:?}", n.name),
                );
                continue;
            }
            match (&n.pod, &n.multus) {
                (Some(_), Some(_)) => self.err(&path, "set pod or multus, not both"),
                (None, None) => self.err(&path, "required: pod (the pod network) or multus"),
                (None, Some(_)) => self.err(
                    format!("{path}.multus"),
                    "multus networks are not supported yet: the launcher attaches only the pod \
                     network (masquerade)",
                ),
                (Some(_), None) => {}
            }
        }
        let mut used = BTreeSet::new();
        let mut out = Vec::new();
        for (i, iface) in interfaces.iter().enumerate() {
            let path = format!("spec.domain.devices.interfaces[{i}]");
            if iface.name.is_empty() {
                self.err(
                    format!("{path}.name"),
                    "required: the name of a spec.networks entry",
                );
                continue;
            }
            if !used.insert(iface.name.as_str()) {
                self.err(
                    format!("{path}.name"),
                    format!("duplicate interface name {:?}", iface.name),
                );
                continue;
            }
            let Some(&j) = net_names.get(iface.name.as_str()) else {
                self.err(
                    format!("{path}.name"),
                    format!("no spec.networks entry named {:?}", iface.name),
                );
                continue;
            };
            if let Some(i) = self.interface(&path, iface, &networks[j], j, uid) {
                out.push(i);
            }
        }
        for (j, n) in networks.iter().enumerate() {
            if !n.name.is_empty() && !used.contains(n.name.as_str()) {
                self.err(
                    format!("spec.networks[{j}]"),
                    format!(
                        "network {:?} has no interface in spec.domain.devices.interfaces",
                        n.name
                    ),
                );
            }
        }
        out
    }

    fn interface(
        &mut self,
        path: &str,
        iface: &api::Interface,
        network: &api::Network,
        net_index: usize,
        uid: &str,
    ) -> Option<Interface> {
        let refused: [(&str, bool, &str); 6] = [
            (
                "bridge",
                iface.bridge.is_some(),
                "bridge binding is not supported yet; use masquerade",
            ),
            (
                "sriov",
                iface.sriov.is_some(),
                "SR-IOV (VFIO passthrough of a VF) is not supported yet",
            ),
            (
                "macvtap",
                iface.macvtap.is_some(),
                "macvtap binding is not supported yet",
            ),
            (
                "passt",
                iface.passt.is_some(),
                "passt binding is not supported: the launcher runs no passt",
            ),
            (
                "slirp",
                iface.slirp.is_some(),
                "slirp was removed from KubeVirt; use masquerade",
            ),
            (
                "binding",
                iface.binding.is_some(),
                "network binding plugins are not supported: they need KubeVirt's sidecar hooks",
            ),
        ];
        let mut ok = true;
        let mut bindings = 0;
        for (key, set, why) in refused {
            if set {
                bindings += 1;
                ok = false;
                self.err(format!("{path}.{key}"), why);
            }
        }
        if iface.masquerade.is_some() {
            bindings += 1;
        }
        if bindings > 1 {
            self.err(path, "set exactly one binding method (masquerade)");
            return None;
        }
        if bindings == 0 {
            self.err(
                path,
                "required: a binding method: masquerade (the one supported)",
            );
            return None;
        }
        if !ok {
            return None;
        }
        if let Some(m) = iface
            .masquerade
            .as_ref()
            .filter(|m| !m.as_object().is_some_and(|o| o.is_empty()))
        {
            self.err(
                format!("{path}.masquerade"),
                format!("takes no settings ({{}}), got {m}"),
            );
            return None;
        }
        let net_path = format!("spec.networks[{net_index}]");
        let Some(pod) = &network.pod else {
            // Refused with the network already.
            return None;
        };
        if pod.vm_ipv6_network_cidr.is_some() {
            self.err(
                format!("{net_path}.pod.vmIPv6NetworkCIDR"),
                "IPv6 for masquerade is not supported yet: the guest gets IPv4 only",
            );
        }
        let cidr_path = format!("{net_path}.pod.vmNetworkCIDR");
        let cidr_text = pod.vm_network_cidr.as_deref().unwrap_or(DEFAULT_VM_CIDR);
        let (network_addr, prefix) = match parse_cidr(cidr_text) {
            Ok(c) => c,
            Err(e) => {
                self.err(cidr_path, e);
                return None;
            }
        };
        // KubeVirt's layout: the first address is the gateway, the second
        // the guest.
        let base = u32::from(network_addr);
        let (gateway, guest) = (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2));
        let mut ports = Vec::new();
        let mut seen = BTreeSet::new();
        for (k, p) in iface.ports.iter().enumerate() {
            let pp = format!("{path}.ports[{k}]");
            let protocol = match p
                .protocol
                .as_deref()
                .map(str::to_ascii_uppercase)
                .as_deref()
            {
                None | Some("TCP") => Protocol::Tcp,
                Some("UDP") => Protocol::Udp,
                Some(other) => {
                    self.err(
                        format!("{pp}.protocol"),
                        format!("{other:?}: expected TCP or UDP"),
                    );
                    continue;
                }
            };
            let port = match p.port {
                Some(n) if (1..=65535).contains(&n) => n as u16,
                Some(n) => {
                    self.err(
                        format!("{pp}.port"),
                        format!("{n} is not a port (1 to 65535)"),
                    );
                    continue;
                }
                None => {
                    self.err(format!("{pp}.port"), "required: the port to forward");
                    continue;
                }
            };
            if !seen.insert((protocol.as_str(), port)) {
                self.err(
                    &pp,
                    format!("{} port {port} is forwarded twice", protocol.as_str()),
                );
                continue;
            }
            ports.push(PortForward { protocol, port });
        }
        let mac = match iface.mac_address.as_deref() {
            Some(m) => match parse_mac(m) {
                Ok(m) => format_mac(m),
                Err(e) => {
                    self.err(format!("{path}.macAddress"), e);
                    return None;
                }
            },
            None => derived_mac(uid, &iface.name),
        };
        let model = match iface.model.as_deref() {
            None | Some("") => "virtio".to_string(),
            Some(
                m @ ("virtio" | "e1000" | "e1000e" | "igb" | "ne2k_pci" | "pcnet" | "rtl8139"),
            ) => m.to_string(),
            Some(other) => {
                self.err(
                    format!("{path}.model"),
                    format!(
                        "unknown model {other:?}: expected virtio, e1000, e1000e, igb, ne2k_pci, \
                         pcnet or rtl8139"
                    ),
                );
                return None;
            }
        };
        let pci_address = match iface.pci_address.as_deref() {
            None => None,
            Some(a) if is_pci_address(a) => Some(a.to_string()),
            Some(a) => {
                self.err(
                    format!("{path}.pciAddress"),
                    format!("{a:?} is not a PCI address (DDDD:BB:SS.F, e.g. 0000:81:01.0)"),
                );
                return None;
            }
        };
        for (key, set) in [
            ("tag", iface.tag.is_some()),
            ("acpiIndex", iface.acpi_index.is_some()),
            ("state", iface.state.is_some()),
        ] {
            if set {
                self.err(format!("{path}.{key}"), "not supported yet");
            }
        }
        let dhcp = self.dhcp_options(&format!("{path}.dhcpOptions"), iface.dhcp_options.as_ref());
        Some(Interface {
            spec_path: path.to_string(),
            name: iface.name.clone(),
            mac,
            model,
            binding: Binding::Masquerade {
                cidr: format!("{network_addr}/{prefix}"),
                prefix,
                gateway,
                guest,
                ports,
            },
            pci_address,
            boot_order: iface.boot_order,
            dhcp,
        })
    }

    fn dhcp_options(&mut self, path: &str, o: Option<&api::DhcpOptions>) -> DhcpExtras {
        let Some(o) = o else {
            return DhcpExtras::default();
        };
        let mut out = DhcpExtras {
            boot_file_name: o.boot_file_name.clone(),
            tftp_server_name: o.tftp_server_name.clone(),
            ..DhcpExtras::default()
        };
        for (k, s) in o.ntp_servers.iter().enumerate() {
            match s.parse::<Ipv4Addr>() {
                Ok(a) => out.ntp_servers.push(a),
                Err(_) => self.err(
                    format!("{path}.ntpServers[{k}]"),
                    format!("{s:?} is not an IPv4 address"),
                ),
            }
        }
        for (k, p) in o.private_options.iter().enumerate() {
            let pp = format!("{path}.privateOptions[{k}]");
            match (p.option, &p.value) {
                (Some(n @ 224..=254), Some(v)) => out.private_options.push((n as u8, v.clone())),
                (Some(n), Some(_)) => self.err(
                    format!("{pp}.option"),
                    format!("{n} is not a private DHCP option (224 to 254)"),
                ),
                (None, _) => self.err(format!("{pp}.option"), "required: the option code"),
                (_, None) => self.err(format!("{pp}.value"), "required: the option's value"),
            }
        }
        out
    }
}

/// `a.b.c.d/n` with no host bits set, room for a gateway and a guest.
fn parse_cidr(text: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("{text:?} is not an IPv4 CIDR such as 10.0.2.0/24");
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 30 {
        return Err(format!(
            "{text:?}: the prefix must be /30 or shorter, to hold a gateway and a guest"
        ));
    }
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    if u32::from(addr) & !mask != 0 {
        return Err(format!(
            "{text:?} has host bits set; the network is {}/{prefix}",
            Ipv4Addr::from(u32::from(addr) & mask)
        ));
    }
    Ok((addr, prefix))
}

/// A unicast MAC address written `aa:bb:cc:dd:ee:ff` or `aa-bb-...`, either
/// case: the one parser for every MAC the launcher is given.
pub fn parse_mac(text: &str) -> Result<[u8; 6], String> {
    let sep = if text.contains('-') { '-' } else { ':' };
    let bytes: Option<Vec<u8>> = text
        .split(sep)
        .map(|p| {
            (p.len() == 2)
                .then(|| u8::from_str_radix(p, 16).ok())
                .flatten()
        })
        .collect();
    match bytes.as_deref() {
        Some(&[a, b, c, d, e, f]) => {
            if a & 1 == 1 {
                return Err(format!(
                    "{text:?} is a multicast address; a NIC needs a unicast one"
                ));
            }
            Ok([a, b, c, d, e, f])
        }
        _ => Err(format!(
            "{text:?} is not a MAC address (six hex pairs, e.g. 02:00:00:00:00:01)"
        )),
    }
}

/// `aa:bb:cc:dd:ee:ff`, as the Domain keeps MACs.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A locally administered unicast MAC from the uid and the interface name.
fn derived_mac(uid: &str, name: &str) -> String {
    let id = Uuid::new_v5(&uid_namespace(), format!("{uid}/{name}").as_bytes());
    let b = id.as_bytes();
    format_mac([(b[0] & 0xfc) | 0x02, b[1], b[2], b[3], b[4], b[5]])
}

fn is_pci_address(a: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
    let Some((dom, rest)) = a.split_once(':') else {
        return false;
    };
    let Some((bus, rest)) = rest.split_once(':') else {
        return false;
    };
    let Some((slot, func)) = rest.split_once('.') else {
        return false;
    };
    hex(dom, 4) && hex(bus, 2) && hex(slot, 2) && matches!(func.as_bytes(), [b'0'..=b'7'])
}
