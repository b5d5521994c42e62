//! The `ch-launcher` command line: argument parsing, the subcommands, and
//! their exit codes. `src/main.rs` only calls [`main`].
//!
//! Exit codes: [`exit::SUCCESS`] (done, or the guest powered off, or a
//! requested stop completed), [`exit::FAILURE`] (the launcher could not do
//! what was asked, including on a host that lacks what the spec needs:
//! host facts never make a spec invalid, and a bad configuration file),
//! [`exit::INVALID_SPEC`] (every problem is printed to stderr with its
//! field path; clap's own usage errors use 2 too) and
//! [`exit::VM_FAILED`] (the VM crashed, or was stopped by something other
//! than the launcher).
//!
//! Diagnostics go to stderr as text, or with `--log-format json` as JSON
//! log records like every other log line (see [`report`]).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use domain_model::load::DEFAULT_CONTAINER_DISK_DIR;
use domain_model::{Domain, Hypervisor, LoadOptions, SpecErrors};

use crate::attach;
use crate::ch;
use crate::console_log;
use crate::control::{self, Command};
use crate::libvirt;
use crate::logging::{self, LogFormat};
use crate::paths::{VmPaths, DEFAULT_PRIVATE_DIR};
use crate::runner::{self, RunOptions, Runner};

mod config;
pub(crate) use config::Settings;
use config::{ConfigError, ConfigFile};

pub mod exit {
    pub const SUCCESS: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const INVALID_SPEC: u8 = 2;
    pub const VM_FAILED: u8 = 3;
}

const AFTER_HELP: &str = "\
Exit codes: 0 success (including a guest power-off and a requested stop that \
completed), 1 launcher failure (including a host that lacks what the spec needs: \
firmware, SEV, TDX, and an invalid configuration file), 2 invalid spec or usage, \
3 the VM crashed or was stopped by something other than the launcher.";

/// Run one VM from a KubeVirt VirtualMachineInstance spec under Cloud
/// Hypervisor or libvirt.
#[derive(Debug, Parser)]
#[command(name = "ch-launcher", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Directory for the per-VM sockets and logs (`<DIR>/<vmi uid>/...`).
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_PRIVATE_DIR)]
    pub private_dir: PathBuf,
    /// Hypervisor to use instead of `spec.hypervisor` (run, validate, render).
    #[arg(long, global = true, value_name = "NAME", value_parser = parse_hypervisor)]
    pub hypervisor: Option<Hypervisor>,
    /// Log format on stderr [default: text; `kubevirt` for `pod`:
    /// virt-launcher's JSON records].
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log level or `tracing` filter directives (e.g. `debug`, `info,ch_launcher=debug`).
    #[arg(long, global = true, value_name = "FILTER", default_value = "info")]
    pub log_level: String,
    /// The cloud-hypervisor binary (default: `cloud-hypervisor` from PATH).
    #[arg(long, global = true, value_name = "PATH", env = ch::process::BINARY_ENV)]
    pub cloud_hypervisor_bin: Option<PathBuf>,
    /// Where `containerDisk` volumes are found as local image files.
    #[arg(long, global = true, value_name = "DIR", default_value = DEFAULT_CONTAINER_DISK_DIR)]
    pub container_disk_dir: PathBuf,
    /// The image cache for registry images of local runs (`containerDisk`
    /// without an image under --container-disk-dir, kernelBoot.container.image)
    /// [default: /var/cache/ch-launcher/images for root, else
    /// $XDG_CACHE_HOME/ch-launcher/images].
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "CH_LAUNCHER_IMAGE_CACHE"
    )]
    pub image_cache_dir: Option<PathBuf>,
    /// Registry credentials, a docker `config.json`, consulted before
    /// $REGISTRY_AUTH_FILE, $DOCKER_CONFIG/config.json and ~/.docker/config.json.
    #[arg(long, global = true, value_name = "FILE")]
    pub registry_auth_file: Option<PathBuf>,
    /// Where the launcher makes `emptyDisk` and cloud-init images
    /// (`<DIR>/<vmi uid>/<volume>.img`), removed when the VM is gone.
    #[arg(long, global = true, value_name = "DIR",
        default_value = domain_model::load::DEFAULT_EPHEMERAL_DISK_DIR)]
    pub ephemeral_disk_dir: PathBuf,
    /// Where the pod's volumes are mounted, in KubeVirt's layout:
    /// `secret/<volume>/` (Secrets, cloud-init secretRef), `config-map/<volume>/`,
    /// `downwardapi/<volume>/`, `vmi-disks/<volume>/disk.img` (PVCs, DataVolumes).
    #[arg(long, global = true, value_name = "DIR",
        default_value = domain_model::load::DEFAULT_MOUNTS_DIR)]
    pub mounts_dir: PathBuf,
    /// The service account token directory (a `serviceAccount` volume).
    #[arg(long, global = true, value_name = "DIR",
        default_value = domain_model::load::DEFAULT_SERVICE_ACCOUNT_DIR)]
    pub service_account_dir: PathBuf,
    /// The libvirt connection URI (libvirt backend).
    #[arg(long, global = true, value_name = "URI", env = "LIBVIRT_DEFAULT_URI",
        default_value = libvirt::DEFAULT_URI)]
    pub libvirt_uri: String,
    /// Use host capabilities recorded with `virsh domcapabilities` instead of
    /// probing this host (host, run, validate, render).
    #[arg(long, global = true, value_name = "FILE")]
    pub domcapabilities: Option<PathBuf>,
    /// Use a CPU probe recorded with `ch-launcher host cpu --json` instead of
    /// probing this host's KVM (host, run, validate, render).
    #[arg(long, global = true, value_name = "FILE")]
    pub cpu_probe: Option<PathBuf>,
    /// Intel TDX: the Quote Generation Service socket for guest attestation
    /// (libvirt backend).
    #[arg(long, global = true, value_name = "PATH")]
    pub tdx_qgs_socket: Option<PathBuf>,
    /// The launcher's YAML configuration (keys `featureGates`,
    /// `firmwareDescriptorDirs`, `cloudHypervisorFirmwareDir`); default
    /// /etc/ch-launcher/config.yaml when it exists. The command line wins.
    #[arg(long, global = true, value_name = "FILE", env = "CH_LAUNCHER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Feature gates on top of KubeVirt's defaults by maturity: GA always on
    /// (SecureExecution), beta on unless disabled (WorkloadEncryptionSEV),
    /// alpha off unless enabled (WorkloadEncryptionTDX). `Name` enables a
    /// gate, `-Name` disables a beta one, e.g. `--feature-gates
    /// WorkloadEncryptionTDX,-WorkloadEncryptionSEV`. Repeatable; applied
    /// after the config file's `featureGates`, in order.
    #[arg(long, global = true, value_name = "A,B", allow_hyphen_values = true)]
    pub feature_gates: Vec<String>,
    /// A QEMU firmware descriptor directory (libvirt backend). Repeatable,
    /// highest precedence first; replaces the standard ones
    /// (/etc/qemu/firmware, /usr/share/qemu/firmware, and the user's
    /// $XDG_CONFIG_HOME/qemu/firmware for a qemu:///session URI only).
    #[arg(long, global = true, value_name = "DIR")]
    pub firmware_descriptor_dir: Vec<PathBuf>,
    /// Cloud Hypervisor's firmware directory (CLOUDHV.fd, hypervisor-fw,
    /// tdvf.fd, *.igvm) [default: /usr/share/cloud-hypervisor].
    #[arg(long, global = true, value_name = "DIR")]
    pub ch_firmware_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Commands {
    /// Run the VM in the foreground until it stops.
    ///
    /// The serial console is relayed to `<private dir>/<uid>/virt-serial0` and
    /// logged to `virt-serial0-log`. When stdin is a terminal, the console is
    /// attached to it; press Ctrl-] to detach (the VM keeps running; Ctrl-C
    /// then stops it). SIGTERM or SIGINT presses the ACPI power button, waits
    /// up to terminationGracePeriodSeconds, then stops the VM; a second
    /// signal stops it at once.
    Run(RunArgs),
    /// Check a spec and print the resolved VM, or every problem with its field path.
    Validate(ValidateArgs),
    /// Print the hypervisor configuration for a spec (Cloud Hypervisor: the
    /// `vm.create` JSON, libvirt: the domain XML) without running anything.
    ///
    /// A dry run: firmware this host lacks is rendered at the path the pod
    /// image ships it, with a warning. Host capabilities (SEV parameters)
    /// come from --domcapabilities, libvirt, or this host.
    Render(SpecArg),
    /// Pause a running VM.
    Pause(Target),
    /// Resume a paused VM (or boot one started with startStrategy: Paused).
    Resume(Target),
    /// Reboot a running VM.
    Reboot(Target),
    /// Stop a running VM the way SIGTERM does (returns once the stop began).
    Stop(Target),
    /// Destroy a running VM now, without waiting for the guest.
    Kill(Target),
    /// Print a running VM's state as JSON, with the vCPUs, memory and disks
    /// in effect.
    Status(Target),
    /// Make a spec's pod network (taps, in-pod bridges, NAT rules, DHCP
    /// servers) in this network namespace without starting a VM, print
    /// what was made as JSON, and hold it until SIGTERM or SIGINT: to
    /// attach another VMM, or a test client, to the taps.
    NetUp(SpecArg),
    /// Change a running VM's vCPU sockets and/or memory in place (up to
    /// spec.domain.cpu.maxSockets and spec.domain.memory.maxGuest).
    Resize(ResizeArgs),
    /// Hot-add a raw disk image to a running VM as a virtio disk.
    AttachDisk(AttachDiskArgs),
    /// Hot-remove a disk that attach-disk added.
    DetachDisk(DetachDiskArgs),
    /// Hot-add a virtio-net interface on an existing tap (the caller's: the
    /// launcher attaches it, it does not address or NAT it).
    AttachInterface(AttachInterfaceArgs),
    /// Hot-remove an interface that attach-interface added.
    DetachInterface(DetachDiskArgs),
    /// Be the entrypoint of a KubeVirt VM pod: serve virt-handler's cmd
    /// socket (`<share-dir>/sockets/launcher-sock`), run the VMI that
    /// arrives in SyncVirtualMachine, and report the domain on
    /// `<share-dir>/domain-notify-pipe.sock`. SIGTERM marks the VM for a
    /// graceful shutdown that virt-handler drives; the launcher kills it
    /// itself after --grace-period-seconds.
    Pod(crate::pod::PodArgs),
    /// Pull a registry image into the image cache (as a run would for a
    /// containerDisk or kernel-boot image) and print its digest and
    /// unpacked root as JSON.
    Pull(PullArgs),
    /// What this host can run: confidential-computing support and node labels.
    #[command(subcommand)]
    Host(HostCommand),
    /// The firmware this host offers, and which one a spec gets.
    #[command(subcommand)]
    Firmware(FirmwareCommand),
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// The image reference (registry/repository:tag or @sha256:...).
    pub image: String,
    /// Always, IfNotPresent or Never [default: Kubernetes' rule for the tag].
    #[arg(long, value_name = "POLICY")]
    pub pull_policy: Option<String>,
}

/// `ch-launcher pull`.
async fn pull(g: &GlobalArgs, args: &PullArgs) -> u8 {
    let pull_policy = match args.pull_policy.as_deref() {
        None => domain_model::PullPolicy::default_for(&args.image),
        Some("Always") => domain_model::PullPolicy::Always,
        Some("IfNotPresent") => domain_model::PullPolicy::IfNotPresent,
        Some("Never") => domain_model::PullPolicy::Never,
        Some(other) => {
            report(format_args!(
                "--pull-policy {other:?}: expected Always, IfNotPresent or Never"
            ));
            return exit::INVALID_SPEC;
        }
    };
    let image = domain_model::ImageRef {
        image: args.image.clone(),
        path: None,
        pull_policy,
        pull_secret: None,
    };
    match image_store(g).pull(&image).await {
        Ok(p) => {
            let out = serde_json::json!({
                "image": p.image,
                "digest": p.digest,
                "rootfs": p.rootfs,
                "downloadedBytes": p.downloaded,
                "contactedRegistry": p.contacted_registry,
            });
            println!("{out:#}");
            exit::SUCCESS
        }
        Err(e) => {
            report(format_args!("pull: {e}"));
            exit::FAILURE
        }
    }
}

/// The image store the global flags name.
pub fn image_store(g: &GlobalArgs) -> crate::oci::ImageStore {
    crate::oci::ImageStore::new(
        g.image_cache_dir
            .clone()
            .unwrap_or_else(crate::oci::ImageStore::default_dir),
        g.registry_auth_file.clone(),
    )
}

#[derive(Debug, Subcommand)]
pub enum FirmwareCommand {
    /// List the visible QEMU firmware descriptors (after overrides) and
    /// Cloud Hypervisor's firmware files.
    List(JsonArg),
    /// Choose the firmware for a spec on its hypervisor from what this host
    /// has, and say why; exit 1 with what was searched, what each candidate
    /// lacked and what the spec asked for when nothing fits.
    Select(SelectArgs),
}

#[derive(Debug, Args)]
pub struct JsonArg {
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SelectArgs {
    /// VirtualMachineInstance spec file (YAML or JSON).
    pub spec: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Print the node labels for this host (SEV, SEV-ES, SEV-SNP, TDX,
    /// Secure Execution), one `key=value` per line; `--domcapabilities FILE`
    /// reads recorded `virsh domcapabilities` output instead of probing.
    Labels,
    /// Print everything detected about the host as JSON.
    Capabilities,
    /// What this host's KVM offers a guest CPU: its vendor, and feature MSRs
    /// KVM reports but a vCPU refuses (QEMU aborts on those unless the
    /// feature is disabled, which the launcher does for libvirt guests).
    /// `--json` prints the whole probe, which `--cpu-probe FILE` replays.
    Cpu(JsonArg),
}

#[derive(Debug, Args)]
pub struct SpecArg {
    /// VirtualMachineInstance spec file (YAML or JSON).
    pub spec: PathBuf,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// VirtualMachineInstance spec file (YAML or JSON).
    pub spec: PathBuf,
    /// Permission bits (octal) of virt-serial0 and virt-serial0-log. When
    /// they grant the group or others access, the VM directory (and a
    /// private dir the launcher creates) gets their search bit (e.g. 0660 ->
    /// 0710), so they can reach the socket; they still cannot list it.
    #[arg(long, value_name = "MODE", default_value = "0600", value_parser = parse_mode)]
    pub console_socket_mode: u32,
    /// Bytes in virt-serial0-log before it is rotated to virt-serial0-log.0
    /// (Cloud Hypervisor; libvirt's virtlogd rotates its own at 2 MiB).
    #[arg(long, value_name = "BYTES", default_value_t = console_log::LogLimits::default().max_size)]
    pub console_log_max_size: u64,
    /// Rotated console logs kept (virt-serial0-log.0 is the newest).
    #[arg(long, value_name = "N", default_value_t = console_log::LogLimits::default().backups)]
    pub console_log_backups: u32,
    /// Do not attach the console even when stdin is a terminal.
    #[arg(long)]
    pub no_attach: bool,
    /// How Cloud Hypervisor hands the serial port to the launcher: `socket`
    /// keeps every byte up to the guest's power-off; with `pty` the last
    /// output before a power-off can be lost.
    #[arg(long, value_name = "MODE", default_value = "socket", value_parser = parse_serial_mode)]
    pub ch_serial: ch::SerialMode,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// VirtualMachineInstance spec file (YAML or JSON).
    pub spec: PathBuf,
    /// Print the resolved VM as JSON instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Show, feature by feature, which hypervisor supports what the spec
    /// uses, and what each backend's translation refuses.
    #[arg(long, conflicts_with = "json")]
    pub explain: bool,
}

/// Which running VM: by its VMI uid, or by the spec it was started from (its
/// `metadata.uid`, or the uid derived from namespace and name).
#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("vm").required(true).args(["spec", "uid"]))]
pub struct Target {
    /// VirtualMachineInstance spec the VM was started from.
    pub spec: Option<PathBuf>,
    /// The VMI uid (the directory name under --private-dir).
    #[arg(long, value_name = "UID", value_parser = parse_uid)]
    pub uid: Option<String>,
    /// How long to wait for the launcher's answer, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("change").required(true).multiple(true)
    .args(["sockets", "memory"]))]
pub struct ResizeArgs {
    #[command(flatten)]
    pub target: Target,
    /// vCPU sockets wanted (each of cores x threads vCPUs).
    #[arg(long, value_name = "N")]
    pub sockets: Option<u32>,
    /// Guest memory wanted, as a Kubernetes quantity (`512Mi`, `2Gi`).
    #[arg(long, value_name = "QTY", value_parser = domain_model::quantity::parse_bytes)]
    pub memory: Option<u64>,
}

#[derive(Debug, Args)]
pub struct AttachDiskArgs {
    #[command(flatten)]
    pub target: Target,
    /// The disk's name: its id in the hypervisor, and what detach-disk takes.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// The raw image (or block device) to attach; relative to this directory.
    #[arg(long, value_name = "FILE")]
    pub path: PathBuf,
    /// Attach read-only.
    #[arg(long)]
    pub readonly: bool,
}

#[derive(Debug, Args)]
pub struct AttachInterfaceArgs {
    #[command(flatten)]
    pub target: Target,
    /// The interface's name (what detach-interface takes).
    #[arg(long, value_name = "NAME")]
    pub name: String,
    /// The tap, in the launcher's network namespace.
    #[arg(long, value_name = "TAP")]
    pub tap: String,
    /// The guest's MAC address (default: the hypervisor picks one).
    #[arg(long, value_name = "MAC")]
    pub mac: Option<String>,
}

#[derive(Debug, Args)]
pub struct DetachDiskArgs {
    #[command(flatten)]
    pub target: Target,
    /// The name given to attach-disk (attach-interface for detach-interface).
    #[arg(long, value_name = "NAME")]
    pub name: String,
}

fn parse_hypervisor(s: &str) -> Result<Hypervisor, String> {
    s.parse()
}

/// A uid as `metadata.uid` allows it: it names a directory under
/// `--private-dir`.
fn parse_uid(s: &str) -> Result<String, String> {
    domain_model::resolve::check_uid(s).map(|()| s.to_string())
}

/// `--ch-serial`: the command line's names for [`ch::SerialMode`], kept here
/// so the pure translation knows nothing of clap.
fn parse_serial_mode(s: &str) -> Result<ch::SerialMode, String> {
    match s {
        "socket" => Ok(ch::SerialMode::Socket),
        "pty" => Ok(ch::SerialMode::Pty),
        other => Err(format!(
            "{other:?} is not a serial mode: expected socket or pty"
        )),
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|e| format!("{s:?} is not an octal mode: {e}"))?;
    if mode > 0o777 {
        return Err(format!(
            "{s:?}: only permission bits (at most 0777) are allowed"
        ));
    }
    Ok(mode)
}

/// The whole program: parse, set up logging, run the subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let (format, level) = match &cli.command {
        Commands::Pod(args) => {
            logging::set_uid(&args.uid);
            (
                cli.global.log_format.unwrap_or(LogFormat::Kubevirt),
                args.log_filter()
                    .unwrap_or(&cli.global.log_level)
                    .to_string(),
            )
        }
        _ => (
            cli.global.log_format.unwrap_or(LogFormat::Text),
            cli.global.log_level.clone(),
        ),
    };
    let json = format != LogFormat::Text;
    if let Err(e) = logging::init(format, &level) {
        // No logger: in JSON mode, still one JSON record.
        if json {
            eprintln!("{}", serde_json::json!({ "level": "ERROR", "message": e }));
        } else {
            eprintln!("ch-launcher: {e}");
        }
        return ExitCode::from(exit::FAILURE);
    }
    let _ = JSON_DIAGNOSTICS.set(json);
    // One thread: the launcher mostly waits, and the VMM's parent-death
    // signal is tied to the thread that spawned it (this one).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(format_args!("cannot start the async runtime: {e}"));
            return ExitCode::from(exit::FAILURE);
        }
    };
    ExitCode::from(runtime.block_on(dispatch(cli)))
}

async fn dispatch(cli: Cli) -> u8 {
    let g = &cli.global;
    // `run` catches SIGTERM and SIGINT before anything else, so that from
    // the start a signal stops the VM in order instead of killing the
    // launcher (and, with it, the VMM) outright.
    let signals = match &cli.command {
        Commands::Run(_) => match runner::StopSignals::install() {
            Ok(signals) => Some(signals),
            Err(e) => {
                report(format_args!("cannot install signal handlers: {e}"));
                return exit::FAILURE;
            }
        },
        _ => None,
    };
    let s = match settings(g) {
        Ok(s) => s,
        Err(e) => {
            // The launcher's configuration (file or `--feature-gates`), not
            // the spec: a launcher failure.
            report(&e);
            return exit::FAILURE;
        }
    };
    let s = &s;
    match &cli.command {
        Commands::Run(args) => match signals {
            Some(signals) => run(g, s, args, signals).await,
            None => exit::FAILURE,
        },
        Commands::Validate(args) => validate(g, s, args),
        Commands::Render(args) => render(g, s, &args.spec),
        Commands::NetUp(args) => net_up(g, s, &args.spec).await,
        Commands::Pull(args) => pull(g, args).await,
        Commands::Pause(t) => control_command(g, s, t, Command::Pause).await,
        Commands::Resume(t) => control_command(g, s, t, Command::Resume).await,
        Commands::Reboot(t) => control_command(g, s, t, Command::Reboot).await,
        Commands::Stop(t) => control_command(g, s, t, Command::Stop).await,
        Commands::Kill(t) => control_command(g, s, t, Command::Kill).await,
        Commands::Status(t) => control_command(g, s, t, Command::Status).await,
        Commands::Resize(a) => {
            let command = Command::Resize {
                sockets: a.sockets,
                memory: a.memory,
            };
            control_command(g, s, &a.target, command).await
        }
        Commands::AttachDisk(a) => {
            // The launcher may run elsewhere: send an absolute path.
            let path = match std::path::absolute(&a.path) {
                Ok(path) => path,
                Err(e) => {
                    report(format_args!("attach-disk: {}: {e}", a.path.display()));
                    return exit::FAILURE;
                }
            };
            let command = Command::AttachDisk {
                name: a.name.clone(),
                path,
                readonly: a.readonly,
            };
            control_command(g, s, &a.target, command).await
        }
        Commands::AttachInterface(a) => {
            let command = Command::AttachInterface {
                name: a.name.clone(),
                tap: a.tap.clone(),
                mac: a.mac.clone(),
            };
            control_command(g, s, &a.target, command).await
        }
        Commands::DetachInterface(a) => {
            let command = Command::DetachInterface {
                name: a.name.clone(),
            };
            control_command(g, s, &a.target, command).await
        }
        Commands::DetachDisk(a) => {
            let command = Command::DetachDisk {
                name: a.name.clone(),
            };
            control_command(g, s, &a.target, command).await
        }
        Commands::Pod(args) => crate::pod::run(g, s, args).await,
        Commands::Host(command) => host(g, command),
        Commands::Firmware(command) => firmware_command(g, s, command),
    }
}

/// The config file (when there is one) with the command line on top.
fn settings(g: &GlobalArgs) -> Result<Settings, ConfigError> {
    let file = ConfigFile::load(g.config.as_deref())?;
    Settings::resolve(
        file.as_ref().map(|(path, f)| (path.as_path(), f)),
        &config::Overrides {
            feature_gates: &g.feature_gates,
            firmware_descriptor_dirs: &g.firmware_descriptor_dir,
            ch_firmware_dir: g.ch_firmware_dir.as_deref(),
            libvirt_uri: &g.libvirt_uri,
        },
    )
}

fn firmware_command(g: &GlobalArgs, s: &Settings, command: &FirmwareCommand) -> u8 {
    match command {
        FirmwareCommand::List(args) => {
            let listing = firmware::list(&s.firmware);
            if args.json {
                print_json(&listing)
            } else {
                print_stdout(&listing.to_string(), exit::SUCCESS)
            }
        }
        FirmwareCommand::Select(args) => {
            let domain = match load(g, s, &args.spec) {
                Ok(d) => d,
                Err(code) => return code,
            };
            match firmware::choose_for_domain(&domain, &s.firmware) {
                Ok(choice) if args.json => print_json(&choice),
                Ok(choice) => print_stdout(&choice.to_string(), exit::SUCCESS),
                Err(e) => {
                    report(format_args!("{}: {e}", args.spec.display()));
                    if let (true, firmware::FirmwareError::NoMatch(no_match)) = (args.json, &e) {
                        let _ = print_json(&serde_json::json!({ "noMatch": no_match }));
                    }
                    exit::FAILURE
                }
            }
        }
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> u8 {
    match serde_json::to_string_pretty(value) {
        Ok(text) => print_stdout(&format!("{text}\n"), exit::SUCCESS),
        Err(e) => {
            report(format_args!("cannot encode JSON: {e}"));
            exit::FAILURE
        }
    }
}

fn host(g: &GlobalArgs, command: &HostCommand) -> u8 {
    let recorded = g.domcapabilities.as_deref();
    let output = match command {
        HostCommand::Labels => crate::host::labels_command(recorded),
        HostCommand::Capabilities => {
            crate::host::capabilities_command(recorded, g.cpu_probe.as_deref())
        }
        HostCommand::Cpu(args) => crate::host::cpu_command(g.cpu_probe.as_deref(), args.json),
    };
    match output {
        Ok(text) => print_stdout(&text, exit::SUCCESS),
        Err(e) => {
            report(&e);
            exit::FAILURE
        }
    }
}

/// What a subcommand does with the spec: decides how strict the host checks
/// are. Host problems (missing firmware, a host without SEV) never make a
/// spec invalid: a run refuses (exit 1), a dry run warns and goes on where
/// it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Run,
    Render,
    Validate,
}

impl Mode {
    fn firmware_purpose(self) -> firmware::Purpose {
        match self {
            Mode::Run => firmware::Purpose::Run,
            Mode::Render | Mode::Validate => firmware::Purpose::DryRun,
        }
    }
}

/// The firmware for `domain`: for a run only files this host has; for a dry
/// run, else the pod image's expected paths, each shortfall logged.
fn firmware_choice(s: &Settings, domain: &Domain, mode: Mode) -> Result<firmware::Choice, String> {
    let choice = firmware::choose(domain, &s.firmware, mode.firmware_purpose())
        .map_err(|e| format!("firmware: {e}"))?;
    for warning in choice.warnings() {
        tracing::warn!("firmware: {warning}");
    }
    if let firmware::Choice::CloudHypervisor(s) = &choice {
        if mode == Mode::Run {
            tracing::info!(firmware = %s.kind, path = %s.path.display(),
                why = %s.reasons.join("; "), "firmware chosen");
        }
    }
    Ok(choice)
}

/// The host facts a confidential libvirt launch renders (SEV C-bit, TDX
/// quote service): from `--domcapabilities`, else from libvirt's domain
/// capabilities, else (libvirt unreachable) from the native probe. A run
/// refuses what the host cannot do; `render` needs the SEV parameters to
/// write them; `validate` only warns.
fn confidential_host(
    g: &GlobalArgs,
    domain: &Domain,
    mode: Mode,
) -> Result<libvirt::ConfidentialHost, String> {
    let Some(ls) = &domain.launch_security else {
        return Ok(libvirt::ConfidentialHost::default());
    };
    let caps = match &g.domcapabilities {
        Some(file) => crate::host::domcaps::load(file).map_err(|e| e.to_string())?,
        None => match libvirt::launch_security::probe_libvirt(&g.libvirt_uri, domain) {
            Ok(caps) => caps,
            Err(e) => {
                tracing::warn!("{e}; probing the kernel instead");
                crate::host::probe::NativeProbe::default().probe()
            }
        },
    };
    for note in &caps.notes {
        tracing::warn!("host capabilities: {note}");
    }
    if let Some(problem) = caps.unsupported(ls) {
        if mode == Mode::Run {
            return Err(problem);
        }
        tracing::warn!("{problem}");
    }
    if let Some(problem) = libvirt::launch_security::host_problem(ls, caps.sev.as_ref()) {
        match mode {
            Mode::Run => return Err(format!("{problem} ({})", caps.source)),
            Mode::Render => {
                return Err(format!(
                    "{problem} ({}): pass --domcapabilities FILE recorded on an SEV host \
                     for a dry run",
                    caps.source
                ))
            }
            Mode::Validate => tracing::warn!("{problem} ({})", caps.source),
        }
    }
    Ok(libvirt::ConfidentialHost {
        sev: caps.sev,
        tdx_quote_generation_socket: g.tdx_qgs_socket.clone(),
    })
}

pub(crate) fn load_options(g: &GlobalArgs, s: &Settings) -> LoadOptions {
    LoadOptions {
        hypervisor: g.hypervisor,
        container_disk_dir: g.container_disk_dir.clone(),
        ephemeral_disk_dir: g.ephemeral_disk_dir.clone(),
        mounts_dir: g.mounts_dir.clone(),
        service_account_dir: g.service_account_dir.clone(),
        feature_gates: s.gates.enabled(),
        ..LoadOptions::default()
    }
}

/// Whether diagnostics are JSON records (`--log-format json`); set once in
/// [`main`].
static JSON_DIAGNOSTICS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn json_diagnostics() -> bool {
    JSON_DIAGNOSTICS.get().copied().unwrap_or(false)
}

/// Reports an error that ends the command: `ch-launcher: ...` on stderr, or
/// an ERROR log record in JSON mode.
fn report(error: impl std::fmt::Display) {
    if json_diagnostics() {
        tracing::error!("{error}");
    } else {
        eprintln!("ch-launcher: {error}");
    }
}

/// Every spec problem: as text, one per line; in JSON mode one ERROR record
/// per problem with its `path` and `message`, and the spec file as `spec`.
fn print_spec_errors(spec: &Path, errors: &SpecErrors) {
    if json_diagnostics() {
        for e in &errors.0 {
            tracing::error!(spec = %spec.display(), path = %e.path, message = %e.message);
        }
    } else {
        eprint!("{}: {errors}", spec.display());
    }
}

fn load(g: &GlobalArgs, s: &Settings, spec: &Path) -> Result<Domain, u8> {
    domain_model::load_path(spec, &load_options(g, s)).map_err(|errors| {
        print_spec_errors(spec, &errors);
        exit::INVALID_SPEC
    })
}

async fn run(g: &GlobalArgs, s: &Settings, args: &RunArgs, signals: runner::StopSignals) -> u8 {
    let domain = match load(g, s, &args.spec) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let paths = VmPaths::new(&g.private_dir, &domain.uid);
    let backend = match host_checks(g, s, &domain, &paths, args.ch_serial).await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!("{e}");
            return exit::FAILURE;
        }
    };
    let mut opts = RunOptions::new(paths.clone());
    opts.images = image_store(g);
    opts.console_mode = args.console_socket_mode;
    opts.console_log_limits = console_log::LogLimits {
        max_size: args.console_log_max_size,
        backups: args.console_log_backups,
    };
    opts.early_console = backend.early_console(&domain);
    let runner = Runner::new(domain.clone(), opts);
    let signals = signals.forward(runner.stopper());
    let attached = (!args.no_attach && attach::stdin_is_terminal()).then(|| {
        let mut status = runner.status();
        let socket = paths.serial_socket();
        tokio::spawn(async move {
            // The console socket exists once the runner reports a state.
            if status
                .wait_for(|s| s.state != crate::lifecycle::State::NoState)
                .await
                .is_err()
            {
                return;
            }
            // The terminal is back in its normal mode here.
            match attach::attach(&socket).await {
                Ok(attach::Ended::Detached) => eprintln!(
                    "\nDetached from the console; the VM keeps running (Ctrl-C stops it)."
                ),
                Ok(attach::Ended::ConsoleClosed) => eprintln!(),
                Err(e) => tracing::warn!(error = %e, "cannot attach the console"),
            }
        })
    });

    let result = backend.run(runner).await;

    if let Some(task) = attached {
        // Dropping the attach task restores the terminal.
        task.abort();
        let _ = task.await;
    }
    signals.abort();
    match result {
        Ok(outcome) if outcome.succeeded() => exit::SUCCESS,
        Ok(_) => exit::VM_FAILED,
        Err(e) => {
            tracing::error!("{e}");
            exit::FAILURE
        }
    }
}

/// Every host check for `domain` before anything is created or started.
/// They block (firmware files, the KVM probe, libvirtd's domain
/// capabilities over a blocking client), so they run on tokio's blocking
/// pool, not on the runtime thread that serves signals and sockets.
pub(crate) async fn host_checks(
    g: &GlobalArgs,
    s: &Settings,
    domain: &Domain,
    paths: &VmPaths,
    serial: ch::SerialMode,
) -> Result<Launch, String> {
    let (g, s, domain, paths) = (g.clone(), s.clone(), domain.clone(), paths.clone());
    let checks = tokio::task::spawn_blocking(move || match domain.hypervisor {
        Hypervisor::CloudHypervisor => ch_options(&g, &s, &domain, Mode::Run)
            .map(|o| Launch::Ch(ch::ChOptions { serial, ..o })),
        Hypervisor::Libvirt => {
            libvirt_options(&g, &s, &domain, &paths, Mode::Run).map(Launch::Libvirt)
        }
    });
    checks
        .await
        .map_err(|e| format!("the host checks did not finish: {e}"))?
}

/// A backend's options, every host check passed.
pub(crate) enum Launch {
    Ch(ch::ChOptions),
    Libvirt(libvirt::LibvirtOptions),
}

impl Launch {
    /// Cloud Hypervisor serves the serial port on a socket or PTY that the
    /// launcher relays; libvirt binds `virt-serial0` itself.
    pub(crate) fn early_console(&self, domain: &Domain) -> bool {
        matches!(self, Launch::Ch(_)) && domain.devices.serial_console
    }

    /// Creates the VM on this backend and runs it to its final state.
    pub(crate) async fn run(self, runner: Runner) -> Result<runner::Outcome, runner::RunError> {
        match self {
            Launch::Ch(ch_opts) => {
                runner
                    .run(|d, p| async move { ch::create(&d, &p, &ch_opts).await })
                    .await
            }
            Launch::Libvirt(lv_opts) => {
                runner
                    .run(|d, p| async move { libvirt::create(&d, &p, &lv_opts).await })
                    .await
            }
        }
    }

    /// The hypervisor's name and version, as virt-handler's GetQemuVersion
    /// reports it.
    pub(crate) async fn hypervisor_version(&self) -> Result<String, String> {
        match self {
            Launch::Ch(o) => {
                let binary = ch::process::binary(o.binary.as_deref());
                let out = tokio::process::Command::new(&binary)
                    .arg("--version")
                    .output()
                    .await
                    .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            }
            Launch::Libvirt(o) => {
                let (client, _notices) = libvirt::rpc::Client::connect(&o.uri)
                    .await
                    .map_err(|e| e.to_string())?;
                let v = client
                    .hypervisor_version()
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(format!(
                    "QEMU {}.{}.{}",
                    v / 1_000_000,
                    v / 1000 % 1000,
                    v % 1000
                ))
            }
        }
    }
}

/// Cloud Hypervisor options for `domain`: the binary and the firmware.
fn ch_options(
    g: &GlobalArgs,
    s: &Settings,
    domain: &Domain,
    mode: Mode,
) -> Result<ch::ChOptions, String> {
    let choice = firmware_choice(s, domain, mode)?;
    let mut host = ch::HostInputs::from_choice(&choice);
    host.cpu =
        crate::host::cpu::for_cloud_hypervisor(domain, g.cpu_probe.as_deref(), mode == Mode::Run)?;
    Ok(ch::ChOptions {
        binary: g.cloud_hypervisor_bin.clone(),
        host,
        ..ch::ChOptions::default()
    })
}

/// libvirt options for `domain`: the firmware, then the host's
/// confidential-computing facts, each checked as `mode` requires.
fn libvirt_options(
    g: &GlobalArgs,
    s: &Settings,
    domain: &Domain,
    paths: &VmPaths,
    mode: Mode,
) -> Result<libvirt::LibvirtOptions, String> {
    let choice = firmware_choice(s, domain, mode)?;
    let mut opts = libvirt::LibvirtOptions::for_domain(domain, paths, &g.libvirt_uri, &choice)?;
    opts.confidential = confidential_host(g, domain, mode)?;
    opts.cpu_quirks =
        crate::host::cpu::libvirt_quirks(domain, &g.libvirt_uri, g.cpu_probe.as_deref());
    Ok(opts)
}

/// Why a dry-run translation produced nothing.
enum Refusal {
    /// The backend cannot express parts of the spec (exit 2).
    Spec(SpecErrors),
    /// The launcher or the host could not do it (exit 1).
    Launcher(String),
}

/// `domain` in its hypervisor's own terms (the `vm.create` JSON or the
/// domain XML), for `render` and `validate`. The backend's translation
/// always runs, even when the firmware or host facts are missing, so a
/// dry run reports every spec problem it can.
fn translate(g: &GlobalArgs, s: &Settings, domain: &Domain, mode: Mode) -> Result<String, Refusal> {
    let mut host_problem = None;
    let text = match domain.hypervisor {
        Hypervisor::CloudHypervisor => {
            let paths = VmPaths::new(&g.private_dir, &domain.uid);
            let opts = match ch_options(g, s, domain, mode) {
                Ok(opts) => opts,
                Err(e) => {
                    host_problem = Some(e);
                    ch::ChOptions::default()
                }
            };
            let host = opts.host_inputs(&paths);
            ch::render_json(domain, &host)
                .map(|json| format!("{json}\n"))
                .map_err(SpecErrors::from)
        }
        Hypervisor::Libvirt => {
            // Each host fact on its own, so one missing does not hide what
            // the others let the translation check.
            let paths = VmPaths::new(&g.private_dir, &domain.uid);
            let firmware = firmware_choice(s, domain, mode).and_then(|choice| {
                libvirt::LibvirtOptions::for_domain(domain, &paths, &g.libvirt_uri, &choice)
            });
            let firmware = match firmware {
                Ok(opts) => opts.firmware,
                Err(e) => {
                    host_problem = Some(e);
                    None
                }
            };
            let confidential = match confidential_host(g, domain, mode) {
                Ok(host) => host,
                Err(e) => {
                    host_problem.get_or_insert(e);
                    libvirt::ConfidentialHost::default()
                }
            };
            let ctx = libvirt::RenderContext {
                paths,
                firmware,
                confidential,
                cpu_quirks: crate::host::cpu::libvirt_quirks(
                    domain,
                    &g.libvirt_uri,
                    g.cpu_probe.as_deref(),
                ),
            };
            match libvirt::render(domain, &ctx) {
                Ok(xml) => Ok(xml),
                Err(libvirt::RenderError::Spec(errors)) => Err(errors),
                Err(e) => return Err(Refusal::Launcher(e.to_string())),
            }
        }
    };
    // Spec errors first: they are what the user must fix whatever the host.
    match (text, host_problem) {
        (Err(errors), problem) => {
            if let Some(e) = problem {
                tracing::warn!("{e}");
            }
            Err(Refusal::Spec(errors))
        }
        (Ok(_), Some(e)) if mode != Mode::Validate => Err(Refusal::Launcher(e)),
        (Ok(text), Some(e)) => {
            tracing::warn!("{e}");
            Ok(text)
        }
        (Ok(text), None) => Ok(text),
    }
}

fn validate(g: &GlobalArgs, s: &Settings, args: &ValidateArgs) -> u8 {
    if args.explain {
        return explain(g, s, &args.spec);
    }
    let domain = match load(g, s, &args.spec) {
        Ok(d) => d,
        Err(code) => return code,
    };
    // The backend's translation may refuse what the neutral checks let
    // through; those refusals name spec fields too.
    match translate(g, s, &domain, Mode::Validate) {
        Ok(_) => {}
        Err(Refusal::Spec(errors)) => {
            print_spec_errors(&args.spec, &errors);
            return exit::INVALID_SPEC;
        }
        Err(Refusal::Launcher(e)) => {
            report(&e);
            return exit::FAILURE;
        }
    }
    if args.json {
        match serde_json::to_string_pretty(&domain) {
            Ok(text) => print_stdout(&format!("{text}\n"), exit::SUCCESS),
            Err(e) => {
                report(format_args!("cannot encode the VM as JSON: {e}"));
                exit::FAILURE
            }
        }
    } else {
        print_stdout(&summary(&domain), exit::SUCCESS)
    }
}

/// `validate --explain`: every feature the spec uses with each hypervisor's
/// answer, then what each backend's translation refuses on top. Exits like
/// `validate` for the hypervisor the spec chose.
fn explain(g: &GlobalArgs, s: &Settings, spec: &Path) -> u8 {
    let domain = match domain_model::resolve_path(spec, &load_options(g, s)) {
        Ok(d) => d,
        Err(errors) => {
            print_spec_errors(spec, &errors);
            return exit::INVALID_SPEC;
        }
    };
    let mut out = format!(
        "{}: {} (chosen hypervisor: {})\n",
        spec.display(),
        domain.name,
        domain.hypervisor
    );
    let features = domain_model::explain(&domain);
    if features.is_empty() {
        out.push_str("  uses no feature that any hypervisor lacks\n");
    }
    for f in &features {
        out.push_str(&format!("- {} ({})\n", f.label, f.spec_path));
        for h in &f.hypervisors {
            match &h.reason {
                None => out.push_str(&format!("    {:<17} yes\n", h.hypervisor.as_str())),
                Some(why) => {
                    out.push_str(&format!("    {:<17} no: {why}\n", h.hypervisor.as_str()))
                }
            }
        }
    }
    let mut chosen_refuses = domain_model::check_support(&domain).is_err();
    for hypervisor in [Hypervisor::CloudHypervisor, Hypervisor::Libvirt] {
        let mut d = domain.clone();
        d.hypervisor = hypervisor;
        match translate(g, s, &d, Mode::Validate) {
            Ok(_) => {}
            Err(Refusal::Spec(errors)) => {
                chosen_refuses |= hypervisor == domain.hypervisor;
                // The table's refusals are listed above; what is left are
                // values out of range and what this host lacks.
                let table = domain_model::check_support(&d).err().unwrap_or_default();
                let rest: Vec<_> = errors.0.iter().filter(|e| !table.0.contains(e)).collect();
                if !rest.is_empty() {
                    out.push_str(&format!("{hypervisor} on this host also refuses:\n"));
                    for e in rest {
                        out.push_str(&format!("  - {e}\n"));
                    }
                }
            }
            Err(Refusal::Launcher(e)) => out.push_str(&format!("{hypervisor}: {e}\n")),
        }
    }
    let code = if chosen_refuses {
        exit::INVALID_SPEC
    } else {
        exit::SUCCESS
    };
    print_stdout(&out, code)
}

fn render(g: &GlobalArgs, s: &Settings, spec: &Path) -> u8 {
    let domain = match load(g, s, spec) {
        Ok(d) => d,
        Err(code) => return code,
    };
    match translate(g, s, &domain, Mode::Render) {
        Ok(text) => print_stdout(&text, exit::SUCCESS),
        Err(Refusal::Spec(errors)) => {
            print_spec_errors(spec, &errors);
            exit::INVALID_SPEC
        }
        Err(Refusal::Launcher(e)) => {
            report(&e);
            exit::FAILURE
        }
    }
}

async fn net_up(g: &GlobalArgs, s: &Settings, spec: &Path) -> u8 {
    use tokio::signal::unix::{signal, SignalKind};
    let domain = match load(g, s, spec) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        report("cannot handle SIGTERM and SIGINT");
        return exit::FAILURE;
    };
    let network = match crate::net::prepare(&domain, Path::new("/etc/resolv.conf")).await {
        Ok(n) => n,
        Err(e) => {
            report(format_args!("cannot prepare the pod network: {e}"));
            return exit::FAILURE;
        }
    };
    let taps: Vec<String> = (0..domain.devices.interfaces.len())
        .map(crate::net::tap_name)
        .collect();
    let made = serde_json::json!({
        "links": network.links(),
        "taps": taps,
        "table": crate::net::table_name(&domain.uid),
        "interfaces": domain.devices.interfaces,
    });
    let code = print_stdout(&format!("{made}\n"), exit::SUCCESS);
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    drop(network);
    code
}

async fn control_command(g: &GlobalArgs, s: &Settings, target: &Target, command: Command) -> u8 {
    let uid = match (&target.uid, &target.spec) {
        (Some(uid), _) => uid.clone(),
        (None, Some(spec)) => {
            // Only the uid is needed: skip the hypervisor support checks.
            match domain_model::resolve_path(spec, &load_options(g, s)) {
                Ok(domain) => domain.uid,
                Err(errors) => {
                    print_spec_errors(spec, &errors);
                    return exit::INVALID_SPEC;
                }
            }
        }
        // clap requires one of the two.
        (None, None) => {
            report("give the VM's SPEC or --uid");
            return exit::INVALID_SPEC;
        }
    };
    let socket = VmPaths::new(&g.private_dir, &uid).control_socket();
    let name = command.as_str();
    match control::request(&socket, command, Duration::from_secs(target.timeout)).await {
        Ok(status) => print_stdout(&format!("{status}\n"), exit::SUCCESS),
        Err(e) => {
            report(format_args!("{name}: {e}"));
            exit::FAILURE
        }
    }
}

/// Writes a command's result to stdout; `code` unless stdout is broken (a
/// closed pipe is the reader's choice and not worth a message).
fn print_stdout(text: &str, code: u8) -> u8 {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => code,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => code,
        Err(e) => {
            report(format_args!("cannot write to stdout: {e}"));
            exit::FAILURE
        }
    }
}

/// What `validate` prints: the resolved VM, one aspect per line.
fn summary(d: &Domain) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let mib = |b: u64| format!("{} MiB", b / (1 << 20));
    let _ = writeln!(
        s,
        "VirtualMachineInstance {}/{} is valid",
        d.namespace, d.name
    );
    let _ = writeln!(s, "  uid:           {}", d.uid);
    let _ = writeln!(s, "  hypervisor:    {}", d.hypervisor);
    let _ = writeln!(
        s,
        "  architecture:  {}",
        serde_json::to_value(d.architecture)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{:?}", d.architecture))
    );
    let _ = writeln!(
        s,
        "  cpu:           {} vCPU ({} sockets x {} cores x {} threads), max {}, model {:?}",
        d.cpu.vcpus(),
        d.cpu.sockets,
        d.cpu.cores,
        d.cpu.threads,
        d.cpu.max_vcpus(),
        d.cpu.model
    );
    let mut memory = mib(d.memory.guest);
    if let Some(max) = d.memory.max_guest {
        let _ = write!(memory, ", max {}", mib(max));
    }
    if let Some(page) = d.memory.hugepage_size {
        let _ = write!(memory, ", hugepages of {} KiB", page / 1024);
    }
    let _ = writeln!(s, "  memory:        {memory}");
    let boot = match &d.boot {
        domain_model::Boot::Kernel {
            kernel,
            initrd,
            cmdline,
            image,
        } => {
            let mut b = format!("kernel {}", kernel.display());
            if let Some(i) = initrd {
                let _ = write!(b, ", initrd {}", i.display());
            }
            if let Some(image) = image {
                let _ = write!(
                    b,
                    " in image {} (pull policy {})",
                    image.image,
                    image.pull_policy.as_str()
                );
            }
            if let Some(c) = cmdline {
                let _ = write!(b, ", cmdline {c:?}");
            }
            b
        }
        domain_model::Boot::Efi {
            secure_boot,
            persistent,
        } => format!("EFI (secure boot {secure_boot}, persistent NVRAM {persistent})"),
        domain_model::Boot::Bios => "BIOS".into(),
    };
    let _ = writeln!(s, "  boot:          {boot}");
    if d.disks.is_empty() {
        let _ = writeln!(s, "  disks:         none");
    }
    for disk in &d.disks {
        let _ = writeln!(
            s,
            "  disk {}:{}{:?} on {} {:?}{} from {}",
            disk.name,
            " ".repeat(8usize.saturating_sub(disk.name.len())),
            disk.device,
            disk.bus.as_str(),
            disk.source.format,
            if disk.readonly { ", read-only" } else { "" },
            disk.source.path.display()
        );
        if let Some(domain_model::Generated::ImageOverlay { image }) = &disk.source.generated {
            let _ = writeln!(
                s,
                "                 over {}{} pulled into the image cache (pull policy {})",
                image.image,
                image
                    .path
                    .as_deref()
                    .map(|p| format!(" {p}"))
                    .unwrap_or_default(),
                image.pull_policy.as_str()
            );
        }
    }
    let mut devices = Vec::new();
    if d.devices.serial_console {
        devices.push("serial console");
    }
    if d.devices.rng {
        devices.push("rng");
    }
    let _ = writeln!(
        s,
        "  devices:       {}",
        if devices.is_empty() {
            "none".to_string()
        } else {
            devices.join(", ")
        }
    );
    let _ = writeln!(s, "  acpi:          {}", d.features.acpi);
    if let Some(ls) = &d.launch_security {
        let _ = writeln!(s, "  launch security: {ls:?}");
        let selector: Vec<String> = crate::host::labels::node_selector(Some(ls))
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(s, "  node selector: {}", selector.join(", "));
    }
    let _ = writeln!(
        s,
        "  grace period:  {}s",
        d.termination_grace_period.as_secs()
    );
    let _ = writeln!(
        s,
        "  start:         {}",
        if d.start_paused { "paused" } else { "running" }
    );
    let migratable = &d.live_migratable;
    let _ = writeln!(
        s,
        "  migratable:    {}{}",
        migratable.live_migratable,
        migratable
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn console_socket_mode_is_octal_permission_bits() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("600"), Ok(0o600));
        assert_eq!(parse_mode("0o640"), Ok(0o640));
        assert!(parse_mode("0999").is_err());
        assert!(parse_mode("4755").is_err());
    }

    #[test]
    fn control_commands_take_a_spec_or_a_uid_but_not_both() {
        let ok = Cli::try_parse_from(["ch-launcher", "pause", "--uid", "abc"]).unwrap();
        assert!(matches!(
            ok.command,
            Commands::Pause(Target { uid: Some(_), .. })
        ));
        let ok = Cli::try_parse_from(["ch-launcher", "status", "vmi.yaml"]).unwrap();
        assert!(matches!(
            ok.command,
            Commands::Status(Target { spec: Some(_), .. })
        ));
        assert!(Cli::try_parse_from(["ch-launcher", "stop"]).is_err());
        assert!(Cli::try_parse_from(["ch-launcher", "stop", "vmi.yaml", "--uid", "abc"]).is_err());
    }

    #[test]
    fn global_options_apply_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "ch-launcher",
            "validate",
            "vmi.yaml",
            "--hypervisor",
            "libvirt",
            "--private-dir",
            "/tmp/p",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.global.hypervisor, Some(Hypervisor::Libvirt));
        assert_eq!(cli.global.private_dir, PathBuf::from("/tmp/p"));
        assert_eq!(cli.global.log_format, Some(LogFormat::Json));
        assert!(
            Cli::try_parse_from(["ch-launcher", "render", "x", "--hypervisor", "qemu"]).is_err()
        );
    }

    #[test]
    fn a_uid_is_checked_like_metadata_uid() {
        for bad in ["../etc", "a/b", "..", ".", "", "x y"] {
            assert!(
                Cli::try_parse_from(["ch-launcher", "stop", "--uid", bad]).is_err(),
                "{bad:?}"
            );
        }
        let ok = Cli::try_parse_from([
            "ch-launcher",
            "stop",
            "--uid",
            "0b5bd7a4-7fa6-4d3c-9e0b-3a1f7c5e2d10",
        ]);
        assert!(ok.is_ok());
    }

    #[test]
    fn private_dir_defaults_to_kubevirts() {
        let cli = Cli::try_parse_from(["ch-launcher", "status", "--uid", "u"]).unwrap();
        assert_eq!(
            cli.global.private_dir,
            PathBuf::from("/var/run/kubevirt-private")
        );
    }
}
