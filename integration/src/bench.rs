//! Measurement pieces for the benchmarks in `examples/`: run a command to its
//! end and take its wall time and peak memory, run two contenders in
//! alternating order, and summarise the samples.
//!
//! Peak memory needs care when the measured process has children of its own
//! (`ch-launcher` starts `cloud-hypervisor`). `ru_maxrss` as `wait4` returns
//! it is the kernel's `RUSAGE_BOTH` figure: the larger of the process's own
//! peak and the peak of every descendant it reaped. So a launcher that reaps
//! a bigger VMM would report the VMM's figure. [`measure`] can therefore also
//! read the process's own high-water mark (`VmHWM`) at the moment it exits:
//! it stops the process at `PTRACE_EVENT_EXIT`, when its memory still exists
//! and it has no further work to do, reads `/proc/<pid>/status` and
//! `smaps_rollup`, and lets it go. The time it is held there is left out of
//! the wall time.
//!
//! Runs that follow each other back to back are phase-locked to the kernel's
//! timer tick when the measured work ends on a tick-driven wait (tearing
//! down a KVM VM waits for RCU grace periods, which the tick drives): each run
//! then starts a fixed time after a tick, and wall times come in whole ticks
//! (4 ms steps at `CONFIG_HZ=250`). A fixed overhead then shows up as zero or
//! as a whole tick, depending on where it lands. [`Dither`] starts each run
//! at a random phase instead, as starts in real use are.

use std::fs::File;
use std::io;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The release `ch-launcher` a benchmark measures: `$CH_LAUNCHER_BIN`, else
/// `target/release/ch-launcher`. It must be built already: unlike
/// [`crate::launcher_path`], a benchmark never builds what it measures, nor
/// measures a debug build by accident.
pub fn release_launcher() -> Result<PathBuf, String> {
    let launcher = std::env::var_os(crate::LAUNCHER_BIN_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/release/ch-launcher")
        });
    if !launcher.is_file() {
        return Err(format!(
            "{} not found: cargo build --release -p ch-launcher (or set {})",
            launcher.display(),
            crate::LAUNCHER_BIN_ENV
        ));
    }
    Ok(launcher)
}

/// What to measure besides wall time and `ru_maxrss`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MeasureOptions {
    /// Read the process's own peak memory when it exits (ptrace exit stop).
    pub own_peak_at_exit: bool,
    /// Sample `smaps_rollup` at this interval for peak PSS and private memory,
    /// which have no high-water mark of their own.
    pub sample_every: Option<Duration>,
}

/// One run of a command to its end.
#[derive(Debug, Clone)]
pub struct Measured {
    /// From spawn to reaping, minus the time held at the exit stop.
    pub wall: Duration,
    pub status: ExitStatus,
    /// `ru_maxrss` from `wait4`, in KiB: the larger of the process's own peak
    /// and that of each descendant it reaped.
    pub rusage_maxrss_kib: u64,
    /// The process's own memory as it exited, when asked for and the kernel
    /// allowed tracing.
    pub at_exit: Option<Memory>,
    /// Peaks of the sampled `smaps_rollup` figures, when sampling was asked for.
    pub sampled_peak: Option<Memory>,
}

impl Measured {
    /// The process's own peak RSS in KiB: its `VmHWM` at exit when known,
    /// else `ru_maxrss` (which may be a reaped child's).
    pub fn own_peak_rss_kib(&self) -> u64 {
        self.at_exit
            .map(|m| m.hwm_kib)
            .filter(|&k| k > 0)
            .unwrap_or(self.rusage_maxrss_kib)
    }
}

/// Memory figures of one process, in KiB (`/proc/<pid>/status` and
/// `/proc/<pid>/smaps_rollup`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Memory {
    /// Peak resident set (`VmHWM`).
    pub hwm_kib: u64,
    /// Anonymous resident memory (`RssAnon`): the process's own data.
    pub rss_anon_kib: u64,
    /// Resident file pages (`RssFile`): mostly the binary and shared libraries.
    pub rss_file_kib: u64,
    /// Proportional set size: shared pages divided among their users.
    pub pss_kib: u64,
    /// Pages only this process maps (`Private_Clean + Private_Dirty`).
    pub private_kib: u64,
}

impl Memory {
    /// The figures of a live process; `None` once its memory is gone.
    pub fn read(pid: libc::pid_t) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
        let hwm_kib = kib_field(&status, "VmHWM:")?;
        Some(Memory {
            hwm_kib,
            rss_anon_kib: kib_field(&status, "RssAnon:").unwrap_or(0),
            rss_file_kib: kib_field(&status, "RssFile:").unwrap_or(0),
            pss_kib: kib_field(&rollup, "Pss:").unwrap_or(0),
            private_kib: kib_field(&rollup, "Private_Clean:").unwrap_or(0)
                + kib_field(&rollup, "Private_Dirty:").unwrap_or(0),
        })
    }

    /// Field by field maximum.
    pub fn max(self, other: Memory) -> Memory {
        Memory {
            hwm_kib: self.hwm_kib.max(other.hwm_kib),
            rss_anon_kib: self.rss_anon_kib.max(other.rss_anon_kib),
            rss_file_kib: self.rss_file_kib.max(other.rss_file_kib),
            pss_kib: self.pss_kib.max(other.pss_kib),
            private_kib: self.private_kib.max(other.private_kib),
        }
    }
}

/// The number after `name` on its line of a `/proc` file.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Spawns `cmd`, waits for it to end and measures it; see the module docs.
pub fn measure(cmd: &mut Command, opts: MeasureOptions) -> io::Result<Measured> {
    if opts.own_peak_at_exit {
        // SAFETY: only ptrace, which is async-signal-safe, runs between fork
        // and exec. Tracing from the first instruction leaves no window in
        // which a short-lived program could exit untraced. When the kernel
        // refuses (seccomp, Yama), the run is still measured, just without
        // the exit figures: no exec stop then arrives below.
        unsafe {
            cmd.pre_exec(|| {
                libc::ptrace(
                    libc::PTRACE_TRACEME,
                    0,
                    std::ptr::null_mut::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_void>(),
                );
                Ok(())
            });
        }
    }
    let start = Instant::now();
    let child = cmd.spawn()?;
    let pid = child.id() as libc::pid_t;

    let done = Arc::new(AtomicBool::new(false));
    let sampler = opts.sample_every.map(|every| {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut peak: Option<Memory> = None;
            while !done.load(Ordering::Relaxed) {
                if let Some(now) = Memory::read(pid) {
                    peak = Some(peak.map_or(now, |p| p.max(now)));
                }
                std::thread::sleep(every);
            }
            peak
        })
    });
    let result = reap(pid);
    done.store(true, Ordering::Relaxed);
    let sampled_peak = match sampler {
        Some(handle) => handle
            .join()
            .map_err(|_| io::Error::other("the memory sampler panicked"))?,
        None => None,
    };
    // Reaped by `reap`; dropping `child` only closes its pipes.
    drop(child);
    let reaped = result?;
    Ok(Measured {
        wall: start.elapsed().saturating_sub(reaped.held),
        status: ExitStatus::from_raw(reaped.status),
        rusage_maxrss_kib: u64::try_from(reaped.usage.ru_maxrss).unwrap_or(0),
        at_exit: reaped.at_exit,
        sampled_peak,
    })
}

struct Reaped {
    status: libc::c_int,
    usage: libc::rusage,
    at_exit: Option<Memory>,
    /// Time the process was held at its exit stop while being read.
    held: Duration,
}

/// Waits for `pid` to end, serving the stops of a traced child on the way.
fn reap(pid: libc::pid_t) -> io::Result<Reaped> {
    let mut held = Duration::ZERO;
    let mut at_exit = None;
    let mut exec_stop_seen = false;
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `pid` is our own unreaped child and the pointers are valid.
        // Reaping it here, not through `Child::wait`, is what yields its rusage.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if !libc::WIFSTOPPED(status) {
            return Ok(Reaped {
                status,
                usage,
                at_exit,
                held,
            });
        }
        // Only a traced child reports stops.
        let event = (status >> 16) & 0xffff;
        let signal = libc::WSTOPSIG(status);
        let inject = if event == libc::PTRACE_EVENT_EXIT {
            let stopped = Instant::now();
            at_exit = Memory::read(pid);
            held += stopped.elapsed();
            0
        } else if event == 0 && signal == libc::SIGTRAP && !exec_stop_seen {
            // The stop after exec: from here on, stop once more at the exit.
            exec_stop_seen = true;
            // SAFETY: PTRACE_SETOPTIONS on our stopped tracee; data holds the options.
            let rc = unsafe {
                libc::ptrace(
                    libc::PTRACE_SETOPTIONS,
                    pid,
                    std::ptr::null_mut::<libc::c_void>(),
                    libc::PTRACE_O_TRACEEXIT as usize as *mut libc::c_void,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            0
        } else {
            // A signal on its way to the process: deliver it unchanged.
            signal
        };
        // SAFETY: PTRACE_CONT on our stopped tracee; data is a signal number.
        let rc = unsafe {
            libc::ptrace(
                libc::PTRACE_CONT,
                pid,
                std::ptr::null_mut::<libc::c_void>(),
                inject as usize as *mut libc::c_void,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
}

/// A file to take a measured command's output, so that a failing run can
/// show it without the benchmark's own output getting mixed up with it.
///
/// A new file each time, not the last one truncated: on ext4, a file that
/// was truncated and then written is flushed when it is closed
/// (`auto_da_alloc`), so the measured process would start that write-back
/// in its own exit, inside the measured time (1 to 2 ms more for the
/// launcher in 40 paired runs).
pub fn output_file(path: &std::path::Path) -> io::Result<(File, File)> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let out = File::options().write(true).create_new(true).open(path)?;
    let err = out.try_clone()?;
    Ok((out, err))
}

/// Where one iteration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Iteration {
    /// Counts warm-up iterations first, from 0.
    pub index: usize,
    /// Warm-up iterations are run and reported but not kept.
    pub warmup: bool,
    /// Whether contender A ran before B in this iteration.
    pub a_first: bool,
}

/// Runs `warmup + iterations` rounds of `a` and `b`, swapping their order
/// every round so that neither always runs on a cache warmed (or a machine
/// disturbed) by the other; `report` sees every round. Returns the samples
/// of the counted rounds, in order.
pub fn alternate<A, B, E>(
    warmup: usize,
    iterations: usize,
    mut a: impl FnMut() -> Result<A, E>,
    mut b: impl FnMut() -> Result<B, E>,
    mut report: impl FnMut(Iteration, &A, &B),
) -> Result<(Vec<A>, Vec<B>), E> {
    let mut kept_a = Vec::with_capacity(iterations);
    let mut kept_b = Vec::with_capacity(iterations);
    for index in 0..warmup + iterations {
        let a_first = index % 2 == 0;
        let (sa, sb) = if a_first {
            let sa = a()?;
            (sa, b()?)
        } else {
            let sb = b()?;
            (a()?, sb)
        };
        let it = Iteration {
            index,
            warmup: index < warmup,
            a_first,
        };
        report(it, &sa, &sb);
        if !it.warmup {
            kept_a.push(sa);
            kept_b.push(sb);
        }
    }
    Ok((kept_a, kept_b))
}

/// Median of `values` (the mean of the middle two for an even count);
/// `None` when there are none.
pub fn median(values: &[Duration]) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

/// Median of plain numbers (KiB figures), as [`median`].
pub fn median_u64(values: &[u64]) -> Option<u64> {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2),
    }
}

/// A random pause before each measured run, uniform in `[0, max)`, so that
/// runs start at random phases of the kernel's timer tick (see the module
/// docs). With a `max` that is a whole number of ticks, every phase is
/// equally likely; 20 ms is one for every common `CONFIG_HZ` (100, 250,
/// 300 within 1 %, 1000).
pub struct Dither {
    max: Duration,
    // Both contenders' closures pause through a shared reference.
    rng: std::cell::RefCell<fastrand::Rng>,
}

impl Dither {
    pub fn new(max: Duration) -> Dither {
        Dither {
            max,
            rng: std::cell::RefCell::new(fastrand::Rng::new()),
        }
    }

    /// The next pause; zero when dithering is off.
    pub fn next_pause(&self) -> Duration {
        let max = u64::try_from(self.max.as_nanos()).unwrap_or(u64::MAX);
        if max == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.rng.borrow_mut().u64(0..max))
    }

    pub fn pause(&self) {
        let pause = self.next_pause();
        if !pause.is_zero() {
            std::thread::sleep(pause);
        }
    }
}

/// The `q`-quantile (0 to 1) of `values` by nearest rank; `None` when empty.
pub fn quantile(values: &[Duration], q: f64) -> Option<Duration> {
    let mut sorted = values.to_vec();
    sorted.sort();
    let last = sorted.len().checked_sub(1)?;
    let rank = (q.clamp(0.0, 1.0) * last as f64).round() as usize;
    sorted.get(rank).copied()
}

/// The arithmetic mean of `values`; `None` when empty.
pub fn mean(values: &[Duration]) -> Option<Duration> {
    let n = u32::try_from(values.len()).ok().filter(|&n| n > 0)?;
    Some(values.iter().sum::<Duration>() / n)
}

/// Milliseconds, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    /// The reason for the exit stop: `ru_maxrss` reports a reaped child's
    /// bigger peak, `VmHWM` at exit only the shell's own.
    #[test]
    fn own_peak_leaves_out_a_reaped_childs_memory_that_ru_maxrss_includes() {
        // dd fills (and so touches) one 48 MiB buffer; `exit` keeps the
        // shell from exec-ing dd in its own place.
        let m = measure(
            &mut sh("dd if=/dev/zero of=/dev/null bs=48M count=1 2>/dev/null; exit 3"),
            MeasureOptions {
                own_peak_at_exit: true,
                sample_every: None,
            },
        )
        .expect("runs");
        assert_eq!(m.status.code(), Some(3));
        assert!(
            m.rusage_maxrss_kib >= 48 * 1024,
            "ru_maxrss {} KiB should include dd's buffer",
            m.rusage_maxrss_kib
        );
        let own = m.at_exit.expect("ptrace is allowed for our own child");
        assert!(
            own.hwm_kib > 0 && own.hwm_kib < 16 * 1024,
            "the shell's own peak is {} KiB",
            own.hwm_kib
        );
        assert_eq!(m.own_peak_rss_kib(), own.hwm_kib);
    }

    #[test]
    fn signals_reach_a_traced_process_and_its_exit_is_reported() {
        let m = measure(
            &mut sh("trap 'exit 7' USR1; kill -USR1 $$; sleep 5"),
            MeasureOptions {
                own_peak_at_exit: true,
                sample_every: Some(Duration::from_millis(5)),
            },
        )
        .expect("runs");
        assert_eq!(m.status.code(), Some(7), "the trap ran, so USR1 arrived");
        assert!(m.wall < Duration::from_secs(4), "{:?}", m.wall);
        assert!(m.at_exit.is_some());
    }

    #[test]
    fn a_killed_process_reports_its_signal() {
        let m = measure(&mut sh("kill -KILL $$"), MeasureOptions::default()).expect("runs");
        assert_eq!(m.status.signal(), Some(libc::SIGKILL));
        assert!(m.at_exit.is_none() && m.sampled_peak.is_none());
    }

    #[test]
    fn alternate_swaps_the_order_every_round_and_drops_the_warmup() {
        let order = std::cell::RefCell::new(Vec::new());
        let mut n = 0;
        let (a, b) = alternate(
            2,
            3,
            || {
                order.borrow_mut().push('a');
                n += 1;
                Ok::<_, ()>(n)
            },
            || {
                order.borrow_mut().push('b');
                Ok(())
            },
            |_, _, _| {},
        )
        .expect("no errors");
        assert_eq!(order.into_inner(), "abbaabbaab".chars().collect::<Vec<_>>());
        assert_eq!(a, [3, 4, 5]);
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn dither_pauses_stay_below_their_bound_and_spread_over_it() {
        let dither = Dither::new(Duration::from_millis(20));
        let pauses: Vec<Duration> = (0..2000).map(|_| dither.next_pause()).collect();
        assert!(pauses.iter().all(|p| *p < Duration::from_millis(20)));
        // Each 4 ms slice (one tick at HZ=250) gets its share: about 400 of
        // 2000; the chance of fewer than 250 by luck is negligible.
        for slice in 0..5u64 {
            let lo = Duration::from_millis(4 * slice);
            let hi = lo + Duration::from_millis(4);
            let n = pauses.iter().filter(|p| **p >= lo && **p < hi).count();
            assert!(n > 250, "{n} pauses in [{lo:?}, {hi:?})");
        }
        assert_eq!(Dither::new(Duration::ZERO).next_pause(), Duration::ZERO);
    }

    #[test]
    fn quantiles_and_means_of_samples() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|&m| Duration::from_millis(m))
                .collect::<Vec<_>>()
        };
        let v = ms(&[40, 10, 30, 20, 50]);
        assert_eq!(quantile(&v, 0.0), Some(Duration::from_millis(10)));
        assert_eq!(quantile(&v, 0.25), Some(Duration::from_millis(20)));
        assert_eq!(quantile(&v, 0.75), Some(Duration::from_millis(40)));
        assert_eq!(quantile(&v, 1.0), Some(Duration::from_millis(50)));
        assert_eq!(mean(&v), Some(Duration::from_millis(30)));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(mean(&[]), None);
    }

    #[test]
    fn medians_of_odd_even_and_empty_samples() {
        let d = Duration::from_millis;
        assert_eq!(median(&[d(5), d(1), d(3)]), Some(d(3)));
        assert_eq!(
            median(&[d(4), d(1), d(2), d(3)]),
            Some(Duration::from_micros(2500))
        );
        assert_eq!(median(&[]), None);
        assert_eq!(median_u64(&[9, 1, 5]), Some(5));
        assert_eq!(median_u64(&[1, 2]), Some(1));
    }
}
