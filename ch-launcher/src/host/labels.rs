//! Node labels for what a host can run, and the node selector a VM's pod
//! needs, with KubeVirt's keys so its scheduler and ours agree
//! (`kubevirt.io/api/core/v1` `SEVLabel`, `SEVESLabel`, `SEVSNPLabel`,
//! `TDXLabel`, `SecureExecutionLabel`; absent when the host lacks it).
//!
//! The value is `"true"`, as KubeVirt's node-labeller writes it for SEV,
//! SEV-ES and Secure Execution (`pkg/virt-handler/node-labeller/
//! node_labeller.go`, `prepareLabels`: `newLabels[kubevirtv1.SEVLabel] =
//! "true"`; releases before 1.4 wrote `""`). KubeVirt schedules on the key
//! alone, so either value selects the same nodes.
//!
//! SEV-SNP nodes also get `sev-snp.node.kubevirt.io`, the label named in the
//! SEV-SNP enablement proposal, for clusters that schedule on that one.

use super::HostCapabilities;
use domain_model::LaunchSecurity;
use std::collections::BTreeMap;

pub const SEV: &str = "kubevirt.io/sev";
pub const SEV_ES: &str = "kubevirt.io/sev-es";
pub const SEV_SNP: &str = "kubevirt.io/sev-snp";
pub const TDX: &str = "kubevirt.io/tdx";
pub const SECURE_EXECUTION: &str = "kubevirt.io/s390-pv";
/// The SEV-SNP enablement proposal's spelling of [`SEV_SNP`].
pub const SEV_SNP_PROPOSAL: &str = "sev-snp.node.kubevirt.io";

const TRUE: &str = "true";

/// The labels a node with these capabilities carries.
pub fn node_labels(caps: &HostCapabilities) -> BTreeMap<String, String> {
    let labels = [
        (caps.sev_supported, SEV),
        (caps.sev_es, SEV_ES),
        (caps.sev_snp, SEV_SNP),
        (caps.sev_snp, SEV_SNP_PROPOSAL),
        (caps.tdx, TDX),
        (caps.secure_execution, SECURE_EXECUTION),
    ];
    labels
        .into_iter()
        .filter(|(on, _)| *on)
        .map(|(_, key)| (key.to_string(), TRUE.to_string()))
        .collect()
}

/// The node selector a VM with `launch_security` needs, as KubeVirt's
/// virt-controller renders it: every SEV flavour needs an SEV node, SEV-ES
/// and SEV-SNP additionally their own label.
pub fn node_selector(launch_security: Option<&LaunchSecurity>) -> BTreeMap<String, String> {
    let keys: &[&str] = match launch_security {
        None => &[],
        Some(LaunchSecurity::Sev {
            encrypted_state: false,
            ..
        }) => &[SEV],
        Some(LaunchSecurity::Sev {
            encrypted_state: true,
            ..
        }) => &[SEV, SEV_ES],
        Some(LaunchSecurity::SevSnp { .. }) => &[SEV, SEV_SNP],
        Some(LaunchSecurity::Tdx) => &[TDX],
        Some(LaunchSecurity::SecureExecution) => &[SECURE_EXECUTION],
    };
    keys.iter()
        .map(|key| (key.to_string(), TRUE.to_string()))
        .collect()
}

/// Labels as `key=value` lines, the form `kubectl label node` takes.
pub fn to_lines(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::domcaps;
    use domain_model::fixtures::{sev, snp};

    fn labels_of(sample: &str) -> Vec<String> {
        let caps = domcaps::tests::sample(sample);
        to_lines(&node_labels(&caps))
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn sev_sample_labels_sev_and_sev_es() {
        assert_eq!(
            labels_of("domcapabilities_sev.xml"),
            ["kubevirt.io/sev=true", "kubevirt.io/sev-es=true"]
        );
    }

    #[test]
    fn sevsnp_sample_labels_sev_es_snp_and_proposal_label() {
        assert_eq!(
            labels_of("domcapabilities_sevsnp.xml"),
            [
                "kubevirt.io/sev=true",
                "kubevirt.io/sev-es=true",
                "kubevirt.io/sev-snp=true",
                "sev-snp.node.kubevirt.io=true"
            ]
        );
    }

    #[test]
    fn kubevirt_labeller_sample_labels_sev_es_snp() {
        assert_eq!(
            labels_of("virsh_domcapabilities.xml"),
            [
                "kubevirt.io/sev=true",
                "kubevirt.io/sev-es=true",
                "kubevirt.io/sev-snp=true",
                "sev-snp.node.kubevirt.io=true"
            ]
        );
    }

    #[test]
    fn tdx_sample_labels_tdx_only() {
        assert_eq!(
            labels_of("domcapabilities_tdx.xml"),
            ["kubevirt.io/tdx=true"]
        );
    }

    #[test]
    fn s390_sample_labels_secure_execution_only() {
        assert_eq!(
            labels_of("domcapabilities_s390-pv.xml"),
            ["kubevirt.io/s390-pv=true"]
        );
    }

    #[test]
    fn this_machine_sample_has_no_labels() {
        assert!(labels_of("this-machine-qemu-7.2-kvm.xml").is_empty());
    }

    fn selector(ls: Option<&LaunchSecurity>) -> Vec<String> {
        to_lines(&node_selector(ls))
            .lines()
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn selectors_follow_kubevirt_per_kind() {
        assert!(selector(None).is_empty());
        assert_eq!(selector(Some(&sev(false))), ["kubevirt.io/sev=true"]);
        assert_eq!(
            selector(Some(&sev(true))),
            ["kubevirt.io/sev=true", "kubevirt.io/sev-es=true"]
        );
        assert_eq!(
            selector(Some(&snp())),
            ["kubevirt.io/sev=true", "kubevirt.io/sev-snp=true"]
        );
        assert_eq!(
            selector(Some(&LaunchSecurity::Tdx)),
            ["kubevirt.io/tdx=true"]
        );
        assert_eq!(
            selector(Some(&LaunchSecurity::SecureExecution)),
            ["kubevirt.io/s390-pv=true"]
        );
    }

    #[test]
    fn unsupported_names_the_missing_label() {
        let caps = domcaps::tests::sample("domcapabilities_sev.xml");
        assert_eq!(caps.unsupported(&sev(true)), None);
        let snp = caps.unsupported(&snp()).expect("the SEV sample has no SNP");
        assert!(snp.contains("SEV-SNP") && snp.contains(SEV_SNP), "{snp}");
        assert!(caps.unsupported(&LaunchSecurity::Tdx).is_some());
    }
}
