//! The masquerade binding for real, in network namespaces the test makes:
//! `pod` (10.99.0.2 on eth0, default route to `peer`), `peer` (10.99.0.1,
//! the world outside the pod) and `guest`, whose eth0 is wired to the
//! launcher's tap (frames copied both ways, as the VMM would). busybox's
//! udhcpc in `guest` gets its lease from the launcher's DHCP server; TCP
//! from the guest reaches `peer` with the pod's address (NAT); a forwarded
//! port reaches the guest from `peer` and from the pod itself; and the
//! taps, bridge and nftables table are gone afterwards. A second part runs
//! the real Cloud Hypervisor on the tap.

use integration::launcher_path;
use integration::netns::{self, ip, Netns};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SPEC: &str = "\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: netvm
  uid: 6c1b8c64-2f5e-4a57-9d0e-1f3c2a4b5d6e
spec:
  hypervisor: cloud-hypervisor
  domain:
    memory:
      guest: 64Mi
    firmware:
      kernelBoot:
        container:
          kernelPath: KERNEL
    devices:
      interfaces:
      - name: default
        masquerade: {}
        macAddress: 02:aa:bb:cc:dd:01
        ports:
        - port: 8080
        dhcpOptions:
          ntpServers: [10.99.0.123]
  networks:
  - name: default
    pod: {}
  terminationGracePeriodSeconds: 1
";

fn skip(test: &str) -> bool {
    match netns::unavailable() {
        Some(why) => {
            eprintln!("SKIP: {test}: {why}");
            true
        }
        None => false,
    }
}

/// `pod` and `peer` joined by a veth, as a pod on its node.
struct Pod {
    pod: Netns,
    peer: Netns,
    /// `/etc/netns/<pod>/`: `ip netns exec` mounts its resolv.conf.
    etc: std::path::PathBuf,
}

impl Pod {
    fn new() -> Pod {
        let pod = Netns::new("pod");
        let peer = Netns::new("peer");
        ip(&[
            "-n", &pod.name, "link", "add", "eth0", "mtu", "1400", "type", "veth", "peer", "name",
            "p0", "netns", &peer.name,
        ]);
        ip(&[
            "-n",
            &pod.name,
            "addr",
            "add",
            "10.99.0.2/24",
            "dev",
            "eth0",
        ]);
        ip(&["-n", &pod.name, "link", "set", "eth0", "up"]);
        ip(&["-n", &peer.name, "addr", "add", "10.99.0.1/24", "dev", "p0"]);
        ip(&["-n", &peer.name, "link", "set", "p0", "mtu", "1400", "up"]);
        ip(&[
            "-n",
            &pod.name,
            "route",
            "add",
            "default",
            "via",
            "10.99.0.1",
        ]);
        let etc = std::path::PathBuf::from("/etc/netns").join(&pod.name);
        std::fs::create_dir_all(&etc).expect("mkdir /etc/netns/<pod>");
        std::fs::write(
            etc.join("resolv.conf"),
            "nameserver 10.99.0.53\nsearch ns1.svc.cluster.local svc.cluster.local\n",
        )
        .expect("resolv.conf");
        Pod { pod, peer, etc }
    }

    fn links(&self) -> String {
        netns::ip_output(&["-n", &self.pod.name, "-br", "link"])
    }

    fn ruleset(&self) -> String {
        let out = self
            .pod
            .command("nft")
            .args(["list", "ruleset"])
            .output()
            .expect("nft");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.etc);
    }
}

/// A child killed (and reaped) when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spec_file(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("vmi.yaml");
    let text = SPEC.replace("KERNEL", &images::test_guest().display().to_string());
    std::fs::write(&path, text).expect("write spec");
    path
}

fn accept_one(listener: TcpListener) -> String {
    listener.set_nonblocking(false).expect("blocking");
    let (mut conn, from) = listener.accept().expect("accept");
    let mut line = String::new();
    BufReader::new(conn.try_clone().expect("clone"))
        .read_line(&mut line)
        .expect("read");
    conn.write_all(b"pong\n").expect("write");
    format!("{} {}", from.ip(), line.trim())
}

fn ping(addr: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr.parse().expect("addr"), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"ping\n").expect("write");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read reply");
    reply
}

#[test]
fn guest_side_gets_its_lease_reaches_out_through_nat_and_forwarded_ports_reach_it() {
    if skip("net_masquerade") {
        return;
    }
    let env = Pod::new();
    let guest = Netns::new("guest");
    let scratch = tempfile::tempdir().expect("tempdir");
    let spec = spec_file(scratch.path());

    let mut child = env
        .pod
        .command(launcher_path().to_str().expect("utf-8"))
        .args(["--log-format", "json", "net-up"])
        .arg(&spec)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ch-launcher net-up");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let mut launcher = Reaped(child);
    let mut made = String::new();
    BufReader::new(stdout)
        .read_line(&mut made)
        .expect("read net-up output");
    if made.is_empty() {
        let mut err = String::new();
        let _ = BufReader::new(stderr).read_to_string(&mut err);
        panic!("net-up printed nothing: {err}");
    }
    let made: serde_json::Value = serde_json::from_str(&made).expect("net-up JSON");
    assert_eq!(made["taps"][0], "tap0", "{made}");
    let links = env.links();
    assert!(
        links.contains("k6t-eth0") && links.contains("tap0"),
        "{links}"
    );

    // The guest's eth0 is a tap of its own, wired frame by frame to the
    // launcher's tap, as a VMM's virtio-net would be. (A tap without
    // offloads gets whole checksums from the kernel; a veth would not.)
    ip(&[
        "-n",
        &guest.name,
        "tuntap",
        "add",
        "dev",
        "eth0",
        "mode",
        "tap",
    ]);
    ip(&[
        "-n",
        &guest.name,
        "link",
        "set",
        "eth0",
        "address",
        "02:aa:bb:cc:dd:01",
        "up",
    ]);
    let tap = env.pod.run(|| netns::open_tap("tap0").expect("open tap0"));
    let wire = guest.run(|| netns::open_tap("eth0").expect("open the guest's eth0"));
    netns::pump(
        tap.try_clone().expect("dup"),
        wire.try_clone().expect("dup"),
    );
    netns::pump(wire, tap);

    // DHCP with a real client; the script prints what it was given and
    // configures the interface, as a guest's would.
    let script = scratch.path().join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\n[ \"$1\" = bound ] || exit 0\nenv > \"$LEASE_FILE\"\n\
         ip addr add \"$ip/$mask\" dev \"$interface\"\nip link set \"$interface\" mtu \"$mtu\"\n\
         ip route add default via \"$router\"\n",
    )
    .expect("script");
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&script).expect("meta").permissions(),
        0o755,
    );
    Command::new("chmod")
        .arg("755")
        .arg(&script)
        .status()
        .expect("chmod");
    let lease_file = scratch.path().join("lease.env");
    let started = Instant::now();
    let out = guest
        .command("busybox")
        .args([
            "udhcpc",
            "-i",
            "eth0",
            "-n",
            "-q",
            "-f",
            "-t",
            "5",
            "-T",
            "1",
            "-O",
            "staticroutes",
            "-O",
            "ntpsrv",
            "-O",
            "search",
            "-s",
        ])
        .arg(&script)
        .env("LEASE_FILE", &lease_file)
        .output()
        .expect("run udhcpc");
    assert!(
        out.status.success(),
        "udhcpc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("DHCP lease in {:?}", started.elapsed());
    let lease = std::fs::read_to_string(&lease_file).expect("lease written");
    for want in [
        "ip=10.0.2.2",
        "mask=24",
        "router=10.0.2.1",
        "dns=10.99.0.53",
        "domain=ns1.svc.cluster.local",
        "search=ns1.svc.cluster.local svc.cluster.local",
        "mtu=1400",
        "hostname=netvm",
        "staticroutes=0.0.0.0/0 10.0.2.1",
        "ntpsrv=10.99.0.123",
        "lease=4294967295",
    ] {
        assert!(
            lease.lines().any(|l| l == want),
            "{want} missing from the lease:\n{lease}"
        );
    }

    // Out: the guest reaches the peer, which sees the pod's address.
    let listener = env
        .peer
        .run(|| TcpListener::bind("10.99.0.1:9000").expect("bind in peer"));
    let server = std::thread::spawn(move || accept_one(listener));
    let reply = guest.run(|| ping("10.99.0.1:9000"));
    assert_eq!(reply, "pong\n");
    assert_eq!(
        server.join().expect("server"),
        "10.99.0.2 ping",
        "masqueraded source"
    );

    // In: the forwarded port reaches the guest, from outside and from the
    // pod itself.
    for (from, name) in [(&env.peer, "peer"), (&env.pod, "pod")] {
        let listener = guest.run(|| TcpListener::bind("0.0.0.0:8080").expect("bind in guest"));
        let server = std::thread::spawn(move || accept_one(listener));
        let reply = from.run(|| ping("10.99.0.2:8080"));
        assert_eq!(reply, "pong\n", "from {name}");
        let seen = server.join().expect("server");
        assert!(seen.ends_with(" ping"), "from {name}: {seen}");
    }

    // Gone on SIGTERM.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(launcher.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = launcher.0.wait().expect("wait");
    assert!(status.success(), "net-up exit: {status}");
    let links = env.links();
    assert!(
        !links.contains("k6t-eth0") && !links.contains("tap0"),
        "left behind: {links}"
    );
    let rules = env.ruleset();
    assert!(
        !rules.contains("chl_"),
        "nftables table left behind: {rules}"
    );
}

#[test]
fn cloud_hypervisor_runs_on_the_tap_and_a_crashed_launchers_leftovers_are_removed() {
    if skip("net_masquerade on CH") {
        return;
    }
    let Some(ch) = std::env::var_os("CLOUD_HYPERVISOR_BIN").filter(|v| !v.is_empty()) else {
        eprintln!("SKIP: needs the real cloud-hypervisor (CLOUD_HYPERVISOR_BIN)");
        return;
    };
    let env = Pod::new();
    let scratch = tempfile::tempdir_in("/tmp").expect("tempdir");
    let spec = spec_file(scratch.path());
    // What a SIGKILLed launcher would have left: its tap, bridge and table.
    ip(&[
        "-n",
        &env.pod.name,
        "tuntap",
        "add",
        "dev",
        "tap0",
        "mode",
        "tap",
    ]);
    ip(&[
        "-n",
        &env.pod.name,
        "link",
        "add",
        "k6t-eth0",
        "type",
        "bridge",
    ]);
    let private = scratch.path().join("p");
    let child = env
        .pod
        .command(launcher_path().to_str().expect("utf-8"))
        .arg("--private-dir")
        .arg(&private)
        .args(["--log-format", "json", "run", "--no-attach"])
        .arg(&spec)
        .env("CLOUD_HYPERVISOR_BIN", ch)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ch-launcher run");
    let mut launcher = Reaped(child);
    let uid = "6c1b8c64-2f5e-4a57-9d0e-1f3c2a4b5d6e";
    let api = private.join(uid).join("ch-api.sock");
    let deadline = Instant::now() + Duration::from_secs(20);
    let info = loop {
        if let Ok(v) = integration::unix_http::ch_vm_info(&api) {
            if v["state"] == "Running" {
                break v;
            }
        }
        if let Ok(Some(status)) = launcher.0.try_wait() {
            let mut err = String::new();
            let _ = launcher
                .0
                .stderr
                .take()
                .map(|mut e| e.read_to_string(&mut err));
            panic!("launcher exited ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "the VM never ran");
        std::thread::sleep(Duration::from_millis(100));
    };
    let net = &info["config"]["net"][0];
    assert_eq!(net["tap"], "tap0", "{info}");
    assert_eq!(net["mac"], "02:aa:bb:cc:dd:01");
    assert_eq!(net["id"], "net-default");
    let links = env.links();
    assert!(
        links.contains("tap0") && links.contains("k6t-eth0"),
        "{links}"
    );
    // The tap is the VMM's: the launcher left its addressing alone.
    let addr = netns::ip_output(&["-n", &env.pod.name, "-br", "addr", "show", "dev", "tap0"]);
    assert!(!addr.contains("192.168."), "CH addressed the tap: {addr}");
    assert!(
        env.ruleset().contains("chl_6c1b8c642f5e"),
        "NAT table installed"
    );

    // A second interface hot-added on a tap of the caller's, and removed.
    ip(&[
        "-n",
        &env.pod.name,
        "tuntap",
        "add",
        "dev",
        "hot0",
        "mode",
        "tap",
    ]);
    let ctl = |args: &[&str]| {
        Command::new(launcher_path())
            .arg("--private-dir")
            .arg(&private)
            .args(args)
            .args(["--uid", uid])
            .output()
            .expect("run ch-launcher")
    };
    let out = ctl(&[
        "attach-interface",
        "--name",
        "extra",
        "--tap",
        "hot0",
        "--mac",
        "02:aa:bb:cc:dd:02",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status");
    let extra = status["resources"]["interfaces"]
        .as_array()
        .and_then(|n| n.iter().find(|n| n["name"] == "extra").cloned())
        .expect("extra in status");
    assert!(
        extra["guest_address"]
            .as_str()
            .is_some_and(|a| a.starts_with("0000:")),
        "{extra}"
    );
    let info = integration::unix_http::ch_vm_info(&api).expect("vm.info");
    let taps: Vec<&str> = info["config"]["net"]
        .as_array()
        .expect("net")
        .iter()
        .filter_map(|n| n["tap"].as_str())
        .collect();
    assert_eq!(taps, ["tap0", "hot0"], "{info}");
    for (args, want) in [
        (
            vec!["attach-interface", "--name", "extra", "--tap", "hot0"],
            "already attached",
        ),
        (
            vec!["attach-interface", "--name", "more", "--tap", "nope0"],
            "no tap",
        ),
        (
            vec!["detach-interface", "--name", "default"],
            "from the spec",
        ),
    ] {
        let out = ctl(&args);
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let out = ctl(&["detach-interface", "--name", "extra"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = integration::unix_http::ch_vm_info(&api).expect("vm.info");
    assert_eq!(
        info["config"]["net"].as_array().map(Vec::len),
        Some(1),
        "{info}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(launcher.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let _ = launcher.0.wait();
    let links = env.links();
    assert!(
        !links.contains("k6t-eth0") && !links.contains("tap0"),
        "left behind: {links}"
    );
    assert!(
        !env.ruleset().contains("chl_"),
        "nftables table left behind"
    );
}
