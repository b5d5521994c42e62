//! KubeVirt VMI specs that boot the test guest, written to disk for tests,
//! benchmarks and the README's walk-through.
//!
//! The guest lives in Cargo's OUT_DIR, so a spec naming it must be written
//! after the build; `specs/test-guest.yaml` is the committed example of the
//! same document.

use crate::Variant;
use domain_model::Hypervisor;
use std::path::{Path, PathBuf};

/// A VMI spec for the test guest: 64Mi of memory, one vCPU, ACPI on, the
/// guest booted directly as a kernel from its absolute host path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestGuestSpec {
    pub hypervisor: Hypervisor,
    pub variant: Variant,
    /// `metadata.name`; also names the written file (`<name>-<hypervisor>.yaml`).
    pub name: String,
    /// `spec.terminationGracePeriodSeconds`. The guest ignores the ACPI power
    /// button, so a graceful stop always waits this long.
    pub termination_grace_period_seconds: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteSpecError {
    #[error(
        "metadata.name {0:?} is not a DNS-1123 label \
         (1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit)"
    )]
    InvalidName(String),
    #[error("the test guest path {} is not UTF-8, so a YAML spec cannot name it", .0.display())]
    NonUtf8GuestPath(PathBuf),
    #[error("cannot write the test guest spec {}: {cause}", path.display())]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
}

impl TestGuestSpec {
    /// Named `test-guest` (interactive) or `test-guest-halting`, with a
    /// 5-second grace period.
    pub fn new(hypervisor: Hypervisor, variant: Variant) -> Self {
        let name = match variant {
            Variant::Interactive => "test-guest",
            Variant::Halting => "test-guest-halting",
        };
        TestGuestSpec {
            hypervisor,
            variant,
            name: name.to_owned(),
            termination_grace_period_seconds: 5,
        }
    }

    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    pub fn termination_grace_period_seconds(mut self, seconds: u32) -> Self {
        self.termination_grace_period_seconds = seconds;
        self
    }

    /// The YAML document, with `kernelPath` naming `kernel_path`.
    pub fn render_with_kernel(&self, kernel_path: &Path) -> Result<String, WriteSpecError> {
        if !is_dns1123_label(&self.name) {
            return Err(WriteSpecError::InvalidName(self.name.clone()));
        }
        let kernel_path = kernel_path
            .to_str()
            .ok_or_else(|| WriteSpecError::NonUtf8GuestPath(kernel_path.to_path_buf()))?;
        Ok(format!(
            "\
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata:
  name: {name}
spec:
  hypervisor: {hypervisor}
  domain:
    cpu:
      sockets: 1
      cores: 1
      threads: 1
    memory:
      guest: 64Mi
    features:
      acpi: {{}}
    firmware:
      kernelBoot:
        container:
          kernelPath: {kernel_path}
    devices: {{}}
  terminationGracePeriodSeconds: {grace}
",
            name = self.name,
            hypervisor = self.hypervisor.as_str(),
            kernel_path = yaml_string(kernel_path),
            grace = self.termination_grace_period_seconds,
        ))
    }

    /// The YAML document, naming the built guest of `self.variant`.
    pub fn render(&self) -> Result<String, WriteSpecError> {
        self.render_with_kernel(self.variant.path())
    }

    /// Writes [`Self::render`] to `dir/<name>-<hypervisor>.yaml` (creating
    /// `dir` if needed) and returns that path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, WriteSpecError> {
        let text = self.render()?;
        let path = dir.join(format!("{}-{}.yaml", self.name, self.hypervisor.as_str()));
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&path, text))
            .map_err(|source| WriteSpecError::Write {
                path: path.clone(),
                cause: source,
            })?;
        Ok(path)
    }
}

/// [`TestGuestSpec::new`] written into `dir`; returns the spec's path.
pub fn write_spec(
    dir: &Path,
    hypervisor: Hypervisor,
    variant: Variant,
) -> Result<PathBuf, WriteSpecError> {
    TestGuestSpec::new(hypervisor, variant).write(dir)
}

fn is_dns1123_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
    let edge_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(inner_ok)
        && bytes.first().is_some_and(edge_ok)
        && bytes.last().is_some_and(edge_ok)
}

/// A double-quoted YAML scalar that reads back as `text`: quotes and
/// backslashes are escaped, and so is every character YAML would not keep
/// verbatim in a double-quoted scalar (controls, which includes line breaks
/// that would be folded, DEL, C1, the BOM, line/paragraph separators and the
/// non-characters U+FFFE/U+FFFF).
fn yaml_string(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('"');
    for c in text.chars() {
        match c {
            '"' => quoted.push_str("\\\""),
            '\\' => quoted.push_str("\\\\"),
            c if c.is_control()
                || matches!(
                    c,
                    '\u{FEFF}' | '\u{2028}' | '\u{2029}' | '\u{FFFE}' | '\u{FFFF}'
                ) =>
            {
                quoted.push_str(&format!("\\u{:04X}", u32::from(c)));
            }
            c => quoted.push(c),
        }
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn parse(text: &str) -> Value {
        serde_saphyr::from_str(text).expect("valid YAML")
    }

    #[test]
    fn committed_example_is_the_rendered_libvirt_spec() {
        let committed = include_str!("../specs/test-guest.yaml");
        let rendered = TestGuestSpec::new(Hypervisor::Libvirt, Variant::Interactive)
            .render_with_kernel(Path::new("tiny-guest.elf"))
            .expect("renders");
        assert_eq!(parse(committed), parse(&rendered));
    }

    #[test]
    fn spec_names_the_built_guest_with_64mi_one_vcpu_and_the_chosen_options() {
        let spec = TestGuestSpec::new(Hypervisor::CloudHypervisor, Variant::Halting)
            .termination_grace_period_seconds(0)
            .name("bench-1");
        let doc = parse(&spec.render().expect("renders"));
        assert_eq!(doc["metadata"]["name"], json!("bench-1"));
        assert_eq!(doc["spec"]["hypervisor"], json!("cloud-hypervisor"));
        assert_eq!(doc["spec"]["terminationGracePeriodSeconds"], json!(0));
        assert_eq!(doc["spec"]["domain"]["memory"]["guest"], json!("64Mi"));
        assert_eq!(
            doc["spec"]["domain"]["cpu"],
            json!({"sockets": 1, "cores": 1, "threads": 1})
        );
        let container = &doc["spec"]["domain"]["firmware"]["kernelBoot"]["container"];
        assert_eq!(
            container,
            &json!({"kernelPath": Variant::Halting.path().to_str().expect("UTF-8 OUT_DIR")})
        );
        assert!(Variant::Halting.path().is_absolute());
    }

    #[test]
    fn kernel_paths_with_yaml_syntax_read_back_unchanged() {
        let odd =
            "/tmp/a: b #c/\"q\" 'x'\\y/ünï\t\n\r\u{7f}\u{85}\u{2028}\u{feff}{[*&!%@`]}/- guest.elf";
        let text = TestGuestSpec::new(Hypervisor::Libvirt, Variant::Interactive)
            .render_with_kernel(Path::new(odd))
            .expect("renders");
        let doc = parse(&text);
        assert_eq!(
            doc["spec"]["domain"]["firmware"]["kernelBoot"]["container"]["kernelPath"],
            json!(odd)
        );
    }

    #[test]
    fn names_that_are_not_dns_labels_are_refused() {
        for bad in ["", "Test", "a_b", "-a", "a-", "a.b", &"a".repeat(64)] {
            let result = TestGuestSpec::new(Hypervisor::Libvirt, Variant::Interactive)
                .name(bad)
                .render();
            assert!(
                matches!(result, Err(WriteSpecError::InvalidName(ref name)) if name == bad),
                "{bad:?}: {result:?}"
            );
        }
        for good in ["a", "test-guest-2", &"a".repeat(63)] {
            TestGuestSpec::new(Hypervisor::Libvirt, Variant::Interactive)
                .name(good)
                .render()
                .unwrap_or_else(|err| panic!("{good:?}: {err}"));
        }
    }

    #[test]
    fn write_spec_creates_the_directory_and_names_the_file_after_vm_and_hypervisor() {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = temp.path().join("nested/specs");
        let path = write_spec(&dir, Hypervisor::CloudHypervisor, Variant::Halting).expect("writes");
        assert_eq!(path, dir.join("test-guest-halting-cloud-hypervisor.yaml"));
        let text = std::fs::read_to_string(&path).expect("readable");
        assert_eq!(
            parse(&text)["spec"]["hypervisor"],
            json!("cloud-hypervisor")
        );
    }

    #[test]
    fn write_into_an_unwritable_place_reports_the_path() {
        let temp = tempfile::tempdir().expect("temp dir");
        let file = temp.path().join("not-a-dir");
        std::fs::write(&file, "").expect("create file");
        let err = write_spec(&file, Hypervisor::Libvirt, Variant::Interactive)
            .expect_err("a file is not a directory");
        assert!(
            matches!(err, WriteSpecError::Write { ref path, .. } if path.starts_with(&file)),
            "{err:?}"
        );
        assert!(err.to_string().contains("not-a-dir"), "{err}");
    }
}
