//! KubeVirt `VirtualMachineInstance` specs in, one validated hypervisor-neutral
//! [`Domain`] out.
//!
//! Data flows one way: text (YAML or JSON) -> [`parse`] into [`api`] (the VMI
//! as written) -> validation, defaults and resolution ([`resolve`], with
//! [`launch_security`] and [`migration`]) -> [`Domain`]. [`support`] says what
//! each hypervisor can do with a `Domain`; [`gates`] holds the feature gates.
//! Every problem found on the way is reported at once, each with its field
//! path ([`SpecErrors`]).

pub mod api;
pub mod domain;
pub mod error;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod gates;
pub mod launch_security;
pub mod migration;
pub mod parse;
pub mod quantity;
pub mod resolve;
pub mod support;

pub use domain::*;
pub use error::{FieldError, SpecErrors};
pub mod load;
pub use load::{load_path, load_str, resolve_path, resolve_str, ContainerDiskLayout, LoadOptions};
pub use support::{check_support, explain, FeatureSupport};
