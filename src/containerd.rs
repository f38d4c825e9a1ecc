//! Client side of containerd: the content, images, leases and snapshots services over
//! containerd's unix socket, as a ModelKit pull needs them. Every call carries the
//! namespace header and, inside a pull, the lease header, so that what a pull creates is
//! held by the lease until the image record references it.

use std::collections::HashMap;
use std::path::Path;

use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// Generated code, nested as the proto packages are (it refers to siblings by `super`).
pub mod proto {
    pub mod containerd {
        pub mod types {
            tonic::include_proto!("containerd.types");
        }
        pub mod services {
            pub mod content {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.content.v1");
                }
            }
            pub mod images {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.images.v1");
                }
            }
            pub mod leases {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.leases.v1");
                }
            }
        }
    }
}

pub mod pb {
    pub use super::proto::containerd::services::content::v1 as content;
    pub use super::proto::containerd::services::images::v1 as images;
    pub use super::proto::containerd::services::leases::v1 as leases;
    pub use super::proto::containerd::types;
}

pub use crate::snapshotter::service::pb as snapshots_pb;

use pb::content::content_client::ContentClient;
use pb::images::images_client::ImagesClient;
use pb::leases::leases_client::LeasesClient;
use snapshots_pb::snapshots_client::SnapshotsClient;

pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";
pub const DEFAULT_NAMESPACE: &str = "default";
/// The name containerd knows kitsnap by (`[proxy_plugins.kitsnap]`).
pub const SNAPSHOTTER: &str = "kitsnap";

/// GC labels, as containerd's own unpacker sets them.
pub const LABEL_GC_ROOT: &str = "containerd.io/gc.root";
pub const LABEL_GC_EXPIRE: &str = "containerd.io/gc.expire";
pub const LABEL_GC_CONTENT_CONFIG: &str = "containerd.io/gc.ref.content.config";
pub const LABEL_GC_CONTENT_LAYER: &str = "containerd.io/gc.ref.content.l";
pub const LABEL_GC_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot";
pub const LABEL_DISTRIBUTION_SOURCE: &str = "containerd.io/distribution.source";

#[derive(Debug, thiserror::Error)]
pub enum CtrError {
    #[error("cannot reach containerd at {addr}: {msg}")]
    Connect { addr: String, msg: String },
    #[error("containerd {call}: {status}")]
    Call {
        call: &'static str,
        status: Box<tonic::Status>,
    },
}

impl CtrError {
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            CtrError::Call { status, .. } => Some(status.code()),
            CtrError::Connect { .. } => None,
        }
    }
    pub fn is_already_exists(&self) -> bool {
        self.code() == Some(tonic::Code::AlreadyExists)
    }
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(tonic::Code::NotFound)
    }
}

pub type Result<T> = std::result::Result<T, CtrError>;

fn call(name: &'static str) -> impl FnOnce(tonic::Status) -> CtrError {
    move |status| CtrError::Call {
        call: name,
        status: Box::new(status),
    }
}

/// A gRPC channel to a unix socket (the URI is required by tonic but never dialled).
pub async fn unix_channel(sock: &Path) -> std::result::Result<Channel, tonic::transport::Error> {
    let sock = sock.to_path_buf();
    tonic::transport::Endpoint::from_static("http://[::1]:1")
        .connect_with_connector(tower::service_fn(move |_| {
            let sock = sock.clone();
            async move {
                tokio::net::UnixStream::connect(sock)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
}

/// containerd, in one namespace, optionally under one lease.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    lease: Option<String>,
}

impl Containerd {
    pub async fn connect(address: &Path, namespace: &str) -> Result<Containerd> {
        let channel = unix_channel(address).await.map_err(|e| CtrError::Connect {
            addr: address.display().to_string(),
            msg: format!("{e} (is containerd running?)"),
        })?;
        Ok(Containerd {
            channel,
            namespace: namespace.to_string(),
            lease: None,
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The same connection, outside any lease.
    fn without_lease(&self) -> Containerd {
        Containerd {
            lease: None,
            ..self.clone()
        }
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        let md = r.metadata_mut();
        if let Ok(v) = MetadataValue::try_from(self.namespace.as_str()) {
            md.insert("containerd-namespace", v);
        }
        if let Some(l) = &self.lease
            && let Ok(v) = MetadataValue::try_from(l.as_str())
        {
            md.insert("containerd-lease", v);
        }
        r
    }

    pub fn content(&self) -> ContentClient<Channel> {
        // Blobs travel in 1 MiB messages; replies are small.
        ContentClient::new(self.channel.clone()).max_decoding_message_size(16 << 20)
    }
    fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }

    // ---- leases ----

    /// Creates a lease that expires after `ttl` even if nobody deletes it (a crashed
    /// pull), and returns a client that works under it.
    pub async fn with_new_lease(&self, id: &str, ttl: std::time::Duration) -> Result<Containerd> {
        let expire = std::time::SystemTime::now() + ttl;
        let labels = HashMap::from([(LABEL_GC_EXPIRE.to_string(), rfc3339(expire))]);
        self.leases()
            .create(self.req(pb::leases::CreateRequest {
                id: id.to_string(),
                labels,
            }))
            .await
            .map_err(call("leases.Create"))?;
        Ok(Containerd {
            lease: Some(id.to_string()),
            ..self.clone()
        })
    }

    /// Deletes the current lease; `sync` waits for the garbage collection it triggers.
    pub async fn delete_lease(&self, sync: bool) -> Result<()> {
        let Some(id) = &self.lease else { return Ok(()) };
        let outside = self.without_lease();
        self.leases()
            .delete(outside.req(pb::leases::DeleteRequest {
                id: id.clone(),
                sync,
            }))
            .await
            .map_err(call("leases.Delete"))?;
        Ok(())
    }

    // ---- content ----

    pub async fn content_info(&self, digest: &str) -> Result<Option<pb::content::Info>> {
        match self
            .content()
            .info(self.req(pb::content::InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().info),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(call("content.Info")(s)),
        }
    }

    pub async fn content_list(&self) -> Result<Vec<pb::content::Info>> {
        let mut s = self
            .content()
            .list(self.req(pb::content::ListContentRequest { filters: vec![] }))
            .await
            .map_err(call("content.List"))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = s.message().await.map_err(call("content.List"))? {
            out.extend(r.info);
        }
        Ok(out)
    }

    /// Sets labels on a blob (only the named keys change).
    pub async fn content_label(&self, digest: &str, labels: HashMap<String, String>) -> Result<()> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        self.content()
            .update(self.req(pb::content::UpdateRequest {
                info: Some(pb::content::Info {
                    digest: digest.to_string(),
                    labels,
                    ..Default::default()
                }),
                update_mask: Some(prost_types::FieldMask { paths }),
            }))
            .await
            .map_err(call("content.Update"))?;
        Ok(())
    }

    /// Writes a small blob in one exchange, with labels; a blob already present only gets
    /// the labels.
    pub async fn write_blob(
        &self,
        digest: &str,
        data: Vec<u8>,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        if self.content_info(digest).await?.is_some() {
            return self.content_label(digest, labels).await;
        }
        let total = data.len() as i64;
        let mut w = self.write_stream(digest, total).await?;
        w.send(data).await?;
        w.commit(labels).await
    }

    /// Opens a streaming write of the blob `digest` (of `total` bytes).
    pub async fn write_stream(&self, digest: &str, total: i64) -> Result<ContentWriter> {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::content::WriteContentRequest>(4);
        let reference = format!("kitsnap-{digest}");
        // The first message goes before the call: containerd answers (and sends the
        // response headers tonic waits for) only once it has a request to read.
        // An interrupted earlier write under the same ref resumes at the offset the stat
        // reports.
        let _ = tx
            .send(pb::content::WriteContentRequest {
                action: pb::content::WriteAction::Stat as i32,
                r#ref: reference.clone(),
                total,
                expected: digest.to_string(),
                ..Default::default()
            })
            .await;
        let mut replies = self
            .content()
            .write(self.req(tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await
            .map_err(call("content.Write"))?
            .into_inner();
        let stat = replies
            .message()
            .await
            .map_err(call("content.Write stat"))?;
        let offset = stat.map(|s| s.offset).unwrap_or(0);
        Ok(ContentWriter {
            tx,
            replies,
            reference,
            digest: digest.to_string(),
            total,
            offset,
            resume_from: offset,
        })
    }

    // ---- images ----

    pub async fn image_get(&self, name: &str) -> Result<Option<pb::images::Image>> {
        match self
            .images()
            .get(self.req(pb::images::GetImageRequest {
                name: name.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().image),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(call("images.Get")(s)),
        }
    }

    /// Creates the image record, or points an existing one at the new target.
    pub async fn image_put(&self, image: pb::images::Image) -> Result<()> {
        match self
            .images()
            .create(self.req(pb::images::CreateImageRequest {
                image: Some(image.clone()),
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                self.images()
                    .update(self.req(pb::images::UpdateImageRequest {
                        image: Some(image),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["target".into(), "labels".into()],
                        }),
                    }))
                    .await
                    .map_err(call("images.Update"))?;
                Ok(())
            }
            Err(s) => Err(call("images.Create")(s)),
        }
    }

    // ---- snapshots (of the kitsnap snapshotter) ----

    pub async fn prepare(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<snapshots_pb::Mount>> {
        Ok(self
            .snapshots()
            .prepare(self.req(snapshots_pb::PrepareSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
                parent: parent.into(),
                labels,
            }))
            .await
            .map_err(call("snapshots.Prepare"))?
            .into_inner()
            .mounts)
    }

    pub async fn view(
        &self,
        key: &str,
        parent: &str,
        labels: HashMap<String, String>,
    ) -> Result<Vec<snapshots_pb::Mount>> {
        Ok(self
            .snapshots()
            .view(self.req(snapshots_pb::ViewSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
                parent: parent.into(),
                labels,
            }))
            .await
            .map_err(call("snapshots.View"))?
            .into_inner()
            .mounts)
    }

    pub async fn mounts(&self, key: &str) -> Result<Vec<snapshots_pb::Mount>> {
        Ok(self
            .snapshots()
            .mounts(self.req(snapshots_pb::MountsRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
            }))
            .await
            .map_err(call("snapshots.Mounts"))?
            .into_inner()
            .mounts)
    }

    pub async fn commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.snapshots()
            .commit(self.req(snapshots_pb::CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: name.into(),
                key: key.into(),
                labels,
                ..Default::default()
            }))
            .await
            .map_err(call("snapshots.Commit"))?;
        Ok(())
    }

    pub async fn remove(&self, key: &str) -> Result<()> {
        self.snapshots()
            .remove(self.req(snapshots_pb::RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
            }))
            .await
            .map_err(call("snapshots.Remove"))?;
        Ok(())
    }

    pub async fn stat(&self, key: &str) -> Result<Option<snapshots_pb::Info>> {
        match self
            .snapshots()
            .stat(self.req(snapshots_pb::StatSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().info),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(call("snapshots.Stat")(s)),
        }
    }
}

/// A blob being written into containerd's content store.
pub struct ContentWriter {
    tx: tokio::sync::mpsc::Sender<pb::content::WriteContentRequest>,
    replies: tonic::Streaming<pb::content::WriteContentResponse>,
    reference: String,
    digest: String,
    total: i64,
    offset: i64,
    /// Bytes an interrupted earlier write already holds: the first ones sent are skipped.
    resume_from: i64,
}

/// Largest data message: containerd's gRPC server takes 16 MiB, 1 MiB keeps memory flat.
const WRITE_CHUNK: usize = 1 << 20;

impl ContentWriter {
    fn closed(&self) -> CtrError {
        CtrError::Call {
            call: "content.Write",
            status: Box::new(tonic::Status::unavailable(
                "write stream closed by containerd",
            )),
        }
    }

    /// Sends the next bytes of the blob (in order).
    pub async fn send(&mut self, data: impl Into<bytes::Bytes>) -> Result<()> {
        let mut data: bytes::Bytes = data.into();
        // Skip what a resumed ingest already has.
        let skip = (self.resume_from - self.offset).clamp(0, data.len() as i64) as usize;
        self.offset += skip as i64;
        let _ = data.split_to(skip);
        while !data.is_empty() {
            let part = data.split_to(data.len().min(WRITE_CHUNK));
            let n = part.len() as i64;
            let msg = pb::content::WriteContentRequest {
                action: pb::content::WriteAction::Write as i32,
                r#ref: self.reference.clone(),
                total: self.total,
                offset: self.offset,
                data: part.to_vec(),
                ..Default::default()
            };
            if self.tx.send(msg).await.is_err() {
                return Err(self.closed());
            }
            // containerd answers every write; reading keeps the stream in step.
            self.replies
                .message()
                .await
                .map_err(call("content.Write"))?
                .ok_or_else(|| self.closed())?;
            self.offset += n;
        }
        Ok(())
    }

    /// Commits the blob; containerd checks size and digest.
    pub async fn commit(mut self, labels: HashMap<String, String>) -> Result<()> {
        let msg = pb::content::WriteContentRequest {
            action: pb::content::WriteAction::Commit as i32,
            r#ref: self.reference.clone(),
            total: self.total,
            expected: self.digest.clone(),
            offset: self.offset,
            labels,
            ..Default::default()
        };
        if self.tx.send(msg).await.is_err() {
            return Err(self.closed());
        }
        match self.replies.message().await {
            Ok(_) => Ok(()),
            // Another writer committed the same blob first: that is success.
            Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
            Err(s) => Err(call("content.Write commit")(s)),
        }
    }
}

/// RFC 3339 in UTC, as containerd's lease expiry label wants.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let t = |s: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
        assert_eq!(rfc3339(t(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(t(951_782_400)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(t(1_795_000_000)), "2026-11-18T11:06:40Z");
    }
}
