//! Command-line interface: KitOps-compatible verbs over the library.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::human_bytes;
use crate::init::{self, InitOptions};
use crate::oci::ModelFormat;
use crate::pack::{self, PackOptions};
use crate::reference::Reference;
use crate::store::Store;
use crate::unpack::{self, Filter, UnpackOptions};

#[derive(Parser, Debug)]
#[command(
    name = "kitsnap",
    version,
    about = "Package, store and unpack ML models as ModelKits (KitOps) and ModelPacks (CNCF)",
    long_about = "kitsnap packs a directory described by a Kitfile into a ModelKit: an OCI \
artifact with one layer per model, dataset, code, docs and prompts entry. ModelKits live in a \
local OCI image-layout store (no daemon) and are byte-compatible with KitOps' `kit`.\n\n\
Quick start:\n  kitsnap init ./my-model\n  kitsnap pack ./my-model -t my-model:v1\n  kitsnap list\n  \
kitsnap unpack my-model:v1 -d /tmp/out --filter model",
    after_help = "Store location: --store, else $KITSNAP_HOME/storage, else $XDG_DATA_HOME/kitsnap/storage \
(~/.local/share/kitsnap/storage)."
)]
pub struct Cli {
    /// Local store directory (an OCI image layout).
    #[arg(long, global = true, env = "KITSNAP_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,

    /// Never draw progress bars (they are only drawn when stderr is a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a Kitfile describing the files of a directory.
    #[command(
        long_about = "Scans DIR and writes DIR/Kitfile: the largest weights file \
(.gguf, .safetensors, .onnx, .pt, ...) becomes the model, other weights and tokenizer/config \
files become model parts, tabular files datasets, source files code, README/LICENSE/markdown \
docs, and *.prompt files prompts. Files matched by DIR/.kitignore are left out. Review the \
result before packing."
    )]
    Init(InitArgs),
    /// Pack a directory into a ModelKit in the local store.
    #[command(
        long_about = "Packs the directory DIR, described by its Kitfile, into a ModelKit \
tagged NAME[:TAG] in the local store: one layer per Kitfile entry (model, model parts, code, \
datasets, docs, prompts, in that order). Packing is reproducible: the same tree gives the same \
manifest digest. Layers already in the store are not stored twice.\n\nExamples:\n  \
kitsnap pack . -t my-model:v1\n  kitsnap pack ./dir -f ./dir/Kitfile.prod -t registry.example.com/org/m:v2 --compression zstd\n  \
kitsnap pack . -t my-model:mp --use-model-pack"
    )]
    Pack(PackArgs),
    /// List the ModelKits in the local store.
    List,
    /// Print a ModelKit's manifest (JSON).
    Inspect(RefArg),
    /// Print a ModelKit's Kitfile (YAML).
    Info(RefArg),
    /// Give a ModelKit another name or tag.
    Tag {
        /// Existing ModelKit.
        source: String,
        /// New NAME[:TAG].
        target: String,
    },
    /// Remove ModelKits from the local store and free the space they used.
    #[command(
        long_about = "Removes the named tags (or, for NAME@DIGEST, every tag of that \
manifest), then deletes blobs nothing references any more. With --prune, untagged ModelKits \
(whose tag moved to a newer pack) go too; with --all, everything."
    )]
    Remove(RemoveArgs),
    /// Unpack a ModelKit's files into a directory.
    #[command(
        long_about = "Writes the files of a ModelKit into DIR, laid out as in its \
Kitfile, plus the Kitfile itself. --filter selects parts, with kit's syntax: \
TYPE[,TYPE...][:NAME_OR_PATH[,...]] where TYPE is kitfile, model, datasets, code, docs or \
prompts; repeat --filter to combine. Every layer's digest is checked; entries that would \
escape DIR (.., absolute paths, outside links), device nodes and duplicates are refused.\n\n\
Examples:\n  kitsnap unpack my-model:v1 -d ./out\n  kitsnap unpack my-model:v1 -d ./out --filter model\n  \
kitsnap unpack my-model:v1 -d ./out --filter datasets:train --filter kitfile"
    )]
    Unpack(UnpackArgs),
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Directory to describe.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Package name (default: the directory name).
    #[arg(long)]
    pub name: Option<String>,
    /// Package description.
    #[arg(long = "desc")]
    pub description: Option<String>,
    /// Package author.
    #[arg(long)]
    pub author: Option<String>,
    /// Replace an existing Kitfile.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug)]
pub struct PackArgs {
    /// Context directory: Kitfile paths are relative to it.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Kitfile to use (default: Kitfile, kitfile or .kitfile in DIR).
    #[arg(short = 'f', long = "file")]
    pub kitfile: Option<PathBuf>,
    /// Name for the ModelKit, NAME[:TAG] (tag defaults to latest).
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tag: String,
    /// Layer compression.
    #[arg(long, default_value = "none", value_parser = ["none", "gzip", "gzip-fastest", "zstd"])]
    pub compression: String,
    /// Write a CNCF ModelPack (model-spec v1) instead of a KitOps ModelKit.
    #[arg(long)]
    pub use_model_pack: bool,
}

#[derive(Args, Debug)]
pub struct RefArg {
    /// ModelKit reference: NAME[:TAG] or NAME@sha256:DIGEST.
    pub reference: String,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// ModelKits to remove.
    pub references: Vec<String>,
    /// Remove every ModelKit in the store.
    #[arg(long, short = 'a')]
    pub all: bool,
    /// Also remove untagged ModelKits.
    #[arg(long)]
    pub prune: bool,
}

#[derive(Args, Debug)]
pub struct UnpackArgs {
    /// ModelKit reference: NAME[:TAG] or NAME@sha256:DIGEST.
    pub reference: String,
    /// Target directory.
    #[arg(short = 'd', long = "dir", default_value = ".")]
    pub dir: PathBuf,
    /// What to unpack: TYPE[,TYPE...][:NAME_OR_PATH[,...]]; repeatable.
    #[arg(long = "filter", value_name = "FILTER")]
    pub filters: Vec<String>,
    /// Replace files that already exist in the target directory.
    #[arg(short = 'o', long)]
    pub overwrite: bool,
}

fn parse_ref(s: &str) -> Result<Reference> {
    s.parse::<Reference>().map_err(anyhow::Error::from)
}

pub fn run(cli: Cli) -> Result<()> {
    let progress = !cli.no_progress;
    let store_root = cli.store.clone().unwrap_or_else(Store::default_root);
    let open_store = || {
        Store::open(&store_root).with_context(|| format!("opening store {}", store_root.display()))
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match cli.command {
        Command::Init(a) => {
            let target = a.dir.join("Kitfile");
            if target.exists() && !a.force {
                bail!(
                    "{} already exists (use --force to replace it)",
                    target.display()
                );
            }
            let kf = init::generate(
                &a.dir,
                &InitOptions {
                    name: a.name,
                    description: a.description,
                    author: a.author,
                },
            )
            .with_context(|| format!("scanning {}", a.dir.display()))?;
            std::fs::write(&target, kf.to_yaml()?)
                .with_context(|| format!("writing {}", target.display()))?;
            eprintln!(
                "Wrote {} ({} layer(s)); review it, then run `kitsnap pack {} -t NAME:TAG`",
                target.display(),
                kf.layer_entries().len(),
                a.dir.display()
            );
        }
        Command::Pack(a) => {
            let store = open_store()?;
            let reference = parse_ref(&a.tag)?;
            if reference.digest.is_some() {
                bail!("--tag takes NAME[:TAG], not a digest");
            }
            let opts = PackOptions {
                context: a.dir.clone(),
                kitfile: a.kitfile,
                reference: reference.clone(),
                compression: a.compression.parse()?,
                format: if a.use_model_pack {
                    ModelFormat::ModelPack
                } else {
                    ModelFormat::Kit
                },
                progress,
            };
            let res = pack::pack(&store, &opts)
                .with_context(|| format!("packing {}", a.dir.display()))?;
            for w in &res.warnings {
                eprintln!("warning: {w}");
            }
            for (kind, path, d) in &res.layers {
                eprintln!(
                    "  {:<9} {:<40} {:>10}  {}",
                    kind.user_str(),
                    path,
                    human_bytes(d.size),
                    d.digest.short()
                );
            }
            let tag = reference.tag_or_default().unwrap_or("latest");
            eprintln!(
                "Packed {}:{tag} ({} layers, {} already stored)",
                reference.name(),
                res.layers.len(),
                res.reused
            );
            writeln!(out, "{}", res.manifest.digest)?;
        }
        Command::List => {
            let store = open_store()?;
            let entries = store.list()?;
            writeln!(
                out,
                "{:<40} {:<16} {:<24} {:>10}  DIGEST",
                "REPOSITORY", "TAG", "NAME", "SIZE"
            )?;
            for e in entries {
                let name = store
                    .manifest(&e.descriptor)
                    .ok()
                    .and_then(|m| unpack::kitfile_of(&store, &m).ok().flatten())
                    .map(|k| k.package.name)
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{:<40} {:<16} {:<24} {:>10}  {}",
                    e.name,
                    e.tag.as_deref().unwrap_or("<none>"),
                    name,
                    human_bytes(store.manifest_size(&e.descriptor)),
                    e.descriptor.digest
                )?;
            }
        }
        Command::Inspect(a) => {
            let store = open_store()?;
            let d = store.resolve(&parse_ref(&a.reference)?)?;
            let m = store.manifest(&d)?;
            serde_json::to_writer_pretty(&mut out, &m)?;
            writeln!(out)?;
        }
        Command::Info(a) => {
            let store = open_store()?;
            let d = store.resolve(&parse_ref(&a.reference)?)?;
            let m = store.manifest(&d)?;
            match unpack::kitfile_of(&store, &m)? {
                Some(kf) => write!(out, "{}", kf.to_yaml()?)?,
                None => bail!(
                    "{} is a ModelPack without a Kitfile annotation; see `kitsnap inspect`",
                    a.reference
                ),
            }
        }
        Command::Tag { source, target } => {
            let store = open_store()?;
            let d = store.resolve(&parse_ref(&source)?)?;
            let t = parse_ref(&target)?;
            if t.digest.is_some() {
                bail!("the new name must be NAME[:TAG], not a digest");
            }
            store.tag(&t, &d)?;
            eprintln!(
                "Tagged {} as {}:{}",
                d.digest,
                t.name(),
                t.tag_or_default().unwrap_or("latest")
            );
        }
        Command::Remove(a) => {
            let store = open_store()?;
            if a.references.is_empty() && !a.all && !a.prune {
                bail!("name the ModelKits to remove, or use --all or --prune");
            }
            let mut removed = 0;
            if a.all {
                removed += store.untag_all()?;
            } else {
                for r in &a.references {
                    removed += store
                        .untag(&parse_ref(r)?)
                        .with_context(|| format!("removing {r}"))?;
                }
                if a.prune {
                    removed += store.prune_untagged()?;
                }
            }
            let st = store.gc()?;
            eprintln!(
                "Removed {removed} entr{}; freed {} in {} blob(s)",
                if removed == 1 { "y" } else { "ies" },
                human_bytes(st.bytes_freed),
                st.blobs_removed
            );
        }
        Command::Unpack(a) => {
            let store = open_store()?;
            let filters = a
                .filters
                .iter()
                .flat_map(|f| f.split(' ').filter(|s| !s.is_empty()))
                .map(|f| f.parse::<Filter>())
                .collect::<Result<Vec<_>, _>>()?;
            let d = store.resolve(&parse_ref(&a.reference)?)?;
            let rep = unpack::unpack(
                &store,
                &d,
                &UnpackOptions {
                    dest: a.dir.clone(),
                    filters,
                    overwrite: a.overwrite,
                    progress,
                },
            )
            .with_context(|| format!("unpacking {} to {}", a.reference, a.dir.display()))?;
            for (k, p) in &rep.layers {
                eprintln!("  unpacked {:<9} {p}", k.user_str());
            }
            eprintln!(
                "Unpacked {} layer(s){} ({}) to {}",
                rep.layers.len(),
                if rep.kitfile_written {
                    " and the Kitfile"
                } else {
                    ""
                },
                human_bytes(rep.bytes),
                a.dir.display()
            );
        }
    }
    out.flush()?;
    Ok(())
}
