//! The CLI side of `kitsnap.v1.Node`: `pull --containerd`, `mount`, `umount`, `df` talk
//! to `kitsnap serve`, which owns containerd's kitsnap snapshots and the host mounts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use kitsnap_core::progress;
use kitsnap_node::api::node::{self as pb, node_client::NodeClient};

pub async fn connect(address: &Path) -> Result<NodeClient<tonic::transport::Channel>> {
    let ch = kitsnap_node::containerd::unix_channel(address).await.with_context(|| {
        format!(
            "cannot reach kitsnap serve at {} (start it, e.g. `systemctl start kitsnap`, or pass --address)",
            address.display()
        )
    })?;
    // Errors from the daemon carry the real cause; say so rather than "status: ...".
    Ok(NodeClient::new(ch))
}

/// The daemon's own errors carry their cause in the message; a status with a source
/// is the transport's (the daemon died or dropped the connection).
fn status(e: tonic::Status) -> anyhow::Error {
    if let Some(src) = std::error::Error::source(&e) {
        return anyhow::anyhow!(
            "lost the connection to kitsnap serve ({src}): did it stop or crash? (see `systemctl status kitsnap` or its log)"
        );
    }
    anyhow::anyhow!("{}", e.message())
}

pub struct PullArgs {
    pub reference: String,
    pub namespace: String,
    pub store: Option<PathBuf>,
    pub registry: pb::RegistryOptions,
    pub keep_blobs: bool,
    pub lazy: bool,
    pub progress: bool,
}

/// Runs a pull in the daemon, drawing one bar per layer.
pub async fn pull(address: &Path, a: PullArgs) -> Result<pb::PullResult> {
    let mut c = connect(address).await?;
    let mut s = c
        .pull(pb::PullRequest {
            reference: a.reference.clone(),
            namespace: a.namespace.clone(),
            store: a
                .store
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            registry: Some(a.registry),
            keep_blobs: a.keep_blobs,
            lazy: a.lazy,
        })
        .await
        .map_err(status)?
        .into_inner();
    let mp = progress::multi(a.progress);
    let mut bars: HashMap<u32, indicatif::ProgressBar> = HashMap::new();
    loop {
        let ev = match s.message().await {
            Ok(Some(ev)) => ev,
            Ok(None) => bail!("kitsnap serve ended the pull without a result"),
            Err(e) => {
                mp.clear().ok();
                return Err(status(e));
            }
        };
        match ev.event {
            Some(pb::pull_event::Event::Layer(l)) => {
                let bar = bars.entry(l.index).or_insert_with(|| {
                    progress::multi_bytes(
                        &mp,
                        l.size,
                        format!(
                            "{} {} ({})",
                            l.kind,
                            l.path,
                            &l.digest[..l.digest.len().min(19)]
                        ),
                    )
                });
                bar.set_position(l.done);
                match l.state.as_str() {
                    "reused" => bar.finish_with_message(format!(
                        "{} {}: already on this node",
                        l.kind, l.path
                    )),
                    "unpacked" => bar.finish(),
                    _ => {}
                }
            }
            Some(pb::pull_event::Event::Result(r)) => {
                mp.clear().ok();
                return Ok(r);
            }
            None => {}
        }
    }
}

pub struct MountArgs {
    pub reference: String,
    pub namespace: String,
    pub filters: Vec<String>,
    pub name: Option<String>,
    pub store: Option<PathBuf>,
    pub registry: pb::RegistryOptions,
}

pub async fn mount(address: &Path, a: MountArgs) -> Result<pb::MountResponse> {
    let mut c = connect(address).await?;
    Ok(c.mount(pb::MountRequest {
        reference: a.reference,
        namespace: a.namespace,
        filters: a.filters,
        name: a.name.unwrap_or_default(),
        holder: String::new(),
        store: a
            .store
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        registry: Some(a.registry),
    })
    .await
    .map_err(status)?
    .into_inner())
}

pub async fn umount(
    address: &Path,
    name: &str,
    holder: &str,
    force: bool,
) -> Result<pb::UnmountResponse> {
    let mut c = connect(address).await?;
    Ok(c.unmount(pb::UnmountRequest {
        name: name.to_string(),
        holder: holder.to_string(),
        force,
    })
    .await
    .map_err(status)?
    .into_inner())
}

pub async fn list_mounts(address: &Path) -> Result<pb::ListMountsResponse> {
    let mut c = connect(address).await?;
    Ok(c.list_mounts(pb::ListMountsRequest {})
        .await
        .map_err(status)?
        .into_inner())
}

pub async fn df(address: &Path) -> Result<pb::DfResponse> {
    let mut c = connect(address).await?;
    Ok(c.df(pb::DfRequest {}).await.map_err(status)?.into_inner())
}
