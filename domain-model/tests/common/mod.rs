//! Helpers shared by the integration tests: a minimal valid spec that each
//! test patches, and assertions on error paths.
#![allow(dead_code)]

use domain_model::{resolve_str, Domain, LoadOptions, SpecErrors};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// The smallest spec that resolves: 64 MiB, BIOS boot, no disks.
pub fn base() -> Value {
    json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {"name": "testvm"},
        "spec": {"domain": {"memory": {"guest": "64Mi"}, "devices": {}}}
    })
}

/// Deep-merges `patch` into `target`; `null` in the patch removes the key.
pub fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

pub fn spec(patch: Value) -> String {
    let mut v = base();
    merge(&mut v, &patch);
    v.to_string()
}

/// A scratch directory with a kernel, an initrd and container disk images.
pub struct Fixture {
    pub dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        for f in ["vmlinuz", "initrd.img", "existing.img"] {
            std::fs::write(dir.path().join(f), b"x").expect("write fixture");
        }
        for name in ["containerdisk", "rootdisk"] {
            let d = dir.path().join("container-disks").join(name);
            std::fs::create_dir_all(&d).expect("mkdir");
            std::fs::write(d.join("disk.img"), b"x").expect("write image");
        }
        let q = dir.path().join("container-disks").join("qcowdisk");
        std::fs::create_dir_all(&q).expect("mkdir");
        std::fs::write(q.join("disk.qcow2"), b"x").expect("write image");
        Fixture { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn opts(&self) -> LoadOptions {
        LoadOptions {
            base_dir: self.path().to_path_buf(),
            container_disk_dir: self.path().join("container-disks"),
            ephemeral_disk_dir: self.path().join("ephemeral"),
            mounts_dir: self.path().join("mounts"),
            service_account_dir: self.path().join("serviceaccount"),
            ..LoadOptions::default()
        }
    }

    pub fn resolve(&self, patch: Value) -> Result<Domain, SpecErrors> {
        resolve_str(&spec(patch), &self.opts())
    }
}

pub fn ok(r: Result<Domain, SpecErrors>) -> Domain {
    match r {
        Ok(d) => d,
        Err(e) => panic!("expected a Domain, got:\n{e}"),
    }
}

pub fn err(r: Result<Domain, SpecErrors>) -> SpecErrors {
    match r {
        Ok(d) => panic!("expected errors, got {d:#?}"),
        Err(e) => e,
    }
}

/// The error paths, in order.
pub fn paths(e: &SpecErrors) -> Vec<&str> {
    e.0.iter().map(|f| f.path.as_str()).collect()
}

/// Asserts that exactly `path` is reported and that its message contains
/// `needle`.
pub fn assert_only(e: &SpecErrors, path: &str, needle: &str) {
    assert_eq!(paths(e), vec![path], "{e}");
    assert!(
        e.0[0].message.contains(needle),
        "{path}: {:?} lacks {needle:?}",
        e.0[0].message
    );
}

pub fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/kubevirt-examples")
}
