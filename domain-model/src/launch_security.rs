//! `spec.domain.launchSecurity`: which confidential-computing kind the spec
//! asks for, checked the way KubeVirt's admission webhook checks it, plus the
//! feature gate each kind needs.
//!
//! Kinds: `sev` (SEV, or SEV-ES with `policy.encryptedState`), `snp: {}` or
//! `sev.secureNestedPaging: true` (SEV-SNP), `tdx: {}` (Intel TDX), and an
//! empty `launchSecurity: {}` on `spec.architecture: s390x` (IBM Z Secure
//! Execution).
//!
//! Launcher extension: `snp.hostData`, 32 bytes as 64 hex characters that the
//! SEV-SNP attestation report carries (Cloud Hypervisor's `payload.host_data`,
//! libvirt's `hostData`). KubeVirt's `snp: {}` has no field; like
//! `spec.hypervisor`, a spec using it is only for ch-launcher. It is
//! validated here, so [`LaunchSecurity::SevSnp`] always holds 64 lowercase
//! hex characters.

use crate::api;
use crate::error::SpecErrors;
use crate::gates;
use crate::{Architecture, Boot, LaunchSecurity};

const PATH: &str = "spec.domain.launchSecurity";
const EFI_PATH: &str = "spec.domain.firmware.bootloader.efi";

/// What the launch-security rules look at besides `launchSecurity` itself.
pub struct Context<'a> {
    pub architecture: Architecture,
    /// `None` when the boot source had errors of its own.
    pub boot: Option<&'a Boot>,
    pub smm: bool,
    /// `maxSockets` above `sockets`: vCPUs can be plugged in later.
    pub cpu_hotplug: bool,
    pub start_paused: bool,
    pub feature_gates: &'a [String],
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sev,
    Snp,
    Tdx,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Sev => "SEV",
            Kind::Snp => "SEV-SNP",
            Kind::Tdx => "TDX",
        }
    }
    fn gate(self) -> &'static str {
        match self {
            Kind::Sev | Kind::Snp => gates::WORKLOAD_ENCRYPTION_SEV,
            Kind::Tdx => gates::WORKLOAD_ENCRYPTION_TDX,
        }
    }
}

/// Validates `spec` and returns the kind it selects; problems go to `errors`.
pub fn resolve(
    spec: &api::LaunchSecurity,
    ctx: &Context,
    errors: &mut SpecErrors,
) -> Option<LaunchSecurity> {
    let snp_via_sev = spec
        .sev
        .as_ref()
        .is_some_and(|s| s.secure_nested_paging == Some(true));
    let mut kinds: Vec<(Kind, String)> = Vec::new();
    if spec.sev.is_some() {
        let kind = if snp_via_sev { Kind::Snp } else { Kind::Sev };
        kinds.push((kind, format!("{PATH}.sev")));
    }
    if spec.snp.is_some() {
        kinds.push((Kind::Snp, format!("{PATH}.snp")));
    }
    if spec.tdx.is_some() {
        kinds.push((Kind::Tdx, format!("{PATH}.tdx")));
    }

    let (kind, kind_path) = match kinds.as_slice() {
        [] => return secure_execution(ctx, errors),
        [one] => one.clone(),
        _ => {
            let names: Vec<&str> = kinds
                .iter()
                .map(|(_, p)| p.rsplit('.').next().unwrap_or(p))
                .collect();
            errors.push(
                PATH,
                format!(
                    "set at most one of sev, snp, tdx (found {}; sev.secureNestedPaging: true \
                     already means SEV-SNP)",
                    names.join(", ")
                ),
            );
            return None;
        }
    };
    let before = errors.0.len();
    let label = kind.label();

    if ctx.architecture != Architecture::Amd64 {
        errors.push(
            &kind_path,
            format!("{label} needs spec.architecture: amd64"),
        );
    }
    if !gates::is_enabled(ctx.feature_gates, kind.gate()) {
        errors.push(&kind_path, gates::disabled_message(kind.gate(), label));
    }
    match ctx.boot {
        Some(Boot::Efi {
            secure_boot,
            persistent,
        }) => {
            if *secure_boot && kind != Kind::Tdx {
                errors.push(
                    format!("{EFI_PATH}.secureBoot"),
                    format!(
                        "{label} does not work with EFI secure boot, which is on by default \
                         when efi is given: set secureBoot: false"
                    ),
                );
            }
            if *persistent && kind != Kind::Sev {
                errors.push(
                    format!("{EFI_PATH}.persistent"),
                    format!("{label} does not work with persistent EFI variables"),
                );
            }
        }
        Some(_) => errors.push(
            &kind_path,
            format!(
                "{label} needs EFI firmware: set {EFI_PATH} (kernel and BIOS boot cannot be used)"
            ),
        ),
        None => {}
    }
    if kind == Kind::Tdx && ctx.smm {
        errors.push(
            "spec.domain.features.smm",
            "TDX does not work with SMM: remove features.smm or set enabled: false",
        );
    }
    let encrypted_state = match kind {
        Kind::Tdx | Kind::Snp => true,
        Kind::Sev => spec
            .sev
            .as_ref()
            .and_then(|s| s.policy.as_ref())
            .and_then(|p| p.encrypted_state)
            .unwrap_or(false),
    };
    if encrypted_state && kind != Kind::Tdx && ctx.smm {
        errors.push(
            "spec.domain.features.smm",
            format!("{label} guests cannot use SMM: their vCPU state is encrypted"),
        );
    }
    if kind == Kind::Tdx && ctx.cpu_hotplug {
        errors.push(
            "spec.domain.cpu.maxSockets",
            "Intel TDX guests cannot hotplug vCPUs: every vCPU is measured before the guest \
             starts",
        );
    }

    let result = match kind {
        Kind::Tdx => LaunchSecurity::Tdx,
        Kind::Snp => {
            if let Some(sev) = &spec.sev {
                snp_spelled_as_sev(sev, errors);
            }
            let host_data = spec
                .snp
                .as_ref()
                .and_then(|s| s.host_data.as_deref())
                .and_then(|h| host_data(h, errors));
            LaunchSecurity::SevSnp { host_data }
        }
        Kind::Sev => {
            let sev = spec.sev.clone().unwrap_or_default();
            if sev.attestation.is_some() && !ctx.start_paused {
                errors.push(
                    format!("{PATH}.sev.attestation"),
                    "SEV attestation needs spec.startStrategy: Paused (the guest owner injects \
                     secrets before it runs)",
                );
            }
            LaunchSecurity::Sev {
                encrypted_state: sev
                    .policy
                    .as_ref()
                    .and_then(|p| p.encrypted_state)
                    .unwrap_or(false),
                dh_cert: sev.dh_cert.clone(),
                session: sev.session.clone(),
                attestation: sev.attestation.is_some(),
            }
        }
    };
    (errors.0.len() == before).then_some(result)
}

/// Length of `snp.hostData` in hex characters (32 bytes).
pub const HOST_DATA_HEX_LEN: usize = 64;

fn host_data(hex: &str, errors: &mut SpecErrors) -> Option<String> {
    if hex.len() == HOST_DATA_HEX_LEN && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(hex.to_ascii_lowercase());
    }
    errors.push(
        format!("{PATH}.snp.hostData"),
        format!(
            "must be {HOST_DATA_HEX_LEN} hex characters (32 bytes), found {} characters{}",
            hex.chars().count(),
            if hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                ""
            } else {
                " that are not all hex digits"
            }
        ),
    );
    None
}

/// The SEV-only fields make no sense once `secureNestedPaging` turned the
/// `sev` block into SEV-SNP; refusing them beats dropping them.
fn snp_spelled_as_sev(sev: &api::Sev, errors: &mut SpecErrors) {
    let base = format!("{PATH}.sev");
    let only_sev = "applies to SEV and SEV-ES only, not to SEV-SNP (secureNestedPaging: true)";
    if sev.attestation.is_some() {
        errors.push(format!("{base}.attestation"), only_sev);
    }
    if sev.session.is_some() {
        errors.push(format!("{base}.session"), only_sev);
    }
    if sev.dh_cert.is_some() {
        errors.push(format!("{base}.dhCert"), only_sev);
    }
    if sev.policy.as_ref().and_then(|p| p.encrypted_state) == Some(false) {
        errors.push(
            format!("{base}.policy.encryptedState"),
            "SEV-SNP always encrypts the guest state; encryptedState: false contradicts \
             secureNestedPaging: true",
        );
    }
}

fn secure_execution(ctx: &Context, errors: &mut SpecErrors) -> Option<LaunchSecurity> {
    if ctx.architecture != Architecture::S390x {
        errors.push(
            PATH,
            "an empty launchSecurity selects IBM Z Secure Execution, which needs \
             spec.architecture: s390x; for AMD or Intel set sev, snp or tdx",
        );
        return None;
    }
    if !gates::is_enabled(ctx.feature_gates, gates::SECURE_EXECUTION) {
        errors.push(
            PATH,
            gates::disabled_message(gates::SECURE_EXECUTION, "Secure Execution"),
        );
        return None;
    }
    Some(LaunchSecurity::SecureExecution)
}
