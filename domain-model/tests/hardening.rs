//! Parser hardening: random text and randomly mutated real specs never panic;
//! they always give a Domain or a non-empty list of field-named errors.

mod common;

use common::{examples_dir, Fixture};
use domain_model::{check_support, explain, resolve_str, Domain, LoadOptions, SpecErrors};
use proptest::prelude::*;
use serde_json::{json, Value};

/// Real examples plus a spec that touches every implemented section, so
/// mutations reach deep into resolution.
fn seeds() -> Vec<Value> {
    let mut out: Vec<Value> = std::fs::read_dir(examples_dir())
        .expect("examples dir")
        .filter_map(|e| e.ok())
        .map(|e| std::fs::read_to_string(e.path()).expect("read example"))
        .map(|t| serde_saphyr::from_str::<Value>(&t).expect("example parses"))
        .collect();
    out.sort_by_key(|v| v.to_string());
    out.push(json!({
        "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
        "metadata": {"name": "full", "namespace": "ns", "uid": "0b7c5a4e-1b8e-4a57-9c1c-6d3f0f0c2a11"},
        "spec": {
            "hypervisor": "cloud-hypervisor", "architecture": "amd64",
            "startStrategy": "Paused", "terminationGracePeriodSeconds": 10,
            "domain": {
                "cpu": {"sockets": 2, "cores": 2, "threads": 1, "maxSockets": 4, "model": "host-passthrough"},
                "memory": {"guest": "1Gi", "maxGuest": "2Gi", "hugepages": {"pageSize": "2Mi"}},
                "resources": {"requests": {"memory": "1Gi", "cpu": "500m"}, "limits": {"memory": "2Gi"}},
                "firmware": {"uuid": "5d307ca9-b3ef-428c-8861-06e72d69f223", "serial": "s1",
                    "bootloader": {"efi": {"secureBoot": false, "persistent": false}}},
                "features": {"acpi": {}, "smm": {"enabled": false}},
                "clock": {"utc": {"offsetSeconds": 0}, "timer": {"rtc": {"tickPolicy": "catchup"}}},
                "launchSecurity": {"sev": {"policy": {"encryptedState": true}, "attestation": {}}},
                "devices": {
                    "rng": {}, "autoattachSerialConsole": true, "autoattachGraphicsDevice": false,
                    "inputs": [{"name": "t", "type": "tablet", "bus": "virtio"}],
                    "disks": [
                        {"name": "rootdisk", "disk": {"bus": "virtio"}, "serial": "R1", "bootOrder": 1},
                        {"name": "data", "cdrom": {"bus": "scsi", "readonly": true}}
                    ]
                }
            },
            "volumes": [
                {"name": "rootdisk", "containerDisk": {"image": "example/root:1"}},
                {"name": "data", "hostDisk": {"path": "data.img", "type": "DiskOrCreate", "capacity": "1Gi", "shared": true}}
            ]
        }
    }));
    out
}

/// Values that hit parsing edge cases: wrong types, bounds, tricky strings.
fn interesting(i: usize) -> Value {
    let all = [
        Value::Null,
        json!(true),
        json!(false),
        json!(0),
        json!(-1),
        json!(1),
        json!(u32::MAX),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(1.5),
        json!(1e300),
        json!(""),
        json!("0"),
        json!("-1Gi"),
        json!("1Gi"),
        json!("100Ei"),
        json!("1e30"),
        json!("9999999999999999999999999999999"),
        json!("128m"),
        json!("Paused"),
        json!("host-passthrough"),
        json!("cloud-hypervisor"),
        json!("s390x"),
        json!("../../etc/passwd"),
        json!("/dev/null"),
        json!("ünïcödé ☃"),
        json!("x".repeat(300)),
        json!([]),
        json!([{}]),
        json!({}),
        json!({"enabled": false}),
        json!({"name": "rootdisk"}),
    ];
    all[i % all.len()].clone()
}

const KEYS: &[&str] = &[
    "name",
    "disk",
    "cdrom",
    "lun",
    "bus",
    "sev",
    "snp",
    "tdx",
    "efi",
    "bios",
    "smm",
    "guest",
    "maxGuest",
    "sockets",
    "maxSockets",
    "hostDisk",
    "containerDisk",
    "emptyDisk",
    "kernelBoot",
    "launchSecurity",
    "secureNestedPaging",
    "unknownKey",
    "",
];

/// Every path (as keys/indices) in `v`, root first.
fn all_paths(v: &Value, prefix: &mut Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(PathStep::Key(k.clone()));
                all_paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                prefix.push(PathStep::Index(i));
                all_paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn node_mut<'a>(v: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    let mut node = v;
    for step in path {
        node = match (step, node) {
            (PathStep::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (PathStep::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(node)
}

/// One mutation: (which node, which operation, which value or key).
fn mutate(v: &mut Value, (pick, op, arg): (usize, u8, usize)) {
    let mut paths = Vec::new();
    all_paths(v, &mut Vec::new(), &mut paths);
    let path = paths[pick % paths.len()].clone();
    match op % 5 {
        0 => {
            if let Some(n) = node_mut(v, &path) {
                *n = interesting(arg);
            }
        }
        1 => {
            // Remove the node from its parent.
            if let Some((last, parent)) = path.split_last() {
                match (last, node_mut(v, parent)) {
                    (PathStep::Key(k), Some(Value::Object(m))) => {
                        m.remove(k);
                    }
                    (PathStep::Index(i), Some(Value::Array(a))) if *i < a.len() => {
                        a.remove(*i);
                    }
                    _ => {}
                }
            }
        }
        2 => {
            // Rename a key, or add one.
            if let Some(Value::Object(m)) = node_mut(v, &path) {
                let key = KEYS[arg % KEYS.len()].to_string();
                let old = m.keys().nth(arg % m.len().max(1)).cloned();
                let value = old
                    .and_then(|k| m.remove(&k))
                    .unwrap_or_else(|| interesting(arg));
                m.insert(key, value);
            }
        }
        3 => {
            // Duplicate a list element, or wrap a value in a list.
            if let Some(n) = node_mut(v, &path) {
                match n {
                    Value::Array(a) if !a.is_empty() => {
                        let first = a[arg % a.len()].clone();
                        a.push(first);
                    }
                    other => *other = Value::Array(vec![other.clone()]),
                }
            }
        }
        _ => {
            // Replace with an object holding a known key.
            if let Some(n) = node_mut(v, &path) {
                *n = json!({ KEYS[arg % KEYS.len()]: interesting(arg / 7) });
            }
        }
    }
}

/// The invariant: a Domain whose support checks run, or errors that each
/// name a field and say something.
fn check_outcome(r: Result<Domain, SpecErrors>) -> Result<(), TestCaseError> {
    match r {
        Ok(d) => {
            let table = explain(&d);
            let refused = table
                .iter()
                .filter(|f| !f.supported_by(d.hypervisor))
                .count();
            match check_support(&d) {
                Ok(()) => prop_assert_eq!(refused, 0),
                Err(e) => prop_assert_eq!(e.0.len(), refused),
            }
        }
        Err(e) => {
            prop_assert!(!e.0.is_empty(), "empty error list");
            for f in &e.0 {
                prop_assert!(!f.path.is_empty(), "error without a path: {f:?}");
                prop_assert!(!f.message.is_empty(), "error without a message: {f:?}");
            }
        }
    }
    Ok(())
}

fn opts(f: &Fixture) -> LoadOptions {
    f.opts()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_specs_never_panic(
        seed in 0usize..16,
        mutations in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<usize>()), 1..5),
        as_yaml in any::<bool>(),
    ) {
        let f = Fixture::new();
        let seeds = seeds();
        let mut v = seeds[seed % seeds.len()].clone();
        for m in mutations {
            mutate(&mut v, m);
        }
        let text = if as_yaml {
            serde_saphyr::to_string(&v).unwrap_or_else(|_| v.to_string())
        } else {
            v.to_string()
        };
        check_outcome(resolve_str(&text, &opts(&f)))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn corrupted_yaml_text_never_panics(
        seed in 0usize..16,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<bool>()), 1..6),
    ) {
        let seeds = seeds();
        let v = &seeds[seed % seeds.len()];
        let mut bytes = serde_saphyr::to_string(v).unwrap_or_default().into_bytes();
        for (pos, byte, insert) in edits {
            if bytes.is_empty() {
                break;
            }
            let at = pos % bytes.len();
            // Printable ASCII plus YAML's structural characters.
            let b = b" \n:-[]{}&*!|>'\"#%@`,?0aZ"[usize::from(byte) % 24];
            if insert { bytes.insert(at, b) } else { bytes[at] = b }
        }
        let text = String::from_utf8_lossy(&bytes);
        check_outcome(resolve_str(&text, &LoadOptions::default()))?;
    }

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
        check_outcome(resolve_str(&text, &LoadOptions::default()))?;
    }

    #[test]
    fn arbitrary_quantities_never_panic(text in "[-+]?[0-9.]{0,40}([eE][-+]?[0-9]{0,4}|[KMGTPE]i?|[kmun])?") {
        let _ = domain_model::quantity::parse_bytes(&text);
        let _ = domain_model::quantity::parse_cpus(&text);
    }
}

#[test]
fn every_seed_resolves_or_reports_errors() {
    let f = Fixture::new();
    std::fs::write(f.path().join("data.img"), b"").unwrap();
    for v in seeds() {
        check_outcome(resolve_str(&v.to_string(), &f.opts())).unwrap();
    }
    // The kitchen-sink seed is valid: mutations start from a Domain.
    let full = seeds().pop().unwrap();
    let d = resolve_str(&full.to_string(), &f.opts()).unwrap();
    assert_eq!(d.name, "full");
}

#[test]
fn deep_nesting_and_alias_bombs_are_refused_not_followed() {
    let deep_yaml = format!(
        "apiVersion: {}1{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let deep_json = format!("{{\"a\": {}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let mut bomb = String::from("a: &a [1,2,3,4,5,6,7,8,9]\n");
    for (prev, name) in ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .zip(["b", "c", "d", "e", "f", "g", "h", "i"])
    {
        let refs = vec![format!("*{prev}"); 9].join(",");
        bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    for text in [deep_yaml, deep_json, bomb] {
        let e = resolve_str(&text, &LoadOptions::default()).unwrap_err();
        assert_eq!(e.0.len(), 1, "{e}");
        assert_eq!(e.0[0].path, "(document)");
    }
}
