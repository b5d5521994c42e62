//! The REST API on the unix socket, routed and answered like CH's HTTP
//! front end (micro_http): `/api/v1/<action>`, PUT or GET per action, bodies
//! that must be absent for some actions and present for others, errors as a
//! JSON array of messages, `Server: Cloud Hypervisor API` and a JSON content
//! type on every response.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;

use super::config::VmConfig;
use super::vmm::{
    api_error, vmm_gone, ApiError, ResizeRequest, RestoreRequest, SnapshotRequest, Vmm,
};
use super::ControlEvent;

const API_ROOT: &str = "/api/v1/";
/// CH refuses request bodies above 4 MiB.
const MAX_PAYLOAD: usize = 4 << 20;

pub struct ApiContext {
    pub vmm: Arc<Mutex<Vmm>>,
    pub control: UnboundedSender<ControlEvent>,
}

enum Reply {
    /// A status with no body.
    Empty(StatusCode),
    /// A status with a JSON body.
    Json(StatusCode, String),
    /// micro_http's own answer to a request it cannot parse, after which it
    /// drops the connection.
    Unparsable(String),
}

fn error_reply(error: ApiError) -> Reply {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Reply::Json(
        status,
        serde_json::to_string(&error.chain).unwrap_or_default(),
    )
}

fn plain_error(status: StatusCode, message: &str) -> Reply {
    Reply::Json(
        status,
        serde_json::to_string(&[message]).unwrap_or_default(),
    )
}

fn bad_request() -> Reply {
    plain_error(StatusCode::BAD_REQUEST, "Bad Request")
}

fn deserialize<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| {
        Reply::Json(
            StatusCode::BAD_REQUEST,
            serde_json::to_string(&["Failed to deserialize JSON".to_string(), e.to_string()])
                .unwrap_or_default(),
        )
    })
}

pub async fn serve(
    ctx: Arc<ApiContext>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = request.method().clone();
    // micro_http routes on the whole request target: a query string makes the
    // path unknown.
    let path = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_string(),
        |p| p.as_str().to_string(),
    );
    if !matches!(
        method,
        Method::GET | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return Ok(respond(Reply::Unparsable(
            "{ \"error\": \"Invalid HTTP Method: Unsupported HTTP method.\nAll previous unanswered requests will be dropped.\" }".to_string(),
        )));
    }
    let body = match Limited::new(request.into_body(), MAX_PAYLOAD)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(respond(plain_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload Too Large",
            )))
        }
    };
    let body = (!body.is_empty()).then_some(body);
    Ok(respond(route(&ctx, &method, &path, body.as_deref())))
}

fn respond(reply: Reply) -> Response<Full<Bytes>> {
    use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, SERVER};
    let (status, body, server) = match reply {
        Reply::Empty(status) => (status, Bytes::new(), "Cloud Hypervisor API"),
        Reply::Json(status, text) => (status, Bytes::from(text), "Cloud Hypervisor API"),
        Reply::Unparsable(text) => (
            StatusCode::BAD_REQUEST,
            Bytes::from(text),
            "Firecracker API",
        ),
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(SERVER, HeaderValue::from_static(server));
    // micro_http writes a content type with every response that has a length,
    // which is every one but 204.
    if status != StatusCode::NO_CONTENT {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if server != "Cloud Hypervisor API" {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// How an action takes its request: what CH's handler macros decide.
enum Shape {
    /// PUT without a body (boot, pause, ...).
    PutBare,
    /// PUT with a JSON body (resize, snapshot, ...).
    PutBody,
    /// GET (counters).
    Get,
}

fn route(ctx: &ApiContext, method: &Method, path: &str, body: Option<&[u8]>) -> Reply {
    let Some(action) = path.strip_prefix(API_ROOT) else {
        return plain_error(StatusCode::NOT_FOUND, "Not Found");
    };
    let mut vmm = match ctx.vmm.lock() {
        Ok(vmm) => vmm,
        Err(poisoned) => poisoned.into_inner(),
    };
    match action {
        "vmm.ping" => match *method {
            Method::GET if vmm.is_dead() => error_reply(vmm_gone()),
            Method::GET => Reply::Json(StatusCode::OK, vmm.vmm_ping_json()),
            _ => bad_request(),
        },
        "vmm.shutdown" => match *method {
            Method::PUT if vmm.is_dead() => error_reply(vmm_gone()),
            Method::PUT => {
                let result = vmm.vmm_shutdown();
                // CH's VMM loop ends after this request whatever its outcome.
                let _ = ctx.control.send(ControlEvent::Exit(0));
                match result {
                    Ok(()) => Reply::Empty(StatusCode::OK),
                    Err(e) => error_reply(api_error("The VMM could not shutdown", e)),
                }
            }
            _ => bad_request(),
        },
        "vm.create" => match *method {
            Method::PUT => {
                let Some(body) = body else {
                    return Reply::Empty(StatusCode::BAD_REQUEST);
                };
                let config = match VmConfig::from_body(body, vmm.features()) {
                    Ok(config) => config,
                    Err(message) => {
                        return Reply::Json(
                            StatusCode::BAD_REQUEST,
                            serde_json::to_string(&["Failed to deserialize JSON", &message])
                                .unwrap_or_default(),
                        )
                    }
                };
                if vmm.is_dead() {
                    return error_reply(vmm_gone());
                }
                unit(vmm.vm_create(config), "The VM could not be created")
            }
            _ => bad_request(),
        },
        "vm.info" => match *method {
            Method::GET if vmm.is_dead() => error_reply(vmm_gone()),
            Method::GET => match vmm.vm_info() {
                Ok(info) => Reply::Json(StatusCode::OK, info),
                Err(e) => error_reply(api_error("The VM info is not available", e)),
            },
            _ => bad_request(),
        },
        _ => {
            let Some((shape, message)) = action_shape(action) else {
                return plain_error(StatusCode::NOT_FOUND, "Not Found");
            };
            let allowed = match (&shape, method) {
                (Shape::Get, &Method::GET) => true,
                (Shape::PutBare | Shape::PutBody, &Method::PUT) => true,
                (_, &Method::GET | &Method::PUT) => return bad_request(),
                _ => false,
            };
            if !allowed {
                return Reply::Empty(StatusCode::BAD_REQUEST);
            }
            match shape {
                Shape::PutBare if body.is_some() => return bad_request(),
                Shape::PutBody if body.is_none() => return bad_request(),
                _ => {}
            }
            let body = body.unwrap_or_default();
            match dispatch(&mut vmm, action, body) {
                Ok(Some(value)) => Reply::Json(StatusCode::OK, value.to_string()),
                Ok(None) => Reply::Empty(StatusCode::NO_CONTENT),
                Err(DispatchError::Api(e)) => error_reply(api_error(message, e)),
                Err(DispatchError::Reply(reply)) => reply,
            }
        }
    }
}

fn unit(result: Result<(), super::vmm::VmError>, message: &str) -> Reply {
    match result {
        Ok(()) => Reply::Empty(StatusCode::NO_CONTENT),
        Err(e) => error_reply(api_error(message, e)),
    }
}

/// The routed actions besides the four special ones, with the message CH puts
/// above their errors.
fn action_shape(action: &str) -> Option<(Shape, &'static str)> {
    use Shape::*;
    Some(match action {
        "vm.boot" => (PutBare, "The VM could not boot"),
        "vm.delete" => (PutBare, "The VM could not be deleted"),
        "vm.shutdown" => (PutBare, "The VM could not shutdown"),
        "vm.reboot" => (PutBare, "The VM could not reboot"),
        "vm.pause" => (PutBare, "The VM could not be paused"),
        "vm.resume" => (PutBare, "The VM could not resume"),
        "vm.power-button" => (PutBare, "Error triggering power button"),
        "vm.nmi" => (PutBare, "Error triggering NMI"),
        "vm.counters" => (Get, "The VM info is not available"),
        "vm.resize" => (PutBody, "The VM could not be resized"),
        "vm.snapshot" => (PutBody, "The VM could not be snapshotted"),
        "vm.restore" => (PutBody, "The VM could not be restored"),
        "vm.resize-disk" => (PutBody, "The disk could not be resized"),
        "vm.resize-zone" => (PutBody, "The memory zone could not be resized"),
        "vm.add-device" => (PutBody, "The device could not be added to the VM"),
        "vm.add-user-device" => (PutBody, "The user device could not be added to the VM"),
        "vm.add-disk" => (PutBody, "The disk could not be added to the VM"),
        "vm.add-fs" => (PutBody, "The fs could not be added to the VM"),
        "vm.add-generic-vhost-user" => (
            PutBody,
            "The generic vhost-user device could not be added to the VM",
        ),
        "vm.add-net" => (PutBody, "The network device could not be added to the VM"),
        "vm.add-pmem" => (PutBody, "The pmem device could not be added to the VM"),
        "vm.add-vdpa" => (PutBody, "The vDPA device could not be added to the VM"),
        "vm.add-vsock" => (PutBody, "The vsock device could not be added to the VM"),
        "vm.remove-device" => (PutBody, "The device could not be removed from the VM"),
        "vm.send-migration" => (PutBody, "Error dispatching the migration worker"),
        "vm.receive-migration" => (PutBody, "Error receiving migration"),
        _ => return None,
    })
}

/// Actions whose request carries no body: nothing to check before the VMM.
fn shape_is_bare(action: &str) -> bool {
    matches!(action_shape(action), Some((Shape::PutBare | Shape::Get, _)))
}

enum DispatchError {
    Api(super::vmm::VmError),
    Reply(Reply),
}

impl From<super::vmm::VmError> for DispatchError {
    fn from(e: super::vmm::VmError) -> Self {
        DispatchError::Api(e)
    }
}

fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, DispatchError> {
    deserialize(body).map_err(DispatchError::Reply)
}

fn dispatch(vmm: &mut Vmm, action: &str, body: &[u8]) -> Result<Option<Value>, DispatchError> {
    let gone = || DispatchError::Reply(error_reply(vmm_gone()));
    match action {
        _ if vmm.is_dead() && shape_is_bare(action) => return Err(gone()),
        "vm.boot" => vmm.vm_boot()?,
        "vm.delete" => vmm.vm_delete()?,
        "vm.shutdown" => vmm.vm_shutdown()?,
        "vm.reboot" => vmm.vm_reboot()?,
        "vm.pause" => vmm.vm_pause()?,
        "vm.resume" => vmm.vm_resume()?,
        "vm.power-button" => vmm.vm_power_button()?,
        "vm.nmi" => vmm.vm_nmi()?,
        "vm.counters" => return Ok(Some(vmm.vm_counters()?)),
        "vm.resize" => {
            let request = parse::<ResizeRequest>(body)?;
            if vmm.is_dead() {
                return Err(gone());
            }
            vmm.vm_resize(&request)?
        }
        "vm.snapshot" => {
            let request = parse::<SnapshotRequest>(body)?;
            if vmm.is_dead() {
                return Err(gone());
            }
            vmm.vm_snapshot(&request)?
        }
        "vm.restore" => {
            let request = parse::<RestoreRequest>(body)?;
            if vmm.is_dead() {
                return Err(gone());
            }
            vmm.vm_restore(&request)?
        }
        other => {
            parse::<Value>(body)?;
            if vmm.is_dead() {
                return Err(gone());
            }
            vmm.vm_unemulated(other)?
        }
    }
    Ok(None)
}
