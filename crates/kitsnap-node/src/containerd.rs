//! Client side of containerd: the content, images, leases and snapshots services over
//! containerd's unix socket, as a ModelKit pull needs them. Every call carries the
//! namespace header and, inside a pull, the lease header, so that what a pull creates is
//! held by the lease until the image record references it.

use std::collections::HashMap;
use std::path::Path;

use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::api::containerd::{ContentClient, ImagesClient, LeasesClient};
use crate::api::containerd::{content, images, leases};
use crate::api::snapshots::{self, snapshots_client::SnapshotsClient};
use crate::api::types;
use crate::labels as label;

pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";
pub const DEFAULT_NAMESPACE: &str = "default";
/// The name containerd knows kitsnap by (`[proxy_plugins.kitsnap]`).
pub const SNAPSHOTTER: &str = "kitsnap";

#[derive(Debug, thiserror::Error)]
pub enum CtrError {
    #[error("cannot reach {addr} (is the daemon running?)")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
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

/// A gRPC channel to a unix socket: containerd's, or kitsnap serve's own.
pub async fn unix_channel(sock: &Path) -> Result<Channel> {
    containerd_client::connect(sock)
        .await
        .map_err(|source| CtrError::Connect {
            addr: sock.display().to_string(),
            source,
        })
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
        let channel = unix_channel(address).await?;
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

    /// Creates a lease (with `labels`) that expires after `ttl` even if nobody deletes it
    /// (a crashed pull), and returns a client that works under it.
    pub async fn with_new_lease(
        &self,
        id: &str,
        ttl: std::time::Duration,
        mut labels: HashMap<String, String>,
    ) -> Result<Containerd> {
        let expire = std::time::SystemTime::now() + ttl;
        labels.insert(label::GC_EXPIRE.to_string(), kitsnap_core::rfc3339(expire));
        self.leases()
            .create(self.req(leases::CreateRequest {
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

    /// Leases of this namespace: (id, labels).
    pub async fn leases_list(&self) -> Result<Vec<(String, HashMap<String, String>)>> {
        Ok(self
            .leases()
            .list(
                self.without_lease()
                    .req(leases::ListRequest { filters: vec![] }),
            )
            .await
            .map_err(call("leases.List"))?
            .into_inner()
            .leases
            .into_iter()
            .map(|l| (l.id, l.labels))
            .collect())
    }

    /// Deletes the lease `id` (not necessarily this client's).
    pub async fn lease_delete(&self, id: &str, sync: bool) -> Result<()> {
        self.leases()
            .delete(self.without_lease().req(leases::DeleteRequest {
                id: id.to_string(),
                sync,
            }))
            .await
            .map_err(call("leases.Delete"))?;
        Ok(())
    }

    /// containerd's namespaces.
    pub async fn namespaces(&self) -> Result<Vec<String>> {
        use containerd_client::services::v1::ListNamespacesRequest;
        use containerd_client::services::v1::namespaces_client::NamespacesClient;
        Ok(NamespacesClient::new(self.channel.clone())
            .list(Request::new(ListNamespacesRequest {
                filter: String::new(),
            }))
            .await
            .map_err(call("namespaces.List"))?
            .into_inner()
            .namespaces
            .into_iter()
            .map(|n| n.name)
            .collect())
    }

    /// A client for namespace `ns` over the same connection.
    pub fn in_namespace(&self, ns: &str) -> Containerd {
        Containerd {
            namespace: ns.to_string(),
            lease: None,
            ..self.clone()
        }
    }

    /// Deletes the current lease; `sync` waits for the garbage collection it triggers.
    pub async fn delete_lease(&self, sync: bool) -> Result<()> {
        match &self.lease {
            Some(id) => self.lease_delete(id, sync).await,
            None => Ok(()),
        }
    }

    // ---- content ----

    pub async fn content_info(&self, digest: &str) -> Result<Option<content::Info>> {
        match self
            .content()
            .info(self.req(content::InfoRequest {
                digest: digest.to_string(),
            }))
            .await
        {
            Ok(r) => Ok(r.into_inner().info),
            Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
            Err(s) => Err(call("content.Info")(s)),
        }
    }

    pub async fn content_list(&self) -> Result<Vec<content::Info>> {
        let mut s = self
            .content()
            .list(self.req(content::ListContentRequest { filters: vec![] }))
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
            .update(self.req(content::UpdateRequest {
                info: Some(content::Info {
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
        match self.write_stream(digest, total).await? {
            Some(mut w) => {
                w.send(data).await?;
                w.commit(labels).await
            }
            // Another writer finished it meanwhile.
            None => self.content_label(digest, labels).await,
        }
    }

    /// Opens a streaming write of the blob `digest` (of `total` bytes); None when
    /// containerd has the blob already. Another writer holding the same ingest (a
    /// concurrent pull in another process) is waited for, as containerd's own clients do.
    pub async fn write_stream(&self, digest: &str, total: i64) -> Result<Option<ContentWriter>> {
        let mut wait = std::time::Duration::from_millis(50);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match self.open_writer(digest, total).await {
                Ok(w) => return Ok(Some(w)),
                Err(e) if e.is_already_exists() => return Ok(None),
                Err(e)
                    if e.code() == Some(tonic::Code::Unavailable)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!(%digest, error = %e, "content ingest locked; waiting");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn open_writer(&self, digest: &str, total: i64) -> Result<ContentWriter> {
        let (tx, rx) = tokio::sync::mpsc::channel::<content::WriteContentRequest>(4);
        let reference = format!("kitsnap-{digest}");
        // The first message goes before the call: containerd answers (and sends the
        // response headers tonic waits for) only once it has a request to read.
        // An interrupted earlier write under the same ref resumes at the offset the stat
        // reports.
        let _ = tx
            .send(content::WriteContentRequest {
                action: content::WriteAction::Stat as i32,
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
        // What containerd already holds for this ref: an interrupted ingest, or the whole
        // blob when another namespace has it (the content store is shared). The caller
        // still sends from byte 0; `send` skips what is there.
        let resume_from = stat.map(|s| s.offset).unwrap_or(0);
        Ok(ContentWriter {
            tx,
            replies,
            reference,
            digest: digest.to_string(),
            total,
            offset: 0,
            resume_from,
        })
    }

    // ---- images ----

    pub async fn image_get(&self, name: &str) -> Result<Option<images::Image>> {
        match self
            .images()
            .get(self.req(images::GetImageRequest {
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
    pub async fn image_put(&self, image: images::Image) -> Result<()> {
        match self
            .images()
            .create(self.req(images::CreateImageRequest {
                image: Some(image.clone()),
                source_date_epoch: None,
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == tonic::Code::AlreadyExists => {
                self.images()
                    .update(self.req(images::UpdateImageRequest {
                        image: Some(image),
                        update_mask: Some(prost_types::FieldMask {
                            paths: vec!["target".into(), "labels".into()],
                        }),
                        source_date_epoch: None,
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
    ) -> Result<Vec<types::Mount>> {
        Ok(self
            .snapshots()
            .prepare(self.req(snapshots::PrepareSnapshotRequest {
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
    ) -> Result<Vec<types::Mount>> {
        Ok(self
            .snapshots()
            .view(self.req(snapshots::ViewSnapshotRequest {
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

    pub async fn mounts(&self, key: &str) -> Result<Vec<types::Mount>> {
        Ok(self
            .snapshots()
            .mounts(self.req(snapshots::MountsRequest {
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
            .commit(self.req(snapshots::CommitSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                name: name.into(),
                key: key.into(),
                labels,
            }))
            .await
            .map_err(call("snapshots.Commit"))?;
        Ok(())
    }

    pub async fn remove(&self, key: &str) -> Result<()> {
        self.snapshots()
            .remove(self.req(snapshots::RemoveSnapshotRequest {
                snapshotter: SNAPSHOTTER.into(),
                key: key.into(),
            }))
            .await
            .map_err(call("snapshots.Remove"))?;
        Ok(())
    }

    pub async fn stat(&self, key: &str) -> Result<Option<snapshots::Info>> {
        match self
            .snapshots()
            .stat(self.req(snapshots::StatSnapshotRequest {
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
    tx: tokio::sync::mpsc::Sender<content::WriteContentRequest>,
    replies: tonic::Streaming<content::WriteContentResponse>,
    reference: String,
    digest: String,
    total: i64,
    /// Bytes of the blob the caller has sent so far (skipped ones included).
    offset: i64,
    /// Bytes containerd already holds for this ref: the first ones sent are skipped.
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
            let msg = content::WriteContentRequest {
                action: content::WriteAction::Write as i32,
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
        let msg = content::WriteContentRequest {
            action: content::WriteAction::Commit as i32,
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
