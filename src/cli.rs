//! Command-line interface: KitOps-compatible verbs over the library.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};

use crate::credentials::{self, Credentials, DockerConfig};
use crate::daemon;
use crate::human_bytes;
use crate::init::{self, InitOptions};
use crate::oci::ModelFormat;
use crate::pack::{self, PackOptions};
use crate::reference::Reference;
use crate::registry::{ClientOptions, Registry};
use crate::store::Store;
use crate::transfer::{self, TransferOptions};
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
    /// Print a ModelKit's manifest (JSON), from the store or (--remote) a registry.
    Inspect(InspectArgs),
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
    /// Upload a ModelKit from the local store to a registry.
    #[command(
        long_about = "Pushes the local ModelKit SOURCE to DESTINATION (default: SOURCE \
itself, which must then name a registry, e.g. registry.example.com/org/model:v1). Blobs the \
registry already has are skipped, blobs other repositories of the same registry hold are \
mounted instead of uploaded, and large blobs go up in resumable chunks.\n\nExamples:\n  \
kitsnap tag my-model:v1 registry.example.com/org/my-model:v1\n  kitsnap push registry.example.com/org/my-model:v1\n  \
kitsnap push my-model:v1 127.0.0.1:5000/my-model:v1 --plain-http"
    )]
    Push(PushArgs),
    /// Download a ModelKit from a registry into the local store.
    #[command(
        long_about = "Pulls REF (NAME:TAG or NAME@sha256:DIGEST) with every blob it \
needs, skipping blobs the store already has. Each blob is digest-checked while it streams and \
only then enters the store; broken connections are resumed with Range requests. Mirrors are \
read from containerd's hosts directory (--hosts-dir, default /etc/containerd/certs.d).\n\n\
With --containerd, kitsnap serve pulls REF into containerd instead (namespace -n, default \
`default`): one committed snapshot per layer in the kitsnap snapshotter, made through \
containerd's API under a lease, the manifest and config in containerd's content store with \
the GC labels containerd's unpacker uses, and an image record (`ctr images ls`). Layers the \
node already holds are neither downloaded nor unpacked; `ctr images rm` lets containerd's GC \
remove everything. A REF in the local store is taken from there.\n\nExamples:\n  \
kitsnap pull registry.example.com/org/llm:v1\n  \
kitsnap pull --containerd registry.example.com/org/llm:v1\n  \
kitsnap pull --containerd -n k8s.io 127.0.0.1:5000/kits/llm:v1 --plain-http"
    )]
    Pull(PullArgs),
    /// Mount a ModelKit read-only on the host (a containerd view), print the path.
    #[command(
        long_about = "Asks kitsnap serve for a read-only view of REF: the ModelKit is \
pulled into containerd first if this node does not hold it, then a containerd View of its \
layer snapshots is mounted under /run/kitsnap/mounts/NAME, files laid out as in the Kitfile. \
The path printed can be bind-mounted into containers; writes fail (read-only file system). \
Mounting the same NAME again adds a holder; `kitsnap umount` drops one. --filter selects \
layers as in unpack (model, datasets[:NAME_OR_PATH], code, docs, prompts).\n\nExamples:\n  \
P=$(kitsnap mount 127.0.0.1:5000/kits/llm:v1 --plain-http)\n  \
ctr run --mount type=bind,src=$P,dst=/models,options=rbind:ro IMAGE ID\n  \
nerdctl run -v $P:/models:ro IMAGE\n  docker run -v $P:/models:ro IMAGE\n  \
kitsnap mount REF --filter model --name llm-weights\n  kitsnap mount --list"
    )]
    Mount(MountArgs),
    /// Unmount a `kitsnap mount` (by name or path) and remove its view.
    Umount {
        /// Mount name or path.
        name: String,
        /// Unmount even if other holders (containers of the Docker plugin) remain.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Disk used by ModelKits on this node (containerd content, snapshots).
    #[command(
        long_about = "For each ModelKit pulled into containerd with kitsnap: its layers' \
size, the bytes of its blobs in containerd's content store (manifest, config, compressed \
layers; uncompressed layers live only in their snapshots), and the bytes of its snapshots; \
then node totals, hardlinks counted once."
    )]
    Df {
        #[command(flatten)]
        daemon: DaemonArgs,
    },
    /// Save credentials for a registry (in the Docker config).
    #[command(
        long_about = "Checks USERNAME and password against REGISTRY and saves them in \
the Docker config ($DOCKER_CONFIG/config.json or ~/.docker/config.json, mode 0600), or in its \
credential helper (credsStore/credHelpers) when one is configured. The password comes from \
--password-stdin, --password, or a prompt."
    )]
    Login(LoginArgs),
    /// Run the containerd proxy snapshotter daemon (snapshots.v1 over gRPC).
    #[command(
        long_about = "Serves containerd's snapshots.v1 API on a unix socket (mode 0660) \
as an overlay snapshotter with crash-safe metadata (redb) under --root. Register it in \
containerd's config:\n\n  [proxy_plugins.kitsnap]\n    type = \"snapshot\"\n    address = \"/run/kitsnap/kitsnap.sock\"\n\n\
then use `ctr ... --snapshotter kitsnap`. The same socket serves kitsnap.v1.Node (the API \
behind `pull --containerd`, `mount`, `umount` and `df`, which reaches containerd at \
--containerd-address), and a Docker volume plugin listens at --docker-plugin. A snapshot \
labelled containerd.io/snapshot/kitsnap.modelkit=REF:/DIR gets the ModelKit REF as an extra \
read-only lower layer at DIR. Settings come from --config (default /etc/kitsnap/config.toml: \
root, address, log_level, socket_gid, containerd_address, mount_root, docker_plugin, \
hosts_dir, plain_http), overridden by flags. Under systemd (Type=notify) it reports \
readiness once the socket listens."
    )]
    Serve(ServeArgs),
    /// Forget the credentials for a registry.
    Logout {
        /// Registry host, e.g. registry.example.com:5000.
        registry: String,
    },
}

/// How to reach `kitsnap serve` and in which containerd namespace to work.
#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// kitsnap serve's socket.
    #[arg(long, env = "KITSNAP_ADDRESS", value_name = "SOCKET", default_value = daemon::DEFAULT_ADDRESS)]
    pub address: PathBuf,
    /// containerd namespace.
    #[arg(short = 'n', long, env = "CONTAINERD_NAMESPACE", default_value = crate::containerd::DEFAULT_NAMESPACE)]
    pub namespace: String,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// ModelKit: REGISTRY/REPO[:TAG] or @sha256:DIGEST (or a local-store name).
    #[arg(required_unless_present = "list")]
    pub reference: Option<String>,
    /// Select layers, as in unpack (repeatable).
    #[arg(long = "filter", value_name = "FILTER")]
    pub filters: Vec<String>,
    /// Mount name (default: derived from REF and the filters).
    #[arg(long)]
    pub name: Option<String>,
    /// List the current mounts instead.
    #[arg(long, conflicts_with_all = ["reference", "filters", "name"])]
    pub list: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Use plain HTTP (no TLS) for the registry.
    #[arg(long)]
    pub plain_http: bool,
    /// Verify the registry's TLS certificate.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub tls_verify: bool,
    /// Extra CA certificate (PEM) to trust; repeatable.
    #[arg(long = "ca-file", value_name = "PEM")]
    pub ca_files: Vec<PathBuf>,
    /// containerd hosts directory with per-registry hosts.toml (mirrors).
    #[arg(long, value_name = "DIR", env = "KITSNAP_HOSTS_DIR")]
    pub hosts_dir: Option<PathBuf>,
    /// Blobs transferred at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Upload blobs larger than this in chunks of this many MiB.
    #[arg(long, default_value_t = 64, value_name = "MIB")]
    pub chunk_size_mib: u64,
    /// Retries on server errors and broken connections.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
}

impl RegistryArgs {
    fn registry(&self, host: &str) -> Result<Registry> {
        let opts = ClientOptions {
            plain_http: self.plain_http,
            tls_verify: self.tls_verify,
            ca_files: self.ca_files.clone(),
            hosts_dir: self.hosts_dir.clone(),
            docker_config: None,
            retries: self.retries,
            chunk_size: self.chunk_size_mib.max(1) << 20,
            ..Default::default()
        };
        Registry::new(host, opts).with_context(|| format!("setting up a client for {host}"))
    }

    /// The same settings for a pull that kitsnap serve makes.
    fn node_options(&self) -> crate::node::pb::RegistryOptions {
        crate::node::pb::RegistryOptions {
            plain_http: self.plain_http,
            insecure_skip_verify: !self.tls_verify,
            ca_file: self
                .ca_files
                .first()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            hosts_dir: self
                .hosts_dir
                .as_ref()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            concurrency: self.concurrency as u32,
        }
    }

    fn transfer(&self, progress: bool) -> TransferOptions {
        TransferOptions {
            concurrency: self.concurrency,
            progress,
        }
    }
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Configuration file (TOML).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// State directory (metadata and snapshot contents).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Unix socket to serve on.
    #[arg(long, value_name = "SOCKET")]
    pub address: Option<PathBuf>,
    /// Log level: error, warn, info, debug, trace (or a tracing filter; KITSNAP_LOG overrides).
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// containerd's socket (for ModelKit pulls and views) [default: /run/containerd/containerd.sock]
    #[arg(long, value_name = "SOCKET")]
    pub containerd_address: Option<PathBuf>,
    /// Where ModelKit views are mounted [default: /run/kitsnap/mounts]
    #[arg(long, value_name = "DIR")]
    pub mount_root: Option<PathBuf>,
    /// Docker volume plugin socket [default: /run/docker/plugins/kitsnap.sock]
    #[arg(long, value_name = "SOCKET")]
    pub docker_plugin: Option<PathBuf>,
    /// Do not serve the Docker volume plugin.
    #[arg(long, conflicts_with = "docker_plugin")]
    pub no_docker_plugin: bool,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// ModelKit reference: NAME[:TAG] or NAME@sha256:DIGEST.
    pub reference: String,
    /// Read the manifest from the registry instead of the local store.
    #[arg(long, short = 'r')]
    pub remote: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// Local ModelKit.
    pub source: String,
    /// Registry location (default: SOURCE).
    pub destination: Option<String>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// ModelKit to pull: REGISTRY/REPO[:TAG] or REGISTRY/REPO@sha256:DIGEST.
    pub reference: String,
    /// Pull into containerd instead (through kitsnap serve): content store, image record,
    /// one kitsnap snapshot per layer. A REF in the local store is taken from there.
    #[arg(long)]
    pub containerd: bool,
    #[command(flatten)]
    pub daemon: DaemonArgs,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    /// Registry host, e.g. registry.example.com:5000.
    pub registry: String,
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password (prefer --password-stdin: arguments show in `ps`).
    #[arg(short = 'p', long)]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    #[command(flatten)]
    pub registry_args: RegistryArgs,
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
    /// Used when REF is not in the local store: only the selected layers are downloaded.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn prompt(label: &str) -> Result<String> {
    eprint!("{label}");
    let mut s = String::new();
    std::io::stdin().read_line(&mut s)?;
    Ok(s.trim_end_matches(['\n', '\r']).to_string())
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
                // One manifest read per entry serves both the name and the size.
                let manifest = store.manifest(&e.descriptor).ok();
                let name = manifest
                    .as_ref()
                    .and_then(|m| unpack::kitfile_of(&store, m).ok().flatten())
                    .map(|k| k.package.name)
                    .unwrap_or_default();
                let size = e.descriptor.size + manifest.as_ref().map_or(0, |m| m.blobs_size());
                writeln!(
                    out,
                    "{:<40} {:<16} {:<24} {:>10}  {}",
                    e.name,
                    e.tag.as_deref().unwrap_or("<none>"),
                    name,
                    human_bytes(size),
                    e.descriptor.digest
                )?;
            }
        }
        Command::Inspect(a) => {
            let r = parse_ref(&a.reference)?;
            let m = if a.remote {
                transfer::check_remote(&r)?;
                let reg = a.registry.registry(&r.registry)?;
                runtime()?.block_on(transfer::remote_manifest(&reg, &r))?.1
            } else {
                let store = open_store()?;
                let d = store.resolve(&r)?;
                store.manifest(&d)?
            };
            serde_json::to_writer_pretty(&mut out, &m)?;
            writeln!(out)?;
        }
        Command::Push(a) => {
            let store = open_store()?;
            let src = parse_ref(&a.source)?;
            let dst = match &a.destination {
                Some(d) => parse_ref(d)?,
                None => src.clone(),
            };
            let reg = a.registry.registry(&dst.registry)?;
            let rep = runtime()?
                .block_on(transfer::push(
                    &store,
                    &reg,
                    &src,
                    &dst,
                    &a.registry.transfer(progress),
                ))
                .with_context(|| format!("pushing {src} to {dst}"))?;
            eprintln!(
                "Pushed {dst}: {} blob(s) uploaded ({}), {} already there",
                rep.transferred,
                human_bytes(rep.bytes),
                rep.skipped
            );
            if let Some(d) = rep.manifest {
                writeln!(out, "{}", d.digest)?;
            }
        }
        Command::Pull(a) if a.containerd => {
            let r = parse_ref(&a.reference)?;
            let res = runtime()?
                .block_on(crate::node::client::pull(
                    &a.daemon.address,
                    crate::node::client::PullArgs {
                        reference: r.to_string(),
                        namespace: a.daemon.namespace.clone(),
                        store: store_root.is_dir().then(|| store_root.clone()),
                        registry: a.registry.node_options(),
                        progress,
                    },
                ))
                .with_context(|| format!("pulling {r} into containerd"))?;
            eprintln!(
                "Pulled {} into containerd (namespace {}, from the {}): {} layer(s) unpacked ({}), {} already on this node; top snapshot {}",
                res.image,
                a.daemon.namespace,
                res.source,
                res.layers_unpacked,
                human_bytes(res.bytes_fetched),
                res.layers_reused,
                res.top_snapshot
            );
            writeln!(out, "{}", res.manifest_digest)?;
        }
        Command::Mount(a) if a.list => {
            runtime()?.block_on(crate::node::client::list_mounts(
                &a.daemon.address,
                &mut out,
            ))?;
        }
        Command::Mount(a) => {
            let reference = a.reference.clone().unwrap_or_default();
            let r = parse_ref(&reference)?;
            let res = runtime()?
                .block_on(crate::node::client::mount(
                    &a.daemon.address,
                    crate::node::client::MountArgs {
                        reference: r.to_string(),
                        namespace: a.daemon.namespace.clone(),
                        filters: a.filters.clone(),
                        name: a.name.clone(),
                        store: store_root.is_dir().then(|| store_root.clone()),
                        registry: a.registry.node_options(),
                    },
                ))
                .with_context(|| format!("mounting {r}"))?;
            if res.pulled {
                eprintln!(
                    "Pulled {r} into containerd (namespace {})",
                    a.daemon.namespace
                );
            }
            eprintln!(
                "Mounted {r} read-only as {} ({} holder(s))",
                res.name, res.holders
            );
            writeln!(out, "{}", res.path)?;
        }
        Command::Umount {
            name,
            force,
            daemon,
        } => {
            let res = runtime()?
                .block_on(crate::node::client::umount(&daemon.address, &name, force))
                .with_context(|| format!("unmounting {name}"))?;
            if res.unmounted {
                eprintln!("Unmounted {name}");
            } else {
                eprintln!(
                    "{name} stays mounted: {} other holder(s) (use --force)",
                    res.holders
                );
            }
        }
        Command::Df { daemon } => {
            runtime()?.block_on(crate::node::client::df(&daemon.address, &mut out))?;
        }
        Command::Pull(a) => {
            let store = open_store()?;
            let r = parse_ref(&a.reference)?;
            let reg = a.registry.registry(&r.registry)?;
            let rep = runtime()?
                .block_on(transfer::pull(
                    &store,
                    &reg,
                    &r,
                    &a.registry.transfer(progress),
                ))
                .with_context(|| format!("pulling {r}"))?;
            eprintln!(
                "Pulled {r}: {} blob(s) downloaded ({}), {} already stored",
                rep.transferred,
                human_bytes(rep.bytes),
                rep.skipped
            );
            if let Some(d) = rep.manifest {
                writeln!(out, "{}", d.digest)?;
            }
        }
        Command::Login(a) => {
            let username = match a.username {
                Some(u) => u,
                None => prompt("Username: ")?,
            };
            let password = if a.password_stdin {
                let mut p = String::new();
                std::io::stdin().read_line(&mut p)?;
                p.trim_end_matches(['\n', '\r']).to_string()
            } else if let Some(p) = a.password {
                p
            } else {
                prompt("Password: ")?
            };
            if password.is_empty() {
                bail!("empty password");
            }
            let creds = Credentials {
                username,
                secret: password,
            };
            let reg = a
                .registry_args
                .registry(&a.registry)?
                .with_credentials(Some(creds.clone()));
            runtime()?
                .block_on(reg.ping())
                .with_context(|| format!("logging in to {}", a.registry))?;
            let mut cfg = DockerConfig::load(credentials::default_path())?;
            cfg.store(&a.registry, &creds)?;
            eprintln!(
                "Login succeeded; credentials saved in {}",
                cfg.path.display()
            );
        }
        Command::Serve(a) => {
            let path = a
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(daemon::DEFAULT_CONFIG));
            let cfg = daemon::Config::load(&path, a.config.is_some())?;
            let level = a
                .log_level
                .or(cfg.log_level)
                .unwrap_or_else(|| "info".into());
            daemon::init_logging(&level);
            let root = a
                .root
                .or(cfg.root)
                .unwrap_or_else(|| PathBuf::from(daemon::DEFAULT_ROOT));
            let address = a
                .address
                .or(cfg.address)
                .unwrap_or_else(|| PathBuf::from(daemon::DEFAULT_ADDRESS));
            let mut registry = ClientOptions {
                hosts_dir: cfg.hosts_dir.clone().or_else(|| {
                    let d = PathBuf::from(crate::hosts::DEFAULT_HOSTS_DIR);
                    d.is_dir().then_some(d)
                }),
                ..ClientOptions::default()
            };
            registry.retries = 5;
            let settings = daemon::Settings {
                root,
                address,
                socket_gid: cfg.socket_gid,
                containerd_address: a
                    .containerd_address
                    .or(cfg.containerd_address)
                    .unwrap_or_else(|| PathBuf::from(crate::containerd::DEFAULT_ADDRESS)),
                mount_root: a
                    .mount_root
                    .or(cfg.mount_root)
                    .unwrap_or_else(|| PathBuf::from(crate::node::DEFAULT_MOUNT_ROOT)),
                docker_plugin: match a.docker_plugin.or(cfg.docker_plugin) {
                    _ if a.no_docker_plugin => None,
                    Some(p) if p.as_os_str().is_empty() => None,
                    Some(p) => Some(p),
                    None => Some(PathBuf::from(crate::dockerplugin::DEFAULT_SOCKET)),
                },
                registry,
                plain_http: cfg.plain_http.clone(),
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(daemon::serve(settings))?;
        }
        Command::Logout { registry } => {
            let mut cfg = DockerConfig::load(credentials::default_path())?;
            if cfg.erase(&registry)? {
                eprintln!("Removed the credentials for {registry}");
            } else {
                eprintln!("No credentials were saved for {registry}");
            }
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
            let r = parse_ref(&a.reference)?;
            let d = match store.resolve(&r) {
                Ok(d) => d,
                Err(crate::Error::NotFound(_))
                    if r.registry != crate::reference::DEFAULT_REGISTRY =>
                {
                    let reg = a.registry.registry(&r.registry)?;
                    let (d, rep) = runtime()?
                        .block_on(transfer::fetch_selected(
                            &store,
                            &reg,
                            &r,
                            &filters,
                            &a.registry.transfer(progress),
                        ))
                        .with_context(|| format!("fetching {r}"))?;
                    eprintln!(
                        "Fetched {} blob(s) ({}) from {}",
                        rep.transferred,
                        human_bytes(rep.bytes),
                        r.registry
                    );
                    d
                }
                Err(e) => return Err(e.into()),
            };
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
