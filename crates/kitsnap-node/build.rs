//! Generates the gRPC code kitsnap serves, with a pure-Rust proto compiler (protox):
//! containerd's snapshots.v1 server from the vendored upstream proto (its messages are
//! containerd-client's, so the client and the server share one set of types) and kitsnap's
//! own kitsnap.v1.Node service (client and server).
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    // A directory's entry alone missed edits to our own proto file: name it as well.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("kitsnap/v1/node.proto").display()
    );
    let includes = [root.join("vendor"), root.clone()];

    let snapshots = protox::compile(
        ["github.com/containerd/containerd/api/services/snapshots/v1/snapshots.proto"],
        &includes,
    )?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(".containerd.types", "::containerd_client::types")
        .extern_path(
            ".containerd.services.snapshots.v1",
            "::containerd_client::services::v1::snapshots",
        )
        .compile_fds(snapshots)?;

    let node = protox::compile(["kitsnap/v1/node.proto"], &includes)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(node)?;
    Ok(())
}
