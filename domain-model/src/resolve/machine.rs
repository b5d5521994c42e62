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
        let sockets = self.count(&format!("{base}.sockets"), c.sockets);
        let cores = self.count(&format!("{base}.cores"), c.cores);
        let threads = self.count(&format!("{base}.threads"), c.threads);
        let max_sockets = self.count(&format!("{base}.maxSockets"), c.max_sockets);

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
        Cpu {
            sockets,
            cores,
            threads,
            max_sockets,
            model,
        }
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
            Ok(0) => {
                self.err(path, "must be more than 0");
                None
            }
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
        let (guest, guest_from) = match memory.and_then(|m| m.guest.as_ref()) {
            Some(q) => (self.quantity_bytes(&guest_path, q), guest_path.clone()),
            None => match (request, limit) {
                (Some(r), _) => (Some(r), req_path.to_string()),
                (None, Some(l)) => (Some(l), lim_path.to_string()),
                (None, None) => {
                    let bad_quantity = requests.is_some_and(|r| r.memory.is_some())
                        || limits.is_some_and(|r| r.memory.is_some());
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
        };
        let guest = guest?;
        if guest == 0 {
            self.err(&guest_from, "guest memory must be more than 0");
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
                other => other,
            },
        };
        let page_path = format!("{base}.hugepages.pageSize");
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

    pub(super) fn features(&mut self, features: Option<&api::Features>) -> Features {
        let acpi = features
            .and_then(|f| f.acpi.as_ref())
            .is_none_or(|s| s.enabled.unwrap_or(true));
        let smm = features
            .and_then(|f| f.smm.as_ref())
            .is_some_and(|s| s.enabled.unwrap_or(true));
        Features { acpi, smm }
    }

    pub(super) fn clock(&mut self, clock: Option<&api::Clock>) -> Option<Clock> {
        let c = clock?;
        let base = "spec.domain.clock";
        let offset = match (&c.utc, &c.timezone) {
            (Some(_), Some(_)) => {
                self.err(base, "set only one of utc or timezone");
                "utc".to_string()
            }
            (None, Some(tz)) if tz.is_empty() => {
                self.err(format!("{base}.timezone"), "must not be empty");
                "utc".to_string()
            }
            (None, Some(tz)) => format!("timezone:{tz}"),
            (Some(utc), None) => match utc.offset_seconds {
                None | Some(0) => "utc".to_string(),
                Some(s) => format!("utc:{s:+}"),
            },
            (None, None) => "utc".to_string(),
        };
        let mut timers = Vec::new();
        if let Some(t) = &c.timer {
            for (name, timer) in [
                ("hpet", &t.hpet),
                ("kvm", &t.kvm),
                ("pit", &t.pit),
                ("rtc", &t.rtc),
                ("hyperv", &t.hyperv),
            ] {
                let Some(timer) = timer else { continue };
                let path = format!("{base}.timer.{name}");
                let mut text = name.to_string();
                if let Some(p) = timer.present {
                    text.push_str(&format!(",present={p}"));
                }
                if let Some(tp) = &timer.tick_policy {
                    if !["delay", "catchup", "merge", "discard"].contains(&tp.as_str()) {
                        self.err(
                            format!("{path}.tickPolicy"),
                            format!("unknown tick policy {tp:?}: expected delay, catchup, merge or discard"),
                        );
                    }
                    text.push_str(&format!(",tickPolicy={tp}"));
                }
                if let Some(track) = &timer.track {
                    if name != "rtc" {
                        self.err(format!("{path}.track"), "only the rtc timer has track");
                    } else if !["guest", "wall"].contains(&track.as_str()) {
                        self.err(
                            format!("{path}.track"),
                            format!("unknown track {track:?}: expected guest or wall"),
                        );
                    }
                    text.push_str(&format!(",track={track}"));
                }
                timers.push(text);
            }
        }
        Some(Clock {
            spec_path: base.to_string(),
            offset,
            timers,
        })
    }
}
