//! The Kubernetes CRI (runtime.v1) as a tonic client, for kitsnap's integration tests only:
//! they drive containerd's CRI plugin over gRPC exactly as kubelet does (crictl is not
//! packaged). Nothing but tests may depend on this crate (tests/it/architecture.rs checks).

/// `runtime.v1`: `runtime_service_client::RuntimeServiceClient`,
/// `image_service_client::ImageServiceClient` and the messages.
pub mod runtime {
    // Generated from the upstream proto, whose doc comments are not rustdoc.
    #[allow(clippy::doc_lazy_continuation, clippy::doc_overindented_list_items)]
    pub mod v1 {
        tonic::include_proto!("runtime.v1");
    }
}
