//! CPU topology, memory, features and clock.

use super::*;

impl Resolver<'_> {
    pub(super) fn cpu(
        &mut self,
        cpu: Option<&api::Cpu>,
        resources: Option<&api::Resources>,
        arch: Architecture,
    ) -> Cpu {
        let base = "spec.domain.cpu";
        let default = api::Cpu::default();
        let c = cpu.unwrap_or(&default);
        let sockets = Self::count(c.sockets);
        let cores = Self::count(c.cores);
        let threads = Self::count(c.threads);
        let max_sockets = Self::count(c.max_sockets);

        let res_cpus = self.resource_cpus(resources);
        let sockets = match (sockets, cores, threads) {
            (None, None, None) => res_cpus.unwrap_or(1),
            (s, _, _) => s.unwrap_or(1),
        };
        let (cores, threads) = (cores.unwrap_or(1), threads.unwrap_or(1));
        let max_sockets = match max_sockets {
            Some(m) if m < sockets => {
                self.err(
                    format!("{base}.maxSockets"),
                    format!("maxSockets ({m}) must not be less than sockets ({sockets})"),
                );
                sockets
            }
            Some(m) => m,
            None => sockets,
        };
        // u128: three u32 factors cannot overflow it.
        let total = u128::from(max_sockets) * u128::from(cores) * u128::from(threads);
        let (mut sockets, mut max_sockets, mut cores, mut threads) =
            (sockets, max_sockets, cores, threads);
        if total > u128::from(MAX_VCPUS) {
            self.err(
                base,
                format!(
                    "topology asks for {total} vCPUs (maxSockets or sockets x cores x threads); \
                     at most {MAX_VCPUS} are accepted"
                ),
            );
            (sockets, max_sockets, cores, threads) = (1, 1, 1, 1);
        }
        let model = match c.model.as_deref() {
            None | Some("") => match arch {
                Architecture::Arm64 => CpuModel::HostPassthrough,
                _ => CpuModel::HostModel,
            },
            Some("host-model") => CpuModel::HostModel,
            Some("host-passthrough") => CpuModel::HostPassthrough,
            Some(named) => CpuModel::Named(named.to_string()),
        };
        let features = self.cpu_features(c.features.as_deref().unwrap_or_default());
        let dedicated = c.dedicated_cpu_placement.unwrap_or(false);
        if c.isolate_emulator_thread == Some(true) {
            if dedicated {
                self.err(
                    format!("{base}.isolateEmulatorThread"),
                    "not supported yet: the launcher pins vCPUs, not the hypervisor's own threads",
                );
            } else {
                self.err(
                    format!("{base}.isolateEmulatorThread"),
                    "needs dedicatedCpuPlacement: true (as in KubeVirt)",
                );
            }
        }
        Cpu {
            sockets,
            cores,
            threads,
            max_sockets,
            model,
            features,
            dedicated,
        }
    }

    /// `spec.domain.cpu.features`: each needs a name; the policy defaults to
    /// `require`, as in KubeVirt. A name given twice is refused, since the
    /// two policies would contradict or repeat each other (libvirt refuses
    /// such a document too).
    fn cpu_features(&mut self, features: &[api::CpuFeature]) -> Vec<CpuFeature> {
        let mut out: Vec<CpuFeature> = Vec::new();
        for (i, f) in features.iter().enumerate() {
            let path = format!("spec.domain.cpu.features[{i}]");
            let name = match f.name.as_deref().map(str::trim) {
                None | Some("") => {
                    self.err(
                        format!("{path}.name"),
                        "required: the CPU feature's name as QEMU and libvirt spell it \
                         (for example \"avx2\" or \"vmx\")",
                    );
                    continue;
                }
                Some(name) => name,
            };
            if !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            {
                self.err(
                    format!("{path}.name"),
                    format!(
                        "{name:?} is not a CPU feature name (letters, digits, '-', '_' and '.' only)"
                    ),
                );
                continue;
            }
            let policy = match f.policy.as_deref() {
                None | Some("") => CpuFeaturePolicy::Require,
                Some(p) => match CpuFeaturePolicy::ALL.into_iter().find(|k| k.as_str() == p) {
                    Some(k) => k,
                    None => {
                        self.err(
                            format!("{path}.policy"),
                            format!(
                                "{p:?} is not a CPU feature policy: expected one of force, \
                                 require, optional, disable, forbid"
                            ),
                        );
                        continue;
                    }
                },
            };
            if let Some(first) = out.iter().find(|o| o.name == name) {
                self.err(
                    format!("{path}.name"),
                    format!(
                        "CPU feature {name:?} is already listed at {} (policy {}); list each \
                         feature once",
                        first.spec_path, first.policy
                    ),
                );
                continue;
            }
            out.push(CpuFeature {
                name: name.to_string(),
                policy,
                spec_path: path,
            });
        }
        out
    }

    /// vCPUs from `resources.limits.cpu`, else `requests.cpu`, as KubeVirt
    /// derives sockets when no topology is given.
    fn resource_cpus(&mut self, resources: Option<&api::Resources>) -> Option<u32> {
        let r = resources?;
        let (path, q) = match (
            r.limits.as_ref().and_then(|l| l.cpu.as_ref()),
            r.requests.as_ref().and_then(|l| l.cpu.as_ref()),
        ) {
            (Some(q), _) => ("spec.domain.resources.limits.cpu", q),
            (None, Some(q)) => ("spec.domain.resources.requests.cpu", q),
            (None, None) => return None,
        };
        match parse_cpus(&q.0) {
            // KubeVirt's IsZero(): 0 CPUs is the same as none given.
            Ok(0) => None,
            Ok(n) if n > u64::from(MAX_VCPUS) => {
                self.err(path, format!("at most {MAX_VCPUS} vCPUs are accepted"));
                None
            }
            // Bounded by MAX_VCPUS just above.
            Ok(n) => Some(n as u32),
            Err(e) => {
                self.err(path, e);
                None
            }
        }
    }

    pub(super) fn memory(
        &mut self,
        memory: Option<&api::Memory>,
        resources: Option<&api::Resources>,
    ) -> Option<Memory> {
        let base = "spec.domain.memory";
        let requests = resources.and_then(|r| r.requests.as_ref());
        let limits = resources.and_then(|r| r.limits.as_ref());
        let req_path = "spec.domain.resources.requests.memory";
        let lim_path = "spec.domain.resources.limits.memory";
        let request = requests
            .and_then(|r| r.memory.as_ref())
            .and_then(|q| self.quantity_bytes(req_path, q));
        let limit = limits
            .and_then(|r| r.memory.as_ref())
            .and_then(|q| self.quantity_bytes(lim_path, q));
        if let (Some(req), Some(lim)) = (request, limit) {
            if req > lim {
                self.err(
                    req_path,
                    format!(
                        "requests.memory ({req} bytes) must not exceed limits.memory ({lim} bytes)"
                    ),
                );
            }
        }
        let guest_path = format!("{base}.guest");
        let page_path = format!("{base}.hugepages.pageSize");
        // KubeVirt's setGuestMemory: memory.guest, else a non-zero
        // requests.memory, else a non-zero limits.memory, else the hugepage
        // size.
        let (guest, guest_from) = match memory.and_then(|m| m.guest.as_ref()) {
            Some(q) => (self.quantity_bytes(&guest_path, q), guest_path.clone()),
            None => match (request.filter(|&r| r != 0), limit.filter(|&l| l != 0)) {
                (Some(r), _) => (Some(r), req_path.to_string()),
                (None, Some(l)) => (Some(l), lim_path.to_string()),
                (None, None) => match memory.and_then(|m| m.hugepages.as_ref()) {
                    Some(h) if !h.page_size.0.is_empty() => match parse_bytes(&h.page_size.0) {
                        Ok(size) => (Some(size), page_path.clone()),
                        Err(e) => {
                            self.err(&page_path, e);
                            return None;
                        }
                    },
                    _ => {
                        let bad_quantity = requests.is_some_and(|r| r.memory.is_some())
                            && request.is_none()
                            || limits.is_some_and(|r| r.memory.is_some()) && limit.is_none();
                        if !bad_quantity {
                            self.err(
                                &guest_path,
                                "guest memory is required: set spec.domain.memory.guest or \
                                 spec.domain.resources.requests.memory",
                            );
                        }
                        return None;
                    }
                },
            },
        };
        let guest = guest?;
        if guest == 0 {
            self.err(&guest_from, "guest memory must be more than 0");
            return None;
        }
        if guest > MAX_GUEST_MEMORY {
            self.err(
                &guest_from,
                format!("{guest} bytes of guest memory: at most 16Ti ({MAX_GUEST_MEMORY} bytes) are accepted"),
            );
            return None;
        }
        if let Some(lim) = limit {
            if guest > lim && guest_from == guest_path {
                self.err(
                    &guest_path,
                    format!(
                        "guest memory ({guest} bytes) must not exceed limits.memory ({lim} bytes)"
                    ),
                );
            }
        }
        let max_path = format!("{base}.maxGuest");
        let max_guest = match memory.and_then(|m| m.max_guest.as_ref()) {
            None => None,
            Some(q) => match self.quantity_bytes(&max_path, q) {
                Some(max) if max < guest => {
                    self.err(
                        &max_path,
                        format!("maxGuest ({max} bytes) must not be less than guest memory ({guest} bytes)"),
                    );
                    None
                }
                Some(max) if max == guest => None,
                Some(max) if max > MAX_GUEST_MEMORY => {
                    self.err(
                        &max_path,
                        format!(
                            "{max} bytes: at most 16Ti ({MAX_GUEST_MEMORY} bytes) are accepted"
                        ),
                    );
                    None
                }
                other => other,
            },
        };
        let hugepage_size = match memory.and_then(|m| m.hugepages.as_ref()) {
            None => None,
            Some(h) => match HUGEPAGE_SIZES
                .iter()
                .find(|(_, v)| parse_bytes(&h.page_size.0) == Ok(*v))
            {
                Some((_, size)) => {
                    for (path, bytes) in [(&guest_from, Some(guest)), (&max_path, max_guest)] {
                        if let Some(b) = bytes {
                            if b % size != 0 {
                                self.err(
                                    path.as_str(),
                                    format!(
                                        "{b} bytes is not a multiple of the hugepage size {}",
                                        h.page_size
                                    ),
                                );
                            }
                        }
                    }
                    Some(*size)
                }
                None if h.page_size.0.is_empty() => {
                    self.err(&page_path, "required: the hugepage size, 2Mi or 1Gi");
                    None
                }
                None => {
                    self.err(
                        &page_path,
                        format!(
                            "unsupported hugepage size {:?}: expected 2Mi or 1Gi",
                            h.page_size.0
                        ),
                    );
                    None
                }
            },
        };
        Some(Memory {
            guest,
            max_guest,
            hugepage_size,
        })
    }

    /// Pod resources besides `cpu` and `memory`: in KubeVirt they size the
    /// launcher's pod (scheduling, eviction) and never the VM, so a local
    /// run accepts them with no effect, like the placement fields.
    pub(super) fn other_resources(&mut self, resources: Option<&api::Resources>) {
        let Some(r) = resources else { return };
        for (list, key) in [(&r.requests, "requests"), (&r.limits, "limits")] {
            let Some(list) = list else { continue };
            for name in list.other.keys() {
                let pod_resource = name == "ephemeral-storage"
                    || name == "storage"
                    || name.starts_with("hugepages-")
                    || name.contains('/');
                if !pod_resource {
                    self.err(
                        format!("spec.domain.resources.{key}.{name}"),
                        format!(
                            "unknown resource {name:?}: the VM reads cpu and memory; pod \
                             resources (ephemeral-storage, hugepages-<size>, <domain>/<name>) \
                             are accepted and have no effect on a local run"
                        ),
                    );
                }
            }
        }
    }

    pub(super) fn features(
        &mut self,
        features: Option<&api::Features>,
        arch: Architecture,
    ) -> Features {
        // setS390xDefaultFeatures: s390x has no ACPI, so it is off unless
        // the spec turns it on.
        let acpi =
            features
                .and_then(|f| f.acpi.as_ref())
                .map_or(arch != Architecture::S390x, |s| {
                    // KubeVirt's FeatureState is a value there, so `acpi: {}`
                    // is as unset as no `acpi` and only `enabled: true` counts.
                    s.enabled.unwrap_or(arch != Architecture::S390x)
                });
        let smm = features
            .and_then(|f| f.smm.as_ref())
            .is_some_and(|s| s.enabled.unwrap_or(true));
        Features { acpi, smm }
    }

    pub(super) fn clock(&mut self, clock: Option<&api::Clock>) -> Option<Clock> {
        let c = clock?;
        let base = "spec.domain.clock";
        let utc = ClockOffset::Utc {
            adjustment_seconds: 0,
        };
        let offset = match (&c.utc, &c.timezone) {
            (Some(_), Some(_)) => {
                self.err(base, "set only one of utc or timezone");
                utc
            }
            (None, Some(tz)) if tz.is_empty() => {
                self.err(format!("{base}.timezone"), "must not be empty");
                utc
            }
            (None, Some(tz)) => ClockOffset::Timezone { name: tz.clone() },
            (Some(utc), None) => ClockOffset::Utc {
                adjustment_seconds: utc.offset_seconds.unwrap_or(0),
            },
            (None, None) => utc,
        };
        let mut timers = Vec::new();
        if let Some(t) = &c.timer {
            for (name, timer) in [
                (TimerName::Hpet, &t.hpet),
                (TimerName::Kvm, &t.kvm),
                (TimerName::Pit, &t.pit),
                (TimerName::Rtc, &t.rtc),
                (TimerName::Hyperv, &t.hyperv),
            ] {
                let Some(timer) = timer else { continue };
                let path = format!("{base}.timer.{}", name.as_str());
                let tick_policy = match timer.tick_policy.as_deref() {
                    None => None,
                    Some("delay") => Some(TickPolicy::Delay),
                    Some("catchup") => Some(TickPolicy::Catchup),
                    Some("merge") => Some(TickPolicy::Merge),
                    Some("discard") => Some(TickPolicy::Discard),
                    Some(tp) => {
                        self.err(
                            format!("{path}.tickPolicy"),
                            format!("unknown tick policy {tp:?}: expected delay, catchup, merge or discard"),
                        );
                        None
                    }
                };
                let track = match timer.track.as_deref() {
                    None => None,
                    Some(_) if name != TimerName::Rtc => {
                        self.err(format!("{path}.track"), "only the rtc timer has track");
                        None
                    }
                    Some("guest") => Some(TimerTrack::Guest),
                    Some("wall") => Some(TimerTrack::Wall),
                    Some(track) => {
                        self.err(
                            format!("{path}.track"),
                            format!("unknown track {track:?}: expected guest or wall"),
                        );
                        None
                    }
                };
                timers.push(Timer {
                    name,
                    present: timer.present,
                    tick_policy,
                    track,
                });
            }
        }
        Some(Clock {
            spec_path: base.to_string(),
            offset,
            timers,
        })
    }
}
