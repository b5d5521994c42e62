//! ch-launcher: run one VM from a KubeVirt `VirtualMachineInstance` under
//! Cloud Hypervisor or libvirt.
//!
//! The binary (`src/main.rs`) only parses the command line and calls into
//! this library.

pub mod backend;
pub mod lifecycle;
pub mod paths;
