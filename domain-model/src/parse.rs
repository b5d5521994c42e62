//! Spec text (YAML or JSON) to the API view, with every unknown key and every
//! type error reported by its field path.
//!
//! Text is first read into a `serde_json::Value`, then into the typed
//! [`api`](crate::api) structs through `serde_ignored` (keys no struct field
//! takes) and `serde_path_to_error` (where a type error is). A type error
//! stops serde, so after one the offending key is removed from the value and
//! deserialization is retried: every type error is reported, not only the
//! first, and the rest of the spec still comes back in [`Parsed::vmi`] so
//! that resolution can report its own problems in the same run. Required
//! API fields are `#[serde(default)]` for that reason (resolution reports
//! them when absent), so removing one never turns into a second error.
//!
//! Input is read as JSON only when it is valid JSON (so duplicate keys are
//! caught with JSON's line and column); anything else, including YAML flow
//! mappings such as `{apiVersion: kubevirt.io/v1, ...}`, is read as YAML.

use crate::api::{VirtualMachineInstance, UNSUPPORTED_VOLUME_KINDS};
use crate::error::{FieldError, SpecErrors};
use serde_json::Value;

/// The only `apiVersion` and `kind` accepted.
pub const API_VERSION: &str = "kubevirt.io/v1";
pub const KIND: &str = "VirtualMachineInstance";

/// Path used for problems with the document as a whole.
pub const DOCUMENT_PATH: &str = "(document)";

/// Retries after type errors; bounds the work on hostile input.
const MAX_TYPE_ERRORS: usize = 32;

/// A parsed spec and the problems found in its shape.
#[derive(Debug)]
pub struct Parsed {
    pub vmi: VirtualMachineInstance,
    /// Keys that no field took (unknown or not implemented), each already an
    /// error naming its path.
    pub unknown: Vec<FieldError>,
    /// Values of the wrong type, each already an error naming its path.
    pub type_errors: Vec<FieldError>,
    /// The keys left out of [`Parsed::vmi`] because of those type errors
    /// (the innermost key holding each one): whatever resolution says at or
    /// below them is a consequence, not a new problem.
    pub left_out: Vec<String>,
}

impl Parsed {
    pub fn is_left_out(&self, path: &str) -> bool {
        self.left_out.iter().any(|base| is_at_or_under(path, base))
    }
}

/// `path` equals `base` or is a field or element below it.
pub(crate) fn is_at_or_under(path: &str, base: &str) -> bool {
    base == DOCUMENT_PATH
        || path == base
        || path
            .strip_prefix(base)
            .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
}

/// Reads YAML or JSON into a JSON value.
pub fn to_value(text: &str) -> Result<Value, SpecErrors> {
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    let json = if trimmed.starts_with('{') || trimmed.starts_with('[') {
        Some(serde_json::from_str::<StrictValue>(trimmed).map(|v| v.0))
    } else {
        None
    };
    let parsed = match json {
        Some(Ok(v)) => Ok(v),
        // Valid JSON syntax with a duplicate key: JSON's own report is the
        // precise one.
        Some(Err(e)) if e.classify() == serde_json::error::Category::Data => {
            Err(format!("invalid JSON: {e}"))
        }
        Some(Err(json_err)) => read_yaml(trimmed).map_err(|yaml_err| {
            format!("invalid JSON ({json_err}), and not valid YAML either: {yaml_err}")
        }),
        None => read_yaml(trimmed).map_err(|e| format!("invalid YAML: {e}")),
    };
    parsed.map_err(|message| {
        let mut errors = SpecErrors::default();
        errors.push(DOCUMENT_PATH, message);
        errors
    })
}

/// serde-saphyr refuses duplicate keys itself. Its message goes on with a
/// source excerpt; the first line already has line and column. Hints meant
/// for programmers (which function or option to use) are replaced by what
/// they mean for a spec.
fn read_yaml(text: &str) -> Result<Value, String> {
    serde_saphyr::from_str::<Value>(text).map_err(|e| {
        let full = e.to_string();
        let first = full.lines().next().unwrap_or_default();
        let first = first.trim_start_matches("error: ");
        let (head, detail) = match first.find(": ") {
            Some(i) if first.starts_with("line ") => (&first[..i + 2], &first[i + 2..]),
            _ => ("", first),
        };
        let detail = if detail.starts_with("multiple YAML documents") {
            "more than one YAML document (---): a spec file holds exactly one \
             VirtualMachineInstance"
                .to_string()
        } else if let Some(rest) = detail.strip_prefix("duplicate mapping key: ") {
            let key = rest.split(", set ").next().unwrap_or(rest);
            format!("duplicate key {key:?}")
        } else if detail.starts_with("budget breached") || detail.contains("recursion limit") {
            "the document is nested too deeply or has too many nodes (aliases count \
             every time they are used)"
                .to_string()
        } else {
            detail.to_string()
        };
        format!("{head}{detail}")
    })
}

/// A JSON value read without letting a duplicate key silently replace the
/// first one (serde_json keeps the last).
struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(v) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate key {key:?}"
                )));
            }
            object.insert(key, v);
        }
        Ok(Value::Object(object))
    }
}

/// Parses spec text. `Err` when the document cannot be read as a
/// `VirtualMachineInstance` at all; otherwise unknown keys come back in
/// [`Parsed::unknown`] for the caller to report with the rest.
pub fn parse(text: &str) -> Result<Parsed, SpecErrors> {
    let value = to_value(text)?;
    from_value(value)
}

pub fn from_value(mut value: Value) -> Result<Parsed, SpecErrors> {
    let mut errors = SpecErrors::default();
    check_type_meta(&value, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }

    let mut unknown: Vec<String> = Vec::new();
    let mut removed: Vec<Vec<Segment>> = Vec::new();
    for _ in 0..MAX_TYPE_ERRORS {
        let mut ignored = Vec::new();
        let result = {
            let mut on_ignored = |path: serde_ignored::Path| ignored.push(ignored_path(&path));
            let de = serde_ignored::Deserializer::new(&value, &mut on_ignored);
            serde_path_to_error::deserialize::<_, VirtualMachineInstance>(de)
        };
        for p in ignored {
            if !unknown.contains(&p) {
                unknown.push(p);
            }
        }
        match result {
            Ok(vmi) => {
                let unknown: Vec<FieldError> =
                    unknown.iter().map(|p| unknown_field_error(p)).collect();
                let left_out = removed.iter().map(|r| format_segments(r)).collect();
                return Ok(Parsed {
                    vmi,
                    unknown,
                    type_errors: errors.0,
                    left_out,
                });
            }
            Err(err) => {
                let segments = segments_of(err.path());
                // An error at or above a key removed earlier is a
                // consequence of that removal, not a new problem.
                if removed
                    .iter()
                    .any(|r| r.len() >= segments.len() && r[..segments.len()] == segments[..])
                {
                    break;
                }
                errors.push(format_segments(&segments), describe(err.inner()));
                let Some(cut) = removable_prefix(&segments) else {
                    break;
                };
                if !remove_at(&mut value, cut) {
                    break;
                }
                removed.push(cut.to_vec());
            }
        }
    }
    for p in &unknown {
        errors.0.push(unknown_field_error(p));
    }
    if errors.is_empty() {
        errors.push(DOCUMENT_PATH, "spec has too many type errors to list");
    }
    Err(errors)
}

fn check_type_meta(value: &Value, errors: &mut SpecErrors) {
    let Some(object) = value.as_object() else {
        errors.push(
            DOCUMENT_PATH,
            format!(
                "expected a {KIND} object (apiVersion: {API_VERSION}), found {}",
                kind_of(value)
            ),
        );
        return;
    };
    match object.get("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => {}
        Some(Value::String(v)) => errors.push(
            "apiVersion",
            format!("unsupported apiVersion {v:?}: expected {API_VERSION:?}"),
        ),
        Some(other) => errors.push(
            "apiVersion",
            format!(
                "expected the string {API_VERSION:?}, found {}",
                kind_of(other)
            ),
        ),
        None => errors.push("apiVersion", format!("required: apiVersion: {API_VERSION}")),
    }
    match object.get("kind") {
        Some(Value::String(v)) if v == KIND => {}
        Some(Value::String(v)) => errors.push(
            "kind",
            format!("unsupported kind {v:?}: expected {KIND:?} (a VirtualMachine's spec.template is not read)"),
        ),
        Some(other) => errors.push(
            "kind",
            format!("expected the string {KIND:?}, found {}", kind_of(other)),
        ),
        None => errors.push("kind", format!("required: kind: {KIND}")),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing (null)",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn describe(err: &serde_json::Error) -> String {
    // serde_json appends " at line 0 column 0" for errors from a Value.
    let text = err.to_string();
    let text = match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    if let Some(field) = text.strip_prefix("missing field ") {
        return format!("required field {field} is missing");
    }
    user_words(&text)
}

/// Rewrites serde's Rust-flavoured type names into the words of a spec:
/// `expected struct VmiSpec` -> `expected a mapping`, `u32` -> the range.
fn user_words(text: &str) -> String {
    let Some((found, expected)) = text
        .strip_prefix("invalid type: ")
        .or_else(|| text.strip_prefix("invalid value: "))
        .and_then(|t| t.split_once(", expected "))
    else {
        return text.to_string();
    };
    let expected = if expected.starts_with("struct ") || expected == "a map" {
        "a mapping".to_string()
    } else if expected == "a sequence" {
        "a list".to_string()
    } else if let Some(range) = integer_range(expected) {
        format!("a whole number from {range}")
    } else {
        expected.to_string()
    };
    let found = if found == "map" {
        "a mapping".to_string()
    } else if found == "sequence" {
        "a list".to_string()
    } else if found == "unit value" || found == "null" {
        "nothing (null)".to_string()
    } else if let Some(n) = found
        .strip_prefix("floating point `")
        .and_then(|f| f.strip_suffix('`'))
    {
        // Whole numbers beyond the 64-bit range are read as floating point
        // and lose digits; do not echo the altered value.
        if n.contains('e') {
            "a number too large to read exactly".to_string()
        } else {
            format!("the number {n}")
        }
    } else if let Some(n) = found
        .strip_prefix("integer `")
        .and_then(|f| f.strip_suffix('`'))
    {
        format!("the number {n}")
    } else if let Some(text) = found.strip_prefix("string ") {
        format!("the string {text}")
    } else if let Some(b) = found
        .strip_prefix("boolean `")
        .and_then(|f| f.strip_suffix('`'))
    {
        format!("the boolean {b}")
    } else {
        found.to_string()
    };
    format!("expected {expected}, found {found}")
}

fn integer_range(rust_type: &str) -> Option<String> {
    Some(match rust_type {
        "u8" => format!("0 to {}", u8::MAX),
        "u16" => format!("0 to {}", u16::MAX),
        "u32" => format!("0 to {}", u32::MAX),
        "u64" => format!("0 to {}", u64::MAX),
        "i32" => format!("{} to {}", i32::MIN, i32::MAX),
        "i64" => format!("{} to {}", i64::MIN, i64::MAX),
        _ => return None,
    })
}

fn unknown_field_error(path: &str) -> FieldError {
    if let Some(kind) = unsupported_volume_kind(path) {
        return FieldError::new(
            path,
            format!("volume kind {kind} is not supported yet (supported: hostDisk, containerDisk, emptyDisk, cloudInitNoCloud, cloudInitConfigDrive)"),
        );
    }
    if KNOWN_UNIMPLEMENTED.contains(&normalized(path).as_str()) {
        return FieldError::new(path, "kubevirt.io/v1 field not implemented yet");
    }
    FieldError::new(
        path,
        "unknown field (not a kubevirt.io/v1 field this launcher knows; check the spelling)",
    )
}

/// `spec.domain.devices.disks[3].cache` -> `spec.domain.devices.disks[].cache`.
fn normalized(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut in_index = false;
    for c in path.chars() {
        match c {
            '[' => {
                in_index = true;
                out.push('[');
            }
            ']' => {
                in_index = false;
                out.push(']');
            }
            _ if in_index => {}
            _ => out.push(c),
        }
    }
    out
}

/// Fields of `kubevirt.io/v1` that exist but that this launcher does not
/// implement yet, so that their error does not read like a typo.
const KNOWN_UNIMPLEMENTED: &[&str] = &[
    "spec.accessCredentials",
    "spec.dnsConfig",
    "spec.dnsPolicy",
    "spec.hostname",
    "spec.livenessProbe",
    "spec.readinessProbe",
    "spec.subdomain",
    "spec.domain.chassis",
    "spec.domain.ioThreads",
    "spec.domain.ioThreadsPolicy",
    "spec.domain.cpu.numa",
    "spec.domain.cpu.realtime",
    "spec.domain.features.apic",
    "spec.domain.features.hyperv",
    "spec.domain.features.hypervPassthrough",
    "spec.domain.features.kvm",
    "spec.domain.features.pvspinlock",
    "spec.domain.firmware.acpi",
    "spec.domain.firmware.bootloader.bios.useSerial",
    "spec.domain.firmware.bootloader.efi.secureBootKeys",
    "spec.domain.resources.overcommitGuestOverhead",
    "spec.domain.devices.autoattachInputDevice",
    "spec.domain.devices.autoattachMemBalloon",
    "spec.domain.devices.autoattachVSOCK",
    "spec.domain.devices.blockMultiQueue",
    "spec.domain.devices.clientPassthrough",
    "spec.domain.devices.disableHotplug",
    "spec.domain.devices.downwardMetrics",
    "spec.domain.devices.gpus",
    "spec.domain.devices.hostDevices",
    "spec.domain.devices.logSerialConsole",
    "spec.domain.devices.networkInterfaceMultiqueue",
    "spec.domain.devices.panicDevices",
    "spec.domain.devices.sound",
    "spec.domain.devices.tpm",
    "spec.domain.devices.useVirtioTransitional",
    "spec.domain.devices.video",
    "spec.domain.devices.watchdog",
    "spec.domain.devices.disks[].dedicatedIOThread",
    "spec.domain.devices.disks[].errorPolicy",
    "spec.domain.devices.disks[].cdrom.tray",
    "spec.domain.devices.disks[].disk.pciAddress",
    "spec.domain.devices.disks[].lun.reservation",
    "spec.volumes[].containerDisk.path",
];

/// `spec.volumes[3].emptyDisk` -> `emptyDisk`.
pub(crate) fn unsupported_volume_kind(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("spec.volumes[")?;
    let (index, key) = rest.split_once("].")?;
    if index.parse::<usize>().is_err() {
        return None;
    }
    UNSUPPORTED_VOLUME_KINDS.iter().copied().find(|k| *k == key)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn segments_of(path: &serde_path_to_error::Path) -> Vec<Segment> {
    path.iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
            serde_path_to_error::Segment::Map { key } => Some(Segment::Key(key.clone())),
            serde_path_to_error::Segment::Enum { variant } => Some(Segment::Key(variant.clone())),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

fn format_segments(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        match s {
            Segment::Key(k) => push_key(&mut out, k),
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    if out.is_empty() {
        out.push_str(DOCUMENT_PATH);
    }
    out
}

/// Appends `.key`, or `["key"]` when the key is empty or holds characters
/// that would make the path ambiguous.
fn push_key(out: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == '/');
    if plain {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(key);
    } else {
        out.push_str(&format!("[{key:?}]"));
    }
}

/// Formats a `serde_ignored` path like `spec.domain.devices.disks[1].cdrom`.
pub(crate) fn ignored_path(path: &serde_ignored::Path) -> String {
    fn walk(path: &serde_ignored::Path, out: &mut String) {
        match path {
            serde_ignored::Path::Root => {}
            serde_ignored::Path::Seq { parent, index } => {
                walk(parent, out);
                out.push_str(&format!("[{index}]"));
            }
            serde_ignored::Path::Map { parent, key } => {
                walk(parent, out);
                push_key(out, key);
            }
            serde_ignored::Path::Some { parent }
            | serde_ignored::Path::NewtypeStruct { parent }
            | serde_ignored::Path::NewtypeVariant { parent } => walk(parent, out),
        }
    }
    let mut out = String::new();
    walk(path, &mut out);
    out
}

/// The key to remove so that deserialization can go past a type error: the
/// innermost map key, so that list indices of later elements stay true.
fn removable_prefix(segments: &[Segment]) -> Option<&[Segment]> {
    let last_key = segments
        .iter()
        .rposition(|s| matches!(s, Segment::Key(_)))?;
    Some(&segments[..=last_key])
}

fn remove_at(value: &mut Value, segments: &[Segment]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = value;
    for s in parents {
        node = match (s, node) {
            (Segment::Key(k), Value::Object(map)) => match map.get_mut(k) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Index(i), Value::Array(items)) => match items.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (Segment::Key(k), Value::Object(map)) => map.remove(k).is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_keys_are_quoted_so_every_path_is_non_empty_and_unambiguous() {
        let text = r#"{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineInstance",
            "": 1, "spec": {"domain": {"a.b": 2}}}"#;
        let parsed = parse(text).unwrap();
        let paths: Vec<&str> = parsed.unknown.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, vec![r#"[""]"#, r#"spec.domain["a.b"]"#]);
    }

    #[test]
    fn unimplemented_kubevirt_fields_are_told_apart_from_typos() {
        let text = r#"{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineInstance",
            "spec":{"domain":{"devices":{"disks":[{"name":"a"},{"name":"b","errorPolicy":"stop"}],
            "tpm":{},"dsks":[]}}}}"#;
        let unknown = parse(text).unwrap().unknown;
        let got: Vec<String> = unknown.iter().map(|e| e.to_string()).collect();
        assert_eq!(
            got,
            vec![
                "spec.domain.devices.disks[1].errorPolicy: kubevirt.io/v1 field not implemented yet",
                "spec.domain.devices.dsks: unknown field (not a kubevirt.io/v1 field this \
                 launcher knows; check the spelling)",
                "spec.domain.devices.tpm: kubevirt.io/v1 field not implemented yet",
            ]
        );
    }

    #[test]
    fn duplicate_keys_are_refused_in_json_and_yaml() {
        let json = r#"{"apiVersion":"kubevirt.io/v1","kind":"VirtualMachineInstance",
            "spec":{"domain":{"memory":{"guest":"1Gi","guest":"2Gi"}}}}"#;
        let e = parse(json).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert!(
            e.0[0].message.contains("duplicate key \"guest\" at line 2"),
            "{e}"
        );
        let yaml = "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nkind: X\nspec: {}\n";
        let e = parse(yaml).unwrap_err();
        assert_eq!(e.0[0].path, DOCUMENT_PATH);
        assert!(
            e.0[0]
                .message
                .starts_with("invalid YAML: line 3 column 1: duplicate"),
            "{e}"
        );
        assert!(!e.0[0].message.contains('\n'), "{e}");
    }
}
