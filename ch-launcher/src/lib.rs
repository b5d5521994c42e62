//! ch-launcher: run one VM from a KubeVirt `VirtualMachineInstance` under
//! Cloud Hypervisor or libvirt.
//!
//! The binary (`src/main.rs`) only parses the command line and calls into
//! this library.

pub mod attach;
pub mod backend;
pub mod ch;
pub mod cli;
pub mod console;
pub mod console_log;
pub mod control;
pub mod host;
pub mod hotplug;
pub mod libvirt;
pub mod lifecycle;
pub mod logging;
pub mod net;
pub mod oci;
pub mod paths;
pub mod pod;
pub mod runner;
pub mod util;
pub mod virtiofs;
