//! The generated code of KubeVirt's handler-launcher contract
//! (`ch-launcher/proto/`): messages, servers and clients.

#![allow(missing_docs, clippy::all)]

/// `kubevirt.cmd.info`: version negotiation on the cmd socket.
pub mod cmd_info {
    tonic::include_proto!("kubevirt.cmd.info");
}

/// `kubevirt.cmd.v1`: the commands virt-handler sends.
pub mod cmd {
    tonic::include_proto!("kubevirt.cmd.v1");
}

/// `kubevirt.notify.info`: version negotiation on the notify socket.
pub mod notify_info {
    tonic::include_proto!("kubevirt.notify.info");
}

/// `kubevirt.notify.v1`: domain and Kubernetes events to virt-handler.
pub mod notify {
    tonic::include_proto!("kubevirt.notify.v1");
}
