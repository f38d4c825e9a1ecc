//! Generates a CRI runtime.v1 client (RuntimeService, ImageService) from the vendored,
//! unmodified k8s.io/cri-api proto, with the same protox/tonic as kitsnap-node.
use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let vendor = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto/vendor");
    let proto = "k8s.io/cri-api/pkg/apis/runtime/v1/api.proto";
    println!("cargo:rerun-if-changed={}", vendor.join(proto).display());
    let fds = protox::compile([proto], [&vendor])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .compile_fds(fds)?;
    Ok(())
}
