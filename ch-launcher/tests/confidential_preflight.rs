//! Confidential launches against a real `cloud-hypervisor` (`CLOUD_HYPERVISOR_BIN`)
//! built without the `tdx`, `sev_snp` and `igvm` features: the launcher must
//! refuse them after `vmm.ping` and before `vm.create`, because such a build
//! accepts `platform.tdx` / `platform.sev_snp` with 204 and then ignores them,
//! which would boot an unprotected guest.
//!
//! Without `CLOUD_HYPERVISOR_BIN` each test prints a `SKIP:` line and passes;
//! a binary that does have the feature is reported as a `SKIP:` too, since the
//! refusal cannot be shown with it.

mod common;

use ch_launcher::ch::{self, ChOptions, CreateError, HostInputs};
use ch_launcher::paths::VmPaths;
use common::ch_binary;
use domain_model::fixtures;
use domain_model::{CpuModel, Domain, LaunchSecurity};
use std::time::Duration;

fn confidential_domain(launch_security: LaunchSecurity) -> Domain {
    fixtures::domain()
        .with_name("confidential")
        .with_uid("6b1d7c1e-2f3a-4b5c-8d9e-0a1b2c3d4e5f")
        .with_cpu_model(CpuModel::HostPassthrough)
        .with_boot(fixtures::efi_boot(false))
        .with_launch_security(launch_security)
        .with_grace_period(Duration::from_secs(5))
        .not_live_migratable()
}

/// Creates the VM and expects the build-feature refusal; returns its message.
async fn expect_refusal(
    test: &str,
    launch_security: LaunchSecurity,
    host: impl FnOnce(&std::path::Path) -> HostInputs,
    feature: &str,
) -> Option<String> {
    let bin = ch_binary(test)?;
    let dir = tempfile::tempdir().expect("tempdir");
    let paths = VmPaths::new(dir.path(), "vm");
    let opts = ChOptions {
        binary: Some(bin.clone()),
        host: host(dir.path()),
        ..ChOptions::default()
    };
    let err = match ch::create(&confidential_domain(launch_security), &paths, &opts).await {
        Ok(_) => panic!("{test}: a confidential VM was created by {}", bin.display()),
        Err(e) => e,
    };
    match &err {
        CreateError::MissingFeature {
            feature: missing,
            features,
            ..
        } => {
            if features.iter().any(|f| f == feature) {
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    (format!(
                        "SKIP: {test}: {} has the {feature:?} feature",
                        bin.display()
                    ) + "\n")
                        .as_bytes(),
                );
                return None;
            }
            assert_eq!(*missing, feature, "{err}");
        }
        other => panic!("{test}: expected the build-feature refusal, got: {other}"),
    }
    // The refusal came before vm.create: the VMM was taken down, so nothing
    // answers on its API socket any more.
    assert!(
        std::os::unix::net::UnixStream::connect(paths.ch_api_socket()).is_err(),
        "the VMM still serves its API after the refusal"
    );
    let message = err.to_string();
    println!("{test}: refused: {message}");
    Some(message)
}

#[tokio::test(flavor = "current_thread")]
async fn tdx_is_refused_by_a_cloud_hypervisor_without_tdx() {
    let message = expect_refusal(
        "tdx_is_refused_by_a_cloud_hypervisor_without_tdx",
        LaunchSecurity::Tdx,
        |dir| HostInputs {
            // Never read: the refusal comes first.
            firmware: Some(dir.join("tdvf.fd")),
            igvm: None,
            serial_socket: None,
            vm_dir: None,
            dedicated_cpus: None,
            cpu: None,
        },
        "tdx",
    )
    .await;
    if let Some(message) = message {
        assert!(
            message.contains("Intel TDX") && message.contains("\"tdx\""),
            "{message}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn sev_snp_is_refused_by_a_cloud_hypervisor_without_sev_snp() {
    let message = expect_refusal(
        "sev_snp_is_refused_by_a_cloud_hypervisor_without_sev_snp",
        LaunchSecurity::SevSnp { host_data: None },
        |dir| HostInputs {
            firmware: None,
            igvm: Some(dir.join("guest.igvm")),
            serial_socket: None,
            vm_dir: None,
            dedicated_cpus: None,
            cpu: None,
        },
        "sev_snp",
    )
    .await;
    if let Some(message) = message {
        assert!(
            message.contains("AMD SEV-SNP") && message.contains("\"sev_snp\""),
            "{message}"
        );
    }
}
