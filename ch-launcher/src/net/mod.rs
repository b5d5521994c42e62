//! The pod network, prepared on the host before the VM starts, as
//! KubeVirt's virt-launcher does for the `masquerade` binding: per
//! interface an in-pod bridge (`k6t-eth<i>`) holding the gateway address
//! (10.0.2.1/24 by default) and a tap (`tap<i>`) the hypervisor opens by
//! name; NAT out through the pod's own interface and the `ports` forwarded
//! in (nftables, JSON through `nft -j`); a DHCP server on the bridge that
//! gives the guest its address (10.0.2.2) and the pod's DNS.
//!
//! Everything made is named by the VM (the nftables table carries the uid),
//! removed when [`PodNetwork`] is dropped, and removed first when a run
//! finds it left over by a launcher that died.
//!
//! Links and addresses are made with iproute2 (`ip`, arguments passed as a
//! list, never through a shell): it is in every launcher image and does the
//! netlink work; nftables rules go through `nft -j -f -`, its JSON API.
//! Needs `CAP_NET_ADMIN` in the pod's network namespace and nothing more.

pub mod dhcp;
mod host;

use domain_model::{Binding, Domain, Interface, Protocol};
use std::net::Ipv4Addr;
use std::path::Path;

pub use host::{run_ip, run_nft};

/// The tap Cloud Hypervisor and QEMU open for interface number `i`, as
/// KubeVirt names it for the pod network.
pub fn tap_name(i: usize) -> String {
    format!("tap{i}")
}

/// The in-pod bridge of interface number `i`.
pub fn bridge_name(i: usize) -> String {
    format!("k6t-eth{i}")
}

/// The nftables table of the VM with `uid`.
pub fn table_name(uid: &str) -> String {
    let short: String = uid
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    format!("chl_{short}")
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{field}: {what}: {cause}")]
    Setup {
        field: String,
        what: String,
        cause: String,
    },
}

/// The pod's side: the interface its default route leaves by, with its
/// IPv4 address and MTU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodLink {
    pub name: String,
    pub address: Ipv4Addr,
    pub mtu: u32,
}

/// What the DHCP server hands out besides the address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resolv {
    pub nameservers: Vec<Ipv4Addr>,
    pub search: Vec<String>,
}

impl Resolv {
    /// `nameserver` (IPv4 ones) and `search` lines of a resolv.conf.
    pub fn parse(text: &str) -> Resolv {
        let mut r = Resolv::default();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("nameserver") => {
                    if let Some(Ok(a)) = words.next().map(str::parse::<Ipv4Addr>) {
                        r.nameservers.push(a);
                    }
                }
                Some("search") => r.search = words.map(String::from).collect(),
                _ => {}
            }
        }
        r
    }

    pub fn read(path: &Path) -> Resolv {
        std::fs::read_to_string(path)
            .map(|t| Resolv::parse(&t))
            .unwrap_or_default()
    }
}

/// The nftables ruleset (JSON) for the VM's masquerade interfaces: one
/// table, created afresh.
pub fn nft_ruleset(table: &str, pod: &PodLink, nics: &[(usize, &Interface)]) -> serde_json::Value {
    use serde_json::json;
    let t = |name: &str, hook: &str, prio: i32| {
        json!({"chain": {"family": "ip", "table": table, "name": name, "type": "nat",
            "hook": hook, "prio": prio, "policy": "accept"}})
    };
    let mut cmds = vec![
        // `add` then `delete` removes a table left over without failing
        // when there is none.
        json!({"add": {"table": {"family": "ip", "name": table}}}),
        json!({"delete": {"table": {"family": "ip", "name": table}}}),
        json!({"add": {"table": {"family": "ip", "name": table}}}),
        json!({"add": t("prerouting", "prerouting", -100)}),
        json!({"add": t("output", "output", -100)}),
        json!({"add": t("postrouting", "postrouting", 100)}),
    ];
    let rule = |chain: &str, expr: Vec<serde_json::Value>| json!({"add": {"rule": {"family": "ip", "table": table, "chain": chain, "expr": expr}}});
    let eq = |left: serde_json::Value, right: serde_json::Value| json!({"match": {"op": "==", "left": left, "right": right}});
    let ne = |left: serde_json::Value, right: serde_json::Value| json!({"match": {"op": "!=", "left": left, "right": right}});
    let field = |proto: &str, f: &str| json!({"payload": {"protocol": proto, "field": f}});
    let meta = |key: &str| json!({"meta": {"key": key}});
    for (i, nic) in nics {
        let Binding::Masquerade { guest, ports, .. } = &nic.binding;
        let bridge = bridge_name(*i);
        // Out: the guest's traffic leaves with the pod's address.
        cmds.push(rule(
            "postrouting",
            vec![
                eq(field("ip", "saddr"), json!(guest.to_string())),
                ne(meta("oifname"), json!(bridge)),
                json!({"counter": null}),
                json!({"masquerade": null}),
            ],
        ));
        // In: from outside the pod (prerouting) and from the pod itself to
        // its own address (output), the forwarded ports, all when none.
        let entries: Vec<Option<(Protocol, u16)>> = if ports.is_empty() {
            vec![None]
        } else {
            ports.iter().map(|p| Some((p.protocol, p.port))).collect()
        };
        for entry in entries {
            let port_match: Vec<serde_json::Value> = entry
                .map(|(proto, port)| vec![eq(field(proto.as_str(), "dport"), json!(port))])
                .unwrap_or_default();
            let dnat = json!({"dnat": {"addr": guest.to_string()}});
            let mut pre = vec![eq(meta("iifname"), json!(pod.name))];
            pre.extend(port_match.clone());
            pre.push(json!({"counter": null}));
            pre.push(dnat.clone());
            cmds.push(rule("prerouting", pre));
            let mut out = vec![eq(field("ip", "daddr"), json!(pod.address.to_string()))];
            out.extend(port_match);
            out.push(json!({"counter": null}));
            out.push(dnat);
            cmds.push(rule("output", out));
        }
    }
    json!({"nftables": cmds})
}

/// What [`prepare`] made; removed when dropped.
pub struct PodNetwork {
    links: Vec<String>,
    table: Option<String>,
    forward_was: Option<String>,
    dhcp: Vec<tokio::task::JoinHandle<()>>,
}

impl PodNetwork {
    fn empty() -> PodNetwork {
        PodNetwork {
            links: Vec::new(),
            table: None,
            forward_was: None,
            dhcp: Vec::new(),
        }
    }

    /// The interfaces made, for logs.
    pub fn links(&self) -> &[String] {
        &self.links
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        for task in &self.dhcp {
            task.abort();
        }
        if let Some(table) = &self.table {
            let delete = serde_json::json!({"nftables": [
                {"delete": {"table": {"family": "ip", "name": table}}}]});
            if let Err(e) = run_nft(&delete) {
                tracing::warn!(table, error = %e, "cannot remove the nftables table");
            }
        }
        for link in self.links.iter().rev() {
            if let Err(e) = run_ip(&["link", "del", link]) {
                tracing::warn!(link, error = %e, "cannot remove a network link");
            }
        }
        if let Some(was) = &self.forward_was {
            let _ = std::fs::write(IP_FORWARD, was);
        }
        if !self.links.is_empty() {
            tracing::info!(links = ?self.links, "pod network removed");
        }
    }
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Makes the network of `domain`'s interfaces in the current network
/// namespace (the pod's) and starts their DHCP servers; nothing when it has
/// none. On error what was made is removed again.
pub async fn prepare(domain: &Domain, resolv_conf: &Path) -> Result<PodNetwork, NetError> {
    let mut made = PodNetwork::empty();
    if domain.devices.interfaces.is_empty() {
        return Ok(made);
    }
    let first = &domain.devices.interfaces[0].spec_path;
    let setup = |field: &str, what: &str| {
        let (field, what) = (field.to_string(), what.to_string());
        move |cause: String| NetError::Setup { field, what, cause }
    };
    let pod =
        host::pod_link().map_err(setup(first, "find the pod's interface (its default route)"))?;
    let resolv = Resolv::read(resolv_conf);
    tracing::info!(pod_interface = %pod.name, pod_address = %pod.address, mtu = pod.mtu,
        nameservers = ?resolv.nameservers, "pod network");
    let nics: Vec<(usize, &Interface)> = domain.devices.interfaces.iter().enumerate().collect();
    for (i, nic) in &nics {
        let Binding::Masquerade {
            gateway, prefix, ..
        } = &nic.binding;
        let (bridge, tap) = (bridge_name(*i), tap_name(*i));
        // Left by a launcher that died: this VM's names, so ours to remove.
        for stale in [&tap, &bridge] {
            if run_ip(&["link", "del", stale]).is_ok() {
                tracing::info!(link = %stale, "removed a link a previous run left");
            }
        }
        let mtu = pod.mtu.to_string();
        let gw = format!("{gateway}/{prefix}");
        let steps: [(&str, Vec<&str>); 5] = [
            (
                "create the bridge",
                vec!["link", "add", &bridge, "type", "bridge"],
            ),
            (
                "address the bridge",
                vec!["addr", "add", &gw, "dev", &bridge],
            ),
            (
                "bring up the bridge",
                vec!["link", "set", &bridge, "mtu", &mtu, "up"],
            ),
            (
                "create the tap",
                vec!["tuntap", "add", "dev", &tap, "mode", "tap"],
            ),
            (
                "attach the tap",
                vec!["link", "set", &tap, "master", &bridge, "mtu", &mtu, "up"],
            ),
        ];
        for (what, args) in steps {
            run_ip(&args).map_err(setup(&nic.spec_path, what))?;
            if what == "create the bridge" {
                made.links.push(bridge.clone());
            } else if what == "create the tap" {
                made.links.push(tap.clone());
            }
        }
    }
    let was = std::fs::read_to_string(IP_FORWARD).unwrap_or_default();
    if was.trim() != "1" {
        std::fs::write(IP_FORWARD, "1")
            .map_err(|e| setup(first, "turn on IPv4 forwarding")(e.to_string()))?;
        made.forward_was = Some(was);
    }
    let table = table_name(&domain.uid);
    made.table = Some(table.clone());
    run_nft(&nft_ruleset(&table, &pod, &nics)).map_err(setup(first, "install the NAT rules"))?;
    for (i, nic) in &nics {
        let lease = dhcp::Lease::for_interface(nic, &domain.name, pod.mtu, &resolv)
            .map_err(setup(&nic.spec_path, "read the interface's MAC"))?;
        let server = dhcp::Server::bind(&bridge_name(*i), lease)
            .map_err(|e| setup(&nic.spec_path, "start the DHCP server")(e.to_string()))?;
        made.dhcp.push(tokio::spawn(server.run()));
    }
    tracing::info!(links = ?made.links, table, "pod network ready");
    Ok(made)
}
