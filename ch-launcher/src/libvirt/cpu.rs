//! The `<feature>` list of a libvirt guest CPU: the spec's
//! `spec.domain.cpu.features` as written, plus what this host's KVM quirks
//! require ([`crate::host::cpu::MsrQuirk`]): a feature whose MSR a vCPU
//! refuses is disabled, because QEMU aborts while setting up the vCPU when
//! the guest CPU carries it, whatever the CPU mode.
//!
//! Pure: the quirks come in as data, so the decision is made before the
//! domain is defined (no retry after QEMU died) and tested from recordings.

use crate::host::cpu::MsrQuirk;
use domain_model::{Architecture, CpuFeaturePolicy, Domain, SpecErrors};

/// One `<feature policy=... name=.../>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureChoice {
    pub name: String,
    pub policy: CpuFeaturePolicy,
}

/// A change the launcher made for the host, to be logged as a warning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workaround {
    pub feature: &'static str,
    /// Why, naming the MSR.
    pub reason: String,
}

impl std::fmt::Display for Workaround {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CPU feature {:?} disabled for this guest: {}",
            self.feature, self.reason
        )
    }
}

/// The guest CPU's features on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuPlan {
    pub features: Vec<FeatureChoice>,
    pub workarounds: Vec<Workaround>,
}

/// The features of `domain`'s guest CPU given the host's `quirks`. A spec
/// that requires or forces a feature this host cannot give is refused at that
/// feature's path; `optional` becomes `disable`, since the host lacks it in
/// practice.
pub fn plan(domain: &Domain, quirks: &[MsrQuirk]) -> Result<CpuPlan, SpecErrors> {
    let mut errors = SpecErrors::default();
    let mut plan = CpuPlan {
        features: domain
            .cpu
            .features
            .iter()
            .map(|f| FeatureChoice {
                name: f.name.clone(),
                policy: f.policy,
            })
            .collect(),
        workarounds: Vec::new(),
    };
    if domain.architecture != Architecture::Amd64 {
        return Ok(plan);
    }
    for quirk in quirks {
        let Some(feature) = quirk.feature else {
            continue;
        };
        let asked = domain.cpu.features.iter().position(|f| f.name == feature);
        match asked.map(|i| (i, &domain.cpu.features[i])) {
            Some((_, f))
                if matches!(
                    f.policy,
                    CpuFeaturePolicy::Force | CpuFeaturePolicy::Require
                ) =>
            {
                errors.push(
                    &f.spec_path,
                    format!(
                        "CPU feature {feature:?} (policy {}) cannot be given to a guest on this \
                         host: {}; use policy disable, or run the VM on another host",
                        f.policy,
                        quirk.explain()
                    ),
                );
            }
            Some((i, f)) if f.policy == CpuFeaturePolicy::Optional => {
                plan.features[i].policy = CpuFeaturePolicy::Disable;
                plan.workarounds.push(Workaround {
                    feature,
                    reason: format!("the spec asked for it as optional, and {}", quirk.explain()),
                });
            }
            Some(_) => {}
            None => {
                plan.features.push(FeatureChoice {
                    name: feature.to_string(),
                    policy: CpuFeaturePolicy::Disable,
                });
                plan.workarounds.push(Workaround {
                    feature,
                    reason: quirk.explain(),
                });
            }
        }
    }
    errors.into_result(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain_model::fixtures;

    fn arch_capabilities_quirk() -> MsrQuirk {
        MsrQuirk {
            msr: 0x10a,
            msr_name: "IA32_ARCH_CAPABILITIES",
            kvm_value: 0x4000_0000_0c00_0069,
            feature: Some("arch-capabilities"),
        }
    }

    fn with_features(features: &[(&str, CpuFeaturePolicy)]) -> Domain {
        fixtures::domain().with_cpu_features(features)
    }

    #[test]
    fn a_host_without_quirks_keeps_the_spec_features_as_written() {
        let d = with_features(&[
            ("avx2", CpuFeaturePolicy::Require),
            ("vmx", CpuFeaturePolicy::Disable),
        ]);
        let plan = plan(&d, &[]).unwrap();
        assert_eq!(
            plan.features,
            vec![
                FeatureChoice {
                    name: "avx2".into(),
                    policy: CpuFeaturePolicy::Require
                },
                FeatureChoice {
                    name: "vmx".into(),
                    policy: CpuFeaturePolicy::Disable
                },
            ]
        );
        assert!(plan.workarounds.is_empty());
    }

    #[test]
    fn a_refused_msr_disables_its_feature_with_a_reason_naming_the_msr() {
        let d = with_features(&[("avx2", CpuFeaturePolicy::Require)]);
        let plan = plan(&d, &[arch_capabilities_quirk()]).unwrap();
        assert_eq!(
            plan.features[1],
            FeatureChoice {
                name: "arch-capabilities".into(),
                policy: CpuFeaturePolicy::Disable
            }
        );
        assert_eq!(plan.workarounds.len(), 1);
        let text = plan.workarounds[0].to_string();
        assert!(text.contains("arch-capabilities"), "{text}");
        assert!(text.contains("0x10a"), "{text}");
        assert!(text.contains("IA32_ARCH_CAPABILITIES"), "{text}");
    }

    #[test]
    fn requiring_or_forcing_the_refused_feature_is_an_error_at_its_path() {
        for policy in [CpuFeaturePolicy::Require, CpuFeaturePolicy::Force] {
            let d = with_features(&[
                ("avx2", CpuFeaturePolicy::Require),
                ("arch-capabilities", policy),
            ]);
            let errors = plan(&d, &[arch_capabilities_quirk()]).unwrap_err();
            assert_eq!(errors.0.len(), 1);
            assert_eq!(errors.0[0].path, "spec.domain.cpu.features[1]");
            assert!(
                errors.0[0].message.contains("0x10a"),
                "{}",
                errors.0[0].message
            );
        }
    }

    #[test]
    fn optional_refused_feature_becomes_disable_and_explicit_disable_stays() {
        let d = with_features(&[("arch-capabilities", CpuFeaturePolicy::Optional)]);
        let plan = plan(&d, &[arch_capabilities_quirk()]).unwrap();
        assert_eq!(plan.features.len(), 1);
        assert_eq!(plan.features[0].policy, CpuFeaturePolicy::Disable);
        assert_eq!(plan.workarounds.len(), 1);

        let d = with_features(&[("arch-capabilities", CpuFeaturePolicy::Disable)]);
        let p = super::plan(&d, &[arch_capabilities_quirk()]).unwrap();
        assert_eq!(p.features.len(), 1);
        assert!(p.workarounds.is_empty());
    }

    #[test]
    fn a_quirk_without_a_governing_feature_changes_nothing() {
        let quirk = MsrQuirk {
            feature: None,
            ..arch_capabilities_quirk()
        };
        let plan = plan(&fixtures::domain(), &[quirk]).unwrap();
        assert!(plan.features.is_empty());
    }
}
