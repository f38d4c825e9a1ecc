//! `kitsnap index`: ModelKit indexes, with kit's verbs (create, add, remove, delete, list,
//! info, inspect, push, pull), flags, output lines and error texts. An index groups the
//! variants of a model (quantizations, formats) under one reference; `unpack -l` and
//! `pull -l` pick one of them by label. Status lines go to stderr and the new index digest
//! to stdout, as kitsnap's other verbs report (kit prints both on stdout).

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use kitsnap_core::digest::Digest;
use kitsnap_core::human_bytes;
use kitsnap_core::index::{
    self, ANNOTATION_MODELKIT_SIZE, ANNOTATION_ORIGINAL_TAG, IndexEntry, IndexError, ModelKitIndex,
};
use kitsnap_core::oci::{self, Descriptor, MEDIA_TYPE_INDEX, Manifest};
use kitsnap_core::reference::{DEFAULT_REGISTRY, Reference};
use kitsnap_core::store::Store;
use kitsnap_registry::transfer::{self, Remote};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::cli::RegistryArgs;
use crate::commands::list::display_repo;
use crate::commands::parse_ref;
use crate::output::{Format, write_table};
use crate::settings::{Ctx, runtime};

const NONE: &str = "<none>";

#[derive(Args, Debug)]
#[command(
    long_about = "Create and manage ModelKit indexes.\n\nA ModelKit index groups variants of a \
model under a single reference: an OCI image index (artifactType \
application/vnd.kitops.modelkit.index.v1+json) listing ModelKits of one repository, each \
with labels (any JSON value) and annotations. Use `kitsnap pull -l` or `kitsnap unpack -l` \
to select a ModelKit from an index by label. Indexes have tags of their own: an index and a \
ModelKit may share a reference, `kitsnap list` does not show indexes, and `kitsnap remove` \
keeps every ModelKit an index refers to for as long as the index exists.",
    after_help = "Examples:\n  kitsnap index create my-org/my-model:all\n  \
kitsnap index add my-org/my-model:all my-org/my-model:q4_0 -l quantization=q4_0\n  \
kitsnap index add my-org/my-model:all my-org/my-model:q8_0 -l quantization=q8_0 -l 'vramBytes:=8589934592'\n  \
kitsnap index info my-org/my-model:all\n  \
kitsnap unpack my-org/my-model:all -l quantization=q8_0 -d ./model\n  \
kitsnap index push my-org/my-model:all registry.example.com/my-org/my-model:all\n  \
kitsnap index pull registry.example.com/my-org/my-model:all\n  \
kitsnap index remove my-org/my-model:all my-org/my-model:q4_0\n  \
kitsnap index delete my-org/my-model:all"
)]
pub struct IndexArgs {
    #[command(subcommand)]
    pub command: IndexCommand,
}

#[derive(Subcommand, Debug)]
pub enum IndexCommand {
    /// Create an empty ModelKit index in local storage.
    #[command(
        after_help = "Examples:\n  kitsnap index create my-org/my-model:all\n  \
kitsnap index create registry.example.com/my-org/my-model:all"
    )]
    Create(CreateArgs),
    /// Add a ModelKit to an index, or update the labels and annotations of one in it.
    #[command(
        long_about = "Adds a ModelKit of the index's own repository to the index, or updates \
the labels and annotations of a ModelKit already in it: labels and annotations are merged \
into what the entry has. The tag the ModelKit was named by and its size are recorded \
(ml.kitops.modelkit.original-tag, ml.kitops.modelkit.size); a ModelKit added by digest \
records no tag and shows as <none> in `index info`.\n\n\
-l key=value sets a string label, -l 'key:=<json>' any JSON value (kept exactly, numbers \
too), -l key- removes a label; --annotate key=value and --annotate key- do the same for \
annotations (string values only; the ml.kitops. namespace is kit's).",
        after_help = "Examples:\n  kitsnap index add my-org/my-model:all my-org/my-model:q4_0\n  \
kitsnap index add my-org/my-model:all my-org/my-model@sha256:<digest>\n  \
kitsnap index add my-org/my-model:all my-org/my-model:q4_0 -l quantization=q4_0 -l vram=6GB\n  \
kitsnap index add my-org/my-model:all my-org/my-model:q4_0 -l 'gpuArchs:=[\"sm_80\",\"sm_90\"]'\n  \
kitsnap index add my-org/my-model:all my-org/my-model:q4_0 --annotate org.example.tested=true -l vram-"
    )]
    Add(AddArgs),
    /// Remove a ModelKit from an index (the ModelKit itself stays).
    #[command(
        after_help = "Examples:\n  kitsnap index remove my-org/my-model:all my-org/my-model:q4_0\n  \
kitsnap index remove my-org/my-model:all my-org/my-model@sha256:<digest>"
    )]
    Remove(RemoveArgs),
    /// Delete an index from local storage (the ModelKits it references stay).
    #[command(
        long_about = "Deletes a ModelKit index from local storage. The ModelKits it references \
are not removed. Named by a tag that other tags share, the index is only untagged, unless \
--force. To delete an index from a registry, use `kitsnap remove --remote`.",
        after_help = "Examples:\n  kitsnap index delete my-org/my-model:all\n  \
kitsnap index delete --force my-org/my-model:all\n  \
kitsnap index delete my-org/my-model@sha256:<digest>\n  kitsnap index delete --all --force"
    )]
    Delete(DeleteArgs),
    /// List the ModelKit indexes in local storage.
    List(ListArgs),
    /// Show the ModelKits in an index, with their labels and annotations.
    #[command(after_help = "Examples:\n  kitsnap index info my-org/my-model:all\n  \
kitsnap index info my-org/my-model:all --format json\n  \
kitsnap index info --remote registry.example.com/my-org/my-model:all")]
    Info(InfoArgs),
    /// Print an index's manifest (JSON).
    #[command(
        after_help = "Examples:\n  kitsnap index inspect my-org/my-model:all\n  \
kitsnap index inspect --remote registry.example.com/my-org/my-model:all"
    )]
    Inspect(InspectArgs),
    /// Upload an index, and the ModelKits it references, to a registry.
    #[command(
        long_about = "Pushes the local index SOURCE to DESTINATION (default: SOURCE, which \
must then name a registry). Every ModelKit the index references that is in local storage is \
pushed first, by digest, into the destination repository (kit pushes only the index; \
--index-only does the same); registries refuse an index whose ModelKits they lack.",
        after_help = "Examples:\n  kitsnap index push registry.example.com/my-org/my-model:all\n  \
kitsnap index push my-org/my-model:all registry.example.com/my-org/my-model:all"
    )]
    Push(PushArgs),
    /// Download an index, and the ModelKits it references, from a registry.
    #[command(
        long_about = "Pulls the index REF and every ModelKit it references into local \
storage. The ModelKits are kept for the index, untagged (`kitsnap list` does not show them; \
`index info` and `unpack -l` use them); they go when the index is deleted. --index-only \
pulls just the index, as kit does; `pull -l` and `unpack -l` then fetch the ModelKit they \
select.",
        after_help = "Examples:\n  kitsnap index pull registry.example.com/my-org/my-model:all\n  \
kitsnap index pull registry.example.com/my-org/my-model:all --index-only"
    )]
    Pull(PullArgs),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Index reference: NAME[:TAG] (default tag: latest).
    pub index: String,
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// The index, by tag.
    pub index: String,
    /// The ModelKit: NAME:TAG or NAME@sha256:DIGEST, in the index's repository.
    pub modelkit: String,
    /// Resolve the ModelKit in its remote registry instead of local storage.
    #[arg(short = 'r', long)]
    pub remote: bool,
    /// Set a label as key=value, or key:=<json> for a JSON value; remove one as key-.
    /// Repeatable.
    #[arg(short = 'l', long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
    /// Set an annotation as key=value, or remove one as key-. Repeatable.
    #[arg(long = "annotate", value_name = "ANNOTATION")]
    pub annotations: Vec<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// The index, by tag.
    pub index: String,
    /// The ModelKit: NAME:TAG (resolved in local storage) or NAME@sha256:DIGEST.
    pub modelkit: String,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    /// The index: NAME:TAG or NAME@sha256:DIGEST.
    pub index: Option<String>,
    /// Delete the index and every other tag that refers to it.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Delete every untagged index (with --force: every index).
    #[arg(short = 'a', long)]
    pub all: bool,
}

#[derive(Args, Debug)]
pub struct ListArgs {
    /// table or json.
    #[arg(long, default_value = "table", value_name = "FORMAT")]
    pub format: String,
}

#[derive(Args, Debug)]
pub struct InfoArgs {
    /// The index: NAME:TAG or NAME@sha256:DIGEST.
    pub index: String,
    /// Read the index (and the ModelKits' sizes) from its registry instead of local storage.
    #[arg(short = 'r', long)]
    pub remote: bool,
    /// table or json.
    #[arg(long, default_value = "table", value_name = "FORMAT")]
    pub format: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// The index: NAME:TAG or NAME@sha256:DIGEST.
    pub index: String,
    /// Read the index from its registry instead of local storage.
    #[arg(short = 'r', long)]
    pub remote: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Local index.
    pub source: String,
    /// Registry location (default: SOURCE).
    pub destination: Option<String>,
    /// Push only the index, as kit does: its ModelKits must be in the destination already.
    #[arg(long)]
    pub index_only: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// REGISTRY/REPO[:TAG].
    pub index: String,
    /// Pull only the index, as kit does.
    #[arg(long)]
    pub index_only: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub fn run(a: IndexArgs, ctx: &Ctx) -> Result<()> {
    match a.command {
        IndexCommand::Create(a) => create(a, ctx).context("Failed to create index"),
        IndexCommand::Add(a) => add(a, ctx).context("Failed to add ModelKit to index"),
        IndexCommand::Remove(a) => remove(a, ctx).context("Failed to remove ModelKit from index"),
        IndexCommand::Delete(a) => delete(a, ctx).context("Failed to delete index"),
        IndexCommand::List(a) => list(a, ctx).context("Failed to list indexes"),
        IndexCommand::Info(a) => info(a, ctx).context("Failed to read index"),
        IndexCommand::Inspect(a) => inspect(a, ctx).context("Failed to inspect index"),
        IndexCommand::Push(a) => push(a, ctx).context("Failed to push index"),
        IndexCommand::Pull(a) => pull(a, ctx).context("Failed to pull index"),
    }
}

/// A reference as kit shows it: without the default registry.
pub(crate) fn display(r: &Reference) -> String {
    let s = r.to_string();
    s.strip_prefix(&format!("{DEFAULT_REGISTRY}/"))
        .map(str::to_string)
        .unwrap_or(s)
}

/// An index named by tag, for the verbs that write it: `latest` when none is given.
fn index_tag_ref(s: &str) -> Result<Reference> {
    let mut r = parse_ref(s)?;
    if r.digest.is_some() {
        bail!("index reference must be a tag, not a digest: {s}");
    }
    if r.tag.is_none() {
        eprintln!("No tag specified for index. Using 'latest' as default ('{s}:latest')");
        r.tag = Some("latest".into());
    }
    Ok(r)
}

/// An index named by tag or digest, for the verbs that read it (a tag is required).
fn index_any_ref(s: &str) -> Result<Reference> {
    let r = parse_ref(s)?;
    if r.tag.is_none() && r.digest.is_none() {
        bail!("missing tag or digest from index reference '{s}'");
    }
    Ok(r)
}

/// A ModelKit reference, which must carry a tag or digest.
fn modelkit_ref(s: &str) -> Result<Reference> {
    // A bare digest names an entry by itself (`index remove INDEX sha256:...`).
    let r = parse_ref(s)?;
    if r.tag.is_none() && r.digest.is_none() {
        bail!("missing tag or digest from ModelKit reference '{s}'");
    }
    Ok(r)
}

/// The stored index a reference names, with kit's message when there is none (and a
/// pointer to `remove` when the name is a ModelKit's).
fn local_index(store: &Store, r: &Reference, hint: &str) -> Result<(Descriptor, ModelKitIndex)> {
    let desc = match store.resolve_index(r) {
        Ok(d) => d,
        Err(kitsnap_core::Error::NotFound(_)) => {
            bail!("could not find index {} in local storage{hint}", display(r))
        }
        Err(e) => return Err(e.into()),
    };
    let idx = store.read_kit_index(&desc)?;
    Ok((desc, idx))
}

fn print_digest(d: &Digest) -> Result<()> {
    writeln!(crate::output::stdout(), "{d}")?;
    Ok(())
}

fn create(a: CreateArgs, ctx: &Ctx) -> Result<()> {
    let r = index_tag_ref(&a.index)?;
    let store = ctx.open_store()?;
    let mut exists = false;
    let desc = store.edit_index(&r, |cur| {
        if cur.is_some() {
            exists = true;
            return Ok(None);
        }
        Ok(Some(ModelKitIndex::default().marshal()?.1))
    })?;
    let Some(desc) = desc.filter(|_| !exists) else {
        bail!("index {} already exists", display(&r));
    };
    eprintln!("Created index {} (digest {})", display(&r), desc.digest);
    print_digest(&desc.digest)
}

/// The ModelKit to add, from the store or (`--remote`) its registry: its descriptor and
/// manifest.
fn resolve_modelkit(
    store: &Store,
    r: &Reference,
    remote: bool,
    registry: &RegistryArgs,
) -> Result<(Descriptor, Manifest)> {
    if remote {
        let reg = registry.registry(&r.registry)?;
        let (_, m, desc) = runtime()?.block_on(transfer::remote_manifest(&reg, r))?;
        return Ok((desc, m));
    }
    let desc = match store.resolve(r) {
        Ok(d) => d,
        Err(kitsnap_core::Error::NotFound(_)) => bail!(
            "could not find ModelKit {} in local storage; use --remote to resolve it in its registry",
            display(r)
        ),
        Err(e) => return Err(e.into()),
    };
    let m = store.manifest(&desc)?;
    if m.model_format().is_none() {
        return Err(kitsnap_core::layers::not_a_modelkit(&m).into());
    }
    Ok((desc, m))
}

fn add(a: AddArgs, ctx: &Ctx) -> Result<()> {
    let ir = index_tag_ref(&a.index).context("Invalid arguments")?;
    let mr = modelkit_ref(&a.modelkit).context("Invalid arguments")?;
    if a.remote && mr.registry == DEFAULT_REGISTRY {
        bail!(
            "Invalid arguments: can not check remote: {} does not contain registry",
            display(&mr)
        );
    }
    if ir.name() != mr.name() {
        bail!(
            "Invalid arguments: ModelKit {} is not in the same repository as index {}; an index may only reference ModelKits in its own repository",
            display(&mr),
            display(&ir)
        );
    }
    let labels = index::parse_label_edits(&a.labels).context("Invalid arguments")?;
    let annotations = index::parse_annotation_edits(&a.annotations).context("Invalid arguments")?;
    let store = ctx.open_store()?;
    let (desc, m) = resolve_modelkit(&store, &mr, a.remote, &a.registry)?;
    let size: u64 = m.layers.iter().map(|l| l.size).sum();
    let not_found = || {
        anyhow!(
            "could not find index {} in local storage; use 'kitsnap index create' to create it",
            display(&ir)
        )
    };
    let mut found = true;
    let new = store.edit_index(&ir, |cur| {
        let Some((_, bytes)) = cur else {
            found = false;
            return Ok(None);
        };
        let mut idx = ModelKitIndex::parse(&bytes)?;
        // Recorded so a reader tells ModelKits from ModelPacks without their manifests,
        // also for kits whose manifest predates artifactType (kit 1.7's format).
        let artifact_type = m.artifact_type.clone().or_else(|| {
            (m.model_format() == Some(oci::ModelFormat::Kit))
                .then(|| oci::ARTIFACT_TYPE_KIT.to_string())
        });
        let mut entry = IndexEntry::for_manifest(&desc, artifact_type);
        if let Some(old) = idx.entry(&desc.digest) {
            entry.annotations = old.annotations.clone();
            entry.model_metadata = old.model_metadata.clone();
        }
        // Recorded before the user's edits, as kit does, so `index info` shows the tag and
        // size even once the ModelKit is gone from the store.
        if let Some(t) = mr.tag.as_ref().filter(|_| mr.digest.is_none()) {
            entry
                .annotations
                .insert(ANNOTATION_ORIGINAL_TAG.into(), t.clone());
        }
        entry
            .annotations
            .insert(ANNOTATION_MODELKIT_SIZE.into(), size.to_string());
        entry.annotations = annotations.apply(&entry.annotations);
        entry.model_metadata = labels.apply(&entry.model_metadata);
        idx.add_entry(entry);
        Ok(Some(idx.marshal()?.1))
    })?;
    let new = new.filter(|_| found).ok_or_else(not_found)?;
    eprintln!(
        "Added {} to index {} (digest {})",
        display(&mr),
        display(&ir),
        new.digest
    );
    print_digest(&new.digest)
}

fn remove(a: RemoveArgs, ctx: &Ctx) -> Result<()> {
    let ir = index_tag_ref(&a.index).context("Invalid arguments")?;
    let store = ctx.open_store()?;
    // A bare sha256:... names the entry by itself.
    let (digest, shown) = match a.modelkit.parse::<Digest>() {
        Ok(d) => (d.clone(), d.to_string()),
        Err(_) => {
            let mr = modelkit_ref(&a.modelkit).context("Invalid arguments")?;
            match &mr.digest {
                Some(d) => (d.clone(), d.to_string()),
                None => {
                    let d = store.resolve(&mr).map_err(|e| {
                        anyhow!(
                            "could not resolve {} in local storage: {e}; specify the entry by digest instead",
                            display(&mr)
                        )
                    })?;
                    (d.digest, display(&mr))
                }
            }
        }
    };
    let (mut found, mut contained) = (true, true);
    let new = store.edit_index(&ir, |cur| {
        let Some((_, bytes)) = cur else {
            found = false;
            return Ok(None);
        };
        let mut idx = ModelKitIndex::parse(&bytes)?;
        if !idx.remove_entry(&digest) {
            contained = false;
            return Ok(None);
        }
        Ok(Some(idx.marshal()?.1))
    })?;
    if !found {
        bail!("could not find index {} in local storage", display(&ir));
    }
    if !contained {
        bail!("index {} does not contain {digest}", display(&ir));
    }
    let new = new.ok_or_else(|| anyhow!("failed to save index {}", display(&ir)))?;
    eprintln!(
        "Removed {shown} from index {} (digest {})",
        display(&ir),
        new.digest
    );
    print_digest(&new.digest)
}

fn delete(a: DeleteArgs, ctx: &Ctx) -> Result<()> {
    let store = ctx.open_store()?;
    match (&a.index, a.all) {
        (None, false) => bail!("index is required for delete unless --all is specified"),
        (Some(_), true) => bail!("index should not be specified when --all flag is used"),
        (None, true) => {
            // Every write moves a tag and drops the version it leaves, so kitsnap has no
            // untagged indexes: --all alone has nothing to do, --all --force takes all.
            if !a.force {
                eprintln!("No untagged indexes to delete (--all --force deletes every index)");
                return Ok(());
            }
            let mut seen: Vec<(String, Digest)> = Vec::new();
            for t in store.index_tags()? {
                if t.kit {
                    eprintln!(
                        "Left index {}:{} (written by kit; `kit index delete` removes it)",
                        display_repo(&t.name),
                        t.tag
                    );
                    continue;
                }
                let key = (t.name, t.descriptor.digest);
                if !seen.contains(&key) {
                    seen.push(key);
                }
            }
            for (name, d) in seen {
                let tags = store.delete_index(&name, &d)?;
                eprintln!("Deleted index {}@{d}", display_repo(&name));
                if !tags.is_empty() {
                    eprintln!("Removed tags: {}", tags.join(", "));
                }
            }
        }
        (Some(s), false) => {
            let r = parse_ref(s).context("Invalid arguments")?;
            if r.tag.is_none() && r.digest.is_none() {
                bail!(
                    "Invalid arguments: tag or digest is required when deleting an index ('{s}:<tag>')"
                );
            }
            let desc = match store.resolve_index(&r) {
                Ok(d) => d,
                Err(kitsnap_core::Error::NotFound(_)) => {
                    if store.resolve(&r).is_ok() {
                        bail!(
                            "{} is not a ModelKit index; use 'kitsnap remove' to remove a ModelKit",
                            display(&r)
                        );
                    }
                    bail!("could not find index {} in local storage", display(&r));
                }
                Err(e) => return Err(e.into()),
            };
            let same: Vec<_> = store
                .index_tags()?
                .into_iter()
                .filter(|t| t.name == r.name() && t.descriptor.digest == desc.digest)
                .collect();
            let ours = same.iter().filter(|t| !t.kit).count();
            // By digest, kitsnap must tag it at all; by tag, that tag must be kitsnap's.
            let named_ours = match r.tag_or_default() {
                Some(tag) if r.digest.is_none() => same.iter().any(|t| !t.kit && t.tag == tag),
                _ => ours > 0,
            };
            if !named_ours {
                bail!(
                    "index {} was written by kit (this store's kit files, which kitsnap reads but never rewrites): `kit index delete {s}` removes it",
                    display(&r)
                );
            }
            if r.digest.is_none() && !a.force && ours > 1 {
                store.untag_index(&r)?;
                eprintln!("Untagged index {} (digest {})", display(&r), desc.digest);
                return Ok(());
            }
            let tags = store.delete_index(&r.name(), &desc.digest)?;
            eprintln!("Deleted index {} (digest {})", display(&r), desc.digest);
            if !tags.is_empty() {
                eprintln!("Removed tags: {}", tags.join(", "));
            }
            let kits: Vec<_> = same
                .iter()
                .filter(|t| t.kit)
                .map(|t| t.tag.as_str())
                .collect();
            if !kits.is_empty() {
                eprintln!(
                    "Left kit's tags of this index: {} (`kit index delete` removes them)",
                    kits.join(", ")
                );
            }
        }
    }
    // The index blobs go; ModelKits that something else (a tag, another index) keeps stay.
    store.gc()?;
    Ok(())
}

/// One index (a repository and a digest) with its tags: kit's `index list` JSON.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Listing {
    repo: String,
    digest: String,
    tags: Vec<String>,
    model_kits: Option<usize>,
}

fn check_format(f: &str) -> Result<Format> {
    match f {
        "table" => Ok(Format::Table),
        "json" => Ok(Format::Json),
        _ => bail!("Invalid arguments: unsupported format {f:?}: must be table or json"),
    }
}

/// JSON as kit prints it: Go's bytes, indented by two spaces.
fn go_pretty<T: Serialize>(v: &T) -> Result<String> {
    Ok(index::indent_json(&oci::to_go_json(v)?))
}

fn list(a: ListArgs, ctx: &Ctx) -> Result<()> {
    let format = check_format(&a.format)?;
    let store = ctx.open_store()?;
    let mut rows: Vec<Listing> = Vec::new();
    for t in store.index_tags()? {
        let repo = display_repo(&t.name).to_string();
        let digest = t.descriptor.digest.to_string();
        match rows
            .iter_mut()
            .find(|l| l.repo == repo && l.digest == digest)
        {
            Some(l) => l.tags.push(t.tag),
            None => rows.push(Listing {
                model_kits: store
                    .read_kit_index(&t.descriptor)
                    .ok()
                    .map(|i| i.manifests.len()),
                repo,
                digest,
                tags: vec![t.tag],
            }),
        }
    }
    rows.sort_by(|a, b| (&a.repo, &a.digest).cmp(&(&b.repo, &b.digest)));
    let mut out = crate::output::stdout();
    if format == Format::Json {
        writeln!(out, "{}", go_pretty(&rows)?)?;
        return Ok(());
    }
    let headers = ["REPOSITORY", "TAG", "MODELKITS", "DIGEST"].map(String::from);
    let mut cells = Vec::new();
    for l in &rows {
        let n = l.model_kits.map_or(NONE.to_string(), |n| n.to_string());
        let tags = if l.tags.is_empty() {
            vec![NONE.to_string()]
        } else {
            l.tags.clone()
        };
        for tag in tags {
            cells.push(vec![l.repo.clone(), tag, n.clone(), l.digest.clone()]);
        }
    }
    write_table(&mut out, &headers, &cells)?;
    Ok(())
}

/// Reads an index from the store or its registry.
fn read_index(
    store: &Store,
    r: &Reference,
    remote: bool,
    registry: &RegistryArgs,
) -> Result<(Descriptor, Vec<u8>, ModelKitIndex)> {
    if remote {
        if r.registry == DEFAULT_REGISTRY {
            bail!(
                "Invalid arguments: can not check remote: {} does not contain registry",
                display(r)
            );
        }
        let reg = registry.registry(&r.registry)?;
        return match runtime()?.block_on(transfer::remote_kit_or_index(&reg, r))? {
            Remote::Index(bytes, idx, desc) => Ok((desc, bytes, idx)),
            Remote::Kit(..) => Err(IndexError::NotAKitIndex.into()),
        };
    }
    let (desc, idx) = local_index(
        store,
        r,
        "; use 'kitsnap index pull' to download it, or --remote to read it from its registry",
    )?;
    let bytes = store.read_blob(&desc)?;
    Ok((desc, bytes, idx))
}

/// A ModelKit's size as `list` reports it (its layers), recorded on the entry or read
/// from its manifest; None when neither is at hand.
fn entry_size(e: &IndexEntry, manifest: &dyn Fn(&Descriptor) -> Option<Manifest>) -> Option<u64> {
    e.recorded_size()
        .or_else(|| manifest(&e.descriptor()).map(|m| m.layers.iter().map(|l| l.size).sum()))
}

#[derive(Serialize)]
struct InfoJson<'a> {
    reference: String,
    digest: String,
    #[serde(rename = "modelKits")]
    model_kits: Vec<InfoEntry<'a>>,
}

#[derive(Serialize)]
struct InfoEntry<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<String>,
    digest: String,
    size: Option<u64>,
    labels: &'a BTreeMap<String, Box<RawValue>>,
    annotations: BTreeMap<String, String>,
}

fn info(a: InfoArgs, ctx: &Ctx) -> Result<()> {
    let format = check_format(&a.format)?;
    let r = index_any_ref(&a.index).context("Invalid arguments")?;
    let store = ctx.open_store()?;
    let (desc, _, idx) = read_index(&store, &r, a.remote, &a.registry)?;
    let repo = display_repo(&r.name()).to_string();
    let rt = runtime()?;
    let reg = if a.remote {
        Some(a.registry.registry(&r.registry)?)
    } else {
        None
    };
    let manifest = |d: &Descriptor| -> Option<Manifest> {
        match &reg {
            Some(reg) => {
                let b = rt
                    .block_on(reg.get_manifest(&r.repository, d.digest.as_str()))
                    .ok()?;
                serde_json::from_slice(&b.0).ok()
            }
            None => store.manifest(d).ok(),
        }
    };
    let mut out = crate::output::stdout();
    if format == Format::Json {
        let doc = InfoJson {
            reference: display(&r),
            digest: desc.digest.to_string(),
            model_kits: idx
                .manifests
                .iter()
                .map(|e| InfoEntry {
                    reference: e.reference(&repo),
                    digest: e.digest.to_string(),
                    size: entry_size(e, &manifest),
                    labels: &e.model_metadata,
                    annotations: e.user_annotations(),
                })
                .collect(),
        };
        writeln!(out, "{}", go_pretty(&doc)?)?;
        return Ok(());
    }
    writeln!(out, "Index {} ({})", display(&r), desc.digest)?;
    match idx.manifests.len() {
        0 => {
            writeln!(out, "Index contains no ModelKits")?;
            return Ok(());
        }
        1 => writeln!(out, "1 ModelKit:")?,
        n => writeln!(out, "{n} ModelKits:")?,
    }
    // Several labels or annotations continue on rows of their own, as kit's table does.
    let mut rows = Vec::new();
    for e in &idx.manifests {
        let labels = index::label_pairs(&e.model_metadata);
        let notes = index::key_value_pairs(&e.user_annotations());
        let cell = |v: &[String], i: usize| match v.get(i) {
            Some(s) => s.clone(),
            None if i == 0 => NONE.to_string(),
            None => String::new(),
        };
        for i in 0..labels.len().max(notes.len()).max(1) {
            let first = i == 0;
            rows.push(vec![
                if first {
                    e.reference(&repo).unwrap_or_else(|| NONE.into())
                } else {
                    String::new()
                },
                if first {
                    entry_size(e, &manifest).map_or(NONE.to_string(), human_bytes)
                } else {
                    String::new()
                },
                cell(&labels, i),
                cell(&notes, i),
                if first {
                    e.digest.to_string()
                } else {
                    String::new()
                },
            ]);
        }
    }
    let headers = [
        "ORIGINAL REFERENCE",
        "SIZE",
        "LABELS",
        "ANNOTATIONS",
        "DIGEST",
    ]
    .map(String::from);
    let mut table = Vec::new();
    write_table(&mut table, &headers, &rows)?;
    for line in String::from_utf8_lossy(&table).lines() {
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn inspect(a: InspectArgs, ctx: &Ctx) -> Result<()> {
    let r = index_any_ref(&a.index).context("Invalid arguments")?;
    let store = ctx.open_store()?;
    let (_, bytes, _) = read_index(&store, &r, a.remote, &a.registry)?;
    writeln!(crate::output::stdout(), "{}", index::indent_json(&bytes))?;
    Ok(())
}

fn push(a: PushArgs, ctx: &Ctx) -> Result<()> {
    let src = index_any_ref(&a.source).or_else(|_| index_tag_ref(&a.source))?;
    let dst = match &a.destination {
        Some(d) => {
            let mut d = parse_ref(d).context("Invalid arguments")?;
            if d.tag.is_none() && d.digest.is_none() {
                eprintln!(
                    "No tag specified for push target. Using 'latest' as default ('{}:latest')",
                    a.destination.as_deref().unwrap_or_default()
                );
                d.tag = Some("latest".into());
            }
            d
        }
        None => src.clone(),
    };
    if dst.registry == DEFAULT_REGISTRY {
        bail!("Invalid arguments: registry is required when pushing");
    }
    let store = ctx.open_store()?;
    let (desc, idx) = local_index(&store, &src, "")
        .with_context(|| format!("failed to read index {}", display(&src)))?;
    let bytes = store.read_blob(&desc)?;
    let reg = a.registry.registry(&dst.registry)?;
    let rt = runtime()?;
    if src.to_string() != dst.to_string() {
        eprintln!("Pushing index {} to {dst}", display(&src));
    } else {
        eprintln!("Pushing index {dst}");
    }
    if !a.index_only {
        // The ModelKits first, by digest: a registry accepts an index only once it has
        // every manifest the index lists.
        for e in &idx.manifests {
            if !store.has_blob(&e.digest) {
                continue;
            }
            // A ModelKit fetched in part (`unpack --filter` from the registry) stays where
            // it is: the registry must already hold it, or the index push fails there.
            let whole = store.manifest(&e.descriptor()).is_ok_and(|m| {
                std::iter::once(&m.config)
                    .chain(&m.layers)
                    .all(|d| store.has_blob(&d.digest))
            });
            if !whole {
                eprintln!(
                    "ModelKit {} is not whole in the store; not pushed (the registry must have it)",
                    e.digest
                );
                continue;
            }
            let rep = rt
                .block_on(transfer::push(
                    &store,
                    &reg,
                    &src.at_digest(&e.digest),
                    &dst.at_digest(&e.digest),
                    &a.registry.transfer(ctx.progress),
                ))
                .with_context(|| format!("pushing ModelKit {}", e.digest))?;
            let who = e
                .reference(display_repo(&dst.name()))
                .unwrap_or_else(|| e.digest.to_string());
            eprintln!("{who}: {}", rep.summary("pushed", "already there"));
        }
    }
    let tag = dst
        .digest
        .as_ref()
        .map(|d| d.to_string())
        .or_else(|| dst.tag.clone())
        .unwrap_or_else(|| "latest".into());
    if let Err(e) = rt.block_on(reg.put_manifest(&dst.repository, &tag, &bytes, MEDIA_TYPE_INDEX)) {
        let codes = e.codes();
        if codes.contains(&"MANIFEST_BLOB_UNKNOWN") || codes.contains(&"BLOB_UNKNOWN") {
            return Err(anyhow!(e).context(format!(
                "remote rejected the index: {}/{} does not contain every ModelKit the index references. Push those ModelKits first, then retry",
                dst.registry, dst.repository
            )));
        }
        return Err(e.into());
    }
    eprintln!("Pushed index {}", desc.digest);
    print_digest(&desc.digest)
}

fn pull(a: PullArgs, ctx: &Ctx) -> Result<()> {
    let r = index_tag_ref(&a.index).context("Invalid arguments")?;
    if r.registry == DEFAULT_REGISTRY {
        bail!("Invalid arguments: registry is required when pulling");
    }
    let store = ctx.open_store()?;
    let reg = a.registry.registry(&r.registry)?;
    let rt = runtime()?;
    eprintln!("Pulling index {r}");
    let (bytes, idx, desc) = match rt.block_on(transfer::remote_kit_or_index(&reg, &r))? {
        Remote::Index(b, i, d) => (b, i, d),
        Remote::Kit(..) => return Err(IndexError::NotAKitIndex.into()),
    };
    // Held until the index is tagged: the ModelKits pulled for it have no tag of their
    // own, and a garbage collection in between would take them.
    let _w = store.writer_lock()?;
    if !a.index_only {
        let repo = display_repo(&r.name()).to_string();
        for e in &idx.manifests {
            let rep = rt
                .block_on(transfer::pull_content(
                    &store,
                    &reg,
                    &r.at_digest(&e.digest),
                    &a.registry.transfer(ctx.progress),
                ))
                .with_context(|| format!("pulling ModelKit {}", e.digest))?;
            let who = e.reference(&repo).unwrap_or_else(|| e.digest.to_string());
            eprintln!("{who}: {}", rep.summary("pulled", "already stored"));
        }
    }
    // Stored as the registry has it, so it keeps its digest.
    store.edit_index(&r, |_| Ok(Some(bytes)))?;
    eprintln!("Pulled index {}", desc.digest);
    print_digest(&desc.digest)
}

/// For `unpack -l` and `pull -l`: the ModelKit the labels select from the index `r` names,
/// as `registry/repo@digest`. The index comes from the store, else (`remote_ok`) from its
/// registry; a ModelKit where an index is expected is an error ("find ModelKit index").
pub(crate) fn select_modelkit(
    store: &Store,
    r: &Reference,
    labels: &[String],
    registry: &RegistryArgs,
    remote_ok: bool,
) -> Result<Reference> {
    let selector = index::parse_label_selector(labels).context("Invalid arguments")?;
    let idx = match store.resolve_index(r) {
        Ok(d) => store.read_kit_index(&d)?,
        Err(kitsnap_core::Error::NotFound(_)) if r.registry == DEFAULT_REGISTRY || !remote_ok => {
            bail!(
                "could not find ModelKit index {} in local storage (labels select a ModelKit from an index)",
                display(r)
            )
        }
        Err(kitsnap_core::Error::NotFound(_)) => {
            let reg = registry.registry(&r.registry)?;
            match runtime()?.block_on(transfer::remote_kit_or_index(&reg, r)) {
                Ok(Remote::Index(_, idx, _)) => idx,
                Ok(Remote::Kit(..)) => bail!(
                    "could not find ModelKit index {}: it is a ModelKit (labels select a ModelKit from an index)",
                    display(r)
                ),
                Err(e) => {
                    return Err(
                        anyhow!(e).context(format!("could not find ModelKit index {}", display(r)))
                    );
                }
            }
        }
        Err(e) => return Err(e.into()),
    };
    select_from(&idx, r, &selector)
}

/// The ModelKit of `idx` (the index `r` names) that `selector` picks, as `registry/repo@digest`.
pub(crate) fn select_from(
    idx: &index::ModelKitIndex,
    r: &Reference,
    selector: &std::collections::BTreeMap<String, String>,
) -> Result<Reference> {
    let name = r.name();
    let repo = display_repo(&name);
    let entry = idx.select(selector, repo)?;
    let who = entry
        .reference(repo)
        .unwrap_or_else(|| entry.digest.to_string());
    eprintln!("Index {} refers to ModelKit {who}", display(r));
    Ok(r.at_digest(&entry.digest))
}

/// kit's "select the ModelKit to VERB with --label" for an index named without labels.
pub(crate) fn needs_label(r: &Reference, verb: &'static str, remote: bool) -> anyhow::Error {
    IndexError::NeedsLabel {
        reference: display(r),
        verb,
        remote: if remote { " --remote" } else { "" },
    }
    .into()
}

/// A registry error from fetching `r` for `verb`: "this is a ModelKit index" becomes kit's
/// message for that verb, any other error stays as it is.
pub(crate) fn with_label_hint(
    e: kitsnap_registry::Error,
    r: &Reference,
    verb: &'static str,
) -> anyhow::Error {
    let e = anyhow::Error::from(e);
    if is_index_error(&e) {
        needs_label(r, verb, true)
    } else {
        e
    }
}

/// Whether a registry error is "this is a ModelKit index" (then the verb says so itself).
fn is_index_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<kitsnap_registry::Error>(),
            Some(kitsnap_registry::Error::Core(kitsnap_core::Error::Index(
                IndexError::NeedsLabel { .. }
            )))
        ) || matches!(
            c.downcast_ref::<IndexError>(),
            Some(IndexError::NeedsLabel { .. })
        )
    })
}
