//! The host tools the network is made with: iproute2 and nft, each run with
//! its arguments as a list and its JSON read back.

use super::PodLink;
use std::io::Write;
use std::process::{Command, Stdio};

/// `ip ARGS`; its stderr on failure.
pub fn run_ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run ip (iproute2): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `nft -j -f -` with `ruleset` on stdin.
pub fn run_nft(ruleset: &serde_json::Value) -> Result<(), String> {
    let mut child = Command::new("nft")
        .args(["-j", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft (nftables): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(ruleset.to_string().as_bytes())
            .map_err(|e| format!("nft: {e}"))?;
    }
    let out = child.wait_with_output().map_err(|e| format!("nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The interface of the default route, its first IPv4 address and its MTU.
pub fn pod_link() -> Result<PodLink, String> {
    let routes: serde_json::Value =
        serde_json::from_str(&run_ip(&["-j", "-4", "route", "show", "default"])?)
            .map_err(|e| format!("ip route: {e}"))?;
    let dev = routes
        .as_array()
        .and_then(|r| r.first())
        .and_then(|r| r["dev"].as_str())
        .ok_or("the pod has no IPv4 default route")?
        .to_string();
    let addrs: serde_json::Value =
        serde_json::from_str(&run_ip(&["-j", "-4", "addr", "show", "dev", &dev])?)
            .map_err(|e| format!("ip addr: {e}"))?;
    let link = addrs
        .as_array()
        .and_then(|a| a.first())
        .ok_or("no such link")?;
    let address = link["addr_info"]
        .as_array()
        .and_then(|a| a.iter().find_map(|i| i["local"].as_str()))
        .ok_or_else(|| format!("{dev} has no IPv4 address"))?
        .parse()
        .map_err(|e| format!("{dev}: {e}"))?;
    let mtu = link["mtu"].as_u64().unwrap_or(1500) as u32;
    Ok(PodLink {
        name: dev,
        address,
        mtu,
    })
}
