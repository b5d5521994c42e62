//! Interfaces and networks: the masquerade binding on the pod network with
//! KubeVirt's addresses, and every other binding or malformed field
//! refused by its path.

mod common;

use common::{assert_only, err, ok, Fixture};
use domain_model::{Binding, Protocol};
use serde_json::{json, Value};
use std::net::Ipv4Addr;

fn nic(iface: Value, network: Value) -> Value {
    json!({"spec": {"domain": {"devices": {"interfaces": [iface]}}, "networks": [network]}})
}

#[test]
fn masquerade_gets_kubevirts_addresses_and_a_stable_mac() {
    let f = Fixture::new();
    let spec = nic(
        json!({"name": "default", "masquerade": {},
            "ports": [{"port": 80}, {"port": 53, "protocol": "UDP"}]}),
        json!({"name": "default", "pod": {}}),
    );
    let d = ok(f.resolve(spec.clone()));
    let i = &d.devices.interfaces[0];
    assert_eq!(i.model, "virtio");
    let Binding::Masquerade {
        cidr,
        gateway,
        guest,
        ports,
        ..
    } = &i.binding;
    assert_eq!(cidr, "10.0.2.0/24");
    assert_eq!(
        (*gateway, *guest),
        (Ipv4Addr::new(10, 0, 2, 1), Ipv4Addr::new(10, 0, 2, 2))
    );
    assert_eq!(ports.len(), 2);
    assert_eq!((ports[1].protocol, ports[1].port), (Protocol::Udp, 53));
    // Locally administered unicast, the same on every resolution.
    let first = u8::from_str_radix(&i.mac[..2], 16).unwrap();
    assert_eq!(first & 0b11, 0b10, "{}", i.mac);
    assert_eq!(ok(f.resolve(spec)).devices.interfaces[0].mac, i.mac);
}

#[test]
fn vm_network_cidr_and_mac_address_are_honoured() {
    let f = Fixture::new();
    let d = ok(f.resolve(nic(
        json!({"name": "n", "masquerade": {}, "macAddress": "DE-AD-00-00-BE-EF"}),
        json!({"name": "n", "pod": {"vmNetworkCIDR": "192.168.50.0/28"}}),
    )));
    let i = &d.devices.interfaces[0];
    assert_eq!(i.mac, "de:ad:00:00:be:ef");
    let Binding::Masquerade {
        gateway,
        guest,
        prefix,
        ..
    } = &i.binding;
    assert_eq!(
        (*gateway, *guest, *prefix),
        (
            Ipv4Addr::new(192, 168, 50, 1),
            Ipv4Addr::new(192, 168, 50, 2),
            28
        )
    );
}

#[test]
fn unsupported_bindings_and_bad_fields_name_their_path() {
    let f = Fixture::new();
    let pod = json!({"name": "n", "pod": {}});
    let cases = [
        (
            json!({"name": "n", "bridge": {}}),
            pod.clone(),
            "spec.domain.devices.interfaces[0].bridge",
            "bridge binding",
        ),
        (
            json!({"name": "n", "sriov": {}}),
            pod.clone(),
            "spec.domain.devices.interfaces[0].sriov",
            "SR-IOV",
        ),
        (
            json!({"name": "n", "binding": {"name": "x"}}),
            pod.clone(),
            "spec.domain.devices.interfaces[0].binding",
            "plugins",
        ),
        (
            json!({"name": "n"}),
            pod.clone(),
            "spec.domain.devices.interfaces[0]",
            "required: a binding method",
        ),
        (
            json!({"name": "n", "masquerade": {}, "macAddress": "01:00:00:00:00:01"}),
            pod.clone(),
            "spec.domain.devices.interfaces[0].macAddress",
            "multicast",
        ),
        (
            json!({"name": "n", "masquerade": {}, "macAddress": "nope"}),
            pod.clone(),
            "spec.domain.devices.interfaces[0].macAddress",
            "not a MAC",
        ),
        (
            json!({"name": "n", "masquerade": {}, "model": "virtio9"}),
            pod.clone(),
            "spec.domain.devices.interfaces[0].model",
            "unknown model",
        ),
        (
            json!({"name": "n", "masquerade": {}, "pciAddress": "1:2"}),
            pod.clone(),
            "spec.domain.devices.interfaces[0].pciAddress",
            "not a PCI address",
        ),
        (
            json!({"name": "n", "masquerade": {}, "ports": [{"port": 70000}]}),
            pod.clone(),
            "spec.domain.devices.interfaces[0].ports[0].port",
            "not a port",
        ),
        (
            json!({"name": "n", "masquerade": {}, "ports": [{"port": 22}, {"port": 22, "protocol": "tcp"}]}),
            pod.clone(),
            "spec.domain.devices.interfaces[0].ports[1]",
            "twice",
        ),
        (
            json!({"name": "n", "masquerade": {}, "dhcpOptions": {"privateOptions": [{"option": 100, "value": "x"}]}}),
            pod.clone(),
            "spec.domain.devices.interfaces[0].dhcpOptions.privateOptions[0].option",
            "224 to 254",
        ),
        (
            json!({"name": "n", "masquerade": {}}),
            json!({"name": "n", "pod": {"vmNetworkCIDR": "10.0.2.1/24"}}),
            "spec.networks[0].pod.vmNetworkCIDR",
            "host bits",
        ),
        (
            json!({"name": "n", "masquerade": {}}),
            json!({"name": "n", "pod": {"vmNetworkCIDR": "10.0.2.0/31"}}),
            "spec.networks[0].pod.vmNetworkCIDR",
            "/30 or shorter",
        ),
        (
            json!({"name": "n", "masquerade": {}}),
            json!({"name": "n", "pod": {"vmIPv6NetworkCIDR": "fd10:0:2::/120"}}),
            "spec.networks[0].pod.vmIPv6NetworkCIDR",
            "IPv6",
        ),
        (
            json!({"name": "n", "masquerade": {}}),
            json!({"name": "n", "multus": {"networkName": "x"}}),
            "spec.networks[0].multus",
            "multus",
        ),
    ];
    for (iface, network, path, want) in cases {
        let e = err(f.resolve(nic(iface.clone(), network)));
        assert_only(&e, path, want);
    }
}
