//! KubeVirt `VirtualMachineInstance` specs in, one validated hypervisor-neutral
//! [`Domain`] out.
//!
//! Data flows one way: text (YAML or JSON) -> [`api`] (the VMI as written) ->
//! validation, defaults and resolution ([`resolve`]) -> [`Domain`]. Every
//! problem found on the way is reported at once, each with its field path
//! ([`SpecErrors`]).

pub mod domain;
pub mod error;

pub use domain::*;
pub use error::{FieldError, SpecErrors};
pub mod load;
pub use load::{check_support, load_path, resolve_path, resolve_str, LoadOptions};
