//! kitsnap as `nerdctl`: an opt-in front (`kitsnap front install` puts a `nerdctl` symlink to
//! kitsnap earlier in PATH) that gives nerdctl a `--mount type=modelkit` it cannot be taught
//! (nerdctl has no plugin mechanism for mount types).
//!
//! Only `--mount` values of `type=modelkit` are touched: each becomes a read-only bind of a
//! `kitsnap mount` of the kit (`src=REF`, `dst=DIR`, `filter=F` as often as needed), mounted
//! through `kitsnap serve` before the real nerdctl runs. Then the front execs the real
//! nerdctl (the next `nerdctl` in PATH that is not kitsnap) with every other argument byte
//! for byte, so its help, exit codes, stdin/stdout/tty and signals are nerdctl's own. A
//! detached helper releases the mounts' holders once that nerdctl process exits; kitsnap
//! keeps a view's files while a container still has them bind-mounted.
//! A command line without `type=modelkit` is passed on untouched, mounting nothing.
//! When the real nerdctl has `--mount type=image` (after v2.3.5), an unfiltered
//! `type=modelkit` becomes `type=image` of the kit's image view instead, pulled first: the
//! container's mount is then containerd's own View, with nothing for kitsnap to hold.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::client;
use crate::settings::runtime;

pub const NAME: &str = "nerdctl";

/// Set to the real nerdctl's path to skip the PATH search.
const REAL_ENV: &str = "KITSNAP_NERDCTL";

/// Runs as the front; never returns.
pub fn main(args: Vec<OsString>) -> ! {
    let e = match run(args) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    eprintln!("nerdctl (kitsnap front): {}", crate::one_line(&e));
    std::process::exit(1);
}

/// A `--mount type=modelkit,...` value.
#[derive(Debug, PartialEq)]
struct Spec {
    src: String,
    dst: String,
    filters: Vec<String>,
}

/// Where a `--mount` value sits: its own token (`--mount V`) or after `=` (`--mount=V`).
struct Found {
    index: usize,
    inline: bool,
    spec: Spec,
}

fn run(args: Vec<OsString>) -> Result<std::convert::Infallible> {
    let mut args: Vec<OsString> = args.into_iter().skip(1).collect();
    let real = real_nerdctl()?;
    // nerdctl's own options end at the image: what follows is the container's command,
    // never read for flags or mounts.
    let options = &args[..options_end(&args)];
    let found = modelkit_mounts(options)?;
    if found.is_empty() {
        return Err(exec(&real, &args));
    }
    let namespace = namespace(options);
    let snapshotter = snapshotter(options);
    let address = std::env::var_os("KITSNAP_ADDRESS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(kitsnap_node::daemon::DEFAULT_ADDRESS));
    let rt = runtime()?;
    let image_mounts =
        found.iter().any(|f| f.spec.filters.is_empty()) && image_mounts_supported(&real)?;
    let mut held: Vec<(String, String)> = Vec::new();
    for f in &found {
        let reference = crate::commands::parse_ref(&f.spec.src)?;
        if image_mounts && f.spec.filters.is_empty() {
            // nerdctl's own `type=image` of the kit's image view: the container's mount is
            // a containerd View that lives and goes with the container, no kitsnap holder.
            // Pulled here first, so nerdctl finds it (no registry round trip of its own)
            // unpacked on kitsnap; another snapshotter unpacks it from the blobs kept.
            let res = rt.block_on(client::pull(
                &address,
                client::PullArgs {
                    reference: reference.to_string(),
                    namespace: namespace.clone(),
                    store: None,
                    registry: Default::default(),
                    keep_blobs: snapshotter != "kitsnap",
                    // On kitsnap the container need not wait for the whole model.
                    lazy: snapshotter == "kitsnap",
                    progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
                },
            ));
            if let Err(e) = res {
                release(&rt, &address, &held);
                return Err(e.context(format!("type=modelkit,src={}", f.spec.src)));
            }
            let image = format!("type=image,src={reference},dst={}", f.spec.dst);
            args[f.index] = if f.inline {
                format!("--mount={image}").into()
            } else {
                image.into()
            };
            continue;
        }
        let res = rt.block_on(client::mount(
            &address,
            client::MountArgs {
                reference: reference.to_string(),
                namespace: namespace.clone(),
                filters: f.spec.filters.clone(),
                name: None,
                store: None,
                registry: Default::default(),
            },
        ));
        let res = match res {
            Ok(r) => r,
            Err(e) => {
                release(&rt, &address, &held);
                return Err(e.context(format!("type=modelkit,src={}", f.spec.src)));
            }
        };
        held.push((res.name.clone(), res.holder.clone()));
        let bind = format!("type=bind,src={},dst={},readonly", res.path, f.spec.dst);
        args[f.index] = if f.inline {
            format!("--mount={bind}").into()
        } else {
            bind.into()
        };
    }
    if held.is_empty() {
        return Err(exec(&real, &args));
    }
    if let Err(e) = spawn_releaser(&address, &held) {
        release(&rt, &address, &held);
        return Err(e);
    }
    Err(exec(&real, &args))
}

/// Replaces this process with the real nerdctl; returns only if that failed.
fn exec(real: &Path, args: &[OsString]) -> anyhow::Error {
    let e = Command::new(real).arg0(NAME).args(args).exec();
    anyhow::Error::new(e).context(format!("running {}", real.display()))
}

/// The first `nerdctl` in PATH that is not this program.
fn real_nerdctl() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(REAL_ENV) {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()
        .and_then(std::fs::canonicalize)
        .context("finding this program")?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(NAME);
        let Ok(target) = std::fs::canonicalize(&candidate) else {
            continue;
        };
        let executable = std::fs::metadata(&target)
            .map(|m| {
                m.is_file()
                    && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
            })
            .unwrap_or(false);
        if executable && target != me {
            return Ok(candidate);
        }
    }
    bail!(
        "no real nerdctl found in PATH after kitsnap's front (install nerdctl, set {REAL_ENV}, or remove the front with `kitsnap front remove`)"
    )
}

/// nerdctl flags that take no value (every other flag takes one, as `--name x` or
/// `--name=x`): global ones and those of `run`/`create`.
const BOOL_FLAGS: &[&str] = &[
    "--debug",
    "--debug-full",
    "--experimental",
    "--insecure-registry",
    "--kube-hide-dupe",
    "--help",
    "--version",
    "--detach",
    "--interactive",
    "--tty",
    "--rm",
    "--privileged",
    "--read-only",
    "--init",
    "--publish-all",
    "--rootfs",
    "--oom-kill-disable",
    "--no-healthcheck",
    "--sig-proxy",
    "--quiet",
    "--disable-content-trust",
    "--systemd",
];

/// Short flags that take no value (`-it`, `-d`).
const BOOL_SHORT: &str = "ditP";

/// Where nerdctl's own arguments end: at the first positional after the subcommand (the
/// image of `run`/`create`), or at `--`. `nerdctl container run` counts as one subcommand.
fn options_end(args: &[OsString]) -> usize {
    let (mut subcommand, mut group) = (false, false);
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        if a == "--" {
            return i;
        }
        if a.len() > 1 && a.starts_with('-') {
            i += if takes_value(&a) { 2 } else { 1 };
            continue;
        }
        if !subcommand {
            subcommand = true;
            group = a == "container";
        } else if group {
            group = false;
        } else {
            return i;
        }
        i += 1;
    }
    args.len()
}

/// Whether the flag `a` (without an inline `=value`) consumes the next argument.
fn takes_value(a: &str) -> bool {
    if a.contains('=') {
        return false;
    }
    if a.starts_with("--") {
        return !BOOL_FLAGS.contains(&a);
    }
    // A cluster of short flags (`-it`) takes a value only if its last one does.
    !a[1..].chars().all(|c| BOOL_SHORT.contains(c))
}

/// Every `--mount` whose value has `type=modelkit`, among nerdctl's own arguments.
fn modelkit_mounts(args: &[OsString]) -> Result<Vec<Found>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy();
        let (index, inline, value) = if a == "--mount" && i + 1 < args.len() {
            i += 1;
            (i, false, args[i].to_string_lossy().into_owned())
        } else if let Some(v) = a.strip_prefix("--mount=") {
            (i, true, v.to_string())
        } else {
            i += 1;
            continue;
        };
        if let Some(spec) = parse_spec(&value)? {
            out.push(Found {
                index,
                inline,
                spec,
            });
        }
        i += 1;
    }
    Ok(out)
}

/// Splits a mount value at commas outside double quotes (as nerdctl's CSV does), so that a
/// filter with commas is written `"filter=datasets:train,eval"`.
fn fields(value: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut quoted = false;
    for c in value.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(String::new()),
            c => out.last_mut().expect("one field").push(c),
        }
    }
    out
}

fn parse_spec(value: &str) -> Result<Option<Spec>> {
    let fields = fields(value);
    if !fields.iter().any(|f| f == "type=modelkit") {
        return Ok(None);
    }
    let (mut src, mut dst, mut filters) = (None, None, Vec::new());
    for f in &fields {
        let (k, v) = f.split_once('=').unwrap_or((f.as_str(), ""));
        match k {
            "type" => {}
            "src" | "source" => src = Some(v.to_string()),
            "dst" | "destination" | "target" => dst = Some(v.to_string()),
            "filter" => filters.push(v.to_string()),
            "readonly" | "ro" if matches!(v, "" | "true" | "1") => {}
            "readonly" | "ro" => bail!("--mount type=modelkit is always read-only ({f})"),
            _ => bail!(
                "--mount type=modelkit: unknown field {f:?} (use src=REF,dst=DIR and optionally filter=F, e.g. type=modelkit,src=registry.example.com/org/llm:v1,dst=/models,filter=model)"
            ),
        }
    }
    let src = src.filter(|s| !s.is_empty()).context(
        "--mount type=modelkit needs src=REF (e.g. type=modelkit,src=registry.example.com/org/llm:v1,dst=/models)",
    )?;
    let dst = dst.filter(|s| !s.is_empty()).context(
        "--mount type=modelkit needs dst=DIR, the path in the container (e.g. dst=/models)",
    )?;
    if !dst.starts_with('/') {
        bail!("--mount type=modelkit: dst={dst} must be an absolute path in the container");
    }
    Ok(Some(Spec { src, dst, filters }))
}

/// The value of the first of `names` among `args` (`--name V`, `--name=V`).
fn flag_value(args: &[OsString], names: &[&str]) -> Option<String> {
    let mut it = args.iter().map(|a| a.to_string_lossy());
    while let Some(a) = it.next() {
        if names.contains(&a.as_ref()) {
            if let Some(v) = it.next() {
                return Some(v.into_owned());
            }
        } else if let Some(v) = names.iter().find_map(|n| {
            a.strip_prefix(n)
                .and_then(|rest| rest.strip_prefix('='))
                .filter(|_| n.starts_with("--"))
        }) {
            return Some(v.to_string());
        }
    }
    None
}

/// An environment variable, unless unset or empty.
fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|s| !s.is_empty())
}

/// nerdctl's containerd namespace: `--namespace`/`-n`/`--n`, else `$CONTAINERD_NAMESPACE`,
/// else `default`.
fn namespace(args: &[OsString]) -> String {
    flag_value(args, &["--namespace", "-n", "--n"])
        .or_else(|| env_value("CONTAINERD_NAMESPACE"))
        .unwrap_or_else(|| kitsnap_node::containerd::DEFAULT_NAMESPACE.to_string())
}

/// Whether the real nerdctl has `--mount type=image` (nerdctl PR 4990, after v2.3.5):
/// `KITSNAP_FRONT_MOUNT=image|bind` decides, else the binary is searched for the error
/// message only that version has (its `--help` and version do not tell).
fn image_mounts_supported(real: &Path) -> Result<bool> {
    match std::env::var(MOUNT_ENV).as_deref() {
        Ok("image") => return Ok(true),
        Ok("bind") => return Ok(false),
        Ok("") | Err(_) => {}
        Ok(other) => bail!("{MOUNT_ENV}={other}: use image or bind (or leave it unset)"),
    }
    // A binary that cannot be read (mode 0711) is taken for one without image mounts: the
    // bind works with every nerdctl.
    Ok(std::fs::File::open(real)
        .and_then(|f| contains(f, IMAGE_MOUNT_MARK))
        .unwrap_or(false))
}

/// Set to `image` or `bind` to choose how `type=modelkit` is rewritten.
const MOUNT_ENV: &str = "KITSNAP_FRONT_MOUNT";

/// In nerdctl's mount parser once `type=image` exists ("must be a volume/bind/tmpfs/image").
const IMAGE_MOUNT_MARK: &[u8] = b"volume/bind/tmpfs/image";

/// Streams `r` looking for `needle` (memory stays at one buffer whatever the size).
fn contains(mut r: impl std::io::Read, needle: &[u8]) -> std::io::Result<bool> {
    let mut buf = vec![0u8; (1 << 20) + needle.len()];
    let mut kept = 0;
    loop {
        let n = match r.read(&mut buf[kept..]) {
            Ok(0) => return Ok(false),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let end = kept + n;
        if buf[..end].windows(needle.len()).any(|w| w == needle) {
            return Ok(true);
        }
        // Keep the tail: the needle may straddle two reads.
        kept = (needle.len() - 1).min(end);
        buf.copy_within(end - kept..end, 0);
    }
}

/// nerdctl's snapshotter: `--snapshotter`/`--storage-driver`, else
/// `$CONTAINERD_SNAPSHOTTER`, else `snapshotter` in nerdctl.toml (`$NERDCTL_TOML`, default
/// /etc/nerdctl/nerdctl.toml), else `overlayfs`.
fn snapshotter(args: &[OsString]) -> String {
    let toml_path = || {
        std::env::var_os("NERDCTL_TOML")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/etc/nerdctl/nerdctl.toml"))
    };
    flag_value(args, &["--snapshotter", "--storage-driver"])
        .or_else(|| env_value("CONTAINERD_SNAPSHOTTER"))
        .or_else(|| {
            std::fs::read_to_string(toml_path())
                .ok()
                .and_then(|t| t.parse::<toml::Table>().ok())
                .and_then(|t| t.get("snapshotter")?.as_str().map(str::to_string))
        })
        .unwrap_or_else(|| "overlayfs".to_string())
}

/// A helper, in its own process group with no stdio (out of the terminal's way), that
/// releases the holders once this process (by then the real nerdctl) has exited.
fn spawn_releaser(address: &Path, held: &[(String, String)]) -> Result<()> {
    let me = std::env::current_exe().context("finding this program")?;
    let mut c = Command::new(me);
    c.args(["front", "release", "--pid"])
        .arg(std::process::id().to_string())
        .arg("--address")
        .arg(address);
    for (name, holder) in held {
        c.arg("--holder").arg(format!("{name}={holder}"));
    }
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting the helper that releases the ModelKit mounts")?;
    Ok(())
}

/// Releases `held` (name, holder) now.
pub fn release(rt: &tokio::runtime::Runtime, address: &Path, held: &[(String, String)]) {
    for (name, holder) in held {
        if let Err(e) = rt.block_on(client::umount(address, name, holder, false)) {
            eprintln!(
                "nerdctl (kitsnap front): releasing {name} (holder {holder}): {}",
                crate::one_line(&e)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    #[test]
    fn finds_modelkit_mounts_in_both_forms_and_leaves_others() {
        let args = os(&[
            "run",
            "--mount",
            "type=modelkit,src=r.example/m:v1,dst=/models,filter=model",
            "--mount=type=bind,src=/tmp,dst=/tmp",
            "--mount=type=modelkit,source=r.example/d:v1,target=/data,\"filter=datasets:train,eval\"",
            "busybox",
        ]);
        let f = modelkit_mounts(&args).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].index, f[0].inline), (2, false));
        assert_eq!(
            f[0].spec,
            Spec {
                src: "r.example/m:v1".into(),
                dst: "/models".into(),
                filters: vec!["model".into()]
            }
        );
        assert_eq!((f[1].index, f[1].inline), (4, true));
        assert_eq!(f[1].spec.filters, vec!["datasets:train,eval".to_string()]);
        assert!(
            modelkit_mounts(&os(&["run", "-v", "/a:/b", "busybox"]))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn bad_modelkit_mounts_say_what_to_write() {
        let err = |v: &str| parse_spec(v).unwrap_err().to_string();
        assert!(err("type=modelkit,dst=/m").contains("needs src=REF"));
        assert!(err("type=modelkit,src=r/m:v1").contains("needs dst=DIR"));
        assert!(err("type=modelkit,src=r/m:v1,dst=m").contains("absolute"));
        assert!(err("type=modelkit,src=r/m:v1,dst=/m,ro=false").contains("read-only"));
        assert!(err("type=modelkit,src=r/m:v1,dst=/m,bogus=1").contains("unknown field"));
    }

    #[test]
    fn finds_the_image_mount_mark_across_reads() {
        // A reader that hands out 7 bytes at a time: the mark straddles reads.
        struct Slow(std::io::Cursor<Vec<u8>>);
        impl std::io::Read for Slow {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                let n = b.len().min(7);
                self.0.read(&mut b[..n])
            }
        }
        let mut data = vec![b'x'; 3_000_000];
        data.extend_from_slice(b"invalid mount type '%s' must be a volume/bind/tmpfs/image");
        data.extend(vec![b'y'; 100]);
        assert!(contains(Slow(std::io::Cursor::new(data.clone())), IMAGE_MOUNT_MARK).unwrap());
        assert!(contains(std::io::Cursor::new(data), IMAGE_MOUNT_MARK).unwrap());
        let old = b"invalid mount type '%s' must be a volume/bind/tmpfs".to_vec();
        assert!(!contains(std::io::Cursor::new(old), IMAGE_MOUNT_MARK).unwrap());
    }

    #[test]
    fn the_container_command_is_not_read_for_flags() {
        let a = os(&[
            "--address",
            "/run/c.sock",
            "run",
            "--rm",
            "-it",
            "--mount",
            "type=modelkit,src=r/m:v1,dst=/m",
            "--name",
            "x",
            "alpine",
            "head",
            "-n",
            "5",
            "--mount",
            "type=modelkit,src=other,dst=/o",
            "--snapshotter=overlayfs",
        ]);
        let end = options_end(&a);
        assert_eq!(a[end], "alpine");
        assert_eq!(namespace(&a[..end]), namespace(&[]));
        assert_eq!(modelkit_mounts(&a[..end]).unwrap().len(), 1);
        let b = os(&["-n", "ns", "container", "run", "--net", "host", "img", "sh"]);
        assert_eq!(b[options_end(&b)], "img");
        assert_eq!(namespace(&b[..options_end(&b)]), "ns");
        let c = os(&["run", "--rm=true", "-d", "--", "img"]);
        assert_eq!(options_end(&c), 3);
    }

    #[test]
    fn snapshotter_from_flags() {
        assert_eq!(
            snapshotter(&os(&["--snapshotter", "kitsnap", "run"])),
            "kitsnap"
        );
        assert_eq!(
            snapshotter(&os(&["--storage-driver=stargz", "run"])),
            "stargz"
        );
    }

    #[test]
    fn namespace_from_flags_env_or_default() {
        assert_eq!(namespace(&os(&["-n", "k8s.io", "run"])), "k8s.io");
        assert_eq!(namespace(&os(&["--namespace=x", "run"])), "x");
        assert_eq!(namespace(&os(&["--n", "y", "run"])), "y");
    }
}
