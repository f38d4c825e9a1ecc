//! `kitsnap version`: what this binary is and what it writes, in kit's `version` shape
//! (`Key: value` lines), or as JSON.

use std::io::Write;

use anyhow::Result;
use clap::Args;
use kitsnap_core::oci::{
    ARTIFACT_TYPE_KIT, ARTIFACT_TYPE_MODELPACK, KIT_CONFIG_MEDIA_TYPE, MODELPACK_CONFIG_MEDIA_TYPE,
};
use serde::Serialize;

use crate::output::go_json_pretty;

#[derive(Args, Debug)]
pub struct VersionArgs {
    /// Print JSON instead of `Key: value` lines.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Info {
    version: &'static str,
    commit: &'static str,
    built: &'static str,
    rust_version: &'static str,
    writes: Vec<&'static str>,
}

pub fn run(a: VersionArgs) -> Result<()> {
    let info = Info {
        version: env!("CARGO_PKG_VERSION"),
        commit: env!("KITSNAP_COMMIT"),
        built: env!("KITSNAP_BUILT"),
        rust_version: env!("KITSNAP_RUSTC"),
        writes: vec![
            ARTIFACT_TYPE_KIT,
            KIT_CONFIG_MEDIA_TYPE,
            ARTIFACT_TYPE_MODELPACK,
            MODELPACK_CONFIG_MEDIA_TYPE,
        ],
    };
    let mut out = crate::output::stdout();
    if a.json {
        writeln!(out, "{}", go_json_pretty(&info)?)?;
    } else {
        writeln!(out, "Version: {}", info.version)?;
        writeln!(out, "Commit: {}", info.commit)?;
        writeln!(out, "Built: {}", info.built)?;
        writeln!(out, "Rust version: {}", info.rust_version)?;
        writeln!(
            out,
            "Writes: ModelKit (config {KIT_CONFIG_MEDIA_TYPE}; uncompressed tar layers byte-identical to kit v1.7's, gzip, zstd)"
        )?;
        writeln!(
            out,
            "        ModelPack ({ARTIFACT_TYPE_MODELPACK}, config {MODELPACK_CONFIG_MEDIA_TYPE}; tar, gzip, zstd or raw layers)"
        )?;
    }
    out.flush()?;
    Ok(())
}
