//! The VMM's state machine as Cloud Hypervisor implements it: one optional VM
//! config (`vm.create`), the console back ends made for it, and one optional
//! VM object (made at `vm.boot`, kept even when booting it fails, dropped at
//! shutdown). Every API action checks and errs, emits events, and changes state
//! in the same order as CH, so status codes, error chains and event sequences
//! come out as recorded.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::config::{ConsoleOutputMode, HotplugMethod, VmConfig};
use super::consoles::{self, ConsoleDevices, ConsoleError};
use super::disks::{self, OpenDisk};
use super::events::EventMonitor;
use super::log::Logger;
use super::serial::{is_halting_guest, GuestAction, SerialManager};

/// What every request gets once the VMM thread is gone.
pub fn vmm_gone() -> ApiError {
    ApiError {
        status: 500,
        chain: vec![
            "Error from API".to_string(),
            "API request send error".to_string(),
            "sending on a closed channel".to_string(),
        ],
    }
}

/// An HTTP error reply: status and the JSON array of messages, outermost first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub chain: Vec<String>,
}

/// CH's `vm::Error` as far as the stand-in can produce it.
#[derive(Debug, Clone)]
pub enum VmError {
    NotCreated,
    MissingConfig,
    AlreadyCreated,
    NotRunning,
    /// 400: below "Failed to validate config".
    ConfigValidation(Vec<String>),
    /// 500: any other chain, outermost first.
    Other(Vec<String>),
    /// CH's VMM thread panicked while handling this request; the HTTP thread
    /// lives on but no request reaches a VMM again.
    VmmDied,
}

impl VmError {
    fn status(&self) -> u16 {
        match self {
            VmError::NotCreated | VmError::MissingConfig => 404,
            VmError::ConfigValidation(_) => 400,
            _ => 500,
        }
    }

    /// The messages below the API layer's own, outermost first.
    pub fn chain(self) -> Vec<String> {
        match self {
            VmError::NotCreated => vec!["VM is not created".to_string()],
            VmError::MissingConfig => vec!["VM config is missing".to_string()],
            VmError::AlreadyCreated => vec!["VM is already created".to_string()],
            VmError::NotRunning => vec!["VM is not running".to_string()],
            VmError::ConfigValidation(rest) => {
                let mut chain = vec!["Failed to validate config".to_string()];
                chain.extend(rest);
                chain
            }
            VmError::Other(chain) => chain,
            VmError::VmmDied => vec!["receiving on a closed channel".to_string()],
        }
    }

    fn other(chain: &[&str]) -> VmError {
        VmError::Other(chain.iter().map(|s| s.to_string()).collect())
    }
}

/// Wraps a VM error the way CH's HTTP layer does: "Error from API", then the
/// action's own message, then the cause chain.
pub fn api_error(action: &str, error: VmError) -> ApiError {
    if let VmError::VmmDied = error {
        return ApiError {
            status: 500,
            chain: vec![
                "Error from API".to_string(),
                "API response receive error".to_string(),
                "receiving on a closed channel".to_string(),
            ],
        };
    }
    let status = error.status();
    let mut chain = vec!["Error from API".to_string(), action.to_string()];
    chain.extend(error.chain());
    ApiError { status, chain }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    Created,
    Running,
    Shutdown,
    Paused,
}

impl VmState {
    fn name(self) -> &'static str {
        match self {
            VmState::Created => "Created",
            VmState::Running => "Running",
            VmState::Shutdown => "Shutdown",
            VmState::Paused => "Paused",
        }
    }

    /// CH's transition table (BreakPoint, a debugger state, is never entered).
    fn check_transition(self, to: VmState) -> Result<(), String> {
        use VmState::*;
        let ok = match self {
            Created => to != Created,
            Running => matches!(to, Paused | Shutdown),
            Shutdown => to == Running,
            Paused => matches!(to, Running | Shutdown),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "InvalidStateTransition({}, {})",
                self.name(),
                to.name()
            ))
        }
    }

    fn transition_error(self, to: VmState) -> String {
        format!(
            "invalid VM state transition: {} to {}",
            self.name(),
            to.name()
        )
    }
}

/// A VM object: exists from `vm.boot` (even a failed one) to shutdown.
struct Vm {
    state: VmState,
    generation: u64,
    serial: Option<SerialManager>,
    /// vCPUs started: the boot count once booted, 0 if booting failed.
    present_vcpus: u32,
    /// Guest RAM at boot and now, for ACPI memory hotplug.
    boot_ram: u64,
    current_ram: u64,
    /// The disk images, open (and, once booted, locked) while the VM exists.
    disks: Vec<OpenDisk>,
}

/// `vm.resize` body.
#[derive(Debug, Default, Deserialize)]
pub struct ResizeRequest {
    pub desired_vcpus: Option<u32>,
    pub desired_ram: Option<u64>,
    pub desired_balloon: Option<u64>,
}

/// `vm.snapshot` body.
#[derive(Debug, Deserialize)]
pub struct SnapshotRequest {
    pub destination_url: String,
}

/// `vm.restore` body (only what the stand-in reads).
#[derive(Debug, Deserialize)]
pub struct RestoreRequest {
    pub source_url: PathBuf,
}

/// Called (from the guest's thread) when the guest powers off or reboots.
pub type GuestEvents = Arc<dyn Fn(u64, GuestAction) + Send + Sync>;

pub struct Vmm {
    config: Option<VmConfig>,
    consoles: Option<ConsoleDevices>,
    vm: Option<Vm>,
    next_generation: u64,
    events: Arc<EventMonitor>,
    logger: Logger,
    features: Vec<String>,
    build_version: String,
    guest_events: GuestEvents,
    /// Set when CH's VMM thread would have panicked: see [`VmError::VmmDied`].
    dead: bool,
}

/// What the guest's action did to the process.
#[derive(Debug, PartialEq, Eq)]
pub enum GuestOutcome {
    Continue,
    Exit,
}

impl Vmm {
    pub fn new(
        events: Arc<EventMonitor>,
        logger: Logger,
        features: Vec<String>,
        build_version: String,
        guest_events: GuestEvents,
    ) -> Vmm {
        Vmm {
            config: None,
            consoles: None,
            vm: None,
            next_generation: 1,
            events,
            logger,
            features,
            build_version,
            guest_events,
            dead: false,
        }
    }

    pub fn is_dead(&self) -> bool {
        self.dead
    }

    /// Makes the console back ends, recording a VMM-thread death.
    fn pre_create_consoles(&mut self) -> Result<(), VmError> {
        let Some(config) = self.config.as_mut() else {
            return Err(VmError::NotCreated);
        };
        match consoles::pre_create(config) {
            Ok(devices) => {
                self.consoles = Some(devices);
                Ok(())
            }
            Err(ConsoleError::Chain(chain)) => Err(VmError::Other(chain)),
            Err(ConsoleError::VmmPanic(why)) => {
                self.logger.info(&format!("VMM thread panicked: {why}"));
                self.vm.take();
                self.dead = true;
                Err(VmError::VmmDied)
            }
        }
    }

    pub fn features(&self) -> &[String] {
        &self.features
    }

    /// `vmm.ping` serialized with CH's field order.
    pub fn vmm_ping_json(&self) -> String {
        #[derive(Serialize)]
        struct Ping<'a> {
            build_version: &'a str,
            version: &'a str,
            pid: u32,
            features: &'a [String],
        }
        serde_json::to_string(&Ping {
            build_version: &self.build_version,
            version: "54.0.0",
            pid: std::process::id(),
            features: &self.features,
        })
        .unwrap_or_default()
    }

    pub fn vm_create(&mut self, config: VmConfig) -> Result<(), VmError> {
        if self.config.is_some() {
            return Err(VmError::AlreadyCreated);
        }
        // CH stores the config before making the consoles: a console failure
        // still leaves a created VM behind.
        self.config = Some(config);
        self.pre_create_consoles()
    }

    pub fn vm_boot(&mut self) -> Result<(), VmError> {
        if self.vm.is_some() {
            return Err(VmError::AlreadyCreated);
        }
        self.events.emit("vm", "booting");
        if self.config.is_none() {
            return Err(VmError::MissingConfig);
        }
        if self.consoles.is_none() {
            self.pre_create_consoles()?;
        }
        validate(self.config.as_ref().ok_or(VmError::MissingConfig)?)?;
        let mut vm = self.build_vm()?;
        let result = self.boot_vm(&mut vm);
        self.vm = Some(vm);
        result?;
        self.events.emit("vm", "booted");
        Ok(())
    }

    fn new_vm(&mut self) -> Vm {
        let generation = self.next_generation;
        self.next_generation += 1;
        Vm {
            state: VmState::Created,
            generation,
            serial: None,
            present_vcpus: 0,
            boot_ram: 0,
            current_ram: 0,
            disks: Vec::new(),
        }
    }

    /// CH's `Vm::new`: builds the devices; a disk that cannot be opened means
    /// no VM object at all.
    fn build_vm(&mut self) -> Result<Vm, VmError> {
        let config = self.config.as_mut().ok_or(VmError::NotCreated)?;
        let opened = disks::open_disks(config).map_err(VmError::Other)?;
        let mut vm = self.new_vm();
        vm.disks = opened;
        Ok(vm)
    }

    /// Loads the payload and starts the guest; the VM stays Created on failure.
    fn boot_vm(&self, vm: &mut Vm) -> Result<(), VmError> {
        vm.state
            .check_transition(VmState::Running)
            .map_err(|_| VmError::Other(vec![vm.state.transition_error(VmState::Running)]))?;
        let (Some(config), Some(consoles)) = (self.config.as_ref(), self.consoles.as_ref()) else {
            return Err(VmError::NotCreated);
        };
        disks::lock_disks(&vm.disks).map_err(VmError::Other)?;
        let payload = config.payload.as_ref().ok_or(VmError::MissingConfig)?;
        let image = match (&payload.firmware, &payload.kernel) {
            (Some(firmware), None) => read_payload(firmware, "Error manipulating firmware file")?,
            (_, Some(kernel)) => read_payload(kernel, "Cannot open kernel file")?,
            (None, None) => return Err(VmError::MissingConfig),
        };
        let halting = is_halting_guest(&image);
        self.logger.info(&format!(
            "Booting the {} tiny guest",
            if halting { "halting" } else { "echoing" }
        ));
        let notify = Arc::clone(&self.guest_events);
        let generation = vm.generation;
        let serial = SerialManager::start(
            &consoles.serial,
            halting,
            Box::new(move |action| notify(generation, action)),
        )
        .map_err(|e| {
            VmError::Other(vec!["Error from device manager".to_string(), e.to_string()])
        })?;
        vm.serial = Some(serial);
        vm.present_vcpus = config.cpus.boot_vcpus;
        vm.boot_ram = config.memory.size;
        vm.current_ram = config.memory.size;
        vm.state = VmState::Running;
        Ok(())
    }

    pub fn vm_pause(&mut self) -> Result<(), VmError> {
        let vm = self.vm.as_mut().ok_or(VmError::NotRunning)?;
        self.events.emit("vm", "pausing");
        if let Err(transition) = vm.state.check_transition(VmState::Paused) {
            return Err(VmError::Other(vec![
                "Cannot pause VM".to_string(),
                "Failed to pause migratable component".to_string(),
                format!("Invalid transition: {transition}"),
            ]));
        }
        if let Some(serial) = vm.serial.as_ref() {
            serial.pause();
        }
        vm.state = VmState::Paused;
        self.events.emit("vm", "paused");
        Ok(())
    }

    pub fn vm_resume(&mut self) -> Result<(), VmError> {
        let mut vm = self.vm.take().ok_or(VmError::NotRunning)?;
        let result = self.resume_vm(&mut vm);
        self.vm = Some(vm);
        result.map_err(|chain| {
            let mut full = vec!["Cannot resume VM".to_string()];
            full.extend(chain);
            VmError::Other(full)
        })
    }

    fn resume_vm(&self, vm: &mut Vm) -> Result<(), Vec<String>> {
        self.events.emit("vm", "resuming");
        if let Err(transition) = vm.state.check_transition(VmState::Running) {
            return Err(vec![
                "Failed to resume migratable component".to_string(),
                format!("Invalid transition: {transition}"),
            ]);
        }
        if let Some(serial) = vm.serial.as_ref() {
            serial.resume();
        }
        vm.state = VmState::Running;
        self.events.emit("vm", "resumed");
        Ok(())
    }

    pub fn vm_snapshot(&mut self, request: &SnapshotRequest) -> Result<(), VmError> {
        let vm = self.vm.as_ref().ok_or(VmError::NotRunning)?;
        // CH gives up the console back ends whenever a snapshot is attempted.
        self.consoles.take();
        self.events.emit("vm", "snapshotting");
        self.logger.debug(&format!(
            "Snapshot requested to {}",
            request.destination_url
        ));
        let cause = if vm.state == VmState::Paused {
            // What nested KVM answers when asked for a vCPU's nested state.
            "Could not get vCPU state GetNestedState(Invalid argument (os error 22))"
        } else {
            "Trying to snapshot while VM is running"
        };
        Err(VmError::other(&[
            "Cannot snapshot VM",
            "Failed to snapshot migratable component",
            cause,
        ]))
    }

    pub fn vm_restore(&mut self, request: &RestoreRequest) -> Result<(), VmError> {
        if self.vm.is_some() || self.config.is_some() {
            return Err(VmError::AlreadyCreated);
        }
        let url = request.source_url.to_string_lossy();
        let restore_error = |kind: &str, cause: String| {
            VmError::Other(vec![
                "Cannot restore VM".to_string(),
                kind.to_string(),
                cause,
            ])
        };
        let Some(dir) = url.strip_prefix("file://") else {
            return Err(restore_error(
                "Failed to send migratable component snapshot",
                format!("Could not extract path from URL: {url}"),
            ));
        };
        let dir = Path::new(dir);
        if !dir.is_dir() {
            return Err(restore_error(
                "Failed to send migratable component snapshot",
                format!("Destination is not a directory: {dir:?}"),
            ));
        }
        let config_path = dir.join("config.json");
        if let Err(e) = std::fs::File::open(&config_path) {
            let mut chain = vec![
                "Cannot restore VM".to_string(),
                "Failed to receive migratable component snapshot".to_string(),
                format!("Error opening VM config snapshot file {config_path:?}"),
            ];
            chain.push(e.to_string());
            return Err(VmError::Other(chain));
        }
        // Snapshots cannot be taken on these machines, so none can be restored.
        Err(restore_error(
            "Failed to receive migratable component snapshot",
            "the Cloud Hypervisor stand-in cannot restore snapshots".to_string(),
        ))
    }

    pub fn vm_shutdown(&mut self) -> Result<(), VmError> {
        let mut vm = self.vm.take().ok_or(VmError::NotRunning)?;
        self.consoles.take();
        vm.state
            .check_transition(VmState::Shutdown)
            .map_err(|_| VmError::Other(vec![vm.state.transition_error(VmState::Shutdown)]))?;
        // Stops the guest and the serial back end (and removes the serial
        // socket); closing the images drops their locks.
        vm.serial.take();
        vm.disks.clear();
        vm.state = VmState::Shutdown;
        self.events.emit("vm", "shutdown");
        Ok(())
    }

    pub fn vm_reboot(&mut self) -> Result<(), VmError> {
        self.events.emit("vm", "rebooting");
        {
            let mut vm = self.vm.take().ok_or(VmError::NotCreated)?;
            vm.state
                .check_transition(VmState::Shutdown)
                .map_err(|_| VmError::Other(vec![vm.state.transition_error(VmState::Shutdown)]))?;
            vm.serial.take();
        }
        self.consoles.take();
        self.pre_create_consoles()?;
        let mut vm = self.build_vm()?;
        self.boot_vm(&mut vm)?;
        self.vm = Some(vm);
        self.events.emit("vm", "rebooted");
        Ok(())
    }

    /// `vm.info`, serialized with CH's field order (config as sent, then
    /// defaults; `device_tree` only once a VM object exists).
    pub fn vm_info(&self) -> Result<String, VmError> {
        #[derive(Serialize)]
        struct Info<'a> {
            config: &'a VmConfig,
            state: &'static str,
            memory_actual_size: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            device_tree: Option<Value>,
        }
        let config = self.config.as_ref().ok_or(VmError::NotCreated)?;
        let state = self.vm.as_ref().map_or(VmState::Created, |vm| vm.state);
        let info = Info {
            config,
            state: state.name(),
            memory_actual_size: config.memory_actual_size(),
            device_tree: self.vm.as_ref().map(|_| device_tree(config)),
        };
        serde_json::to_string(&info).map_err(|e| {
            VmError::Other(vec![
                "Failed serializing into JSON".to_string(),
                e.to_string(),
            ])
        })
    }

    pub fn vm_delete(&mut self) -> Result<(), VmError> {
        if self.config.is_none() {
            return Ok(());
        }
        if self.vm.is_some() {
            self.vm_shutdown()?;
        }
        self.config = None;
        self.events.emit("vm", "deleted");
        Ok(())
    }

    pub fn vmm_shutdown(&mut self) -> Result<(), VmError> {
        self.vm_delete()?;
        self.events.emit("vmm", "shutdown");
        Ok(())
    }

    pub fn vm_resize(&mut self, request: &ResizeRequest) -> Result<(), VmError> {
        let config = self.config.as_mut().ok_or(VmError::NotCreated)?;
        if self.vm.is_none() {
            // Not booted: only the config changes.
            if let Some(vcpus) = request.desired_vcpus {
                config.cpus.boot_vcpus = vcpus;
            }
            if let Some(ram) = request.desired_ram {
                config.memory.size = ram;
            }
            if let (Some(size), Some(balloon)) = (request.desired_balloon, config.balloon.as_mut())
            {
                balloon["size"] = json!(size);
            }
            return Ok(());
        };
        let Some(vm) = self.vm.as_mut() else {
            return Err(VmError::NotCreated);
        };
        self.events.emit("vm", "resizing");
        if let Some(vcpus) = request.desired_vcpus {
            // CH compares with the vCPUs actually started, not the config.
            if vcpus != vm.present_vcpus {
                if vcpus == 0 {
                    return Err(VmError::other(&[
                        "Error from CPU manager",
                        "Requested zero vCPUs",
                    ]));
                }
                if vcpus > config.cpus.max_vcpus {
                    return Err(VmError::other(&[
                        "Error from CPU manager",
                        "Requested vCPUs exceed maximum",
                    ]));
                }
                vm.present_vcpus = vcpus;
            }
            config.cpus.boot_vcpus = vcpus;
        }
        if let Some(ram) = request.desired_ram {
            match config.memory.hotplug_method {
                HotplugMethod::Acpi => {
                    if ram > vm.current_ram {
                        hotplug_ram(config, vm.boot_ram, vm.current_ram, ram)?;
                        vm.current_ram = ram;
                    }
                    config.memory.size = ram;
                }
                HotplugMethod::VirtioMem => {
                    if ram < config.memory.size {
                        return Err(VmError::other(&[
                            "Memory manager error",
                            "Invalid resize below boot size",
                        ]));
                    }
                    config.memory.hotplugged_size =
                        (ram > config.memory.size).then(|| ram - config.memory.size);
                }
            }
        }
        if let Some(size) = request.desired_balloon {
            let Some(balloon) = config.balloon.as_mut() else {
                return Err(VmError::other(&[
                    "Error from device manager",
                    "Missing virtio-balloon, can't proceed as expected",
                ]));
            };
            balloon["size"] = json!(size);
        }
        self.events.emit("vm", "resized");
        Ok(())
    }

    pub fn vm_counters(&self) -> Result<Value, VmError> {
        self.vm.as_ref().ok_or(VmError::NotRunning)?;
        // Counters come from virtio-blk/net devices; the stand-in has none.
        Ok(json!({}))
    }

    /// `vm.power-button`: the tiny guest has no ACPI, so nothing happens.
    pub fn vm_power_button(&self) -> Result<(), VmError> {
        self.vm.as_ref().ok_or(VmError::NotRunning)?;
        Ok(())
    }

    /// `vm.nmi`: the tiny guest has no IDT, so a running guest triple-faults
    /// and resets (seen on a real CH: `vm:rebooting`, `vm:rebooted`). An NMI
    /// sent while paused was not seen to do anything.
    pub fn vm_nmi(&self) -> Result<(), VmError> {
        let vm = self.vm.as_ref().ok_or(VmError::NotRunning)?;
        if vm.state == VmState::Running {
            (self.guest_events)(vm.generation, GuestAction::Reboot);
        }
        Ok(())
    }

    /// Device hotplug and migration, which the stand-in does not emulate.
    pub fn vm_unemulated(&self, what: &str) -> Result<(), VmError> {
        self.config.as_ref().ok_or(VmError::NotCreated)?;
        Err(VmError::Other(vec![format!(
            "the Cloud Hypervisor stand-in does not emulate {what}"
        )]))
    }

    /// The guest powered off (ACPI S5) or reset itself; ignores actions of a
    /// guest whose VM is already gone.
    pub fn on_guest_action(
        &mut self,
        generation: u64,
        action: GuestAction,
        no_shutdown: bool,
    ) -> Result<GuestOutcome, VmError> {
        if self.vm.as_ref().map(|vm| vm.generation) != Some(generation) {
            return Ok(GuestOutcome::Continue);
        }
        match action {
            GuestAction::Reboot => {
                self.vm_reboot()?;
                Ok(GuestOutcome::Continue)
            }
            GuestAction::PowerOff if no_shutdown => {
                self.vm_shutdown()?;
                Ok(GuestOutcome::Continue)
            }
            GuestAction::PowerOff => {
                self.vmm_shutdown()?;
                Ok(GuestOutcome::Exit)
            }
        }
    }
}

/// ACPI memory hotplug: DIMMs come in 128 MiB steps and must fit in the
/// hotplug area sized by `hotplug_size`.
fn hotplug_ram(config: &VmConfig, boot: u64, current: u64, desired: u64) -> Result<(), VmError> {
    const DIMM_ALIGN: u64 = 128 << 20;
    let added = desired - current;
    // DIMM_ALIGN is a power of two.
    if added & (DIMM_ALIGN - 1) != 0 {
        return Err(VmError::other(&[
            "Memory manager error",
            "The requested hotplug memory addition is not a valid size",
        ]));
    }
    let room = config.memory.hotplug_size.unwrap_or(0);
    if desired - boot > room {
        return Err(VmError::other(&[
            "Memory manager error",
            "Not enough space in the hotplug RAM region",
        ]));
    }
    Ok(())
}

fn read_payload(path: &Path, open_error: &str) -> Result<Vec<u8>, VmError> {
    std::fs::read(path).map_err(|e| VmError::Other(vec![open_error.to_string(), e.to_string()]))
}

fn validate(config: &VmConfig) -> Result<(), VmError> {
    let invalid =
        |chain: &[&str]| VmError::ConfigValidation(chain.iter().map(|s| s.to_string()).collect());
    match config.payload.as_ref().map(|p| (&p.firmware, &p.kernel)) {
        None | Some((None, None)) => {
            return Err(invalid(&[
                "Payload configuration is not bootable",
                "No bootitem provided: neither firmware nor kernel",
            ]))
        }
        Some((Some(_), Some(_))) => {
            return Err(invalid(&[
                "Payload configuration is not bootable",
                "Specifying a kernel is not supported when a firmware is provided",
            ]))
        }
        _ => {}
    }
    let file_without_path = |mode: ConsoleOutputMode, file: &Option<PathBuf>| {
        mode == ConsoleOutputMode::File && file.is_none()
    };
    if file_without_path(config.console.common.mode, &config.console.common.file)
        || file_without_path(config.serial.common.mode, &config.serial.common.file)
    {
        return Err(invalid(&["Path missing when using file console mode"]));
    }
    if config.cpus.max_vcpus < config.cpus.boot_vcpus {
        return Err(VmError::ConfigValidation(vec![format!(
            "Max CPUs ({}) lower than boot CPUs ({})",
            config.cpus.max_vcpus, config.cpus.boot_vcpus
        )]));
    }
    if config.debug_console.mode == ConsoleOutputMode::File && config.debug_console.file.is_none() {
        return Err(invalid(&[
            "Path missing when using file mode for debug console",
        ]));
    }
    Ok(())
}

/// The device tree CH reports for the devices the stand-in models: the
/// IOAPIC, the serial port, and on PCI segment 0 the virtio-console, the
/// disks and virtio-rng, in that slot order. Disks get 32-bit BARs, the others
/// 64-bit ones, each allocated downwards from the top of its window as CH
/// allocates them for a 64 MiB guest (checked against a real CH).
fn device_tree(config: &VmConfig) -> Value {
    const FIRST_BAR: u64 = 70_368_735_789_056;
    const BAR_STRIDE: u64 = 0x80_0000;
    const FIRST_BAR32: u64 = 3_891_789_824;
    const BAR32_STRIDE: u64 = 0x8_0000;
    const BAR_SIZE: u64 = 0x8_0000;
    let mut tree = serde_json::Map::new();
    tree.insert(
        "__ioapic".to_string(),
        json!({"id": "__ioapic", "resources": [], "children": []}),
    );
    if config.serial.common.mode != ConsoleOutputMode::Off {
        tree.insert(
            "__serial".to_string(),
            json!({"id": "__serial", "resources": [], "children": []}),
        );
    }
    // (device id, uses a 32-bit BAR)
    let mut pci_devices: Vec<(String, bool)> = Vec::new();
    if config.console.common.mode != ConsoleOutputMode::Off {
        pci_devices.push(("__console".to_string(), false));
    }
    for disk in config.disks.iter().flatten() {
        if let Some(id) = &disk.pci_common.id {
            pci_devices.push((id.clone(), true));
        }
    }
    pci_devices.push(("__rng".to_string(), false));
    let (mut next64, mut next32) = (FIRST_BAR, FIRST_BAR32);
    for (slot, (device, bar32)) in pci_devices.into_iter().enumerate() {
        let pci_id = format!("_virtio-pci-{device}");
        let (base, kind) = if bar32 {
            next32 -= BAR32_STRIDE;
            (next32 + BAR32_STRIDE, "Mmio32")
        } else {
            next64 -= BAR_STRIDE;
            (next64 + BAR_STRIDE, "Mmio64")
        };
        tree.insert(
            device.clone(),
            json!({"id": device, "resources": [], "parent": pci_id, "children": []}),
        );
        tree.insert(
            pci_id.clone(),
            json!({
                "id": pci_id,
                "resources": [{"PciBar": {
                    "index": 0,
                    "base": base,
                    "size": BAR_SIZE,
                    "type_": kind,
                    "prefetchable": false
                }}],
                "children": [device],
                "pci_bdf": format!("0000:00:{:02x}.0", slot + 1),
            }),
        );
    }
    Value::Object(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_follow_ch_table() {
        assert!(VmState::Running.check_transition(VmState::Running).is_err());
        assert_eq!(
            VmState::Paused.check_transition(VmState::Paused),
            Err("InvalidStateTransition(Paused, Paused)".to_string())
        );
        assert!(VmState::Created.check_transition(VmState::Shutdown).is_ok());
        assert!(VmState::Paused.check_transition(VmState::Shutdown).is_ok());
    }

    #[test]
    fn vm_errors_map_to_recorded_statuses() {
        assert_eq!(api_error("x", VmError::NotCreated).status, 404);
        assert_eq!(api_error("x", VmError::MissingConfig).status, 404);
        assert_eq!(api_error("x", VmError::NotRunning).status, 500);
        assert_eq!(
            api_error("x", VmError::ConfigValidation(vec![])).status,
            400
        );
    }
}
