//! libvirt's RPC wire format and the part of its remote protocol the
//! launcher uses: message framing (`src/rpc/virnetprotocol.x`), keepalive
//! (`src/rpc/virkeepaliveprotocol.x`) and the procedures, arguments and
//! replies of `src/remote/remote_protocol.x`, with their numbers as libvirt
//! defines them (the numbers are ABI: libvirt never renumbers).
//!
//! A message on the socket is a 4-byte big-endian length (counting itself),
//! a 24-byte header, then the XDR body of the procedure's args, ret, msg or,
//! for an error reply, a `remote_error`.

use super::xdr::{DecodeError, Decoder, Encoder};
use std::fmt;

/// `REMOTE_PROGRAM` and `REMOTE_PROTOCOL_VERSION`.
pub const REMOTE_PROGRAM: u32 = 0x2000_8086;
pub const REMOTE_VERSION: u32 = 1;
/// `KEEPALIVE_PROGRAM`, `KEEPALIVE_PROTOCOL_VERSION` and its procedures.
pub const KEEPALIVE_PROGRAM: u32 = 0x6b65_6570;
pub const KEEPALIVE_VERSION: u32 = 1;
pub const KEEPALIVE_PROC_PING: i32 = 1;
pub const KEEPALIVE_PROC_PONG: i32 = 2;

/// `VIR_NET_MESSAGE_MAX`: the largest message (without its length word).
pub const MESSAGE_MAX: usize = 16_777_216;
/// The length word plus `VIR_NET_MESSAGE_HEADER_MAX`.
pub const HEADER_LEN: usize = 4 + 24;

/// `remote_procedure` numbers (from `remote_protocol.x`).
pub mod proc {
    pub const CONNECT_OPEN: i32 = 1;
    pub const CONNECT_CLOSE: i32 = 2;
    pub const CONNECT_GET_VERSION: i32 = 4;
    pub const DOMAIN_CREATE_XML: i32 = 10;
    pub const DOMAIN_DESTROY: i32 = 12;
    pub const DOMAIN_LOOKUP_BY_NAME: i32 = 23;
    pub const DOMAIN_LOOKUP_BY_UUID: i32 = 24;
    pub const DOMAIN_RESUME: i32 = 28;
    pub const DOMAIN_SUSPEND: i32 = 34;
    pub const AUTH_LIST: i32 = 66;
    pub const AUTH_POLKIT: i32 = 70;
    pub const DOMAIN_IS_ACTIVE: i32 = 150;
    pub const DOMAIN_IS_PERSISTENT: i32 = 151;
    pub const CONNECT_GET_LIB_VERSION: i32 = 157;
    pub const DOMAIN_CREATE_WITH_FLAGS: i32 = 196;
    pub const DOMAIN_GET_STATE: i32 = 212;
    pub const DOMAIN_UNDEFINE_FLAGS: i32 = 231;
    pub const DOMAIN_RESET: i32 = 245;
    pub const DOMAIN_SHUTDOWN_FLAGS: i32 = 258;
    pub const CONNECT_DOMAIN_EVENT_CALLBACK_REGISTER_ANY: i32 = 316;
    pub const CONNECT_DOMAIN_EVENT_CALLBACK_DEREGISTER_ANY: i32 = 317;
    pub const DOMAIN_EVENT_CALLBACK_LIFECYCLE: i32 = 318;
    pub const DOMAIN_EVENT_CALLBACK_REBOOT: i32 = 319;
    pub const CONNECT_GET_DOMAIN_CAPABILITIES: i32 = 342;
    pub const DOMAIN_DEFINE_XML_FLAGS: i32 = 350;
}

/// Flag and enum values from libvirt's public headers (`libvirt-domain.h`).
pub mod flags {
    pub const VIR_DOMAIN_START_PAUSED: u32 = 1;
    /// libvirtd destroys the domain when the creating connection closes.
    pub const VIR_DOMAIN_START_AUTODESTROY: u32 = 1 << 1;
    pub const VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN: u32 = 1;
    pub const VIR_DOMAIN_UNDEFINE_NVRAM: u32 = 1 << 2;
    pub const VIR_DOMAIN_UNDEFINE_KEEP_NVRAM: u32 = 1 << 3;
    pub const VIR_DOMAIN_EVENT_ID_LIFECYCLE: i32 = 0;
    pub const VIR_DOMAIN_EVENT_ID_REBOOT: i32 = 1;
    /// `virDomainState`.
    pub const VIR_DOMAIN_RUNNING: i32 = 1;
    pub const VIR_DOMAIN_PAUSED: i32 = 3;
    pub const VIR_DOMAIN_SHUTOFF: i32 = 5;
    pub const VIR_DOMAIN_CRASHED: i32 = 6;
    pub const VIR_DOMAIN_PMSUSPENDED: i32 = 7;
    /// `virDomainPausedReason`.
    pub const VIR_DOMAIN_PAUSED_UNKNOWN: i32 = 0;
    pub const VIR_DOMAIN_PAUSED_USER: i32 = 1;
    pub const VIR_DOMAIN_PAUSED_IOERROR: i32 = 5;
    pub const VIR_DOMAIN_PAUSED_WATCHDOG: i32 = 6;
    pub const VIR_DOMAIN_PAUSED_CRASHED: i32 = 10;
    pub const VIR_DOMAIN_PAUSED_STARTING_UP: i32 = 11;
    /// `virDomainShutoffReason`.
    pub const VIR_DOMAIN_SHUTOFF_SHUTDOWN: i32 = 1;
    pub const VIR_DOMAIN_SHUTOFF_DESTROYED: i32 = 2;
    pub const VIR_DOMAIN_SHUTOFF_CRASHED: i32 = 3;
}

/// `remote_auth_type`.
pub mod auth {
    pub const NONE: i32 = 0;
    pub const SASL: i32 = 1;
    pub const POLKIT: i32 = 2;
}

/// `VIR_ERR_NO_DOMAIN` in `virterror.h`.
pub const VIR_ERR_NO_DOMAIN: i32 = 42;
/// `VIR_ERR_OPERATION_FAILED`: among others, a name or UUID already in use.
pub const VIR_ERR_OPERATION_FAILED: i32 = 9;
/// `VIR_ERR_DOM_EXIST`.
pub const VIR_ERR_DOM_EXIST: i32 = 28;
/// `VIR_ERR_OPERATION_INVALID`: e.g. "domain is not running".
pub const VIR_ERR_OPERATION_INVALID: i32 = 55;

/// `virNetMessageType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Call,
    Reply,
    Message,
    Stream,
    CallWithFds,
    ReplyWithFds,
}

impl MessageType {
    fn code(self) -> i32 {
        match self {
            MessageType::Call => 0,
            MessageType::Reply => 1,
            MessageType::Message => 2,
            MessageType::Stream => 3,
            MessageType::CallWithFds => 4,
            MessageType::ReplyWithFds => 5,
        }
    }

    fn from_code(code: i32) -> Result<MessageType, DecodeError> {
        Ok(match code {
            0 => MessageType::Call,
            1 => MessageType::Reply,
            2 => MessageType::Message,
            3 => MessageType::Stream,
            4 => MessageType::CallWithFds,
            5 => MessageType::ReplyWithFds,
            other => return Err(DecodeError(format!("unknown message type {other}"))),
        })
    }
}

/// `virNetMessageStatus`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Error,
    Continue,
}

impl Status {
    fn code(self) -> i32 {
        match self {
            Status::Ok => 0,
            Status::Error => 1,
            Status::Continue => 2,
        }
    }

    fn from_code(code: i32) -> Result<Status, DecodeError> {
        Ok(match code {
            0 => Status::Ok,
            1 => Status::Error,
            2 => Status::Continue,
            other => return Err(DecodeError(format!("unknown message status {other}"))),
        })
    }
}

/// `virNetMessageHeader`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub prog: u32,
    pub vers: u32,
    pub proc: i32,
    pub kind: MessageType,
    pub serial: u32,
    pub status: Status,
}

impl Header {
    /// A call of the remote program.
    pub fn call(proc: i32, serial: u32) -> Header {
        Header {
            prog: REMOTE_PROGRAM,
            vers: REMOTE_VERSION,
            proc,
            kind: MessageType::Call,
            serial,
            status: Status::Ok,
        }
    }
}

/// Frames a message: length word, header, body.
pub fn frame(header: &Header, body: &[u8]) -> Vec<u8> {
    let mut e = Encoder::with_buffer(Vec::with_capacity(HEADER_LEN + body.len()));
    let total = u32::try_from(HEADER_LEN + body.len()).unwrap_or(u32::MAX);
    e.uint(total)
        .uint(header.prog)
        .uint(header.vers)
        .int(header.proc)
        .int(header.kind.code())
        .uint(header.serial)
        .int(header.status.code());
    e.bytes_mut().extend_from_slice(body);
    e.into_bytes()
}

/// The total length announced by a message's first four bytes, checked
/// against libvirt's limits so a corrupt stream cannot make us allocate
/// gigabytes.
pub fn frame_len(word: [u8; 4]) -> Result<usize, DecodeError> {
    let len = u32::from_be_bytes(word) as usize;
    if !(HEADER_LEN..=MESSAGE_MAX + 4).contains(&len) {
        return Err(DecodeError(format!(
            "message length {len} outside {HEADER_LEN}..={}",
            MESSAGE_MAX + 4
        )));
    }
    Ok(len)
}

/// Splits a message without its length word into header and body.
pub fn parse(message: &[u8]) -> Result<(Header, &[u8]), DecodeError> {
    let mut d = Decoder::new(message);
    let header = Header {
        prog: d.uint()?,
        vers: d.uint()?,
        proc: d.int()?,
        kind: MessageType::from_code(d.int()?)?,
        serial: d.uint()?,
        status: Status::from_code(d.int()?)?,
    };
    Ok((header, &message[HEADER_LEN - 4..]))
}

/// `remote_nonnull_domain`: how every call names a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRef {
    pub name: String,
    pub uuid: [u8; 16],
    /// The running domain's id, -1 when shut off.
    pub id: i32,
}

impl DomainRef {
    pub fn encode(&self, e: &mut Encoder) {
        e.string(&self.name).fixed_opaque(&self.uuid).int(self.id);
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<DomainRef, DecodeError> {
        let name = d.string()?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(d.fixed_opaque(16)?);
        let id = d.int()?;
        Ok(DomainRef { name, uuid, id })
    }
}

/// `remote_error` (`virNetMessageError`): what libvirtd says went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteError {
    /// `virErrorNumber`, e.g. 42 `VIR_ERR_NO_DOMAIN`.
    pub code: i32,
    /// `virErrorDomain`: the libvirt component that failed.
    pub domain: i32,
    pub message: Option<String>,
    pub level: i32,
    pub str1: Option<String>,
    pub str2: Option<String>,
    pub str3: Option<String>,
    pub int1: i32,
    pub int2: i32,
}

impl RemoteError {
    pub fn decode(body: &[u8]) -> Result<RemoteError, DecodeError> {
        let mut d = Decoder::new(body);
        let code = d.int()?;
        let domain = d.int()?;
        let message = d.optional_string()?;
        let level = d.int()?;
        // `dom`, unused by libvirt but on the wire.
        d.optional(DomainRef::decode)?;
        let str1 = d.optional_string()?;
        let str2 = d.optional_string()?;
        let str3 = d.optional_string()?;
        let int1 = d.int()?;
        let int2 = d.int()?;
        // `net`: a `remote_nonnull_network` {name, uuid}, also unused.
        d.optional(|d| {
            d.string()?;
            d.fixed_opaque(16).map(drop)
        })?;
        d.finish()?;
        Ok(RemoteError {
            code,
            domain,
            message,
            level,
            str1,
            str2,
            str3,
            int1,
            int2,
        })
    }
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(m) => f.write_str(m),
            None => write!(
                f,
                "libvirt error code {} (domain {})",
                self.code, self.domain
            ),
        }
    }
}

/// A domain event delivered as a `VIR_NET_MESSAGE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainEvent {
    /// `remote_domain_event_callback_lifecycle_msg`.
    Lifecycle {
        callback_id: i32,
        dom: DomainRef,
        event: i32,
        detail: i32,
    },
    /// `remote_domain_event_callback_reboot_msg`.
    Reboot { callback_id: i32, dom: DomainRef },
}

impl DomainEvent {
    /// Decodes the body of a remote-program message; `None` for the
    /// procedures the launcher never subscribes to.
    pub fn decode(proc: i32, body: &[u8]) -> Result<Option<DomainEvent>, DecodeError> {
        let mut d = Decoder::new(body);
        let event = match proc {
            proc::DOMAIN_EVENT_CALLBACK_LIFECYCLE => DomainEvent::Lifecycle {
                callback_id: d.int()?,
                dom: DomainRef::decode(&mut d)?,
                event: d.int()?,
                detail: d.int()?,
            },
            proc::DOMAIN_EVENT_CALLBACK_REBOOT => DomainEvent::Reboot {
                callback_id: d.int()?,
                dom: DomainRef::decode(&mut d)?,
            },
            _ => return Ok(None),
        };
        d.finish()?;
        Ok(Some(event))
    }

    pub fn callback_id(&self) -> i32 {
        match self {
            DomainEvent::Lifecycle { callback_id, .. }
            | DomainEvent::Reboot { callback_id, .. } => *callback_id,
        }
    }
}

/// Argument bodies, one function per procedure, named after their `_args`
/// struct in `remote_protocol.x`.
pub mod args {
    use super::{DomainRef, Encoder};

    fn build(f: impl FnOnce(&mut Encoder)) -> Vec<u8> {
        let mut e = Encoder::new();
        f(&mut e);
        e.into_bytes()
    }

    /// `remote_connect_open_args { remote_string name; unsigned int flags; }`
    pub fn connect_open(name: &str, flags: u32) -> Vec<u8> {
        build(|e| {
            e.optional_string(Some(name)).uint(flags);
        })
    }

    /// `remote_domain_lookup_by_name_args { remote_nonnull_string name; }`
    pub fn name(name: &str) -> Vec<u8> {
        build(|e| {
            e.string(name);
        })
    }

    /// `remote_domain_define_xml_flags_args { remote_nonnull_string xml; unsigned int flags; }`
    pub fn define_xml(xml: &str, flags: u32) -> Vec<u8> {
        build(|e| {
            e.string(xml).uint(flags);
        })
    }

    /// `remote_domain_lookup_by_uuid_args { remote_uuid uuid; }`
    pub fn uuid(uuid: &[u8; 16]) -> Vec<u8> {
        build(|e| {
            e.fixed_opaque(uuid);
        })
    }

    /// `{ remote_nonnull_domain dom; }`: suspend, resume, destroy, is_active.
    pub fn dom(dom: &DomainRef) -> Vec<u8> {
        build(|e| dom.encode(e))
    }

    /// `{ remote_nonnull_domain dom; unsigned int flags; }`: create with
    /// flags, reset, shutdown flags, undefine flags, get state.
    pub fn dom_flags(dom: &DomainRef, flags: u32) -> Vec<u8> {
        build(|e| {
            dom.encode(e);
            e.uint(flags);
        })
    }

    /// `remote_connect_get_domain_capabilities_args { remote_string
    /// emulatorbin, arch, machine, virttype; unsigned int flags; }`
    pub fn domain_capabilities(
        emulator: Option<&str>,
        arch: Option<&str>,
        machine: Option<&str>,
        virttype: Option<&str>,
        flags: u32,
    ) -> Vec<u8> {
        build(|e| {
            e.optional_string(emulator)
                .optional_string(arch)
                .optional_string(machine)
                .optional_string(virttype)
                .uint(flags);
        })
    }

    /// `remote_connect_domain_event_callback_register_any_args { int
    /// eventID; remote_domain dom; }`
    pub fn event_register(event_id: i32, dom: Option<&DomainRef>) -> Vec<u8> {
        build(|e| {
            e.int(event_id).optional(dom, |e, d| d.encode(e));
        })
    }

    /// `remote_connect_domain_event_callback_deregister_any_args { int callbackID; }`
    pub fn event_deregister(callback_id: i32) -> Vec<u8> {
        build(|e| {
            e.int(callback_id);
        })
    }
}

/// Reply bodies, named after their `_ret` struct.
pub mod ret {
    use super::{auth, DecodeError, Decoder, DomainRef};

    fn whole<T>(
        body: &[u8],
        f: impl FnOnce(&mut Decoder<'_>) -> Result<T, DecodeError>,
    ) -> Result<T, DecodeError> {
        let mut d = Decoder::new(body);
        let v = f(&mut d)?;
        d.finish()?;
        Ok(v)
    }

    /// A reply without a body (`void` ret).
    pub fn empty(body: &[u8]) -> Result<(), DecodeError> {
        whole(body, |_| Ok(()))
    }

    /// `remote_auth_list_ret { remote_auth_type types<REMOTE_AUTH_TYPE_LIST_MAX>; }`
    pub fn auth_list(body: &[u8]) -> Result<Vec<i32>, DecodeError> {
        // REMOTE_AUTH_TYPE_LIST_MAX
        whole(body, |d| d.array(20, |d| d.int()))
    }

    /// `remote_auth_polkit_ret { int complete; }`
    pub fn auth_polkit(body: &[u8]) -> Result<bool, DecodeError> {
        whole(body, |d| d.int()).map(|c| c != 0)
    }

    /// `{ unsigned hyper ver; }`: lib version, hypervisor version.
    pub fn version(body: &[u8]) -> Result<u64, DecodeError> {
        whole(body, |d| d.uhyper())
    }

    /// `{ remote_nonnull_domain dom; }`: lookup, define, create with flags.
    pub fn dom(body: &[u8]) -> Result<DomainRef, DecodeError> {
        whole(body, DomainRef::decode)
    }

    /// `{ int active; }` or `{ int callbackID; }`.
    pub fn int(body: &[u8]) -> Result<i32, DecodeError> {
        whole(body, |d| d.int())
    }

    /// `remote_domain_get_state_ret { int state; int reason; }`
    pub fn state(body: &[u8]) -> Result<(i32, i32), DecodeError> {
        whole(body, |d| Ok((d.int()?, d.int()?)))
    }

    /// `{ remote_nonnull_string xml; }` (domain capabilities).
    pub fn string(body: &[u8]) -> Result<String, DecodeError> {
        whole(body, |d| d.string())
    }

    /// Whether the server lets us in without SASL.
    pub fn auth_acceptable(types: &[i32]) -> bool {
        types.is_empty() || types.contains(&auth::NONE) || types.contains(&auth::POLKIT)
    }
}
