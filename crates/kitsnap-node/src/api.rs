//! Every generated gRPC type kitsnap uses, in one place.
//!
//! containerd's services (client side, and the messages of snapshots.v1) come from the
//! containerd-client crate; the snapshots.v1 *server* trait is generated here from the same
//! upstream proto (`proto/vendor/`) over containerd-client's messages; kitsnap.v1.Node is
//! kitsnap's own API (`proto/kitsnap/v1/node.proto`).

/// containerd's shared types (`Mount`, `Descriptor`, ...).
pub use containerd_client::types;

/// containerd's content, images and leases services (clients and messages).
pub mod containerd {
    pub use containerd_client::services::v1::{
        content_client::ContentClient, images_client::ImagesClient, leases_client::LeasesClient,
    };
    pub mod content {
        pub use containerd_client::services::v1::{
            DeleteContentRequest, Info, InfoRequest, ListContentRequest, ReadContentRequest,
            UpdateRequest, WriteAction, WriteContentRequest, WriteContentResponse,
        };
    }
    pub mod images {
        pub use containerd_client::services::v1::{
            CreateImageRequest, DeleteImageRequest, GetImageRequest, Image, ListImagesRequest,
            UpdateImageRequest,
        };
    }
    pub mod leases {
        pub use containerd_client::services::v1::{
            CreateRequest, DeleteRequest, Lease, ListRequest,
        };
    }
}

/// containerd's snapshots.v1: messages and client from containerd-client, server generated.
pub mod snapshots {
    pub use containerd_client::services::v1::snapshots::*;

    mod generated {
        tonic::include_proto!("containerd.services.snapshots.v1");
    }
    pub use generated::snapshots_server;
}

/// kitsnap.v1.Node: pulls into containerd, host mounts, df.
pub mod node {
    tonic::include_proto!("kitsnap.v1");
}
