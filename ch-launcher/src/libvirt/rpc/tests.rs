//! Golden bytes recorded from the real libvirtd 9.0 on the CI machine
//! (`strace -x -e trace=read,write virsh -c qemu:///system ...`), a fake
//! server for the reader's demultiplexing and EOF handling, and a round
//! trip against the real daemon (SKIP when it is unreachable).

use super::client::{classify, pong, Client, Incoming, Notice, RpcError};
use super::protocol::{self, args, flags, frame, parse, proc, ret, DomainEvent, Header};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONNECT_OPEN_CALL: &[u8] = &[
    0x00, 0x00, 0x00, 0x38, 0x20, 0x00, 0x80, 0x86, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
    0x00, 0x00, 0x00, 0x0e, 0x71, 0x65, 0x6d, 0x75, 0x3a, 0x2f, 0x2f, 0x2f, 0x73, 0x79, 0x73, 0x74,
    0x65, 0x6d, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];
const AUTH_LIST_REPLY: &[u8] = &[
    0x20, 0x00, 0x80, 0x86, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x42, 0x00, 0x00, 0x00, 0x01,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00,
];
const GET_VERSION_REPLY: &[u8] = &[
    0x20, 0x00, 0x80, 0x86, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x01,
    0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x6a, 0xd7, 0xa6,
];
const LIFECYCLE_EVENT: &[u8] = &[
    0x20, 0x00, 0x80, 0x86, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x01, 0x3e, 0x00, 0x00, 0x00, 0x02,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x3d, 0x00, 0x00, 0x00, 0x0a,
    0x63, 0x68, 0x6c, 0x2d, 0x67, 0x6f, 0x6c, 0x64, 0x65, 0x6e, 0x00, 0x00, 0x0b, 0x5c, 0x2e, 0x06,
    0x1f, 0x2a, 0x4b, 0x0c, 0x9d, 0x3e, 0x4f, 0x5a, 0x6b, 0x7c, 0x8d, 0x9e, 0xff, 0xff, 0xff, 0xff,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];
const NO_DOMAIN_ERROR_REPLY: &[u8] = &[
    0x20, 0x00, 0x80, 0x86, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x17, 0x00, 0x00, 0x00, 0x01,
    0x00, 0x00, 0x00, 0x06, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x2a, 0x00, 0x00, 0x00, 0x0a,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x3b, 0x44, 0x6f, 0x6d, 0x61, 0x69, 0x6e, 0x20, 0x6e,
    0x6f, 0x74, 0x20, 0x66, 0x6f, 0x75, 0x6e, 0x64, 0x3a, 0x20, 0x6e, 0x6f, 0x20, 0x64, 0x6f, 0x6d,
    0x61, 0x69, 0x6e, 0x20, 0x77, 0x69, 0x74, 0x68, 0x20, 0x6d, 0x61, 0x74, 0x63, 0x68, 0x69, 0x6e,
    0x67, 0x20, 0x6e, 0x61, 0x6d, 0x65, 0x20, 0x27, 0x63, 0x68, 0x6c, 0x2d, 0x6e, 0x6f, 0x73, 0x75,
    0x63, 0x68, 0x27, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
    0x00, 0x00, 0x00, 0x14, 0x44, 0x6f, 0x6d, 0x61, 0x69, 0x6e, 0x20, 0x6e, 0x6f, 0x74, 0x20, 0x66,
    0x6f, 0x75, 0x6e, 0x64, 0x3a, 0x20, 0x25, 0x73, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x29,
    0x6e, 0x6f, 0x20, 0x64, 0x6f, 0x6d, 0x61, 0x69, 0x6e, 0x20, 0x77, 0x69, 0x74, 0x68, 0x20, 0x6d,
    0x61, 0x74, 0x63, 0x68, 0x69, 0x6e, 0x67, 0x20, 0x6e, 0x61, 0x6d, 0x65, 0x20, 0x27, 0x63, 0x68,
    0x6c, 0x2d, 0x6e, 0x6f, 0x73, 0x75, 0x63, 0x68, 0x27, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00,
];

/// Strips the length word as the reader does after reading it.
fn body_of(framed: &[u8]) -> &[u8] {
    assert_eq!(
        u32::from_be_bytes([framed[0], framed[1], framed[2], framed[3]]) as usize,
        framed.len()
    );
    &framed[4..]
}

#[test]
fn connect_open_call_matches_what_libvirt_sends() {
    // virsh's third call (serial 2) after AUTH_LIST and a feature probe.
    let ours = frame(
        &Header::call(proc::CONNECT_OPEN, 2),
        &args::connect_open("qemu:///system", 0),
    );
    assert_eq!(ours, CONNECT_OPEN_CALL);
}

#[test]
fn auth_list_reply_from_libvirtd_decodes_to_auth_none() {
    let Incoming::Reply { serial, reply } = classify(AUTH_LIST_REPLY).unwrap() else {
        panic!("not a reply");
    };
    assert_eq!(serial, 0);
    assert_eq!(
        ret::auth_list(&reply.unwrap()).unwrap(),
        vec![protocol::auth::NONE]
    );
}

#[test]
fn hypervisor_version_reply_decodes_to_qemu_7_2_22() {
    let Incoming::Reply { serial, reply } = classify(GET_VERSION_REPLY).unwrap() else {
        panic!("not a reply");
    };
    assert_eq!(serial, 7);
    assert_eq!(ret::version(&reply.unwrap()).unwrap(), 7_002_022);
}

#[test]
fn recorded_lifecycle_event_decodes_callback_domain_event_and_detail() {
    let (header, _) = parse(LIFECYCLE_EVENT).unwrap();
    assert_eq!(header.proc, proc::DOMAIN_EVENT_CALLBACK_LIFECYCLE);
    let Incoming::Event(DomainEvent::Lifecycle {
        callback_id,
        dom,
        event,
        detail,
    }) = classify(LIFECYCLE_EVENT).unwrap()
    else {
        panic!("not a lifecycle event");
    };
    assert_eq!(callback_id, 61);
    assert_eq!(dom.name, "chl-golden");
    assert_eq!(
        dom.uuid,
        [
            0x0b, 0x5c, 0x2e, 0x06, 0x1f, 0x2a, 0x4b, 0x0c, 0x9d, 0x3e, 0x4f, 0x5a, 0x6b, 0x7c,
            0x8d, 0x9e
        ]
    );
    assert_eq!(dom.id, -1);
    // VIR_DOMAIN_EVENT_DEFINED / VIR_DOMAIN_EVENT_DEFINED_ADDED
    assert_eq!((event, detail), (0, 0));
}

#[test]
fn recorded_error_reply_decodes_every_remote_error_field() {
    let Incoming::Reply { serial, reply } = classify(NO_DOMAIN_ERROR_REPLY).unwrap() else {
        panic!("not a reply");
    };
    assert_eq!(serial, 6);
    let e = reply.unwrap_err();
    assert_eq!(e.code, protocol::VIR_ERR_NO_DOMAIN);
    assert_eq!(e.domain, 10); // VIR_FROM_QEMU
    assert_eq!(e.level, 2); // VIR_ERR_ERROR
    assert_eq!(
        e.message.as_deref(),
        Some("Domain not found: no domain with matching name 'chl-nosuch'")
    );
    assert_eq!(e.str1.as_deref(), Some("Domain not found: %s"));
    assert_eq!(
        e.str2.as_deref(),
        Some("no domain with matching name 'chl-nosuch'")
    );
    assert_eq!(e.str3, None);
    assert_eq!((e.int1, e.int2), (-1, -1));
    assert_eq!(
        e.to_string(),
        "Domain not found: no domain with matching name 'chl-nosuch'"
    );
}

/// A keepalive ping as libvirtd sends it.
fn ping_frame() -> Vec<u8> {
    frame(
        &Header {
            prog: protocol::KEEPALIVE_PROGRAM,
            vers: 1,
            proc: protocol::KEEPALIVE_PROC_PING,
            kind: protocol::MessageType::Message,
            serial: 0,
            status: protocol::Status::Ok,
        },
        &[],
    )
}

#[test]
fn keepalive_ping_is_recognised_and_pong_is_framed_for_the_keepalive_program() {
    let ping = ping_frame();
    assert_eq!(classify(body_of(&ping)).unwrap(), Incoming::Ping);
    assert_eq!(
        pong(),
        [
            0, 0, 0, 28, 0x6b, 0x65, 0x65, 0x70, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 0, 0,
            0, 0, 0
        ]
    );
}

#[test]
fn truncated_or_oversized_frames_are_errors() {
    assert!(classify(&LIFECYCLE_EVENT[..40]).is_err());
    assert!(protocol::frame_len([0, 0, 0, 4]).is_err());
    assert!(protocol::frame_len([0x7f, 0, 0, 0]).is_err());
    assert_eq!(protocol::frame_len([0, 0, 0, 0x4c]), Ok(0x4c));
}

/// Reads one framed call from the fake server's side.
async fn read_call(s: &mut tokio::net::UnixStream) -> Option<(Header, Vec<u8>)> {
    let mut word = [0u8; 4];
    s.read_exact(&mut word).await.ok()?;
    let mut m = vec![0u8; protocol::frame_len(word).ok()? - 4];
    s.read_exact(&mut m).await.ok()?;
    let (h, body) = parse(&m).ok()?;
    Some((h, body.to_vec()))
}

fn reply_to(call: &Header, body: &[u8]) -> Vec<u8> {
    frame(
        &Header {
            kind: protocol::MessageType::Reply,
            ..*call
        },
        body,
    )
}

#[tokio::test]
async fn reader_delivers_events_answers_pings_and_reports_eof_to_calls_and_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("libvirt-sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let (auth, _) = read_call(&mut s).await.unwrap();
        assert_eq!(auth.proc, proc::AUTH_LIST);
        s.write_all(&reply_to(&auth, &[0, 0, 0, 1, 0, 0, 0, 0]))
            .await
            .unwrap();
        let (open, body) = read_call(&mut s).await.unwrap();
        assert_eq!(open.proc, proc::CONNECT_OPEN);
        assert_eq!(body, args::connect_open("qemu:///system", 0));
        s.write_all(&reply_to(&open, &[])).await.unwrap();
        // A ping, then the recorded event, then wait for the pong.
        let ping = ping_frame();
        s.write_all(&ping).await.unwrap();
        let mut event = (LIFECYCLE_EVENT.len() as u32 + 4).to_be_bytes().to_vec();
        event.extend_from_slice(LIFECYCLE_EVENT);
        s.write_all(&event).await.unwrap();
        let (pong, _) = read_call(&mut s).await.unwrap();
        assert_eq!(pong.prog, protocol::KEEPALIVE_PROGRAM);
        assert_eq!(pong.proc, protocol::KEEPALIVE_PROC_PONG);
        // A call that is never answered: the daemon goes away instead.
        let (resume, _) = read_call(&mut s).await.unwrap();
        assert_eq!(resume.proc, proc::DOMAIN_RESUME);
        drop(s);
    });
    let uri = format!("qemu+unix:///system?socket={}", sock.display());
    let (client, mut notices) = Client::connect(&uri).await.unwrap();
    let Some(Notice::Event(DomainEvent::Lifecycle { callback_id, .. })) = notices.recv().await
    else {
        panic!("no event");
    };
    assert_eq!(callback_id, 61);
    let dom = super::DomainRef {
        name: "x".into(),
        uuid: [0; 16],
        id: 1,
    };
    let err = tokio::time::timeout(Duration::from_secs(10), client.resume(&dom))
        .await
        .expect("the call ends when the connection does")
        .unwrap_err();
    assert!(matches!(err, RpcError::Closed(_)), "{err}");
    assert_eq!(
        notices.recv().await,
        Some(Notice::Closed("libvirtd closed the connection".into()))
    );
    assert!(matches!(
        client.resume(&dom).await,
        Err(RpcError::Closed(_))
    ));
    server.await.unwrap();
}

/// A daemon that accepts the connection and the handshake but never answers
/// a call: the call ends with `Timeout` after the client's call timeout, the
/// driver maps it to `BackendError::Unreachable`, and a later call still
/// works (the late answer is discarded).
#[tokio::test]
async fn call_to_a_daemon_that_never_answers_times_out_as_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("libvirt-sock");
    let listener = tokio::net::UnixListener::bind(&sock).unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        for _ in 0..2 {
            // AUTH_LIST (one type: none), then CONNECT_OPEN.
            let (call, _) = read_call(&mut s).await.unwrap();
            let body: &[u8] = if call.proc == proc::AUTH_LIST {
                &[0, 0, 0, 1, 0, 0, 0, 0]
            } else {
                &[]
            };
            s.write_all(&reply_to(&call, body)).await.unwrap();
        }
        // The destroy is read and never answered; the next call is.
        let (destroy, _) = read_call(&mut s).await.unwrap();
        assert_eq!(destroy.proc, proc::DOMAIN_DESTROY);
        let (version, _) = read_call(&mut s).await.unwrap();
        assert_eq!(version.proc, proc::CONNECT_GET_LIB_VERSION);
        s.write_all(&reply_to(&version, &[0, 0, 0, 0, 0, 0x8c, 0xba, 0x80]))
            .await
            .unwrap();
        // Hold the connection until the client is done.
        let _ = read_call(&mut s).await;
    });
    let uri = format!("qemu+unix:///system?socket={}", sock.display());
    let endpoint = super::client::resolve(&uri).unwrap();
    let (client, _notices) = Client::connect_endpoint(endpoint, Duration::from_millis(300))
        .await
        .unwrap();
    let dom = super::DomainRef {
        name: "x".into(),
        uuid: [0; 16],
        id: 1,
    };
    let started = std::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), client.destroy(&dom))
        .await
        .expect("the call gives up by itself")
        .unwrap_err();
    assert!(
        matches!(err, RpcError::Timeout { procedure, .. } if procedure == proc::DOMAIN_DESTROY),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    let backend = crate::libvirt::driver::backend_error("destroy", err);
    assert!(
        matches!(backend, crate::backend::BackendError::Unreachable { .. }),
        "{backend}"
    );
    assert_eq!(client.lib_version().await.unwrap(), 9_222_784);
    drop(client);
    server.await.unwrap();
}

/// libvirtd on this machine, or a SKIP line.
fn reachable_uri() -> Option<String> {
    let uri = std::env::var("LIBVIRT_URI").unwrap_or_else(|_| "qemu:///system".into());
    match super::BlockingClient::connect(&uri, Duration::from_secs(10)) {
        Ok(c) => {
            let _ = c.close();
            Some(uri)
        }
        Err(e) => {
            crate::libvirt::tests::skip(&format!(
                "libvirtd not reachable at {uri}: {e} (run .ci/setup-host.sh)"
            ));
            None
        }
    }
}

#[tokio::test]
async fn client_defines_watches_and_undefines_a_domain_on_the_real_libvirtd() {
    let Some(uri) = reachable_uri() else { return };
    let (client, mut notices) = Client::connect(&uri).await.unwrap();
    let version = client.lib_version().await.unwrap();
    assert!(version >= 1_000_000, "libvirt version {version}");
    let name = format!("ch-launcher-rpc-test-{}", std::process::id());
    assert_eq!(client.lookup_by_name(&name).await.unwrap(), None);
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='KiB'>65536</memory>\
         <os><type arch='x86_64'>hvm</type></os></domain>"
    );
    let dom = client.define_xml(&xml).await.unwrap();
    assert_eq!(dom.name, name);
    let looked_up = client.lookup_by_name(&name).await.unwrap();
    assert_eq!(looked_up.as_ref().map(|d| d.uuid), Some(dom.uuid));
    let id = client
        .register_event(flags::VIR_DOMAIN_EVENT_ID_LIFECYCLE, &dom)
        .await
        .unwrap();
    assert!(!client.is_active(&dom).await.unwrap());
    assert_eq!(
        client.get_state(&dom).await.unwrap().0,
        flags::VIR_DOMAIN_SHUTOFF
    );
    // Suspending a shut-off domain is refused with libvirt's message.
    let err = client.suspend(&dom).await.unwrap_err();
    assert!(err.to_string().contains("not running"), "{err}");
    client.undefine_flags(&dom, 0).await.unwrap();
    let notice = tokio::time::timeout(Duration::from_secs(10), notices.recv())
        .await
        .expect("an undefined event within 10 s");
    let Some(Notice::Event(DomainEvent::Lifecycle {
        callback_id, event, ..
    })) = notice
    else {
        panic!("unexpected {notice:?}");
    };
    assert_eq!(callback_id, id);
    assert_eq!(event, 1); // VIR_DOMAIN_EVENT_UNDEFINED
    client.deregister_event(id).await.unwrap();
    assert_eq!(client.lookup_by_name(&name).await.unwrap(), None);
    client.close().await.unwrap();
}

#[test]
fn blocking_client_reads_domain_capabilities_from_the_real_libvirtd() {
    let Some(uri) = reachable_uri() else { return };
    let mut c = super::BlockingClient::connect(&uri, Duration::from_secs(30)).unwrap();
    let xml = c
        .domain_capabilities(Some("x86_64"), Some("q35"), Some("kvm"))
        .unwrap();
    assert!(xml.contains("<domainCapabilities"), "{xml}");
    assert!(xml.contains("<machine>"), "{xml}");
    c.close().unwrap();
}
