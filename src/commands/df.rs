//! `kitsnap df`: disk used by ModelKits on this node.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use kitsnap_core::human_bytes;

use serde::Serialize;

use crate::cli::DaemonArgs;
use crate::client;
use crate::output::{Format, go_json_pretty, print_rows, write_table};
use crate::settings::{Ctx, runtime};

#[derive(Args, Debug)]
#[command(
    after_help = "Template fields (one row per ModelKit): .Reference .Namespace .Layers \
.ModelBytes .ContentBytes .SnapshotBytes. Examples:\n  kitsnap df\n  kitsnap df --format json\n  \
kitsnap df --format '{{.Reference}} {{.SnapshotBytes}}'"
)]
pub struct DfArgs {
    /// table, json (the ModelKits and the node totals, in bytes), or a Go template run
    /// for each ModelKit.
    #[arg(long, default_value = "table", value_name = "FORMAT")]
    pub format: Format,
    /// Print only the ModelKit references.
    #[arg(long, short = 'q', conflicts_with = "format")]
    pub quiet: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KitRow {
    reference: String,
    namespace: String,
    layers: u64,
    model_bytes: u64,
    content_bytes: u64,
    snapshot_bytes: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    kits: Vec<KitRow>,
    content_bytes: u64,
    snapshot_bytes: u64,
    tree_bytes: u64,
    total_bytes: u64,
}

pub fn run(a: DfArgs, _ctx: &Ctx) -> Result<()> {
    let r = runtime()?.block_on(client::df(&a.daemon.address))?;
    let report = Report {
        kits: r
            .kits
            .iter()
            .map(|k| KitRow {
                reference: k.reference.clone(),
                namespace: k.namespace.clone(),
                layers: u64::from(k.layers),
                model_bytes: k.model_bytes,
                content_bytes: k.content_bytes,
                snapshot_bytes: k.snapshot_bytes,
            })
            .collect(),
        content_bytes: r.content_bytes,
        snapshot_bytes: r.snapshot_bytes,
        tree_bytes: r.tree_bytes,
        total_bytes: r.total_bytes,
    };
    let mut out = crate::output::stdout();
    match &a.format {
        _ if a.quiet => {
            for k in &report.kits {
                writeln!(out, "{}", k.reference)?;
            }
        }
        Format::Json => writeln!(out, "{}", go_json_pretty(&report)?)?,
        Format::Template(_) => return print_rows(&a.format, &report.kits, &[]),
        Format::Table => {
            let rows: Vec<Vec<String>> = report
                .kits
                .iter()
                .map(|k| {
                    vec![
                        k.reference.clone(),
                        k.namespace.clone(),
                        k.layers.to_string(),
                        human_bytes(k.model_bytes),
                        human_bytes(k.content_bytes),
                        human_bytes(k.snapshot_bytes),
                    ]
                })
                .collect();
            let headers = [
                "MODELKIT",
                "NAMESPACE",
                "LAYERS",
                "MODEL",
                "CONTENT",
                "SNAPSHOTS",
            ];
            write_table(&mut out, &headers.map(String::from), &rows)?;
            writeln!(out)?;
            writeln!(
                out,
                "On this node: {} in containerd's content store (namespaces above), {} in kitsnap snapshots, {} more in ModelKit trees (hardlinks count once); total {}",
                human_bytes(report.content_bytes),
                human_bytes(report.snapshot_bytes),
                human_bytes(report.tree_bytes),
                human_bytes(report.total_bytes)
            )?;
        }
    }
    out.flush()?;
    Ok(())
}
