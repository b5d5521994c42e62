//! Feature gates, with KubeVirt's defaults by maturity.
//!
//! - GA gates are always on; naming them is allowed and changes nothing.
//! - Beta gates are on unless disabled.
//! - Alpha gates are off unless enabled.
//!
//! A gate list (`--feature-gates`, the config file) is comma-separated: `Name`
//! enables a gate, `-Name` disables it, e.g. `WorkloadEncryptionTDX` to enable
//! the alpha TDX gate or `-WorkloadEncryptionSEV` to turn the beta SEV gate
//! off. Lists apply in order on top of the defaults, so a config file and a
//! command line compose: [`FeatureGates::apply`] each in turn. Names are
//! case-sensitive like KubeVirt's; unknown names and disabling a GA gate are
//! errors.

use std::fmt;

/// AMD SEV, SEV-ES and SEV-SNP (`spec.domain.launchSecurity.sev`/`snp`).
pub const WORKLOAD_ENCRYPTION_SEV: &str = "WorkloadEncryptionSEV";
/// Intel TDX (`spec.domain.launchSecurity.tdx`).
pub const WORKLOAD_ENCRYPTION_TDX: &str = "WorkloadEncryptionTDX";
/// IBM Z Secure Execution (`launchSecurity: {}` on s390x).
pub const SECURE_EXECUTION: &str = "SecureExecution";

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Maturity {
    Alpha,
    Beta,
    #[serde(rename = "GA")]
    Ga,
}

impl fmt::Display for Maturity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Maturity::Alpha => "alpha",
            Maturity::Beta => "beta",
            Maturity::Ga => "GA",
        })
    }
}

/// Every gate this launcher knows, with its maturity.
pub const KNOWN: &[(&str, Maturity)] = &[
    (SECURE_EXECUTION, Maturity::Ga),
    (WORKLOAD_ENCRYPTION_SEV, Maturity::Beta),
    (WORKLOAD_ENCRYPTION_TDX, Maturity::Alpha),
];

pub fn maturity(name: &str) -> Option<Maturity> {
    KNOWN.iter().find(|(n, _)| *n == name).map(|(_, m)| *m)
}

/// The gates on when nothing is configured: GA and beta ones.
pub fn default_enabled() -> Vec<String> {
    FeatureGates::default().enabled()
}

/// Whether `name` is on in `enabled` (a list as in
/// [`crate::LoadOptions::feature_gates`]); GA gates are always on.
pub fn is_enabled(enabled: &[String], name: &str) -> bool {
    maturity(name) == Some(Maturity::Ga) || enabled.iter().any(|g| g == name)
}

/// The error message for a spec field that needs a gate that is off.
pub fn disabled_message(name: &str, what: &str) -> String {
    match maturity(name) {
        Some(Maturity::Beta) => format!(
            "{what} needs feature gate {name}, which is disabled; it is beta and on by \
             default: remove -{name} from the feature gates"
        ),
        Some(m) => format!(
            "{what} needs feature gate {name}, which is disabled; it is {m}: enable it with \
             --feature-gates {name}"
        ),
        None => format!("{what} needs feature gate {name}, which is disabled"),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GateError {
    #[error("unknown feature gate {0:?}; known gates: {known}", known = known_list())]
    Unknown(String),
    #[error("feature gate {0} is GA and always enabled; it cannot be disabled")]
    DisableGa(String),
    #[error("empty feature gate name in {0:?}")]
    Empty(String),
}

fn known_list() -> String {
    KNOWN
        .iter()
        .map(|(n, m)| format!("{n} ({m})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The state of every known gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureGates {
    on: Vec<&'static str>,
}

impl Default for FeatureGates {
    fn default() -> Self {
        FeatureGates {
            on: KNOWN
                .iter()
                .filter(|(_, m)| *m != Maturity::Alpha)
                .map(|(n, _)| *n)
                .collect(),
        }
    }
}

impl FeatureGates {
    /// Applies a list such as `WorkloadEncryptionTDX,-WorkloadEncryptionSEV`.
    /// Nothing changes when the list has an error.
    pub fn apply(&mut self, list: &str) -> Result<(), GateError> {
        let mut next = self.clone();
        for item in list.split(',').map(str::trim) {
            if item.is_empty() {
                if list.trim().is_empty() {
                    continue;
                }
                return Err(GateError::Empty(list.to_string()));
            }
            let (disable, name) = match item.strip_prefix('-') {
                Some(rest) => (true, rest.trim()),
                None => (false, item.strip_prefix('+').unwrap_or(item).trim()),
            };
            let Some(&(known, m)) = KNOWN.iter().find(|(n, _)| *n == name) else {
                return Err(GateError::Unknown(name.to_string()));
            };
            if disable {
                if m == Maturity::Ga {
                    return Err(GateError::DisableGa(known.to_string()));
                }
                next.on.retain(|g| *g != known);
            } else if !next.on.contains(&known) {
                next.on.push(known);
            }
        }
        *self = next;
        Ok(())
    }

    /// Defaults with `list` applied.
    pub fn parse(list: &str) -> Result<Self, GateError> {
        let mut gates = FeatureGates::default();
        gates.apply(list)?;
        Ok(gates)
    }

    pub fn is_enabled(&self, name: &str) -> bool {
        maturity(name) == Some(Maturity::Ga) || self.on.contains(&name)
    }

    /// Enabled gate names, for [`crate::LoadOptions::feature_gates`].
    pub fn enabled(&self) -> Vec<String> {
        KNOWN
            .iter()
            .filter(|(n, _)| self.is_enabled(n))
            .map(|(n, _)| n.to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_maturity() {
        let gates = FeatureGates::default();
        assert!(gates.is_enabled(SECURE_EXECUTION));
        assert!(gates.is_enabled(WORKLOAD_ENCRYPTION_SEV));
        assert!(!gates.is_enabled(WORKLOAD_ENCRYPTION_TDX));
        assert_eq!(
            default_enabled(),
            vec![
                SECURE_EXECUTION.to_string(),
                WORKLOAD_ENCRYPTION_SEV.to_string()
            ]
        );
    }

    #[test]
    fn gate_lists_enable_alpha_and_disable_beta() {
        let cases: &[(&str, &[&str])] = &[
            ("", &[SECURE_EXECUTION, WORKLOAD_ENCRYPTION_SEV]),
            (
                "WorkloadEncryptionTDX",
                &[
                    SECURE_EXECUTION,
                    WORKLOAD_ENCRYPTION_SEV,
                    WORKLOAD_ENCRYPTION_TDX,
                ],
            ),
            ("-WorkloadEncryptionSEV", &[SECURE_EXECUTION]),
            (
                " WorkloadEncryptionTDX , -WorkloadEncryptionSEV ",
                &[SECURE_EXECUTION, WORKLOAD_ENCRYPTION_TDX],
            ),
            (
                "SecureExecution",
                &[SECURE_EXECUTION, WORKLOAD_ENCRYPTION_SEV],
            ),
            (
                "-WorkloadEncryptionTDX",
                &[SECURE_EXECUTION, WORKLOAD_ENCRYPTION_SEV],
            ),
            (
                "-WorkloadEncryptionSEV,WorkloadEncryptionSEV",
                &[SECURE_EXECUTION, WORKLOAD_ENCRYPTION_SEV],
            ),
        ];
        for (list, want) in cases {
            let got = FeatureGates::parse(list).unwrap().enabled();
            assert_eq!(
                got,
                want.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                "{list:?}"
            );
        }
    }

    #[test]
    fn gate_list_errors_name_the_gate() {
        assert_eq!(
            FeatureGates::parse("-SecureExecution"),
            Err(GateError::DisableGa(SECURE_EXECUTION.into()))
        );
        let err = FeatureGates::parse("WorkloadEncryptionSev").unwrap_err();
        assert_eq!(err, GateError::Unknown("WorkloadEncryptionSev".into()));
        assert!(err.to_string().contains("WorkloadEncryptionSEV (beta)"));
        assert!(matches!(
            FeatureGates::parse("WorkloadEncryptionTDX,,SecureExecution"),
            Err(GateError::Empty(_))
        ));
    }

    #[test]
    fn failed_apply_changes_nothing() {
        let mut gates = FeatureGates::default();
        assert!(gates.apply("WorkloadEncryptionTDX,Bogus").is_err());
        assert!(!gates.is_enabled(WORKLOAD_ENCRYPTION_TDX));
    }

    #[test]
    fn ga_gates_count_as_enabled_in_any_list() {
        assert!(is_enabled(&[], SECURE_EXECUTION));
        assert!(!is_enabled(&[], WORKLOAD_ENCRYPTION_SEV));
    }
}
