//! ch-launcher: run one VM from a KubeVirt `VirtualMachineInstance` under
//! Cloud Hypervisor or libvirt.
//!
//! The binary (`src/main.rs`) only parses the command line and calls into
//! this library.

pub mod backend;
pub mod ch;
pub mod host;
pub mod libvirt;
pub mod lifecycle;
pub mod paths;
pub mod console;
pub mod control;
pub mod runner;
pub mod attach;
pub mod cli;
pub mod logging;
pub mod util;
