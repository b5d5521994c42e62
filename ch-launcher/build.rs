//! Generates the gRPC code for KubeVirt's handler-launcher contract from
//! `proto/` with protox, a protobuf compiler in Rust: no `protoc` on the
//! build host.

fn main() {
    const FILES: [&str; 4] = [
        "proto/kubevirt/cmd/info/info.proto",
        "proto/kubevirt/cmd/v1/cmd.proto",
        "proto/kubevirt/notify/info/info.proto",
        "proto/kubevirt/notify/v1/notify.proto",
    ];
    for file in FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = match protox::compile(FILES, ["proto"]) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot compile the .proto files: {e:?}");
            std::process::exit(1);
        }
    };
    // Both ends: the launcher serves cmd and dials notify; its tests play
    // virt-handler on the other two.
    if let Err(e) = tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)
    {
        eprintln!("cannot generate the gRPC code: {e}");
        std::process::exit(1);
    }
}
