//! `kitsnap import`: a Hugging Face repository (or any Git repository) into a ModelKit in
//! the local store, as KitOps' `kit import` (v1.7.0) does.
//!
//! The files are fetched into a working directory under the store (`STORE/import/`), the
//! Kitfile is --file, else the repository's own, else one generated as `kitsnap init`
//! generates it (package name and author from the repository's path), and the directory is
//! packed (no compression) as `kitsnap pack` packs it; the working directory is removed
//! afterwards, on errors too. Two ways to fetch, as kit's --tool:
//! - `hf`: the Hugging Face API at `$HF_ENDPOINT` (default https://huggingface.co): the tree
//!   is listed one directory at a time, then the files the Kitfile needs are streamed to
//!   disk, --concurrency at once, each checked against the listed size (and LFS sha256);
//! - `git`: `git clone --depth 1` without LFS smudging, `git lfs pull`, then the Git
//!   metadata kit removes (`.git`, and `.gitattributes`/`.gitignore` at any depth) goes.

use std::fs::{self, File};
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use kitsnap_core::ignore::IGNORE_FILE;
use kitsnap_core::init::{self, InitOptions};
use kitsnap_core::kitfile::{self, Kitfile};
use kitsnap_core::oci::{Compression, ModelFormat};
use kitsnap_core::pack::{self, PackOptions};
use kitsnap_core::reference::Reference;
use kitsnap_core::{human_bytes, progress};
use kitsnap_registry::client::{ClientOptions, PieceHasher, http_client};
use kitsnap_registry::hosts::HostEndpoint;
use serde::Deserialize;

use crate::commands::parse_ref;
use crate::settings::{Ctx, runtime};

/// Where Hugging Face lives unless `HF_ENDPOINT` says otherwise (huggingface_hub's variable).
pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";
/// kit's default for --ref: with it, `git clone` takes the remote's default branch.
const DEFAULT_REF: &str = "main";

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// The repository: ORG/REPO on Hugging Face, or a URL (https://huggingface.co/ORG/REPO,
    /// https://github.com/ORG/REPO.git, ...).
    #[arg(value_name = "REPOSITORY")]
    pub repository: String,
    /// Version (branch or tag) of the repository to import.
    #[arg(long = "ref", default_value = DEFAULT_REF, value_name = "REF")]
    pub git_ref: String,
    /// Token for the repository: a Hugging Face access token (sent as `Authorization:
    /// Bearer`); with --tool git, given to git as the password of user `token`.
    #[arg(long, value_name = "TOKEN")]
    pub token: Option<String>,
    /// Name for the ModelKit, NAME[:TAG[,TAG...]] (default: ORG/REPO:latest, lowercased,
    /// from the repository's path, which must then have exactly two segments).
    #[arg(short = 't', long = "tag", value_name = "NAME[:TAG]")]
    pub tag: Option<String>,
    /// Kitfile to pack with (`-` reads it from standard input); default: the repository's
    /// own Kitfile, else one generated from its files.
    #[arg(short = 'f', long = "file", value_name = "KITFILE")]
    pub kitfile: Option<PathBuf>,
    /// How to fetch the files: `hf` (the Hugging Face API) or `git` (git and git-lfs);
    /// default: hf for ORG/REPO and Hugging Face URLs, git for other URLs.
    #[arg(long, value_name = "git|hf")]
    pub tool: Option<String>,
    /// Files downloaded at once (hf).
    #[arg(
        long,
        default_value_t = 5,
        allow_negative_numbers = true,
        value_name = "N"
    )]
    pub concurrency: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tool {
    Git,
    Hf,
}

pub fn run(a: ImportArgs, ctx: &Ctx) -> Result<()> {
    let src = Source::parse(&a.repository)?;
    // The same checks, in the same order, as kit: tag, tool, concurrency.
    let tag = match &a.tag {
        Some(t) => t.clone(),
        None => {
            let Some(org_repo) = src.org_repo() else {
                bail!(
                    "could not derive a tag from {:?} (its path must be ORG/REPO): use flag --tag to set a tag for the ModelKit",
                    a.repository
                );
            };
            let t = format!("{}:latest", org_repo.to_lowercase());
            eprintln!("Using tag {t}. Use flag --tag to override");
            t
        }
    };
    let (reference, extra) = parse_tags(&tag)?;
    let tool = match a.tool.as_deref() {
        None if src.host.is_empty() || src.host.contains("huggingface") => Tool::Hf,
        None => Tool::Git,
        Some("git") => Tool::Git,
        Some("hf") => Tool::Hf,
        Some(other) => bail!("invalid value {other:?} for --tool: use --tool git or --tool hf"),
    };
    if a.concurrency < 1 {
        bail!(
            "invalid argument for concurrency ({}): must be at least 1 (--concurrency N)",
            a.concurrency
        );
    }
    let hf_repo = match tool {
        Tool::Hf => Some(src.org_repo().ok_or_else(|| {
            anyhow!(
                "{:?} is not a Hugging Face repository (ORG/REPO or https://huggingface.co/ORG/REPO): use --tool git for other Git repositories",
                a.repository
            )
        })?),
        Tool::Git => None,
    };

    let store = ctx.open_store()?;
    let work = WorkDir::create(store.root())?;
    let dir = work.repo();

    // A Kitfile given is read (and checked) before anything is fetched.
    let given = match &a.kitfile {
        None => None,
        Some(p) if p.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading the Kitfile from standard input")?;
            let kf = Kitfile::from_yaml(&text, "Kitfile from standard input")?;
            // Outside the context directory, so that it is not packed as a file.
            let path = work.root.join("Kitfile.stdin");
            fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Some((path, kf))
        }
        Some(p) => {
            let kf = pack::load_kitfile(p).with_context(|| {
                format!("reading the Kitfile given with --file ({})", p.display())
            })?;
            Some((p.clone(), kf))
        }
    };

    let endpoint = hf_endpoint();
    match &hf_repo {
        Some(repo) => {
            let hf = Hf {
                endpoint: endpoint.clone(),
                repo: repo.clone(),
                git_ref: a.git_ref.clone(),
                token: a.token.clone(),
            };
            hf.fetch(
                &dir,
                given.as_ref().map(|(_, kf)| kf),
                a.concurrency as usize,
                ctx.progress,
            )?;
        }
        None => {
            let url = if a.repository.starts_with("http") {
                a.repository.clone()
            } else {
                format!("{endpoint}/{}", a.repository)
            };
            git_fetch(&url, &a.git_ref, a.token.as_deref(), &dir, ctx.progress)?;
        }
    }

    let kitfile = match given {
        Some((path, _)) => Some(path),
        None => {
            match pack::find_kitfile(&dir, None) {
                Ok(p) => eprintln!(
                    "Using the repository's {}",
                    p.file_name().unwrap_or_default().to_string_lossy()
                ),
                Err(_) => {
                    // As kit: the package is named after the last segment of the repository,
                    // its author after the one before.
                    let named = hf_repo.as_deref().unwrap_or(&a.repository);
                    let mut segs = named.trim_end_matches('/').rsplit('/');
                    let name = segs.next().filter(|s| !s.is_empty()).map(str::to_string);
                    let author = segs.next().filter(|s| !s.is_empty()).map(str::to_string);
                    generate_kitfile(&dir, name, author)?;
                    if std::io::stdin().is_terminal() {
                        offer_edit(&dir.join(kitfile::DEFAULT_NAMES[0]))?;
                    }
                }
            }
            None
        }
    };

    eprintln!("Packing model to {tag}");
    let opts = PackOptions {
        context: dir.clone(),
        kitfile,
        reference: reference.clone(),
        compression: Compression::None,
        format: ModelFormat::Kit,
        layer_format: pack::LayerFormat::Tar,
        progress: ctx.progress,
    };
    let res = pack::pack(&store, &opts).with_context(|| format!("packing {}", a.repository))?;
    crate::commands::pack::tag_and_report(&store, &res, &extra)?;
    eprintln!("Model is packed as {tag}");
    drop(work);
    writeln!(crate::output::stdout(), "{}", res.manifest.digest)?;
    Ok(())
}

/// REPOSITORY as kit reads it (Go's url.Parse): the host when it has a scheme, and the path.
#[derive(Debug, PartialEq, Eq)]
struct Source {
    host: String,
    path: String,
}

impl Source {
    fn parse(repo: &str) -> Result<Source> {
        let repo_part = repo.split(['?', '#']).next().unwrap_or_default();
        match repo_part.split_once("://") {
            Some((scheme, rest)) => {
                let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
                if !scheme_ok {
                    bail!(
                        "{repo:?} is not a valid URL: give ORG/REPO or a URL such as https://huggingface.co/ORG/REPO"
                    );
                }
                let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
                Ok(Source {
                    host: host.to_ascii_lowercase(),
                    path: path.to_string(),
                })
            }
            None => Ok(Source {
                host: String::new(),
                path: repo_part.to_string(),
            }),
        }
    }

    /// `ORG/REPO` when the path has exactly two segments (slashes around it ignored).
    fn org_repo(&self) -> Option<String> {
        let p = self.path.trim_matches('/');
        (p.split('/').count() == 2).then(|| p.to_string())
    }
}

/// `NAME[:TAG[,TAG...]]` as `kitsnap pack -t` takes it: the first reference and the others.
fn parse_tags(tag: &str) -> Result<(Reference, Vec<Reference>)> {
    let (name, tags) = tag
        .rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .unwrap_or((tag, ""));
    let mut refs = Vec::new();
    let mut tags = tags.split(',').filter(|t| !t.is_empty()).peekable();
    if tags.peek().is_none() {
        refs.push(name.to_string());
    }
    refs.extend(tags.map(|t| format!("{name}:{t}")));
    let mut parsed = refs
        .iter()
        .map(|r| {
            let r = parse_ref(r)
                .with_context(|| format!("tag {tag:?} is invalid: use --tag NAME[:TAG]"))?;
            if r.digest.is_some() {
                bail!("tag {tag:?} is a digest: use --tag NAME[:TAG]");
            }
            Ok(r)
        })
        .collect::<Result<Vec<_>>>()?;
    let first = parsed.remove(0);
    Ok((first, parsed))
}

fn hf_endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .map(|e| e.trim().trim_end_matches('/').to_string())
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| DEFAULT_HF_ENDPOINT.to_string())
}

/// The working directory of one import, `STORE/import/<id>/`: `repo/` holds the files (the
/// context directory of the pack), `lock` is held locked while the import runs. It is
/// removed when dropped; one left behind by a killed import (Ctrl-C, SIGKILL: the lock is
/// free then) is removed by the next import.
struct WorkDir {
    root: PathBuf,
    _lock: File,
}

/// A working directory without its lock file this old is a leftover (an import dies
/// between creating the directory and its lock only by SIGKILL, within microseconds).
const UNLOCKED_GRACE: Duration = Duration::from_secs(3600);

impl WorkDir {
    fn create(store_root: &Path) -> Result<WorkDir> {
        let base = store_root.join("import");
        fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
        sweep(&base);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mut n = 0u32;
        let root = loop {
            let p = base.join(format!("kitsnap_import_{}_{nanos}_{n}", std::process::id()));
            match fs::create_dir(&p) {
                Ok(()) => break p,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => n += 1,
                Err(e) => {
                    return Err(e).with_context(|| format!("creating {}", p.display()));
                }
            }
        };
        // Locked under another name first, so that a sweeper never sees it unlocked.
        let tmp = root.join("lock.tmp");
        let lock = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        lock.lock()
            .with_context(|| format!("locking {}", tmp.display()))?;
        let work = WorkDir { root, _lock: lock };
        fs::rename(&tmp, work.root.join("lock"))
            .with_context(|| format!("creating the lock of {}", work.root.display()))?;
        fs::create_dir(work.repo())
            .with_context(|| format!("creating {}", work.repo().display()))?;
        Ok(work)
    }

    fn repo(&self) -> PathBuf {
        self.root.join("repo")
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.root) {
            eprintln!(
                "warning: could not remove the working directory {}: {e}",
                self.root.display()
            );
        }
    }
}

/// Removes the working directories of imports that are no longer running.
fn sweep(base: &Path) {
    let Ok(rd) = fs::read_dir(base) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) && is_leftover(&p) {
            let _ = fs::remove_dir_all(&p);
        }
    }
}

/// Whether an import working directory belongs to no running import: its lock is free,
/// or it has none and is older than [`UNLOCKED_GRACE`] (a young one may be starting).
pub(crate) fn is_leftover(dir: &Path) -> bool {
    match File::open(dir.join("lock")) {
        Ok(f) => f.try_lock().is_ok(),
        Err(_) => fs::metadata(dir)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > UNLOCKED_GRACE),
    }
}

/// Writes a Kitfile (and a `.kitignore`, as `kitsnap init` does) describing `dir`.
fn generate_kitfile(dir: &Path, name: Option<String>, author: Option<String>) -> Result<()> {
    let plan = init::generate(
        dir,
        &InitOptions {
            name,
            description: None,
            author,
        },
    )
    .context("generating a Kitfile for the repository")?;
    if let Some(text) = &plan.kitignore {
        let p = dir.join(IGNORE_FILE);
        fs::write(&p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    let yaml = plan.kitfile.to_yaml()?;
    let p = dir.join(kitfile::DEFAULT_NAMES[0]);
    fs::write(&p, &yaml).with_context(|| format!("writing {}", p.display()))?;
    eprintln!("Generated Kitfile:\n\n{yaml}");
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    Ok(())
}

/// On a terminal, as kit: offers to edit the generated Kitfile in $EDITOR (else nano).
fn offer_edit(path: &Path) -> Result<()> {
    eprint!("Would you like to edit Kitfile before packing? (y/N): ");
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("reading the answer")?;
    if !answer.trim().to_lowercase().starts_with('y') {
        return Ok(());
    }
    let editor = std::env::var("EDITOR")
        .ok()
        .filter(|e| !e.trim().is_empty())
        .or_else(|| {
            Command::new("sh")
                .args(["-c", "command -v nano"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|_| "nano".to_string())
        })
        .ok_or_else(|| {
            anyhow!("no editor found: set EDITOR to edit the Kitfile, or answer n to pack it as generated")
        })?;
    // `$EDITOR` may carry arguments (`code --wait`), as git allows.
    let status = Command::new("sh")
        .args(["-c", &format!("{editor} \"$@\""), "editor"])
        .arg(path)
        .status()
        .with_context(|| format!("running the editor {editor:?}"))?;
    if !status.success() {
        bail!(
            "the editor {editor:?} failed ({status}): fix EDITOR, or answer n to pack the Kitfile as generated"
        );
    }
    pack::load_kitfile(path).context("the edited Kitfile is invalid: run the import again")?;
    Ok(())
}

// --- git ----------------------------------------------------------------------------------

fn git_fetch(
    url: &str,
    git_ref: &str,
    token: Option<&str>,
    dest: &Path,
    show_progress: bool,
) -> Result<()> {
    check_git()?;
    let origin = url_origin(url);
    let mut clone = git_command(token, origin);
    clone.args(["clone", "--depth", "1"]);
    if git_ref != DEFAULT_REF {
        clone.args(["--branch", git_ref, "-c", "advice.detachedHead=false"]);
    }
    if show_progress && std::io::stderr().is_terminal() {
        // git draws its progress only on a terminal, and its stderr is a pipe here.
        clone.arg("--progress");
    }
    clone
        .arg("--")
        .arg(url)
        .arg(dest)
        .env("GIT_LFS_SKIP_SMUDGE", "1");
    eprintln!("Cloning repository {url}");
    run_git(
        clone,
        &format!("cloning {url}"),
        "check the URL and --ref, and pass --token for a private repository",
    )?;
    let mut lfs = git_command(token, origin);
    lfs.args(["lfs", "pull"]).current_dir(dest);
    eprintln!("Pulling large files");
    run_git(
        lfs,
        &format!("downloading the Git LFS files of {url}"),
        "check that the server serves Git LFS, and pass --token for a private repository",
    )?;
    clean_git_metadata(dest)
}

fn check_git() -> Result<()> {
    let works = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if !works(&["version"]) {
        bail!(
            "git is not installed: install git and git-lfs (apt-get install git git-lfs), or use --tool hf for a Hugging Face repository"
        );
    }
    if !works(&["lfs", "version"]) {
        bail!(
            "git-lfs is not installed: install it (apt-get install git git-lfs), or use --tool hf for a Hugging Face repository"
        );
    }
    Ok(())
}

/// `scheme://host[:port]` of a URL, for scoping credentials to it.
fn url_origin(url: &str) -> Option<&str> {
    let (scheme, rest) = url.split_once("://")?;
    let host_len = rest.find('/').unwrap_or(rest.len());
    Some(&url[..scheme.len() + 3 + host_len])
}

/// `git` that never prompts; with a token, a credential helper (configured through
/// GIT_CONFIG_COUNT, as kit does, so the user's gitconfig is left alone) answers with it
/// as the password of user `token`, for the repository's own origin only (kit gives it to
/// any host, so an `lfs.url` elsewhere would receive it). The token travels in the
/// environment, not in argv.
fn git_command(token: Option<&str>, origin: Option<&str>) -> Command {
    let mut c = Command::new("git");
    c.env("GIT_TERMINAL_PROMPT", "0");
    match token {
        Some(t) => {
            let scope = origin.map(|o| format!("{o}.")).unwrap_or_default();
            c.env("KITSNAP_IMPORT_TOKEN", t)
                .env("GIT_CONFIG_COUNT", "2")
                .env("GIT_CONFIG_KEY_0", format!("credential.{scope}username"))
                .env("GIT_CONFIG_VALUE_0", "token")
                .env("GIT_CONFIG_KEY_1", format!("credential.{scope}helper"))
                .env(
                    "GIT_CONFIG_VALUE_1",
                    r#"!f() { test "$1" = get && echo "password=${KITSNAP_IMPORT_TOKEN}"; }; f"#,
                );
        }
        None => {
            c.env("GIT_ASKPASS", "true");
        }
    }
    c
}

/// Runs git with its output on our stderr (stdout stays for the digest); on failure the
/// error names git's own last `fatal:`/`error:` line and `hint`.
fn run_git(mut cmd: Command, what: &str, hint: &str) -> Result<()> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr()))
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("{what}: starting git"))?;
    let mut pipe = child.stderr.take().context("git's stderr")?;
    let mut tail: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    let mut err = std::io::stderr();
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("{what}: reading git's messages")),
        };
        let _ = err.write_all(&buf[..n]);
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 16 << 10 {
            tail.drain(..tail.len() - (8 << 10));
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("{what}: waiting for git"))?;
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&tail);
    let lines: Vec<&str> = text
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let cause = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("fatal:") || l.starts_with("error:"))
        .or(lines.last())
        .map_or_else(|| format!("git {status}"), |l| l.to_string());
    bail!("{what} failed ({cause}): {hint}")
}

/// What kit's CleanGitMetadata removes: `.git`, and every `.gitattributes` and `.gitignore`.
fn clean_git_metadata(dir: &Path) -> Result<()> {
    let git = dir.join(".git");
    match fs::symlink_metadata(&git) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(&git),
        Ok(_) => fs::remove_file(&git),
        Err(_) => Ok(()),
    }
    .with_context(|| format!("removing {}", git.display()))?;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let e = e.with_context(|| format!("reading {}", d.display()))?;
            let ft = e.file_type()?;
            let name = e.file_name();
            if ft.is_dir() {
                stack.push(e.path());
            } else if name == ".gitattributes" || name == ".gitignore" {
                fs::remove_file(e.path())
                    .with_context(|| format!("removing {}", e.path().display()))?;
            }
        }
    }
    Ok(())
}

// --- Hugging Face ---------------------------------------------------------------------------

/// One entry of `GET /api/models/REPO/tree/REF[/PATH]`.
#[derive(Debug, Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    lfs: Option<LfsInfo>,
}

#[derive(Debug, Deserialize)]
struct LfsInfo {
    /// The sha256 of the file's content.
    oid: String,
}

#[derive(Clone, Debug)]
struct RemoteFile {
    path: String,
    size: u64,
    /// For LFS files: the content's sha256, checked after the download.
    sha256: Option<String>,
}

/// A Hugging Face repository at one revision, and how to reach it.
#[derive(Clone)]
struct Hf {
    endpoint: String,
    repo: String,
    git_ref: String,
    token: Option<String>,
}

impl Hf {
    /// Lists the repository and downloads into `dest` what the Kitfile needs: with one
    /// (given, or the repository's own, fetched first) the files under its paths, else all.
    fn fetch(
        &self,
        dest: &Path,
        given: Option<&Kitfile>,
        concurrency: usize,
        show_progress: bool,
    ) -> Result<()> {
        // The workspace's HTTP client (TLS roots, proxies from the environment, timeouts).
        let client = http_client(
            &ClientOptions::default(),
            &HostEndpoint {
                api: self.endpoint.clone(),
                pull: true,
                resolve: true,
                push: false,
                skip_verify: false,
                ca: Vec::new(),
                mirror: false,
                headers: Vec::new(),
            },
        )
        .context("setting up the HTTP client")?;
        let get = |url: &str| {
            let mut rb = client.get(url);
            if let Some(t) = &self.token {
                rb = rb.bearer_auth(t);
            }
            rb.send()
        };
        // One file, streamed to disk; the future owns everything it needs.
        let download = |f: &RemoteFile, bar: indicatif::ProgressBar| {
            let url = format!(
                "{}/{}/resolve/{}/{}",
                self.endpoint,
                self.repo,
                encode(&self.git_ref, false),
                encode(&f.path, true)
            );
            let send = get(&url);
            let target = dest.join(&f.path);
            let f = f.clone();
            let hf = self.clone();
            async move {
                use tokio::io::AsyncWriteExt;
                let mut resp = send
                    .await
                    .map_err(|e| e.without_url())
                    .with_context(|| format!("downloading {} from {url}", f.path))?;
                let status = resp.status().as_u16();
                if status != 200 {
                    let body = resp.bytes().await.unwrap_or_default();
                    return Err(hf.download_error(&f.path, status, &body));
                }
                if let Some(parent) = target.parent() {
                    tokio::fs::create_dir_all(parent)
                        .await
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                let mut out = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .await
                    .with_context(|| format!("creating {}", target.display()))?;
                let mut hasher = f.sha256.as_ref().map(|_| PieceHasher::new()).transpose()?;
                let mut n = 0u64;
                while let Some(chunk) = resp
                    .chunk()
                    .await
                    .map_err(|e| e.without_url())
                    .with_context(|| format!("downloading {} from {url}", f.path))?
                {
                    out.write_all(&chunk)
                        .await
                        .with_context(|| format!("writing {}", target.display()))?;
                    n += chunk.len() as u64;
                    bar.inc(chunk.len() as u64);
                    if let Some(h) = hasher.as_mut() {
                        h.update(chunk).await;
                    }
                }
                out.flush()
                    .await
                    .with_context(|| format!("writing {}", target.display()))?;
                bar.finish_and_clear();
                if n != f.size {
                    bail!(
                        "{}: received {n} bytes where the repository lists {}: run the import again",
                        f.path,
                        f.size
                    );
                }
                if let (Some(h), Some(want)) = (hasher, &f.sha256) {
                    let got = h.finish().await?;
                    if !got.hex().eq_ignore_ascii_case(want) {
                        bail!(
                            "{}: its content has sha256 {} where the repository lists {want}: run the import again",
                            f.path,
                            got.hex()
                        );
                    }
                }
                Ok::<u64, anyhow::Error>(n)
            }
        };

        runtime()?.block_on(async {
            // The tree, one directory at a time (as kit walks it), following pagination.
            let mut files: Vec<RemoteFile> = Vec::new();
            let mut dirs = vec![String::new()];
            while let Some(dir) = dirs.pop() {
                let mut next = Some(self.tree_url(&dir));
                while let Some(url) = next.take() {
                    let resp = get(&url)
                        .await
                        .map_err(|e| e.without_url())
                        .with_context(|| {
                            format!(
                                "cannot list {} at {url}: check the network, or set HF_ENDPOINT to a reachable Hugging Face endpoint",
                                self.repo
                            )
                        })?;
                    let status = resp.status().as_u16();
                    next = resp
                        .headers()
                        .get("link")
                        .and_then(|v| v.to_str().ok())
                        .and_then(next_link)
                        .map(|l| self.check_link(&l))
                        .transpose()?;
                    let body = resp
                        .bytes()
                        .await
                        .map_err(|e| e.without_url())
                        .with_context(|| format!("listing {} at {url}", self.repo))?;
                    if status != 200 {
                        return Err(self.list_error(status, &body));
                    }
                    let entries: Vec<TreeEntry> = serde_json::from_slice(&body).with_context(
                        || format!("{url} did not answer with a Hugging Face tree listing"),
                    )?;
                    for e in entries {
                        check_entry_path(&dir, &e.path)?;
                        match e.kind.as_str() {
                            "directory" => dirs.push(e.path),
                            "file" => {
                                let name = e.path.rsplit('/').next().unwrap_or_default();
                                if name == ".gitignore" || name == ".gitattributes" {
                                    continue;
                                }
                                files.push(RemoteFile {
                                    sha256: e
                                        .lfs
                                        .map(|l| l.oid)
                                        .filter(|o| o.len() == 64),
                                    path: e.path,
                                    size: e.size,
                                });
                            }
                            other => bail!(
                                "unknown type {other:?} in the tree of {} ({}): is HF_ENDPOINT a Hugging Face endpoint?",
                                self.repo,
                                e.path
                            ),
                        }
                    }
                }
            }
            files.sort_by(|a, b| a.path.cmp(&b.path));
            eprintln!(
                "{}: {} files, {}",
                self.repo,
                files.len(),
                human_bytes(files.iter().map(|f| f.size).sum())
            );

            // The Kitfile decides what to download: given, else the repository's own.
            let mut own = None;
            if given.is_none()
                && let Some(f) = kitfile::DEFAULT_NAMES
                    .iter()
                    .find_map(|n| files.iter().find(|f| f.path == *n))
            {
                download(f, indicatif::ProgressBar::hidden()).await?;
                let kf = pack::load_kitfile(&dest.join(&f.path)).with_context(|| {
                    format!(
                        "the repository's {} is invalid: pass another Kitfile with --file",
                        f.path
                    )
                })?;
                own = Some((f.path.clone(), kf));
            }
            let wanted: Vec<RemoteFile> = match (given, &own) {
                (Some(kf), _) | (None, Some((_, kf))) => {
                    let keep = needed_paths(kf);
                    files
                        .into_iter()
                        .filter(|f| own.as_ref().is_none_or(|(p, _)| *p != f.path))
                        .filter(|f| keep(&f.path))
                        .collect()
                }
                (None, None) => files,
            };

            let m = progress::multi(show_progress);
            let mut tasks = tokio::task::JoinSet::new();
            let mut queue = wanted.iter();
            loop {
                while tasks.len() < concurrency {
                    let Some(f) = queue.next() else { break };
                    if m.is_hidden() {
                        eprintln!("Downloading file {} ({})", f.path, human_bytes(f.size));
                    }
                    let bar = progress::multi_bytes(&m, f.size, &f.path);
                    tasks.spawn(download(f, bar));
                }
                match tasks.join_next().await {
                    None => break,
                    // Returning drops the set, which aborts the downloads still running.
                    Some(r) => {
                        r.context("a download task failed")??;
                    }
                }
            }
            Ok(())
        })
    }

    fn tree_url(&self, dir: &str) -> String {
        let mut u = format!(
            "{}/api/models/{}/tree/{}",
            self.endpoint,
            self.repo,
            encode(&self.git_ref, false)
        );
        if !dir.is_empty() {
            u.push('/');
            u.push_str(&encode(dir, true));
        }
        u
    }

    /// A pagination link must stay on the endpoint (it gets the token).
    fn check_link(&self, link: &str) -> Result<String> {
        if link.starts_with(&format!("{}/", self.endpoint)) {
            Ok(link.to_string())
        } else {
            bail!(
                "the tree listing of {} links to {link}, outside {}: check HF_ENDPOINT",
                self.repo,
                self.endpoint
            )
        }
    }

    fn list_error(&self, status: u16, body: &[u8]) -> anyhow::Error {
        let msg = api_message(body);
        match status {
            401 | 403 => self.auth_error(status, &msg),
            404 if msg.starts_with("Invalid rev id") => anyhow!(
                "reference '{}' not found in {} (404 {msg}): check --ref",
                self.git_ref,
                self.repo
            ),
            404 => anyhow!(
                "repository {} not found at {} (404 {msg}): check the name (ORG/REPO), or pass --token for a private repository",
                self.repo,
                self.endpoint
            ),
            _ => anyhow!(
                "the Hugging Face API at {} answered {status} for {} ({msg}): try again later",
                self.endpoint,
                self.repo
            ),
        }
    }

    fn auth_error(&self, status: u16, msg: &str) -> anyhow::Error {
        match (status, self.token.is_some()) {
            (401, true) => anyhow!(
                "{} refused the token for {} (401 {msg}): pass a valid access token with --token",
                self.endpoint,
                self.repo
            ),
            (401, false) => anyhow!(
                "{} needs authentication (401 {msg}): it is private or gated (or does not exist); pass an access token with --token",
                self.repo
            ),
            _ => anyhow!(
                "access to {} is denied (403 {msg}): for a gated model, accept its terms on its page and pass a token of that account with --token",
                self.repo
            ),
        }
    }

    fn download_error(&self, path: &str, status: u16, body: &[u8]) -> anyhow::Error {
        let msg = api_message(body);
        match status {
            401 | 403 => self.auth_error(status, &msg),
            404 => anyhow!(
                "{path} not found in {} at {} (404 {msg}): the repository changed while importing; run the import again",
                self.repo,
                self.git_ref
            ),
            _ => anyhow!(
                "downloading {path} of {} failed ({status} {msg}): run the import again",
                self.repo
            ),
        }
    }
}

/// The paths a Kitfile packs: a file is needed when it is one of them or under one.
fn needed_paths(kf: &Kitfile) -> impl Fn(&str) -> bool + use<> {
    let paths: Vec<String> = kf
        .layer_entries()
        .iter()
        .filter_map(|e| kitfile::check_relative_path(&e.path).ok())
        .collect();
    let all = paths.iter().any(|p| p == ".");
    move |f: &str| {
        all || f == IGNORE_FILE
            || paths.iter().any(|p| {
                f == p
                    || f.strip_prefix(p.as_str())
                        .is_some_and(|r| r.starts_with('/'))
            })
    }
}

/// An entry of the listing of `dir` must be a direct child of it: no `..`, no absolute
/// paths, no loops.
fn check_entry_path(dir: &str, path: &str) -> Result<()> {
    let name = if dir.is_empty() {
        Some(path)
    } else {
        path.strip_prefix(dir).and_then(|r| r.strip_prefix('/'))
    };
    match name {
        Some(n) if !n.is_empty() && n != "." && n != ".." && !n.contains(['/', '\0']) => Ok(()),
        _ => bail!(
            "the repository listing has an unexpected path {path:?} under {dir:?}: is HF_ENDPOINT a Hugging Face endpoint?"
        ),
    }
}

/// The `error` of a Hugging Face API answer, else the start of its text.
fn api_message(body: &[u8]) -> String {
    #[derive(Deserialize)]
    struct ApiError {
        error: String,
    }
    if let Ok(e) = serde_json::from_slice::<ApiError>(body) {
        return e.error;
    }
    let text = String::from_utf8_lossy(body);
    let line = text.lines().next().unwrap_or_default().trim();
    line.chars().take(200).collect()
}

/// The `rel="next"` target of a Link header.
fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| {
                let p = p.trim().replace(' ', "");
                p == "rel=\"next\"" || p == "rel=next"
            })
            .then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string()
            })
    })
}

/// Percent-encodes all but unreserved characters (and `/` when `keep_slash`), as
/// huggingface_hub quotes revisions (`refs/pr/1`) and file paths.
fn encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_and_default_tag_as_kit_reads_them() {
        // kit's extractRepoFromURL cases (pkg/cmd/kitimport/util_test.go).
        let org_repo = |s: &str| Source::parse(s).unwrap().org_repo();
        assert_eq!(
            org_repo("organization/repository").as_deref(),
            Some("organization/repository")
        );
        assert_eq!(
            org_repo("https://example.com/org/repo").as_deref(),
            Some("org/repo")
        );
        assert_eq!(
            org_repo("https://huggingface.co/org/trailing-slash/").as_deref(),
            Some("org/trailing-slash")
        );
        assert_eq!(
            org_repo("https://github.com/org/repo.git").as_deref(),
            Some("org/repo.git")
        );
        assert_eq!(org_repo("too/many/path/segments"), None);
        assert_eq!(
            org_repo("https://github.com/kitops-ml/github.com/kitops-ml/kitops/tree/main"),
            None
        );
        assert!(Source::parse(":///invalidURL").is_err());
        assert_eq!(Source::parse("org/repo").unwrap().host, "");
        assert_eq!(
            Source::parse("https://HuggingFace.co/o/r?x=1").unwrap(),
            Source {
                host: "huggingface.co".into(),
                path: "o/r".into()
            }
        );
    }

    #[test]
    fn tags_take_pack_syntax() {
        let (r, extra) = parse_tags("org/repo.git:latest").unwrap();
        assert_eq!(
            (r.repository.as_str(), r.tag.as_deref()),
            ("org/repo.git", Some("latest"))
        );
        assert!(extra.is_empty());
        let (r, extra) = parse_tags("m:v1,v2").unwrap();
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(extra[0].tag.as_deref(), Some("v2"));
        let (r, _) = parse_tags("localhost:5000/m").unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert!(parse_tags("Bad Name:x").is_err());
    }

    #[test]
    fn listing_paths_must_be_direct_children() {
        assert!(check_entry_path("", "model.safetensors").is_ok());
        assert!(check_entry_path("a/b", "a/b/c.bin").is_ok());
        for (dir, p) in [
            ("", "../x"),
            ("", "/etc/passwd"),
            ("", "a/b"),
            ("a", "a"),
            ("a", "b/c"),
            ("a", "a/.."),
            ("", ""),
        ] {
            assert!(check_entry_path(dir, p).is_err(), "{dir:?} {p:?}");
        }
    }

    #[test]
    fn kitfile_paths_select_downloads() {
        let kf = Kitfile::from_yaml(
            "manifestVersion: 1.0.0\nmodel:\n  path: ./weights/\ndatasets:\n  - path: data/train.csv\n",
            "t",
        )
        .unwrap();
        let keep = needed_paths(&kf);
        assert!(keep("weights/a.bin") && keep("data/train.csv") && keep(".kitignore"));
        assert!(!keep("weightsX") && !keep("data/val.csv") && !keep("README.md"));
        let all = Kitfile::from_yaml("manifestVersion: 1.0.0\ncode:\n  - path: .\n", "t").unwrap();
        assert!(needed_paths(&all)("anything/at/all"));
    }

    #[test]
    fn link_header_and_encoding() {
        assert_eq!(
            next_link(r#"<https://h/api/models/a/b/tree/main?cursor=x>; rel="next""#).as_deref(),
            Some("https://h/api/models/a/b/tree/main?cursor=x")
        );
        assert_eq!(next_link(r#"<https://h/x>; rel="prev""#), None);
        assert_eq!(encode("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(encode("dir/a b+c.txt", true), "dir/a%20b%2Bc.txt");
    }

    #[test]
    fn git_metadata_goes_as_kit_removes_it() {
        let d = tempfile::tempdir().unwrap();
        for p in [
            ".git/config",
            ".gitattributes",
            ".gitignore",
            "sub/.gitignore",
            "sub/keep.txt",
            ".lfsconfig",
        ] {
            let p = d.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, b"x").unwrap();
        }
        clean_git_metadata(d.path()).unwrap();
        let mut left: Vec<String> = walk(d.path());
        left.sort();
        assert_eq!(left, [".lfsconfig", "sub", "sub/keep.txt"]);
    }

    fn walk(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                out.push(
                    e.path()
                        .strip_prefix(root)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                );
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        out
    }

    #[test]
    fn stale_work_dirs_are_swept_live_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let live = WorkDir::create(d.path()).unwrap();
        let dead = d.path().join("import/kitsnap_import_dead");
        fs::create_dir_all(dead.join("repo")).unwrap();
        fs::write(dead.join("lock"), b"").unwrap();
        let other = WorkDir::create(d.path()).unwrap();
        assert!(!dead.exists(), "an unlocked working directory is swept");
        assert!(live.repo().is_dir(), "a locked one stays");
        let root = other.root.clone();
        drop(other);
        assert!(!root.exists(), "dropped means removed");
    }
}
