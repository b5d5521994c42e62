//! A native client of libvirt's RPC protocol, the one `libvirt.so` itself
//! speaks to libvirtd over its unix socket. The launcher needs a dozen
//! procedures; linking libvirt for them pulled 56 shared libraries (GnuTLS,
//! OpenSSL, GLib, ICU, ...) into its address space, over 10 MiB of RSS.
//!
//! [`xdr`] is the encoding, [`protocol`] the framing, procedure numbers and
//! message bodies, [`client`] the connections.

pub mod client;
pub mod protocol;
pub mod xdr;

pub use client::{BlockingClient, Client, Notice, RpcError};
pub use protocol::{flags, DomainEvent, DomainRef, RemoteError};

#[cfg(test)]
mod tests;
