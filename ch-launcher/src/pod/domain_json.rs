//! The VM as virt-handler reads it: JSON of KubeVirt's `virtwrap/api.Domain`.
//!
//! Those Go structs carry only `xml` tags, so their JSON keys are the Go
//! field names (`ObjectMeta`, `Spec`, `Status`...), and virt-handler decodes
//! them case-sensitively: every key here is spelled as in KubeVirt. Missing
//! keys decode as zero values, so only what the launcher knows is written.
//! The same document is built for both backends from the neutral
//! [`Domain`] and the runner's [`Status`].

use domain_model::{DiskSource, Domain, Hypervisor};
use serde_json::{json, Map, Value};

use crate::lifecycle::{Reason, State, Status};

/// Who the VM is, from the pod's command line (`--name`, `--namespace`,
/// `--uid`), known before any VMI arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// What the launcher adds to the domain beyond the VM itself: KubeVirt's
/// `Spec.Metadata.KubeVirt.GracePeriod`, and whether the domain is gone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// `DeletionGracePeriodSeconds`: the VMI's termination grace period.
    pub grace_period_seconds: u64,
    /// `DeletionTimestamp` (RFC 3339), stamped on the first Shutdown:
    /// virt-handler measures the grace period from it.
    pub deletion_timestamp: Option<String>,
    /// Set on SIGTERM: the pod is terminating.
    pub marked_for_graceful_shutdown: bool,
    /// `ObjectMeta.deletionTimestamp`: set once the domain is gone for good
    /// (after Delete, or when the launcher exits).
    pub deleted_at: Option<String>,
}

/// KubeVirt's `(LifeCycle, StateChangeReason)` strings for the runner's
/// status. `start_paused` VMs sit in `Paused/StartingUp` until resumed;
/// virt-handler would read that as a migration in progress, so they report
/// `Paused/User`, as virt-launcher does for `startStrategy: Paused`.
pub fn kubevirt_state(status: &Status, start_paused: bool) -> (&'static str, &'static str) {
    let state = match status.state {
        State::NoState => "NoState",
        State::Running => "Running",
        State::Paused => "Paused",
        State::Shutdown => "ShuttingDown",
        State::Shutoff => "Shutoff",
        State::Crashed => "Crashed",
        State::PMSuspended => "PMSuspended",
    };
    let reason = match (status.state, status.reason) {
        (State::Paused, Reason::StartingUp) if start_paused => "User",
        (_, Reason::Unknown) => "Unknown",
        (_, Reason::Booted) => "Booted",
        (_, Reason::StartingUp) => "StartingUp",
        (_, Reason::User) => "User",
        (_, Reason::Unpaused) => "Unpaused",
        (_, Reason::Shutdown) => "Shutdown",
        (_, Reason::Destroyed) => "Destroyed",
        (_, Reason::Panicked) => "Panicked",
        (_, Reason::Failed) => "Failed",
        (_, Reason::IOError) => "IOError",
        (_, Reason::Watchdog) => "Watchdog",
    };
    (state, reason)
}

/// The domain while it exists.
pub fn domain(id: &Identity, domain: &Domain, status: &Status, meta: &Metadata) -> Value {
    let (state, reason) = kubevirt_state(status, domain.start_paused);
    let mut doc = skeleton(id, meta);
    let spec = doc["Spec"].as_object_mut().expect("skeleton has a Spec");
    spec.insert("Name".into(), crate::libvirt::domain_name(domain).into());
    spec.insert("UUID".into(), domain.firmware.uuid.clone().into());
    spec.insert("Type".into(), "kvm".into());
    spec.insert("Devices".into(), devices(domain));
    spec.insert(
        "OS".into(),
        json!({ "Type": { "OS": "hvm", "Machine": machine(domain) } }),
    );
    spec.insert(
        "Memory".into(),
        json!({ "Value": domain.memory.guest, "Unit": "b" }),
    );
    spec.insert(
        "CurrentMemory".into(),
        json!({ "Value": domain.memory.guest, "Unit": "b" }),
    );
    let vcpus = domain.cpu.sockets * domain.cpu.cores * domain.cpu.threads;
    spec.insert(
        "VCPU".into(),
        json!({ "Placement": "static", "CPUs": vcpus }),
    );
    let mut features = Map::new();
    if domain.features.acpi {
        features.insert("ACPI".into(), json!({}));
    }
    spec.insert("Features".into(), features.into());
    doc["Status"] = json!({ "Status": state, "Reason": reason });
    doc
}

/// The last event of a domain that is gone: `NoState/NonExistent`, still
/// carrying the VMI's UID so that virt-handler matches it to its VMI.
pub fn gone(id: &Identity, meta: &Metadata) -> Value {
    let mut doc = skeleton(id, meta);
    doc["Status"] = json!({ "Status": "NoState", "Reason": "NonExistent" });
    doc
}

fn skeleton(id: &Identity, meta: &Metadata) -> Value {
    let mut object_meta = json!({ "name": id.name, "namespace": id.namespace, "uid": id.uid });
    if let Some(at) = &meta.deleted_at {
        object_meta["deletionTimestamp"] = at.clone().into();
    }
    let mut grace = json!({ "DeletionGracePeriodSeconds": meta.grace_period_seconds });
    if let Some(at) = &meta.deletion_timestamp {
        grace["DeletionTimestamp"] = at.clone().into();
    }
    if meta.marked_for_graceful_shutdown {
        grace["MarkedForGracefulShutdown"] = true.into();
    }
    json!({
        "kind": "Domain",
        "apiVersion": "1.2.2",
        "ObjectMeta": object_meta,
        "Spec": {
            "Metadata": { "KubeVirt": { "UID": id.uid, "GracePeriod": grace } },
        },
    })
}

fn machine(domain: &Domain) -> &'static str {
    use domain_model::Architecture;
    match (domain.hypervisor, domain.architecture) {
        // Cloud Hypervisor has one machine; KubeVirt's status.machine shows
        // the hypervisor's own name for it.
        (Hypervisor::CloudHypervisor, _) => "cloud-hypervisor",
        (Hypervisor::Libvirt, Architecture::Amd64) => "q35",
        (Hypervisor::Libvirt, Architecture::Arm64) => "virt",
        (Hypervisor::Libvirt, Architecture::S390x) => "s390-ccw-virtio",
    }
}

/// `Devices.Disks` (Alias → Target.Device is how virt-handler reports volume
/// status), `Devices.Interfaces` (Alias → the VMI's interface name, MAC,
/// the tap as target: how virt-handler reports interface status), and
/// `Devices.Channels` (none: no guest agent channel, so virt-handler never
/// asks for guest agent data).
fn devices(domain: &Domain) -> Value {
    let targets = crate::libvirt::render::disk_targets(&domain.disks);
    let disks: Vec<Value> = domain
        .disks
        .iter()
        .zip(targets)
        .map(|(disk, target)| {
            let DiskSource { path, format, .. } = &disk.source;
            let bus = match domain.hypervisor {
                // Cloud Hypervisor attaches every disk as virtio-blk.
                Hypervisor::CloudHypervisor => "virtio",
                Hypervisor::Libvirt => disk.bus.as_str(),
            };
            let mut entry = json!({
                "Device": match disk.device {
                    domain_model::DiskDevice::Disk => "disk",
                    domain_model::DiskDevice::Cdrom => "cdrom",
                    domain_model::DiskDevice::Lun => "lun",
                },
                "Type": "file",
                "Source": { "File": path.display().to_string() },
                "Target": { "Device": target, "Bus": bus },
                "Driver": { "Name": "qemu", "Type": format!("{format:?}").to_lowercase() },
                "Alias": { "Name": disk.name, "UserDefined": true },
            });
            if disk.readonly {
                entry["ReadOnly"] = json!({});
            }
            if let Some(serial) = &disk.serial {
                entry["Serial"] = serial.clone().into();
            }
            if let Some(order) = disk.boot_order {
                entry["BootOrder"] = json!({ "Order": order });
            }
            entry
        })
        .collect();
    let interfaces: Vec<Value> = domain
        .devices
        .interfaces
        .iter()
        .enumerate()
        .map(|(i, nic)| {
            json!({
                "Type": "ethernet",
                "MAC": { "MAC": nic.mac },
                "Target": { "Device": crate::net::tap_name(i), "Managed": "no" },
                "Model": { "Type": nic.model },
                "Alias": { "Name": nic.name, "UserDefined": true },
            })
        })
        .collect();
    json!({ "Disks": disks, "Interfaces": interfaces, "Channels": [] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lifecycle::Status;

    fn status(state: State, reason: Reason) -> Status {
        Status {
            state,
            reason,
            message: None,
            since: 0,
            live_migratable: None,
            resources: None,
        }
    }

    fn id() -> Identity {
        Identity {
            name: "testvmi".into(),
            namespace: "default".into(),
            uid: "1234-abcd".into(),
        }
    }

    #[test]
    fn lifecycle_states_map_to_kubevirts_strings() {
        let cases = [
            (
                State::Paused,
                Reason::StartingUp,
                false,
                ("Paused", "StartingUp"),
            ),
            (State::Paused, Reason::StartingUp, true, ("Paused", "User")),
            (State::Running, Reason::Booted, false, ("Running", "Booted")),
            (State::Paused, Reason::User, false, ("Paused", "User")),
            (State::Paused, Reason::IOError, false, ("Paused", "IOError")),
            (
                State::Shutdown,
                Reason::User,
                false,
                ("ShuttingDown", "User"),
            ),
            (
                State::Shutoff,
                Reason::Shutdown,
                false,
                ("Shutoff", "Shutdown"),
            ),
            (
                State::Shutoff,
                Reason::Destroyed,
                false,
                ("Shutoff", "Destroyed"),
            ),
            (State::Shutoff, Reason::Failed, false, ("Shutoff", "Failed")),
            (
                State::Crashed,
                Reason::Panicked,
                false,
                ("Crashed", "Panicked"),
            ),
            (
                State::PMSuspended,
                Reason::Unknown,
                false,
                ("PMSuspended", "Unknown"),
            ),
        ];
        for (state, reason, paused, want) in cases {
            assert_eq!(
                kubevirt_state(&status(state, reason), paused),
                want,
                "{state:?}/{reason:?} start_paused={paused}"
            );
        }
    }

    #[test]
    fn domain_uses_kubevirts_go_field_names() {
        let mut d = domain_model::fixtures::domain()
            .with_hypervisor(Hypervisor::Libvirt)
            .with_name("testvmi");
        d.disks = vec![
            domain_model::fixtures::disk(0, "rootdisk", "/disks/root.img"),
            domain_model::fixtures::disk(1, "data", "/disks/data.img"),
        ];
        let meta = Metadata {
            grace_period_seconds: 30,
            deletion_timestamp: Some("2026-12-03T10:00:00Z".into()),
            marked_for_graceful_shutdown: true,
            deleted_at: None,
        };
        let doc = domain(&id(), &d, &status(State::Running, Reason::Booted), &meta);
        assert_eq!(doc["ObjectMeta"]["name"], "testvmi");
        assert_eq!(doc["ObjectMeta"]["namespace"], "default");
        assert!(doc["ObjectMeta"].get("deletionTimestamp").is_none());
        let kv = &doc["Spec"]["Metadata"]["KubeVirt"];
        assert_eq!(kv["UID"], "1234-abcd");
        assert_eq!(kv["GracePeriod"]["DeletionGracePeriodSeconds"], 30);
        assert_eq!(
            kv["GracePeriod"]["DeletionTimestamp"],
            "2026-12-03T10:00:00Z"
        );
        assert_eq!(kv["GracePeriod"]["MarkedForGracefulShutdown"], true);
        assert_eq!(doc["Spec"]["Name"], "default_testvmi");
        assert_eq!(doc["Status"]["Status"], "Running");
        assert_eq!(doc["Status"]["Reason"], "Booted");
        assert_eq!(doc["Spec"]["OS"]["Type"]["Machine"], "q35");
        assert_eq!(doc["Spec"]["CurrentMemory"]["Unit"], "b");
        let disks = doc["Spec"]["Devices"]["Disks"].as_array().unwrap();
        assert_eq!(disks.len(), d.disks.len());
        for (disk, want) in disks.iter().zip(&d.disks) {
            assert_eq!(disk["Alias"]["Name"], want.name.as_str());
            assert_eq!(disk["Alias"]["UserDefined"], true);
            assert!(disk["Target"]["Device"].as_str().unwrap().starts_with("vd"));
        }
    }

    #[test]
    fn interfaces_carry_their_name_mac_and_tap() {
        let mut d = domain_model::fixtures::domain();
        d.devices.interfaces = vec![domain_model::fixtures::interface(0, "default")];
        let nics = &devices(&d)["Interfaces"];
        assert_eq!(nics[0]["Alias"]["Name"], "default");
        assert_eq!(nics[0]["MAC"]["MAC"], "02:00:00:00:00:01");
        assert_eq!(nics[0]["Target"]["Device"], "tap0");
        assert_eq!(nics[0]["Model"]["Type"], "virtio");
    }

    #[test]
    fn a_gone_domain_is_nostate_nonexistent_with_its_uid_and_deletion_timestamp() {
        let meta = Metadata {
            grace_period_seconds: 30,
            deleted_at: Some("2026-12-03T10:00:05Z".into()),
            ..Metadata::default()
        };
        let doc = gone(&id(), &meta);
        assert_eq!(doc["Status"]["Status"], "NoState");
        assert_eq!(doc["Status"]["Reason"], "NonExistent");
        assert_eq!(
            doc["ObjectMeta"]["deletionTimestamp"],
            "2026-12-03T10:00:05Z"
        );
        assert_eq!(doc["Spec"]["Metadata"]["KubeVirt"]["UID"], "1234-abcd");
        assert!(doc["Spec"]["Metadata"]["KubeVirt"]["GracePeriod"]
            .get("MarkedForGracefulShutdown")
            .is_none());
    }
}
