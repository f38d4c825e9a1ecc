//! Generates gRPC code from proto/ with a pure-Rust proto compiler (protox), so building
//! needs no protoc: the snapshots.v1 server, kitsnap's own Node service, and clients for
//! the containerd services a ModelKit pull uses.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(
        [
            "snapshots.proto",
            "kitsnap.proto",
            "containerd/content.proto",
            "containerd/images.proto",
            "containerd/leases.proto",
        ],
        ["proto"],
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
