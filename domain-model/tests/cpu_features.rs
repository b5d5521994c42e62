//! `spec.domain.cpu.features`: KubeVirt's names and policies, the default
//! policy, and every refusal at its exact path.

mod common;

use common::{assert_only, err, ok, paths, Fixture};
use domain_model::{CpuFeaturePolicy, Hypervisor};
use serde_json::json;

fn with_features(features: serde_json::Value) -> serde_json::Value {
    json!({"spec": {"domain": {"cpu": {"features": features}}}})
}

#[test]
fn features_keep_their_order_and_policy_defaults_to_require() {
    let f = Fixture::new();
    let d = ok(f.resolve(with_features(json!([
        {"name": "avx2"},
        {"name": "vmx", "policy": "disable"},
        {"name": "pcid", "policy": "optional"},
        {"name": "x2apic", "policy": "force"},
        {"name": "svm", "policy": "forbid"},
    ]))));
    let got: Vec<(&str, CpuFeaturePolicy, &str)> = d
        .cpu
        .features
        .iter()
        .map(|f| (f.name.as_str(), f.policy, f.spec_path.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "avx2",
                CpuFeaturePolicy::Require,
                "spec.domain.cpu.features[0]"
            ),
            (
                "vmx",
                CpuFeaturePolicy::Disable,
                "spec.domain.cpu.features[1]"
            ),
            (
                "pcid",
                CpuFeaturePolicy::Optional,
                "spec.domain.cpu.features[2]"
            ),
            (
                "x2apic",
                CpuFeaturePolicy::Force,
                "spec.domain.cpu.features[3]"
            ),
            (
                "svm",
                CpuFeaturePolicy::Forbid,
                "spec.domain.cpu.features[4]"
            ),
        ]
    );
}

#[test]
fn a_feature_without_a_name_is_refused_at_its_name() {
    let f = Fixture::new();
    let e = err(f.resolve(with_features(json!([{"policy": "require"}]))));
    assert_only(&e, "spec.domain.cpu.features[0].name", "required");
}

#[test]
fn an_unknown_policy_is_refused_naming_the_five() {
    let f = Fixture::new();
    let e = err(f.resolve(with_features(json!([{"name": "avx2", "policy": "maybe"}]))));
    assert_only(
        &e,
        "spec.domain.cpu.features[0].policy",
        "force, require, optional, disable, forbid",
    );
}

#[test]
fn a_feature_listed_twice_is_refused_at_the_second() {
    let f = Fixture::new();
    let e = err(f.resolve(with_features(json!([
        {"name": "avx2"},
        {"name": "avx2", "policy": "disable"},
    ]))));
    assert_only(&e, "spec.domain.cpu.features[1].name", "already listed");
}

#[test]
fn a_name_with_spaces_or_quotes_is_refused() {
    let f = Fixture::new();
    let e = err(f.resolve(with_features(json!([{"name": "avx2' x"}]))));
    assert_only(
        &e,
        "spec.domain.cpu.features[0].name",
        "not a CPU feature name",
    );
}

#[test]
fn unknown_keys_in_a_feature_are_errors() {
    let f = Fixture::new();
    let e = err(f.resolve(with_features(json!([{"name": "avx2", "polcy": "require"}]))));
    assert_eq!(paths(&e), vec!["spec.domain.cpu.features[0].polcy"], "{e}");
}

#[test]
fn explain_lists_each_feature_for_both_hypervisors() {
    let f = Fixture::new();
    let mut d = ok(f.resolve(with_features(json!([{"name": "avx2"}]))));
    d.hypervisor = Hypervisor::CloudHypervisor;
    let rows = domain_model::explain(&d);
    let row = rows
        .iter()
        .find(|r| r.spec_path == "spec.domain.cpu.features[0]")
        .expect("a row for the feature");
    assert!(row.label.contains("avx2"), "{}", row.label);
    assert!(row.supported_by(Hypervisor::CloudHypervisor));
    assert!(row.supported_by(Hypervisor::Libvirt));
}
