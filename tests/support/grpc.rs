//! A snapshots.v1 gRPC client over kitsnap's unix socket, for tests that talk to the
//! daemon directly.

use std::path::Path;

use kitsnap::snapshotter::service::pb::snapshots_client::SnapshotsClient;

pub async fn client(sock: &Path) -> SnapshotsClient<tonic::transport::Channel> {
    let sock = sock.to_path_buf();
    // The URI is required by the API but unused: the connector dials the socket.
    let ch = tonic::transport::Endpoint::try_from("http://[::1]:1")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let sock = sock.clone();
            async move {
                tokio::net::UnixStream::connect(sock)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .unwrap();
    SnapshotsClient::new(ch)
}
