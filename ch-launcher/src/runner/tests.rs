//! The runner against an in-test backend that reports events the way a
//! hypervisor driver does.

use super::*;
use domain_model::fixtures;
use std::path::Path;
use std::sync::Mutex;

const T: Duration = Duration::from_secs(5);

fn domain(grace: Duration, start_paused: bool) -> Domain {
    Domain {
        start_paused,
        ..fixtures::domain().with_grace_period(grace)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Call {
    Boot,
    Pause,
    Resume,
    Reboot,
    PowerButton,
    Destroy,
    Close,
}

/// What a stop makes of a guest that does not power off in time.
const POWER_BUTTON_THEN_DESTROY: [Call; 3] = [Call::Boot, Call::PowerButton, Call::Destroy];

/// Behaves like a hypervisor driver: operations report their effect as
/// events; the channel closes once the "hypervisor" is gone.
struct FakeBackend {
    calls: Arc<Mutex<Vec<Call>>>,
    /// What `console` reports (the test moves it for a "reboot").
    console: Arc<Mutex<ConsoleSource>>,
    events: Arc<Mutex<Option<mpsc::UnboundedSender<Event>>>>,
    /// Whether the guest powers off on the ACPI power button.
    honors_acpi: bool,
    fail_boot: bool,
    /// A stuck hypervisor: the power button request never gets an answer.
    hang_power_button: bool,
}

impl FakeBackend {
    fn emit(&self, event: Event) {
        if let Some(tx) = self.events.lock().unwrap().as_ref() {
            let _ = tx.send(event);
        }
    }
    fn hypervisor_exits(&self) {
        self.events.lock().unwrap().take();
    }
    fn record(&self, call: Call) {
        self.calls.lock().unwrap().push(call);
    }
}

fn refused(operation: &'static str) -> BackendError {
    BackendError::Refused {
        operation,
        chain: vec!["Error from API".into(), "VM is not running".into()],
    }
}

impl Backend for FakeBackend {
    async fn boot(&self) -> Result<(), BackendError> {
        self.record(Call::Boot);
        if self.fail_boot {
            return Err(refused("vm.boot"));
        }
        self.emit(Event::Booted);
        Ok(())
    }
    async fn pause(&self) -> Result<(), BackendError> {
        self.record(Call::Pause);
        self.emit(Event::Paused);
        Ok(())
    }
    async fn resume(&self) -> Result<(), BackendError> {
        self.record(Call::Resume);
        self.emit(Event::Resumed);
        Ok(())
    }
    async fn reboot(&self) -> Result<(), BackendError> {
        self.record(Call::Reboot);
        self.emit(Event::Rebooting);
        self.emit(Event::Rebooted);
        Ok(())
    }
    async fn power_button(&self) -> Result<(), BackendError> {
        self.record(Call::PowerButton);
        if self.hang_power_button {
            std::future::pending::<()>().await;
        }
        if self.honors_acpi {
            self.emit(Event::ShuttingDown);
            self.emit(Event::GuestPoweredOff);
            self.hypervisor_exits();
        }
        Ok(())
    }
    async fn destroy(&self) -> Result<(), BackendError> {
        self.record(Call::Destroy);
        self.emit(Event::Destroyed);
        self.hypervisor_exits();
        Ok(())
    }
    async fn console(&self) -> Result<ConsoleSource, BackendError> {
        Ok(self.console.lock().unwrap().clone())
    }
    async fn close(&self) {
        self.record(Call::Close);
    }
}

/// What the test keeps to drive the fake from outside (the guest, the
/// hypervisor process).
#[derive(Clone)]
struct Handle {
    calls: Arc<Mutex<Vec<Call>>>,
    console: Arc<Mutex<ConsoleSource>>,
    events: Arc<Mutex<Option<mpsc::UnboundedSender<Event>>>>,
}

impl Handle {
    /// The VM operations, in order (without the final close).
    fn calls(&self) -> Vec<Call> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .copied()
            .filter(|c| *c != Call::Close)
            .collect()
    }
    /// How often the runner closed the backend.
    fn closes(&self) -> usize {
        let calls = self.calls.lock().unwrap();
        calls.iter().filter(|c| **c == Call::Close).count()
    }
    fn emit(&self, event: Event) {
        if let Some(tx) = self.events.lock().unwrap().as_ref() {
            let _ = tx.send(event);
        }
    }
    fn hypervisor_exits(&self) {
        self.events.lock().unwrap().take();
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    opts: RunOptions,
    fake: Option<FakeBackend>,
    events_rx: Option<mpsc::UnboundedReceiver<Event>>,
    handle: Handle,
    pty: Option<(nix::pty::OpenptyResult, PathBuf)>,
    /// The "hypervisor's" serial socket (Cloud Hypervisor's `Socket` mode).
    serial_socket: Option<(tokio::net::UnixListener, PathBuf)>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let paths = VmPaths::new(&dir.path().join("private"), "uid-1");
    let mut opts = RunOptions::new(paths);
    opts.exit_wait = Duration::from_millis(300);
    opts.destroy_wait = Duration::from_secs(2);
    let (tx, rx) = mpsc::unbounded_channel();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let events = Arc::new(Mutex::new(Some(tx)));
    let console = Arc::new(Mutex::new(ConsoleSource::None));
    Setup {
        events_rx: Some(rx),
        _dir: dir,
        opts,
        fake: Some(FakeBackend {
            calls: calls.clone(),
            console: console.clone(),
            events: events.clone(),
            honors_acpi: false,
            fail_boot: false,
            hang_power_button: false,
        }),
        handle: Handle {
            calls,
            events,
            console,
        },
        pty: None,
        serial_socket: None,
    }
}

impl Setup {
    fn with_pty(mut self) -> Self {
        let pty = nix::pty::openpty(None, None).unwrap();
        let path = nix::unistd::ttyname(&pty.slave).unwrap();
        self.pty = Some((pty, path));
        self
    }

    /// Must be called inside the tokio runtime.
    fn with_serial_socket(mut self) -> Self {
        std::fs::create_dir_all(&self.opts.paths.dir).unwrap();
        let path = self.opts.paths.ch_serial_socket();
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        self.serial_socket = Some((listener, path));
        self
    }

    fn runner(&self, grace: Duration, start_paused: bool) -> Runner {
        Runner::new(domain(grace, start_paused), self.opts.clone())
    }

    /// The `create` step handing the runner this setup's fake backend.
    fn create(
        &mut self,
    ) -> impl FnOnce(Domain, VmPaths) -> std::future::Ready<Result<Created<FakeBackend>, BackendError>>
    {
        let fake = self.fake.take().expect("one run per setup");
        let events = self.events_rx.take().expect("event receiver");
        let console = match (&self.pty, &self.serial_socket) {
            (Some((_, path)), _) => ConsoleSource::Pty(path.clone()),
            (None, Some((_, path))) => ConsoleSource::UnixSocket(path.clone()),
            (None, None) => ConsoleSource::ServedByHypervisor,
        };
        *self.handle.console.lock().unwrap() = console.clone();
        move |_domain, paths| {
            assert!(paths.dir.is_dir(), "the VM directory exists before create");
            std::future::ready(Ok(Created {
                backend: fake,
                events,
                console,
            }))
        }
    }
}

async fn wait_state(rx: &mut watch::Receiver<Status>, state: State, reason: Reason) -> Status {
    let reached = tokio::time::timeout(T, rx.wait_for(|s| s.state == state && s.reason == reason))
        .await
        .map(|r| r.expect("runner gone").clone());
    reached.unwrap_or_else(|_| panic!("never reached {state:?}/{reason:?}; now {:?}", rx.borrow()))
}

/// A run spawned on the runtime, with what the test drives and watches it by.
struct Started {
    status: watch::Receiver<Status>,
    stopper: Stopper,
    handle: Handle,
    run: tokio::task::JoinHandle<Result<Outcome, RunError>>,
}

impl Setup {
    /// Spawns the run on this setup's fake backend and waits until the guest
    /// booted.
    async fn boot(&mut self, grace: Duration) -> Started {
        let mut started = self.spawn(grace, false);
        wait_state(&mut started.status, State::Running, Reason::Booted).await;
        started
    }

    /// Spawns the run on this setup's fake backend.
    fn spawn(&mut self, grace: Duration, start_paused: bool) -> Started {
        let runner = self.runner(grace, start_paused);
        let status = runner.status();
        let stopper = runner.stopper();
        let create = self.create();
        Started {
            status,
            stopper,
            handle: self.handle.clone(),
            run: tokio::spawn(runner.run(create)),
        }
    }
}

impl Started {
    /// The "hypervisor" reports `last` (if anything) and exits; returns how
    /// the run ended.
    async fn hypervisor_exits(&mut self, last: Option<Event>) -> Outcome {
        if let Some(event) = last {
            self.handle.emit(event);
        }
        self.handle.hypervisor_exits();
        finish(&mut self.run).await
    }

    /// Stops the run the quick way (the second `signal` destroys at once)
    /// and returns how it ended.
    async fn force_stop(&mut self, signal: &'static str) -> Outcome {
        self.stopper.request(StopRequest::Signal(signal));
        self.stopper.request(StopRequest::Signal(signal));
        finish(&mut self.run).await
    }
}

/// Sends `command` on the control socket, which must answer in time; returns
/// the status it answers with.
async fn ask(control: &Path, command: Command) -> serde_json::Value {
    control::request(control, command, T).await.unwrap()
}

/// Runs `runner` with a `create` step that fails with `cause`; returns the
/// run's error.
async fn failed_create(runner: Runner, cause: &'static str) -> RunError {
    runner
        .run(move |_d: Domain, _p: VmPaths| async move {
            Err::<Created<FakeBackend>, _>(BackendError::Host(cause.into()))
        })
        .await
        .unwrap_err()
}

/// The outcome of a spawned run, which must end within `T`.
async fn finish(
    run: impl std::future::Future<Output = Result<Result<Outcome, RunError>, tokio::task::JoinError>>,
) -> Outcome {
    tokio::time::timeout(T, run)
        .await
        .expect("the run did not end in time")
        .expect("the run panicked")
        .expect("the run failed")
}

#[tokio::test]
async fn guest_poweroff_ends_shutoff_shutdown_and_succeeds() {
    let mut s = setup();
    let mut vm = s.boot(Duration::from_secs(30)).await;
    let outcome = vm.hypervisor_exits(Some(Event::GuestPoweredOff)).await;
    assert_eq!(outcome.status.state, State::Shutoff);
    assert_eq!(outcome.status.reason, Reason::Shutdown);
    assert!(outcome.succeeded());
    assert_eq!(vm.handle.calls(), vec![Call::Boot]);
}

#[tokio::test]
async fn stop_with_a_guest_ignoring_acpi_destroys_after_the_grace_period() {
    let mut s = setup();
    let grace = Duration::from_millis(300);
    let mut vm = s.boot(grace).await;
    let asked = Instant::now();
    vm.stopper.request(StopRequest::Signal("SIGTERM"));
    // While the guest is asked to power off, status says so.
    wait_state(&mut vm.status, State::Shutdown, Reason::User).await;
    let outcome = finish(vm.run).await;
    assert!(
        asked.elapsed() >= grace,
        "destroyed before the grace period"
    );
    assert_eq!(
        (outcome.status.state, outcome.status.reason),
        (State::Shutoff, Reason::Destroyed)
    );
    assert!(outcome.stop_requested);
    assert!(
        outcome.succeeded(),
        "a requested stop that completed is a success"
    );
    assert_eq!(vm.handle.calls(), POWER_BUTTON_THEN_DESTROY);
}

#[tokio::test]
async fn stop_with_a_cooperative_guest_needs_no_destroy() {
    let mut s = setup();
    s.fake.as_mut().unwrap().honors_acpi = true;
    let vm = s.boot(Duration::from_secs(30)).await;
    vm.stopper.request(StopRequest::Signal("SIGINT"));
    let outcome = finish(vm.run).await;
    assert_eq!(
        (outcome.status.state, outcome.status.reason),
        (State::Shutoff, Reason::Shutdown)
    );
    assert!(outcome.succeeded());
    assert_eq!(vm.handle.calls(), vec![Call::Boot, Call::PowerButton]);
}

#[tokio::test]
async fn second_signal_destroys_without_waiting_for_the_grace_period() {
    let mut s = setup();
    let vm = s.boot(Duration::from_secs(600)).await;
    vm.stopper.request(StopRequest::Signal("SIGTERM"));
    vm.stopper.request(StopRequest::Signal("SIGINT"));
    let outcome = finish(vm.run).await;
    assert_eq!(outcome.status.reason, Reason::Destroyed);
    assert_eq!(vm.handle.calls(), POWER_BUTTON_THEN_DESTROY);
}

#[tokio::test]
async fn hypervisor_death_is_a_crash_and_a_failure() {
    let mut s = setup();
    let mut vm = s.boot(Duration::from_secs(30)).await;
    let outcome = vm
        .hypervisor_exits(Some(Event::HypervisorDied {
            detail: "killed by signal 9".into(),
        }))
        .await;
    assert_eq!(outcome.status.state, State::Crashed);
    assert_eq!(
        outcome.status.message.as_deref(),
        Some("killed by signal 9")
    );
    assert!(!outcome.succeeded());
    assert_eq!(
        vm.handle.calls(),
        vec![Call::Boot],
        "nothing left to destroy"
    );
}

#[tokio::test]
async fn event_stream_ending_without_a_final_state_counts_as_a_crash() {
    let mut s = setup();
    let mut vm = s.boot(Duration::from_secs(30)).await;
    let outcome = vm.hypervisor_exits(None).await;
    assert_eq!(outcome.status.state, State::Crashed);
    assert!(!outcome.succeeded());
}

#[tokio::test]
async fn destroy_nobody_requested_is_a_failure() {
    let mut s = setup();
    let mut vm = s.boot(Duration::from_secs(30)).await;
    let outcome = vm.hypervisor_exits(Some(Event::Destroyed)).await;
    assert_eq!(outcome.status.reason, Reason::Destroyed);
    assert!(!outcome.succeeded());
}

#[tokio::test]
async fn hypervisor_lingering_after_the_final_state_is_destroyed() {
    let mut s = setup();
    let vm = s.boot(Duration::from_secs(30)).await;
    // The guest powered off but the hypervisor process does not exit.
    vm.handle.emit(Event::GuestPoweredOff);
    let outcome = finish(vm.run).await;
    assert_eq!(
        (outcome.status.state, outcome.status.reason),
        (State::Shutoff, Reason::Shutdown),
        "the final state stays what the guest did"
    );
    assert!(outcome.succeeded());
    assert_eq!(vm.handle.calls(), vec![Call::Boot, Call::Destroy]);
}

#[tokio::test]
async fn boot_failure_is_an_error_and_destroys_the_created_vm() {
    let mut s = setup();
    s.fake.as_mut().unwrap().fail_boot = true;
    let runner = s.runner(Duration::from_secs(30), false);
    let create = s.create();
    let handle = s.handle.clone();
    let control = s.opts.paths.control_socket();
    let status = runner.status();
    let err = tokio::time::timeout(T, runner.run(create))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, RunError::Boot(_)), "{err}");
    assert!(err.to_string().contains("VM is not running"), "{err}");
    // A failed boot is a failure, not a destroy, and says why.
    let last = status.borrow().clone();
    assert_eq!((last.state, last.reason), (State::Shutoff, Reason::Failed));
    assert!(
        last.message
            .as_deref()
            .unwrap_or("")
            .contains("VM is not running"),
        "{last:?}"
    );
    assert_eq!(handle.calls(), vec![Call::Boot, Call::Destroy]);
    assert!(!control.exists(), "control socket removed");
}

#[tokio::test]
async fn create_failure_is_reported_with_its_cause() {
    let s = setup();
    let runner = s.runner(Duration::from_secs(30), false);
    let err = failed_create(runner, "cloud-hypervisor: No such file or directory").await;
    assert!(matches!(err, RunError::Create(_)));
    assert!(err.to_string().contains("No such file"), "{err}");
}

#[tokio::test]
async fn control_pause_and_resume_reach_paused_user_then_running() {
    let mut s = setup();
    let mut vm = s.boot(Duration::from_secs(30)).await;
    let control = s.opts.paths.control_socket();

    let st = ask(&control, Command::Pause).await;
    assert_eq!(
        (&st["state"], &st["reason"]),
        (&"Paused".into(), &"User".into())
    );
    let st = ask(&control, Command::Status).await;
    assert_eq!(st["state"], "Paused");
    let st = ask(&control, Command::Resume).await;
    assert_eq!(
        (&st["state"], &st["reason"]),
        (&"Running".into(), &"Unpaused".into())
    );
    let st = ask(&control, Command::Reboot).await;
    assert_eq!(st["state"], "Running");

    vm.force_stop("SIGINT").await;
    assert_eq!(
        vm.handle.calls()[..4],
        [Call::Boot, Call::Pause, Call::Resume, Call::Reboot]
    );
}

#[tokio::test]
async fn control_stop_is_the_graceful_stop() {
    let mut s = setup();
    s.fake.as_mut().unwrap().honors_acpi = true;
    let vm = s.boot(Duration::from_secs(30)).await;
    let control = s.opts.paths.control_socket();

    ask(&control, Command::Stop).await;
    let outcome = finish(vm.run).await;
    assert!(outcome.stop_requested);
    assert_eq!(outcome.status.reason, Reason::Shutdown);
    assert_eq!(vm.handle.calls(), vec![Call::Boot, Call::PowerButton]);
}

#[tokio::test]
async fn start_paused_stays_starting_up_until_resume_boots_it() {
    let mut s = setup();
    let mut vm = s.spawn(Duration::from_secs(30), true);
    let control = s.opts.paths.control_socket();

    wait_state(&mut vm.status, State::Paused, Reason::StartingUp).await;
    let st = ask(&control, Command::Status).await;
    assert_eq!(st["reason"], "StartingUp");
    assert!(vm.handle.calls().is_empty(), "nothing booted yet");

    let st = ask(&control, Command::Resume).await;
    assert_eq!(
        (&st["state"], &st["reason"]),
        (&"Running".into(), &"Booted".into())
    );
    assert_eq!(vm.handle.calls(), vec![Call::Boot]);

    vm.stopper.request(StopRequest::Control);
    vm.stopper.request(StopRequest::Signal("SIGTERM"));
    finish(vm.run).await;
}

#[tokio::test]
async fn vm_dir_is_private_and_sockets_are_gone_after_the_run() {
    use std::os::unix::fs::PermissionsExt;
    let mut s = setup().with_pty();
    let mut vm = s.boot(Duration::from_secs(30)).await;
    let paths = s.opts.paths.clone();

    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&paths.dir), 0o700);
    assert_eq!(
        mode(&paths.lock_file()) & 0o077,
        0,
        "the lock file is private"
    );
    assert_eq!(mode(&paths.serial_socket()), 0o600);
    assert_eq!(mode(&paths.control_socket()), 0o600);

    // The guest prints; the "hypervisor" then exits and closes its PTY.
    let (pty, _) = s.pty.take().unwrap();
    nix::unistd::write(&pty.master, b"TINY-GUEST-UP\r\n").unwrap();
    vm.handle.emit(Event::GuestPoweredOff);
    let deadline = Instant::now() + T;
    while !std::fs::read_to_string(paths.serial_log())
        .unwrap_or_default()
        .contains("TINY-GUEST-UP")
    {
        assert!(Instant::now() < deadline, "banner never logged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(pty);
    vm.hypervisor_exits(None).await;

    assert!(!paths.serial_socket().exists());
    assert!(!paths.control_socket().exists());
    assert_eq!(
        std::fs::read_to_string(paths.serial_log()).unwrap(),
        "TINY-GUEST-UP\r\n"
    );
}

#[tokio::test]
async fn a_second_launcher_for_the_same_vm_is_refused() {
    let mut s = setup();
    let mut vm = s.boot(Duration::from_secs(30)).await;
    let opts = s.opts.clone();

    let second = Runner::new(domain(Duration::from_secs(1), false), opts);
    let err = failed_create(second, "must not be called").await;
    assert!(
        matches!(err, RunError::AlreadyRunning { pid: Some(pid), .. } if pid == std::process::id()),
        "{err}"
    );
    assert!(
        err.to_string().contains(&format!(
            "another ch-launcher (pid {}) runs this VM",
            std::process::id()
        )),
        "{err}"
    );

    vm.force_stop("SIGTERM").await;
}

#[tokio::test]
async fn console_follows_the_new_pty_after_a_reboot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = setup().with_pty();
    let mut vm = s.boot(Duration::from_secs(30)).await;
    let paths = s.opts.paths.clone();

    let mut client = tokio::net::UnixStream::connect(paths.serial_socket())
        .await
        .unwrap();
    // The "hypervisor" reboots: old PTY closed, a new one in its place.
    let (old, _) = s.pty.take().unwrap();
    drop(old);
    let new = nix::pty::openpty(None, None).unwrap();
    // Like Cloud Hypervisor, make the new PTY raw at once, so bytes written
    // before the launcher reopens it are not cooked by the line discipline.
    let mut raw = nix::sys::termios::tcgetattr(&new.slave).unwrap();
    nix::sys::termios::cfmakeraw(&mut raw);
    nix::sys::termios::tcsetattr(&new.slave, nix::sys::termios::SetArg::TCSANOW, &raw).unwrap();
    *vm.handle.console.lock().unwrap() =
        ConsoleSource::Pty(nix::unistd::ttyname(&new.slave).unwrap());
    vm.handle.emit(Event::Rebooting);
    vm.handle.emit(Event::Rebooted);

    nix::unistd::write(&new.master, b"TINY-GUEST-UP\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    tokio::time::timeout(T, async {
        while !got.ends_with(b"TINY-GUEST-UP\r\n") {
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "console closed across the reboot");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no output from the new PTY");
    client.write_all(b"e").await.unwrap();
    let mut echo = [0u8; 1];
    let master = std::fs::File::from(new.master);
    tokio::task::spawn_blocking(move || {
        std::io::Read::read_exact(&mut &master, &mut echo).map(|()| echo)
    })
    .await
    .unwrap()
    .map(|b| assert_eq!(&b, b"e"))
    .unwrap();

    vm.force_stop("SIGTERM").await;
}

#[tokio::test]
async fn stop_requested_during_create_never_boots_the_vm() {
    let mut s = setup();
    let runner = s.runner(Duration::from_secs(30), false);
    let stopper = runner.stopper();
    let create = s.create();
    let handle = s.handle.clone();
    stopper.request(StopRequest::Signal("SIGTERM"));
    let outcome = tokio::time::timeout(T, runner.run(create))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(handle.calls(), vec![Call::Destroy]);
    assert_eq!(outcome.status.reason, Reason::Destroyed);
    assert!(outcome.succeeded());
}

#[tokio::test]
async fn socket_console_keeps_every_byte_across_a_reboot_and_up_to_the_power_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = setup().with_serial_socket();
    let runner = s.runner(Duration::from_secs(30), false);
    let mut status = runner.status();
    let create = s.create();
    let handle = s.handle.clone();
    let paths = s.opts.paths.clone();
    let (listener, serial_path) = s.serial_socket.take().unwrap();
    let run = tokio::spawn(runner.run(create));

    // The launcher connects to the "hypervisor's" serial socket before boot.
    let (mut first, _) = tokio::time::timeout(T, listener.accept())
        .await
        .expect("the launcher never connected to the serial socket")
        .unwrap();
    wait_state(&mut status, State::Running, Reason::Booted).await;
    let mut client = tokio::net::UnixStream::connect(paths.serial_socket())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    first.write_all(b"TINY-GUEST-UP\r\nr").await.unwrap();

    // A reboot, as Cloud Hypervisor does it: the connection closes, the
    // socket is bound again at the same path, then `vm:rebooted`.
    drop(first);
    drop(listener);
    std::fs::remove_file(&serial_path).unwrap();
    let listener = tokio::net::UnixListener::bind(&serial_path).unwrap();
    handle.emit(Event::Rebooting);
    handle.emit(Event::Rebooted);
    let (mut second, _) = tokio::time::timeout(T, listener.accept())
        .await
        .expect("the launcher never reconnected after the reboot")
        .unwrap();
    second.write_all(b"TINY-GUEST-UP\r\n").await.unwrap();
    client.write_all(b"q").await.unwrap();
    let mut key = [0u8; 1];
    tokio::time::timeout(T, second.read_exact(&mut key))
        .await
        .expect("input never reached the new serial connection")
        .unwrap();
    assert_eq!(&key, b"q");

    // Power-off: the last bytes, the connection closed, the VMM gone, all at once.
    second.write_all(b"q-bye").await.unwrap();
    drop(second);
    handle.emit(Event::GuestPoweredOff);
    handle.hypervisor_exits();
    let outcome = finish(run).await;
    assert!(outcome.succeeded());

    let expected = "TINY-GUEST-UP\r\nrTINY-GUEST-UP\r\nq-bye";
    assert_eq!(
        std::fs::read_to_string(paths.serial_log()).unwrap(),
        expected
    );
    let mut sent = Vec::new();
    tokio::time::timeout(T, client.read_to_end(&mut sent))
        .await
        .expect("the console client was not closed after the run")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&sent), expected);
}

#[tokio::test]
async fn two_launchers_started_together_create_the_vm_once() {
    let s = setup();
    let created = Arc::new(Mutex::new(0u32));
    let start = |created: Arc<Mutex<u32>>| {
        Runner::new(domain(Duration::from_secs(1), false), s.opts.clone()).run(
            move |_d: Domain, _p: VmPaths| async move {
                *created.lock().unwrap() += 1;
                // Creating takes a while; a second launcher must not slip in.
                tokio::time::sleep(Duration::from_millis(300)).await;
                Err::<Created<FakeBackend>, _>(BackendError::Host("created; stopping here".into()))
            },
        )
    };
    let (a, b) = tokio::time::timeout(T, async {
        tokio::join!(start(created.clone()), start(created.clone()))
    })
    .await
    .unwrap();
    let errors = [a.unwrap_err(), b.unwrap_err()];
    assert_eq!(*created.lock().unwrap(), 1, "{errors:?}");
    assert_eq!(
        errors
            .iter()
            .filter(|e| matches!(e, RunError::AlreadyRunning { .. }))
            .count(),
        1,
        "{errors:?}"
    );
    // The lock went with the launcher that held it: a later run may start.
    let err = failed_create(
        Runner::new(domain(Duration::from_secs(1), false), s.opts.clone()),
        "created again",
    )
    .await;
    assert!(matches!(err, RunError::Create(_)), "{err}");
}

#[tokio::test]
async fn a_hung_power_button_does_not_block_the_second_signal() {
    let mut s = setup();
    s.fake.as_mut().unwrap().hang_power_button = true;
    let vm = s.boot(Duration::from_secs(600)).await;
    vm.stopper.request(StopRequest::Signal("SIGTERM"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    vm.stopper.request(StopRequest::Signal("SIGTERM"));
    let outcome = tokio::time::timeout(T, vm.run)
        .await
        .expect("the runner is stuck on the power button")
        .unwrap()
        .unwrap();
    assert_eq!(
        (outcome.status.state, outcome.status.reason),
        (State::Shutoff, Reason::Destroyed)
    );
    assert_eq!(vm.handle.calls(), POWER_BUTTON_THEN_DESTROY);
}

#[tokio::test]
async fn a_hung_power_button_still_destroys_after_the_grace_period() {
    let mut s = setup();
    s.fake.as_mut().unwrap().hang_power_button = true;
    let grace = Duration::from_millis(300);
    let vm = s.boot(grace).await;
    let asked = Instant::now();
    vm.stopper.request(StopRequest::Signal("SIGTERM"));
    let outcome = tokio::time::timeout(T, vm.run)
        .await
        .expect("the runner is stuck on the power button")
        .unwrap()
        .unwrap();
    assert!(asked.elapsed() >= grace);
    assert_eq!(outcome.status.reason, Reason::Destroyed);
    assert!(outcome.succeeded());
    assert_eq!(vm.handle.calls(), POWER_BUTTON_THEN_DESTROY);
}

#[tokio::test]
async fn a_console_mode_for_the_group_makes_the_vm_dir_searchable_for_it() {
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(vm_dir_mode(0o600), 0o700);
    assert_eq!(vm_dir_mode(0o660), 0o710);
    assert_eq!(vm_dir_mode(0o606), 0o701);
    assert_eq!(vm_dir_mode(0o666), 0o711);

    let mut s = setup();
    s.opts.console_mode = 0o660;
    let runner = s.runner(Duration::from_secs(30), false);
    let paths = s.opts.paths.clone();
    let err = failed_create(runner, "created; stopping here").await;
    assert!(matches!(err, RunError::Create(_)), "{err}");
    let mode = std::fs::metadata(&paths.dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o710, "group may search (not list) the VM directory");
}

#[tokio::test]
async fn the_backend_is_closed_once_on_a_normal_end_and_after_a_failed_boot() {
    let mut s = setup();
    let vm = s.boot(Duration::from_secs(30)).await;
    vm.handle.emit(Event::GuestPoweredOff);
    vm.handle.hypervisor_exits();
    let handle = vm.handle.clone();
    let outcome = tokio::time::timeout(T, vm.run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(outcome.succeeded());
    assert_eq!(handle.closes(), 1);

    let mut s = setup();
    s.fake.as_mut().unwrap().fail_boot = true;
    let runner = s.runner(Duration::from_secs(30), false);
    let create = s.create();
    let handle = s.handle.clone();
    let err = tokio::time::timeout(T, runner.run(create))
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, RunError::Boot(_)), "{err}");
    assert_eq!(handle.closes(), 1);
}

#[test]
fn a_second_launcher_for_the_same_vm_leaves_the_directory_mode_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let paths = VmPaths::new(dir.path(), "uid-1");
    let _first = prepare_vm_dir(&paths, 0o600).expect("the first launcher takes the VM");
    let mode = || std::fs::metadata(&paths.dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(), 0o700);
    // Asks for a group-readable console: it would widen the directory.
    assert!(prepare_vm_dir(&paths, 0o666).is_err(), "the VM is taken");
    assert_eq!(
        mode(),
        0o700,
        "the refused launcher changed the running VM's directory"
    );
}

#[tokio::test]
async fn a_private_dir_too_deep_for_socket_paths_is_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("d".repeat(100));
    let opts = RunOptions::new(VmPaths::new(&deep, "uid-1"));
    let err = failed_create(
        Runner::new(domain(Duration::from_secs(1), false), opts),
        "must not be called",
    )
    .await;
    assert!(matches!(err, RunError::SocketPath(_)), "{err}");
    assert!(err.to_string().contains("--private-dir"), "{err}");
    assert!(!deep.exists(), "nothing was created");
}

#[tokio::test]
async fn early_console_and_control_socket_are_bound_while_the_hypervisor_starts() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = setup().with_serial_socket();
    s.opts.early_console = true;
    let runner = s.runner(Duration::from_secs(30), false);
    let mut status = runner.status();
    let create = s.create();
    let handle = s.handle.clone();
    let paths = s.opts.paths.clone();
    let (listener, _) = s.serial_socket.take().unwrap();
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(runner.run(move |domain, vm_paths| async move {
        // The "hypervisor" is still starting until the test says so.
        let _ = started.await;
        create(domain, vm_paths).await
    }));

    tokio::time::timeout(T, async {
        while !(paths.serial_socket().exists() && paths.control_socket().exists()) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("virt-serial0 and the control socket were not bound while the VM was created");
    let mut client = tokio::net::UnixStream::connect(paths.serial_socket())
        .await
        .unwrap();
    assert_eq!(status.borrow().state, State::NoState);

    started_tx.send(()).unwrap();
    let (mut guest, _) = tokio::time::timeout(T, listener.accept())
        .await
        .expect("the launcher never connected to the serial socket")
        .unwrap();
    wait_state(&mut status, State::Running, Reason::Booted).await;
    guest.write_all(b"TINY-GUEST-UP\r\n").await.unwrap();
    drop(guest);
    handle.emit(Event::GuestPoweredOff);
    handle.hypervisor_exits();
    let outcome = finish(run).await;
    assert!(outcome.succeeded());

    assert_eq!(
        std::fs::read_to_string(paths.serial_log()).unwrap(),
        "TINY-GUEST-UP\r\n"
    );
    let mut sent = Vec::new();
    tokio::time::timeout(T, client.read_to_end(&mut sent))
        .await
        .expect("the console client was not closed after the run")
        .unwrap();
    assert_eq!(sent, b"TINY-GUEST-UP\r\n");
    assert!(!paths.serial_socket().exists());
    assert!(!paths.control_socket().exists());
}

#[tokio::test]
async fn disk_or_create_images_exist_before_any_backend_creates_the_vm() {
    let s = setup();
    let image = s.opts.paths.dir.with_file_name("created.img");
    let mut domain = domain(Duration::from_secs(30), false);
    let mut disk = fixtures::disk(0, "data", &image);
    disk.source.create_with_capacity = Some(1 << 20);
    domain.disks.push(disk);
    let seen = image.clone();
    let err = Runner::new(domain, s.opts.clone())
        .run(move |_d: Domain, _p: VmPaths| async move {
            let size = std::fs::metadata(&seen).map(|m| m.len()).ok();
            Err::<Created<FakeBackend>, _>(BackendError::Host(format!(
                "create saw the image with size {size:?}"
            )))
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Some(1048576)"), "{err}");
}

#[tokio::test]
async fn a_change_past_the_limits_is_refused_without_asking_the_backend() {
    let mut s = setup();
    let mut vm = s.boot(Duration::from_secs(30)).await;
    let control = s.opts.paths.control_socket();

    // The fixture VM has no maxSockets above sockets and no maxGuest.
    let err = control::request(
        &control,
        Command::Resize {
            sockets: Some(8),
            memory: None,
        },
        T,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("maxSockets"), "{err}");
    let err = control::request(
        &control,
        Command::DetachDisk {
            name: "nope".into(),
        },
        T,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("no disk named"), "{err}");
    // Within the limits the backend is asked; this one has no hotplug and
    // says so.
    let image = tempfile::NamedTempFile::new().unwrap();
    let err = control::request(
        &control,
        Command::AttachDisk {
            name: "data".into(),
            path: image.path().to_path_buf(),
            readonly: false,
        },
        T,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("attach-disk is not supported by this backend"),
        "{err}"
    );
    let st = ask(&control, Command::Status).await;
    assert_eq!(
        st["resources"]["disks"].as_array().map(Vec::len),
        Some(0),
        "{st}"
    );

    vm.force_stop("SIGINT").await;
    assert_eq!(vm.handle.calls()[..1], [Call::Boot]);
}
