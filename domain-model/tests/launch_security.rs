//! `spec.domain.launchSecurity`: each kind, each webhook rule with its path,
//! the feature gates and the live-migration condition.

mod common;

use common::{assert_only, err, ok, spec, Fixture};
use domain_model::gates::FeatureGates;
use domain_model::{resolve_str, Architecture, LaunchSecurity, LoadOptions};
use serde_json::{json, Value};

/// EFI without secure boot, as every AMD/Intel kind needs.
fn efi_with(ls: Value) -> Value {
    json!({"spec": {"domain": {
        "firmware": {"bootloader": {"efi": {"secureBoot": false}}},
        "launchSecurity": ls}}})
}

fn gates(list: &str) -> Vec<String> {
    FeatureGates::parse(list).unwrap().enabled()
}

fn resolve_with(
    f: &Fixture,
    patch: Value,
    gate_list: &str,
) -> Result<domain_model::Domain, domain_model::SpecErrors> {
    let opts = LoadOptions {
        feature_gates: gates(gate_list),
        ..f.opts()
    };
    resolve_str(&spec(patch), &opts)
}

#[test]
fn each_kind_resolves_with_its_migration_reason() {
    let f = Fixture::new();
    let cases: Vec<(Value, &str, LaunchSecurity, &str)> = vec![
        (
            efi_with(json!({"sev": {}})),
            "",
            LaunchSecurity::Sev {
                encrypted_state: false,
                dh_cert: None,
                session: None,
                attestation: false,
            },
            "SEVNotLiveMigratable",
        ),
        (
            efi_with(
                json!({"sev": {"policy": {"encryptedState": true}, "dhCert": "cert", "session": "sess"}}),
            ),
            "",
            LaunchSecurity::Sev {
                encrypted_state: true,
                dh_cert: Some("cert".into()),
                session: Some("sess".into()),
                attestation: false,
            },
            "SEVNotLiveMigratable",
        ),
        (
            {
                let mut v = efi_with(json!({"sev": {"attestation": {}}}));
                common::merge(&mut v, &json!({"spec": {"startStrategy": "Paused"}}));
                v
            },
            "",
            LaunchSecurity::Sev {
                encrypted_state: false,
                dh_cert: None,
                session: None,
                attestation: true,
            },
            "SEVNotLiveMigratable",
        ),
        (
            efi_with(json!({"snp": {}})),
            "",
            LaunchSecurity::SevSnp { host_data: None },
            "SEVNotLiveMigratable",
        ),
        (
            efi_with(json!({"sev": {"secureNestedPaging": true}})),
            "",
            LaunchSecurity::SevSnp { host_data: None },
            "SEVNotLiveMigratable",
        ),
        (
            efi_with(
                json!({"sev": {"secureNestedPaging": true, "policy": {"encryptedState": true}}}),
            ),
            "",
            LaunchSecurity::SevSnp { host_data: None },
            "SEVNotLiveMigratable",
        ),
        (
            efi_with(json!({"tdx": {}})),
            "WorkloadEncryptionTDX",
            LaunchSecurity::Tdx,
            "TDXNotLiveMigratable",
        ),
        (
            json!({"spec": {"architecture": "s390x", "domain": {"launchSecurity": {}}}}),
            "",
            LaunchSecurity::SecureExecution,
            "SecureExecutionNotLiveMigratable",
        ),
    ];
    for (patch, gate_list, want, reason) in cases {
        let d = ok(resolve_with(&f, patch.clone(), gate_list));
        assert_eq!(d.launch_security.as_ref(), Some(&want), "{patch}");
        assert!(!d.live_migratable.live_migratable);
        assert_eq!(d.live_migratable.reason.as_deref(), Some(reason), "{patch}");
    }
    let d = ok(resolve_with(
        &f,
        json!({"spec": {"architecture": "s390x", "domain": {"launchSecurity": {}}}}),
        "",
    ));
    assert_eq!(d.architecture, Architecture::S390x);
    assert_eq!(
        d.live_migratable.message.as_deref(),
        Some("VMI uses Secure Execution")
    );
}

#[test]
fn webhook_rules_report_their_exact_path() {
    let f = Fixture::new();
    let efi = |e: Value, ls: Value| json!({"spec": {"domain": {"firmware": {"bootloader": {"efi": e}}, "launchSecurity": ls}}});
    let cases: Vec<(Value, &str, &str, &str)> = vec![
        (efi_with(json!({"sev": {}, "tdx": {}})), "WorkloadEncryptionTDX", "spec.domain.launchSecurity", "at most one of sev, snp, tdx (found sev, tdx"),
        (efi_with(json!({"sev": {"secureNestedPaging": true}, "snp": {}})), "", "spec.domain.launchSecurity", "at most one"),
        (json!({"spec": {"domain": {"launchSecurity": {"sev": {}}}}}), "", "spec.domain.launchSecurity.sev", "SEV needs EFI firmware"),
        (json!({"spec": {"domain": {"launchSecurity": {"snp": {}}}}}), "", "spec.domain.launchSecurity.snp", "SEV-SNP needs EFI firmware"),
        (json!({"spec": {"domain": {"launchSecurity": {"tdx": {}}, "firmware": {"kernelBoot": {"container": {"kernelPath": "vmlinuz"}}}}}}), "WorkloadEncryptionTDX", "spec.domain.launchSecurity.tdx", "TDX needs EFI firmware"),
        ({
            let mut v = efi(json!({}), json!({"sev": {}}));
            common::merge(&mut v, &json!({"spec": {"domain": {"features": {"smm": {}}}}}));
            v
        }, "", "spec.domain.firmware.bootloader.efi.secureBoot", "SEV does not work with EFI secure boot"),
        (efi(json!({"secureBoot": true}), json!({"snp": {}})), "", "spec.domain.firmware.bootloader.efi.secureBoot", "SEV-SNP does not work with EFI secure boot"),
        ({
            let mut v = efi_with(json!({"snp": {}}));
            common::merge(&mut v, &json!({"spec": {"domain": {"features": {"smm": {}}}}}));
            v
        }, "", "spec.domain.features.smm", "SEV-SNP guests cannot use SMM: their vCPU state is encrypted"),
        ({
            let mut v = efi_with(json!({"sev": {"policy": {"encryptedState": true}}}));
            common::merge(&mut v, &json!({"spec": {"domain": {"features": {"smm": {}}}}}));
            v
        }, "", "spec.domain.features.smm", "SEV guests cannot use SMM"),
        ({
            let mut v = efi_with(json!({"tdx": {}}));
            common::merge(&mut v, &json!({"spec": {"domain": {"cpu": {"sockets": 1, "maxSockets": 2}}}}));
            v
        }, "WorkloadEncryptionTDX", "spec.domain.cpu.maxSockets", "Intel TDX guests cannot hotplug vCPUs"),
        (efi(json!({"secureBoot": false, "persistent": true}), json!({"snp": {}})), "", "spec.domain.firmware.bootloader.efi.persistent", "SEV-SNP does not work with persistent EFI"),
        (efi(json!({"secureBoot": false, "persistent": true}), json!({"tdx": {}})), "WorkloadEncryptionTDX", "spec.domain.firmware.bootloader.efi.persistent", "TDX does not work with persistent EFI"),
        ({
            let mut v = efi_with(json!({"tdx": {}}));
            common::merge(&mut v, &json!({"spec": {"domain": {"features": {"smm": {}}}}}));
            v
        }, "WorkloadEncryptionTDX", "spec.domain.features.smm", "TDX does not work with SMM"),
        (efi_with(json!({"sev": {"attestation": {}}})), "", "spec.domain.launchSecurity.sev.attestation", "needs spec.startStrategy: Paused"),
        (json!({"spec": {"domain": {"launchSecurity": {}}}}), "", "spec.domain.launchSecurity", "needs spec.architecture: s390x"),
        ({
            let mut v = efi_with(json!({"sev": {}}));
            common::merge(&mut v, &json!({"spec": {"architecture": "arm64"}}));
            v
        }, "", "spec.domain.launchSecurity.sev", "SEV needs spec.architecture: amd64"),
        (efi_with(json!({"sev": {"secureNestedPaging": true, "session": "s"}})), "", "spec.domain.launchSecurity.sev.session", "SEV and SEV-ES only"),
        (efi_with(json!({"sev": {"secureNestedPaging": true, "policy": {"encryptedState": false}}})), "", "spec.domain.launchSecurity.sev.policy.encryptedState", "always encrypts"),
        (efi_with(json!({"sev": {"policy": {"bogus": 1}}})), "", "spec.domain.launchSecurity.sev.policy.bogus", "unknown field"),
        (efi_with(json!({"snp": {"hostData": "x"}})), "", "spec.domain.launchSecurity.snp.hostData", "must be 64 hex characters"),
        // Feature gates.
        (efi_with(json!({"tdx": {}})), "", "spec.domain.launchSecurity.tdx", "needs feature gate WorkloadEncryptionTDX, which is disabled; it is alpha: enable it with --feature-gates WorkloadEncryptionTDX"),
        (efi_with(json!({"sev": {}})), "-WorkloadEncryptionSEV", "spec.domain.launchSecurity.sev", "needs feature gate WorkloadEncryptionSEV, which is disabled; it is beta and on by default: remove -WorkloadEncryptionSEV"),
        (efi_with(json!({"snp": {}})), "-WorkloadEncryptionSEV", "spec.domain.launchSecurity.snp", "WorkloadEncryptionSEV"),
    ];
    for (patch, gate_list, path, needle) in cases {
        let e = err(resolve_with(&f, patch.clone(), gate_list));
        assert_only(&e, path, needle);
    }
}

#[test]
fn secure_execution_is_ga_and_needs_no_gate_even_in_an_empty_list() {
    let f = Fixture::new();
    let opts = LoadOptions {
        feature_gates: Vec::new(),
        ..f.opts()
    };
    let d = resolve_str(
        &spec(json!({"spec": {"architecture": "s390x", "domain": {"launchSecurity": {}}}})),
        &opts,
    )
    .unwrap();
    assert_eq!(d.launch_security, Some(LaunchSecurity::SecureExecution));
    let e = resolve_str(&spec(efi_with(json!({"sev": {}}))), &opts).unwrap_err();
    assert_only(
        &e,
        "spec.domain.launchSecurity.sev",
        "WorkloadEncryptionSEV",
    );
}

#[test]
fn default_load_options_enable_kubevirt_default_gates() {
    assert_eq!(
        LoadOptions::default().feature_gates,
        vec![
            "SecureExecution".to_string(),
            "WorkloadEncryptionSEV".to_string()
        ]
    );
}

#[test]
fn shared_host_disks_keep_the_vm_migratable_and_launch_security_outranks_disks() {
    let f = Fixture::new();
    let disks = |shared: bool| {
        json!({"spec": {"domain": {"devices": {"disks": [{"name": "h"}]}},
        "volumes": [{"name": "h", "hostDisk": {"path": "existing.img", "type": "Disk", "shared": shared}}]}})
    };
    let d = ok(f.resolve(disks(true)));
    assert!(d.live_migratable.live_migratable);
    assert_eq!(d.live_migratable.reason, None);
    let mut v = disks(false);
    common::merge(&mut v, &efi_with(json!({"sev": {}})));
    let d = ok(f.resolve(v));
    // KubeVirt's calculateLiveMigrationCondition checks SEV before disks and
    // keeps only the first reason and its own message.
    assert_eq!(
        d.live_migratable.reason.as_deref(),
        Some("SEVNotLiveMigratable")
    );
    assert_eq!(d.live_migratable.message.as_deref(), Some("VMI uses SEV"));
    let d = ok(f.resolve(disks(false)));
    assert_eq!(
        d.live_migratable.reason.as_deref(),
        Some("DisksNotLiveMigratable")
    );
    assert_eq!(
        d.live_migratable.message.as_deref(),
        Some("cannot migrate VMI with non-shared HostDisk")
    );
}
