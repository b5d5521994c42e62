//! Changing a running VM in place: what is in effect (vCPUs, memory, disks)
//! and the limits every backend shares, checked before the hypervisor is
//! asked so that a refused change leaves the VM untouched.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the VM has now, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    pub sockets: u32,
    /// `spec.domain.cpu.maxSockets` (equals the boot sockets without it).
    pub max_sockets: u32,
    /// `sockets x cores x threads`.
    pub vcpus: u32,
    /// Guest memory in bytes.
    pub memory: u64,
    /// `spec.domain.memory.guest`: memory can not go below it.
    pub boot_memory: u64,
    /// `spec.domain.memory.maxGuest`; `None`: no memory hotplug.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_memory: Option<u64>,
    pub disks: Vec<DiskInUse>,
    pub interfaces: Vec<NicInUse>,
    /// vCPUs per socket (`cores x threads`).
    #[serde(skip)]
    per_socket: u32,
}

/// One disk of the running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskInUse {
    pub name: String,
    pub path: PathBuf,
    pub readonly: bool,
    /// Attached at run time (and so removable), not from the spec.
    pub hotplugged: bool,
    /// Where the guest finds it, as the hypervisor reported it (Cloud
    /// Hypervisor's PCI `bdf`) for a disk attached at run time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_address: Option<String>,
}

/// One network interface of the running VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicInUse {
    pub name: String,
    pub tap: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    pub hotplugged: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_address: Option<String>,
}

/// A resize the hypervisor is to carry out: only what changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResizePlan {
    pub vcpus: Option<u32>,
    pub memory: Option<u64>,
}

impl Resources {
    /// What a VM started from `domain` has at boot.
    pub fn at_boot(domain: &domain_model::Domain) -> Resources {
        let per_socket = domain.cpu.cores.max(1) * domain.cpu.threads.max(1);
        Resources {
            sockets: domain.cpu.sockets,
            max_sockets: domain.cpu.max_sockets.max(domain.cpu.sockets),
            vcpus: domain.cpu.sockets * per_socket,
            memory: domain.memory.guest,
            boot_memory: domain.memory.guest,
            max_memory: domain
                .memory
                .max_guest
                .filter(|max| *max > domain.memory.guest),
            disks: domain
                .disks
                .iter()
                .map(|d| DiskInUse {
                    name: d.name.clone(),
                    path: d.source.path.clone(),
                    readonly: d.readonly,
                    hotplugged: false,
                    guest_address: None,
                })
                .collect(),
            interfaces: domain
                .devices
                .interfaces
                .iter()
                .enumerate()
                .map(|(i, nic)| NicInUse {
                    name: nic.name.clone(),
                    tap: crate::net::tap_name(i),
                    mac: Some(nic.mac.clone()),
                    hotplugged: false,
                    guest_address: None,
                })
                .collect(),
            per_socket,
        }
    }

    /// Checks that `name` and `tap` are new to the VM and that the tap
    /// exists in this network namespace (it is the caller's: the launcher
    /// attaches it, it does not plumb it). Returns the MAC as the Domain
    /// writes MACs.
    pub fn check_attach_interface(
        &self,
        name: &str,
        tap: &str,
        mac: Option<&str>,
    ) -> Result<Option<String>, String> {
        if name.is_empty() || tap.is_empty() {
            return Err("an interface needs a name and a tap".into());
        }
        if self.interfaces.iter().any(|n| n.name == name) {
            return Err(format!("an interface named {name:?} is already attached"));
        }
        if let Some(n) = self.interfaces.iter().find(|n| n.tap == tap) {
            return Err(format!("tap {tap:?} is already interface {:?}", n.name));
        }
        let mac = mac
            .map(|m| domain_model::resolve::parse_mac(m).map(domain_model::resolve::format_mac))
            .transpose()?;
        if tap.contains('/') || !Path::new("/sys/class/net").join(tap).exists() {
            return Err(format!(
                "no tap {tap:?} in the launcher's network namespace"
            ));
        }
        Ok(mac)
    }

    /// Checks that `name` is an interface attached at run time.
    pub fn check_detach_interface(&self, name: &str) -> Result<(), String> {
        match self.interfaces.iter().find(|n| n.name == name) {
            None => Err(format!("no interface named {name:?}")),
            Some(n) if !n.hotplugged => Err(format!(
                "interface {name:?} is from the spec (spec.domain.devices.interfaces), not \
                 attached at run time"
            )),
            Some(_) => Ok(()),
        }
    }

    /// Checks a resize against the spec's limits. `memory_block` is the
    /// backend's hotplug granularity: memory changes by whole blocks from
    /// the boot size. `memory_can_shrink`: whether the backend can take
    /// memory back from the guest.
    pub fn plan_resize(
        &self,
        sockets: Option<u32>,
        memory: Option<u64>,
        memory_block: u64,
        memory_can_shrink: bool,
    ) -> Result<ResizePlan, String> {
        if sockets.is_none() && memory.is_none() {
            return Err("nothing to change: give sockets and/or memory".into());
        }
        let mut plan = ResizePlan {
            vcpus: None,
            memory: None,
        };
        if let Some(want) = sockets.filter(|s| *s != self.sockets) {
            if self.max_sockets == self.sockets && want > self.sockets {
                return Err(format!(
                    "cannot grow to {want} sockets: spec.domain.cpu.maxSockets is {} \
                     (set it above sockets when the VM starts to allow vCPU hotplug)",
                    self.max_sockets
                ));
            }
            if want == 0 || want > self.max_sockets {
                return Err(format!(
                    "sockets must be from 1 to spec.domain.cpu.maxSockets ({}), not {want}",
                    self.max_sockets
                ));
            }
            plan.vcpus = Some(want * self.per_socket);
        }
        if let Some(want) = memory.filter(|m| *m != self.memory) {
            let Some(max) = self.max_memory else {
                return Err(format!(
                    "cannot change memory to {}: spec.domain.memory.maxGuest is not set \
                     above guest ({}), so the VM has no memory hotplug",
                    mib(want),
                    mib(self.boot_memory)
                ));
            };
            if want > max {
                return Err(format!(
                    "memory {} is more than spec.domain.memory.maxGuest ({})",
                    mib(want),
                    mib(max)
                ));
            }
            if want < self.boot_memory {
                return Err(format!(
                    "memory {} is less than the boot memory spec.domain.memory.guest ({}), \
                     which the guest cannot give back",
                    mib(want),
                    mib(self.boot_memory)
                ));
            }
            if want < self.memory && !memory_can_shrink {
                return Err(format!(
                    "memory cannot shrink from {} to {} on this backend: the memory \
                     hotplug it uses (ACPI) cannot take memory back from a running guest",
                    mib(self.memory),
                    mib(want)
                ));
            }
            let block = memory_block.max(1);
            if !(want - self.boot_memory).is_multiple_of(block) {
                let below = self.boot_memory + (want - self.boot_memory) / block * block;
                return Err(format!(
                    "memory {} is not the boot memory plus whole {} hotplug blocks; \
                     nearest: {} or {}",
                    mib(want),
                    mib(block),
                    mib(below),
                    mib(below + block)
                ));
            }
            plan.memory = Some(want);
        }
        Ok(plan)
    }

    /// Records a resize the hypervisor carried out.
    pub fn resized(&mut self, plan: ResizePlan) {
        if let Some(vcpus) = plan.vcpus {
            self.vcpus = vcpus;
            self.sockets = vcpus / self.per_socket.max(1);
        }
        if let Some(memory) = plan.memory {
            self.memory = memory;
        }
    }

    /// Checks that `name` and `path` are new to the VM and that `path` is an
    /// image it can open.
    pub fn check_attach(&self, name: &str, path: &Path) -> Result<(), String> {
        if name.is_empty() {
            return Err("a disk needs a name".into());
        }
        if let Some(d) = self.disks.iter().find(|d| d.name == name) {
            return Err(format!(
                "a disk named {name:?} is already attached ({}); detach it first or \
                 choose another name",
                d.path.display()
            ));
        }
        if !path.is_absolute() {
            return Err(format!(
                "{} is not an absolute path: the launcher may run in another directory",
                path.display()
            ));
        }
        match std::fs::metadata(path) {
            Ok(m)
                if m.is_file()
                    || std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()) => {}
            Ok(_) => return Err(format!("{} is not a file or block device", path.display())),
            Err(e) => return Err(format!("cannot use {}: {e}", path.display())),
        }
        if let Some(d) = self.disks.iter().find(|d| d.path == path) {
            return Err(format!(
                "{} is already attached as disk {:?}: one image, one disk",
                path.display(),
                d.name
            ));
        }
        Ok(())
    }

    /// Checks that `name` is a disk attached at run time.
    pub fn check_detach(&self, name: &str) -> Result<(), String> {
        match self.disks.iter().find(|d| d.name == name) {
            None => Err(format!(
                "no disk named {name:?}; attached: {}",
                self.disks
                    .iter()
                    .map(|d| d.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(d) if !d.hotplugged => Err(format!(
                "disk {name:?} is from the spec (spec.domain.devices.disks), not attached at \
                 run time; removing it could take the guest's boot or data disk away"
            )),
            Some(_) => Ok(()),
        }
    }
}

fn mib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{}Mi", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MI: u64 = 1 << 20;

    fn vm() -> Resources {
        let mut d = domain_model::fixtures::domain();
        d.cpu.sockets = 1;
        d.cpu.cores = 2;
        d.cpu.threads = 1;
        d.cpu.max_sockets = 4;
        d.memory.guest = 256 * MI;
        d.memory.max_guest = Some(1024 * MI);
        d.disks = vec![domain_model::fixtures::disk(0, "root", "/images/root.img")];
        Resources::at_boot(&d)
    }

    #[test]
    fn resize_within_the_limits_plans_vcpus_and_memory() {
        let r = vm();
        assert_eq!((r.vcpus, r.max_sockets), (2, 4));
        let plan = r
            .plan_resize(Some(3), Some(512 * MI), 128 * MI, false)
            .unwrap();
        assert_eq!(
            plan,
            ResizePlan {
                vcpus: Some(6),
                memory: Some(512 * MI)
            }
        );
        let mut r = r;
        r.resized(plan);
        assert_eq!((r.sockets, r.vcpus, r.memory), (3, 6, 512 * MI));
        // Unchanged values are not sent again; fewer sockets are allowed.
        let plan = r
            .plan_resize(Some(1), Some(512 * MI), 128 * MI, false)
            .unwrap();
        assert_eq!(
            plan,
            ResizePlan {
                vcpus: Some(2),
                memory: None
            }
        );
    }

    #[test]
    fn resize_past_or_below_the_limits_is_refused_with_the_field() {
        let r = vm();
        let refused = |s: Option<u32>, m: Option<u64>, shrink: bool| {
            r.plan_resize(s, m, 128 * MI, shrink).unwrap_err()
        };
        assert!(refused(Some(5), None, false).contains("maxSockets (4)"));
        assert!(refused(Some(0), None, false).contains("from 1"));
        assert!(refused(None, Some(2048 * MI), false).contains("maxGuest (1024Mi)"));
        assert!(refused(None, Some(128 * MI), true).contains("spec.domain.memory.guest (256Mi)"));
        let odd = refused(None, Some(300 * MI), false);
        assert!(odd.contains("256Mi or 384Mi"), "{odd}");
        assert!(refused(None, None, false).contains("nothing to change"));
        let mut grown = vm();
        grown.resized(ResizePlan {
            vcpus: None,
            memory: Some(512 * MI),
        });
        let shrink = grown
            .plan_resize(None, Some(384 * MI), 128 * MI, false)
            .unwrap_err();
        assert!(shrink.contains("cannot shrink"), "{shrink}");
        assert!(grown
            .plan_resize(None, Some(384 * MI), 128 * MI, true)
            .is_ok());
    }

    #[test]
    fn without_max_sockets_or_max_guest_nothing_can_grow() {
        let mut d = domain_model::fixtures::domain();
        d.cpu.sockets = 2;
        d.cpu.max_sockets = 2;
        d.memory.max_guest = None;
        let r = Resources::at_boot(&d);
        assert!(r
            .plan_resize(Some(3), None, 1, true)
            .unwrap_err()
            .contains("maxSockets is 2"));
        assert!(r
            .plan_resize(None, Some(d.memory.guest * 2), 1, true)
            .unwrap_err()
            .contains("maxGuest is not set"));
    }

    #[test]
    fn attach_refuses_a_second_disk_of_the_same_name_or_image() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("data.img");
        std::fs::write(&image, b"").unwrap();
        let mut r = vm();
        assert!(r
            .check_attach("root", &image)
            .unwrap_err()
            .contains("already attached"));
        assert!(r
            .check_attach("data", Path::new("rel.img"))
            .unwrap_err()
            .contains("absolute"));
        assert!(r
            .check_attach("data", &dir.path().join("missing.img"))
            .unwrap_err()
            .contains("cannot use"));
        assert!(r
            .check_attach("data", dir.path())
            .unwrap_err()
            .contains("not a file"));
        r.check_attach("data", &image).unwrap();
        r.disks.push(DiskInUse {
            name: "data".into(),
            path: image.clone(),
            readonly: false,
            hotplugged: true,
            guest_address: Some("0000:00:05.0".into()),
        });
        assert!(r
            .check_attach("data2", &image)
            .unwrap_err()
            .contains("one image, one disk"));
    }

    #[test]
    fn only_disks_attached_at_run_time_can_be_detached() {
        let mut r = vm();
        assert!(r
            .check_detach("root")
            .unwrap_err()
            .contains("from the spec"));
        assert!(r
            .check_detach("nope")
            .unwrap_err()
            .contains("attached: root"));
        r.disks.push(DiskInUse {
            name: "data".into(),
            path: "/x.img".into(),
            readonly: true,
            hotplugged: true,
            guest_address: None,
        });
        r.check_detach("data").unwrap();
    }
}
