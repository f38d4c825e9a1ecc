//! The command line: the verbs and the argument groups they share. Each verb's own
//! arguments and its `run` live in `commands/<verb>.rs`; `settings.rs` turns flags into
//! the libraries' settings.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::commands::{
    cache, containerd, df, diff, front, hosts, import, index, info, init, inspect, list, login,
    logout, mount, pack, pull, push, remove, serve, tag, umount, unpack, version,
};

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
    after_help = "Store location: --store, else --config DIR/storage, else $KITSNAP_HOME/storage, else \
$XDG_DATA_HOME/kitsnap/storage (~/.local/share/kitsnap/storage)."
)]
pub struct Cli {
    /// Local store directory (an OCI image layout).
    #[arg(long, global = true, env = "KITSNAP_STORE", value_name = "DIR")]
    pub store: Option<PathBuf>,

    /// Use the store KitOps' `kit` writes ($KITOPS_HOME/storage, else
    /// $XDG_DATA_HOME/kitops/storage): its ModelKits are listed, inspected, unpacked,
    /// pushed and pulled into containerd where they are.
    #[arg(long, global = true, conflicts_with = "store")]
    pub kit_store: bool,

    /// Never draw progress bars (they are only drawn when stderr is a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,

    /// Progress bars, as kit's flag: `none` draws none; `plain` and `fancy` both draw
    /// kitsnap's bars when stderr is a terminal.
    #[arg(long, global = true, value_enum, value_name = "MODE")]
    pub progress: Option<ProgressMode>,

    /// Diagnostics at or above LEVEL (trace, debug, info, warn, error) on stderr; the
    /// default is warn, and KITSNAP_LOG (a tracing filter) wins. For `serve`: the
    /// daemon's log level (or filter).
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log_level: Option<String>,

    /// More diagnostics, as kit's: -v debug, -vv trace, -vvv trace without progress bars.
    #[arg(short = 'v', long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// kit's configuration directory: the store is DIR/storage, as kit keeps it
    /// (`--config ~/.local/share/kitops` works on kit's own store), over --store and
    /// KITSNAP_STORE. For `serve`: its configuration file (TOML) [default:
    /// /etc/kitsnap/config.toml].
    #[arg(long, global = true, value_name = "PATH", conflicts_with = "kit_store")]
    pub config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// kit's `--progress` values.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressMode {
    None,
    Plain,
    Fancy,
}

impl Cli {
    /// Parses the process's arguments, also taking `--tls-verify BOOL` (kitsnap's older
    /// form) now that `--tls-verify` is a flag that takes no separate value (kit's form:
    /// `--tls-verify REF` must leave REF alone).
    pub fn parse_args() -> Cli {
        Cli::parse_from(join_tls_verify(std::env::args_os()))
    }
}

/// `--tls-verify true|false` as `--tls-verify=true|false`; nothing after `--` is touched.
pub fn join_tls_verify(
    args: impl IntoIterator<Item = std::ffi::OsString>,
) -> Vec<std::ffi::OsString> {
    let mut out: Vec<std::ffi::OsString> = Vec::new();
    let mut args = args.into_iter().peekable();
    while let Some(a) = args.next() {
        if a == "--" {
            out.push(a);
            out.extend(args);
            break;
        }
        if a == "--tls-verify"
            && let Some(v) = args.next_if(|v| v == "true" || v == "false")
        {
            let mut joined = a;
            joined.push("=");
            joined.push(v);
            out.push(joined);
            continue;
        }
        out.push(a);
    }
    out
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write a Kitfile describing the files of a directory.
    #[command(
        long_about = "Scans DIR and writes DIR/Kitfile, then prints where every path went \
(PATH, SECTION, SIZE). The largest weights (.safetensors, .gguf, .onnx, .bin, .pt, .pkl, ...; \
shards such as model-00001-of-00004.safetensors and ONNX external data count as one) become the \
model; other weights, GGUF quantisations, config.json, *.index.json, tokenizer files, auto_map \
code and directories of weights (onnx/, unet/) or configs (tokenizer/) become model parts, so \
`unpack --filter model` yields what from_pretrained loads. data/ and tabular files are \
datasets, *.py, requirements.txt and pyproject.toml code, README/LICENSE/markdown docs, \
prompts/ and *.prompt prompts, other JSON goes with the model. The license (SPDX id) comes \
from the README card's `license:` or the LICENSE text. __pycache__, *.pyc, .git, .venv, \
virtualenvs and .ipynb_checkpoints are skipped and written to DIR/.kitignore; paths it \
already ignores are left out. Review the result before packing."
    )]
    Init(init::InitArgs),
    /// Pack a directory into a ModelKit in the local store.
    #[command(
        long_about = "Packs the directory DIR, described by its Kitfile, into a ModelKit \
tagged NAME[:TAG] in the local store: one layer per Kitfile entry (model, model parts, code, \
datasets, docs, prompts, in that order). Packing is reproducible: the same tree gives the same \
manifest digest. Layers already in the store are not stored twice.\n\nExamples:\n  \
kitsnap pack . -t my-model:v1\n  kitsnap pack ./dir -f ./dir/Kitfile.prod -t registry.example.com/org/m:v2 --compression zstd\n  \
kitsnap pack . -t my-model:mp --use-model-pack\n  \
kitsnap pack . -t my-model:raw --use-model-pack --layer-format raw"
    )]
    Pack(pack::PackArgs),
    /// Import a Hugging Face (or Git) repository as a ModelKit, as `kit import`.
    #[command(
        long_about = "Downloads REPOSITORY into a working directory under the store and packs \
it (no compression) into the local store as a ModelKit tagged --tag (default ORG/REPO:latest, \
lowercased, from the repository's path). REPOSITORY is ORG/REPO on Hugging Face or a URL. The \
Kitfile is --file (`-` reads standard input), else the repository's own, else one generated as \
`kitsnap init` generates it (package name and author from the repository's path; on a \
terminal you are offered to edit it). The working directory is removed afterwards.\n\n\
--tool hf (the default for ORG/REPO and huggingface URLs) lists the repository through the \
Hugging Face API at $HF_ENDPOINT (default https://huggingface.co) and downloads the files the \
Kitfile needs, --concurrency at once, with --token as a Bearer token. --tool git (the default \
for other URLs) runs `git clone --depth 1` and `git lfs pull` (git and git-lfs must be \
installed; ORG/REPO is cloned from $HF_ENDPOINT/ORG/REPO) and drops .git, .gitattributes and \
.gitignore; --token is given to git as the password of user `token`.\n\nExamples:\n  \
kitsnap import myorg/myrepo\n  kitsnap import myorg/myrepo --ref v1.0.0 -t myrepository:mytag\n  \
kitsnap import https://github.com/org/repo.git -t repo:v1 -f ./Kitfile\n  \
HF_ENDPOINT=https://hf-mirror.example kitsnap import myorg/myrepo --token \"$HF_TOKEN\""
    )]
    Import(import::ImportArgs),
    /// Manage temporary files: partial downloads and import working directories.
    #[command(
        long_about = "kit's `cache` verbs. kitsnap's temporary files are the partial blobs of \
interrupted transfers (STORE/ingest) and the working directories of `kitsnap import` \
(STORE/import); both are normally empty. `clear` waits for running transfers and skips \
imports in progress, so it never deletes a file in use.\n\nExamples:\n  kitsnap cache info\n  \
kitsnap cache clear"
    )]
    Cache(cache::CacheArgs),
    /// List the ModelKits in the local store.
    List(list::ListArgs),
    /// Print a ModelKit's manifest (JSON), from the store or (--remote) a registry.
    Inspect(inspect::InspectArgs),
    /// Print a ModelKit's Kitfile (YAML).
    Info(info::InfoArgs),
    /// Compare two ModelKits (config, annotations, shared and unique layers), as kit's diff.
    Diff(diff::DiffArgs),
    /// Give a ModelKit another name or tag.
    Tag(tag::TagArgs),
    /// Manage ModelKit indexes: variants of a model under one reference, chosen by label.
    Index(index::IndexArgs),
    /// Remove ModelKits from the local store and free the space they used.
    #[command(
        long_about = "Removes the named tags (or, for NAME@DIGEST or with --force, every tag of \
that manifest), then deletes blobs nothing references any more. As with kit: --all removes \
untagged ModelKits (whose tag moved to a newer pack) and --all --force removes every ModelKit\n(ModelKits a ModelKit index refers to keep their content until the index is deleted).\n\n\
Examples:\n  kitsnap remove my-model:v1\n  kitsnap remove my-model:v1,v2,v3\n  \
kitsnap remove my-model@sha256:<digest>\n  kitsnap remove --all\n  kitsnap remove --all --force"
    )]
    Remove(remove::RemoveArgs),
    /// Unpack a ModelKit's files into a directory.
    #[command(
        long_about = "Writes the files of a ModelKit into DIR, laid out as in its \
Kitfile, plus the Kitfile itself. --filter selects parts, with kit's syntax: \
TYPE[,TYPE...][:NAME_OR_PATH[,...]] where TYPE is kitfile, model, datasets, code, docs or \
prompts; repeat --filter to combine. For a ModelKit index (`kitsnap index`), --label \
KEY=VALUE (repeatable) selects the one ModelKit carrying every label given. Every layer's digest is checked; entries that would \
escape DIR (.., absolute paths, outside links), device nodes and duplicates are refused.\n\n\
Examples:\n  kitsnap unpack my-model:v1 -d ./out\n  kitsnap unpack my-model:v1 -d ./out --filter model\n  \
kitsnap unpack my-model:v1 -d ./out --filter datasets:train --filter kitfile\n  \
kitsnap unpack my-model:all -l quantization=q4_0 -d ./out"
    )]
    Unpack(unpack::UnpackArgs),
    /// Upload a ModelKit from the local store to a registry.
    #[command(
        long_about = "Pushes the local ModelKit SOURCE to DESTINATION (default: SOURCE \
itself, which must then name a registry, e.g. registry.example.com/org/model:v1). Blobs the \
registry already has are skipped, blobs other repositories of the same registry hold are \
mounted instead of uploaded, and large blobs go up in resumable chunks.\n\nExamples:\n  \
kitsnap tag my-model:v1 registry.example.com/org/my-model:v1\n  kitsnap push registry.example.com/org/my-model:v1\n  \
kitsnap push my-model:v1 127.0.0.1:5000/my-model:v1 --plain-http"
    )]
    Push(push::PushArgs),
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
remove everything. A REF in the local store is taken from there.\n\nA REF that is a \
ModelKit index needs --label KEY=VALUE (repeatable): the one ModelKit carrying every label \
is pulled and takes REF's tag in the store, as kit does.\n\nExamples:\n  \
kitsnap pull registry.example.com/org/llm:v1\n  \
kitsnap pull registry.example.com/org/llm:all -l quantization=q4_0\n  \
kitsnap pull --containerd registry.example.com/org/llm:v1\n  \
kitsnap pull --containerd -n k8s.io 127.0.0.1:5000/kits/llm:v1 --plain-http"
    )]
    Pull(pull::PullArgs),
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
    Mount(mount::MountArgs),
    /// Unmount a `kitsnap mount` (by name or path) and remove its view.
    Umount(umount::UmountArgs),
    /// Disk used by ModelKits on this node (containerd content, snapshots).
    #[command(
        long_about = "For each ModelKit pulled into containerd with kitsnap: its layers' \
size, the bytes of its blobs in containerd's content store (manifest, config, compressed \
layers; uncompressed layers live only in their snapshots), and the bytes of its snapshots; \
then node totals, hardlinks counted once."
    )]
    Df(df::DfArgs),
    /// Save credentials for a registry (in the Docker config).
    #[command(
        long_about = "Checks USERNAME and password against REGISTRY and saves them in \
the Docker config ($DOCKER_CONFIG/config.json or ~/.docker/config.json, mode 0600), or in its \
credential helper (credsStore/credHelpers) when one is configured. The password comes from \
--password-stdin, --password, or a prompt."
    )]
    Login(login::LoginArgs),
    /// Run the containerd proxy snapshotter daemon (snapshots.v1 over gRPC).
    #[command(
        long_about = "Serves containerd's snapshots.v1 API on a unix socket (mode 0660) \
as an overlay snapshotter with crash-safe metadata (redb) under --root. Register it in \
containerd's config:\n\n  [proxy_plugins.kitsnap]\n    type = \"snapshot\"\n    address = \"/run/kitsnap/kitsnap.sock\"\n\n\
then use `ctr ... --snapshotter kitsnap`. The same socket serves kitsnap.v1.Node (the API \
behind `pull --containerd`, `mount`, `umount` and `df`, which reaches containerd at \
--containerd-address), and a Docker volume plugin listens at --docker-plugin. A snapshot \
labelled containerd.io/snapshot/kitsnap.modelkit=REF:/DIR gets the ModelKit REF as an extra \
read-only lower layer at DIR. It also serves a node-local registry mirror (OCI distribution, \
pull only) on --mirror-addr (default 127.0.0.1:5050): named in containerd's hosts.toml \
(`kitsnap hosts install REGISTRY`), it answers a ModelKit pulled by tag with its image view, \
so that ctr, nerdctl, Docker and kubelet unpack and mount ModelKits like images. Settings \
come from --config (default /etc/kitsnap/config.toml: root, address, log_level, socket_gid, \
containerd_address, mount_root, docker_plugin, hosts_dir, plain_http, mirror_addr, \
max_layers, max_expansion, max_kit_gib, pull_concurrency), overridden by flags. Under systemd (Type=notify) it \
reports readiness once the socket and the mirror listen."
    )]
    Serve(serve::ServeArgs),
    /// Name the kitsnap node mirror in containerd's hosts.toml for registries (so ctr,
    /// nerdctl, Docker and kubelet pull ModelKits as images), or take it out again.
    Hosts(hosts::HostsArgs),
    /// `nerdctl run --mount type=modelkit,src=REF,dst=DIR[,filter=F]`: install (or remove)
    /// kitsnap as a `nerdctl` front earlier in PATH.
    #[command(
        long_about = "nerdctl cannot be taught new mount types, so kitsnap can stand in front of it: \
`kitsnap front install` puts a `nerdctl` symlink to kitsnap in --dir (default /usr/local/sbin, \
which must come before the real nerdctl in PATH). Invoked as nerdctl, kitsnap turns each \
`--mount type=modelkit,src=REF,dst=DIR[,filter=F]...` into a read-only bind of a `kitsnap mount` \
of REF (through kitsnap serve, in nerdctl's namespace) and execs the real nerdctl with every other \
argument unchanged; a command line without type=modelkit is passed on untouched. The mount's \
holder is released when nerdctl exits (the files stay while the container uses them). When the \
real nerdctl has `--mount type=image` (after v2.3.5), an unfiltered type=modelkit becomes \
type=image of the kit's image view, pulled into nerdctl's namespace first (no kitsnap mount); \
KITSNAP_FRONT_MOUNT=image|bind overrides that choice. \
`kitsnap front remove` takes it out again.\n\nExamples:\n  sudo kitsnap front install\n  \
sudo nerdctl run --rm --mount type=modelkit,src=ghcr.io/org/llm:v1,dst=/models busybox ls /models\n  \
sudo nerdctl run --rm --mount type=modelkit,src=ghcr.io/org/llm:v1,dst=/models,filter=model IMAGE\n  \
sudo kitsnap front remove"
    )]
    Front(front::FrontArgs),
    /// Forget the credentials for a registry.
    Logout(logout::LogoutArgs),
    /// Register kitsnap's snapshotter with containerd (a conf.d drop-in), or take it out.
    #[command(
        long_about = "Registers kitsnap serve as containerd's `kitsnap` snapshotter without \
editing the main config by hand: writes /etc/containerd/conf.d/kitsnap.toml \
([proxy_plugins.kitsnap] with --address) and adds /etc/containerd/conf.d/*.toml to the main \
config's `imports`, keeping its comments. Idempotent; `remove` deletes the drop-in. Restart \
containerd afterwards.\n\nExamples:\n  sudo kitsnap containerd install\n  \
sudo kitsnap containerd install --unpack-platform linux/amd64   # containerd 2.x transfer service\n  \
sudo kitsnap containerd remove"
    )]
    Containerd(containerd::ContainerdArgs),
    /// Print the version, commit, build date and the formats kitsnap writes.
    Version(version::VersionArgs),
    /// `completion` and `man`, generated from this definition.
    #[command(flatten)]
    Docs(crate::commands::completions::DocsCommand),
}

/// How to reach `kitsnap serve` and in which containerd namespace to work.
#[derive(Args, Debug, Clone)]
pub struct DaemonArgs {
    /// kitsnap serve's socket.
    #[arg(long, env = "KITSNAP_ADDRESS", value_name = "SOCKET", default_value = kitsnap_node::daemon::DEFAULT_ADDRESS)]
    pub address: PathBuf,
    /// containerd namespace.
    #[arg(short = 'n', long, env = "CONTAINERD_NAMESPACE", default_value = kitsnap_node::containerd::DEFAULT_NAMESPACE)]
    pub namespace: String,
}

#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Use plain HTTP (no TLS) for the registry.
    #[arg(long)]
    pub plain_http: bool,
    /// Verify the registry's TLS certificate (the default); `--tls-verify=false` turns
    /// it off (`--tls-verify false` works too).
    #[arg(
        long,
        default_value_t = true,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub tls_verify: bool,
    /// Extra CA certificate (PEM) to trust; repeatable.
    #[arg(long = "ca-file", value_name = "PEM")]
    pub ca_files: Vec<PathBuf>,
    /// Client certificate (PEM) for registries that require mutual TLS; needs --key.
    #[arg(
        long,
        env = "KITOPS_CLIENT_CERT",
        value_name = "FILE",
        requires = "key"
    )]
    pub cert: Option<PathBuf>,
    /// Private key (PEM) of the --cert client certificate.
    #[arg(
        long,
        env = "KITOPS_CLIENT_KEY",
        value_name = "FILE",
        requires = "cert"
    )]
    pub key: Option<PathBuf>,
    /// Proxy for every registry connection (e.g. http://proxy:3128); overrides the
    /// environment's HTTP_PROXY, HTTPS_PROXY and NO_PROXY.
    #[arg(long, value_name = "URL")]
    pub proxy: Option<String>,
    /// containerd hosts directory with per-registry hosts.toml (mirrors).
    #[arg(long, value_name = "DIR", env = "KITSNAP_HOSTS_DIR")]
    pub hosts_dir: Option<PathBuf>,
    /// Blobs transferred at once (kit's default, 5).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..), value_name = "N")]
    pub concurrency: u16,
    /// Upload blobs in chunks of this many MiB, one request each (for proxies that cap
    /// request bodies). 0, the default: each blob goes up as one stream, resumed from
    /// where the registry has it if it breaks.
    #[arg(long, default_value_t = 0, value_name = "MIB")]
    pub chunk_size_mib: u64,
    /// Break off and resume a transfer that moves nothing for this many seconds (an
    /// upload the registry takes no bytes of; a download under 64 KiB in that time).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..), value_name = "SECS", env = "KITSNAP_STALL_TIMEOUT")]
    pub stall_timeout: u64,
    /// Retries on server errors and broken connections.
    #[arg(long, default_value_t = 5)]
    pub retries: u32,
}
