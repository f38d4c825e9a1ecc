//! Real containerd daemons (Debian bookworm's 1.6, and 1.7 / 2.x unpacked by
//! scripts/fetch-containerd.sh) started per test with their own root, state and socket,
//! talking to a `kitsnap serve` started per test; and a busybox image built locally.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A containerd build: where its binaries are, and how to get it.
#[derive(Clone, Debug)]
pub struct Version {
    pub name: &'static str,
    pub bin_dir: PathBuf,
    pub how: &'static str,
}

impl Version {
    /// Its containerd, ctr and runc shim are there.
    pub fn available(&self) -> bool {
        ["containerd", "ctr", "containerd-shim-runc-v2"]
            .iter()
            .all(|b| self.bin_dir.join(b).exists())
    }
}

/// Every containerd version the tests know, available or not.
pub fn known_versions() -> Vec<Version> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    vec![
        Version {
            name: "1.6 (bookworm)",
            bin_dir: PathBuf::from("/usr/bin"),
            how: "apt-get install containerd",
        },
        Version {
            name: "1.7 (trixie)",
            bin_dir: root.join(".cache/containerd/trixie/root/usr/bin"),
            how: "scripts/fetch-containerd.sh",
        },
        Version {
            name: "2.x (sid)",
            bin_dir: root.join(".cache/containerd/sid/root/usr/bin"),
            how: "scripts/fetch-containerd.sh",
        },
    ]
}

/// Every containerd version available on this machine. Each missing one is reported as
/// `require!` does (a loud line; a panic under CI) on behalf of `test`, and left out.
pub fn versions(test: &str) -> Vec<Version> {
    known_versions()
        .into_iter()
        .filter(|v| {
            let ok = v.available();
            if !ok {
                super::missing(
                    test,
                    &format!(
                        "containerd {} (not in {}; run {}); the other versions still run",
                        v.name,
                        v.bin_dir.display(),
                        v.how
                    ),
                );
            }
            ok
        })
        .collect()
}

fn wait_for(path: &Path, child: &mut Child, what: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if path.exists() {
            return;
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("{what} exited early: {st}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: {} did not appear", path.display());
}

pub struct Kitsnap {
    pub root: PathBuf,
    pub sock: PathBuf,
    /// Where `kitsnap mount` views go.
    pub mounts: PathBuf,
    /// The Docker volume plugin socket ("" = off).
    pub docker_plugin: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    containerd_sock: PathBuf,
    /// More `kitsnap serve` arguments (e.g. `--config FILE`).
    extra: Vec<String>,
}

impl Kitsnap {
    /// Starts `kitsnap serve` under `dir`; it finds containerd at the socket that
    /// `Containerd::start(_, dir/containerd, _)` makes.
    pub fn start(dir: &Path) -> Kitsnap {
        Self::start_with_plugin(dir, Path::new(""))
    }

    pub fn start_with_plugin(dir: &Path, docker_plugin: &Path) -> Kitsnap {
        Self::start_with_args(dir, docker_plugin, &[])
    }

    /// Like `start_with_plugin`, with more `kitsnap serve` arguments (`--config FILE`).
    pub fn start_with_args(dir: &Path, docker_plugin: &Path, extra: &[&str]) -> Kitsnap {
        let mut k = Kitsnap {
            root: dir.join("kitsnap-root"),
            sock: dir.join("kitsnap.sock"),
            mounts: dir.join("mounts"),
            docker_plugin: docker_plugin.to_path_buf(),
            child: None,
            log: dir.join("kitsnap.log"),
            containerd_sock: dir.join("containerd").join("containerd.sock"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        k.spawn();
        k
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let plugin: Vec<&str> = if self.docker_plugin.as_os_str().is_empty() {
            vec!["--no-docker-plugin"]
        } else {
            vec!["--docker-plugin", self.docker_plugin.to_str().unwrap()]
        };
        let mut child = Command::new(super::bin())
            .args([
                "serve",
                "--root",
                self.root.to_str().unwrap(),
                "--address",
                self.sock.to_str().unwrap(),
                "--log-level",
                "debug",
                "--containerd-address",
                self.containerd_sock.to_str().unwrap(),
                "--mount-root",
                self.mounts.to_str().unwrap(),
            ])
            .args(plugin)
            // No registry mirror unless a test asks for one (tests run side by side).
            .args(if self.extra.iter().any(|a| a == "--mirror-addr") {
                &[][..]
            } else {
                &["--mirror-addr", "off"][..]
            })
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for(&self.sock, &mut child, "kitsnap serve");
        self.child = Some(child);
    }

    /// SIGTERM, wait, start again on the same root and socket.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: sending a signal to our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// SIGTERM, then waits at most `within` for the daemon to exit: its exit status, or
    /// None when it was still running then (it is killed, so that nothing hangs).
    pub fn terminate_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < within {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Snapshot directories on disk.
    pub fn snapshot_dirs(&self) -> usize {
        std::fs::read_dir(self.root.join("snapshots"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Waits (up to 20 s) for containerd's GC to remove every snapshot directory.
    pub fn wait_until_empty(&self) {
        let start = Instant::now();
        while self.snapshot_dirs() > 0 && start.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Kitsnap {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Containerd {
    pub version: Version,
    pub dir: PathBuf,
    pub sock: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    pub fn start(version: &Version, dir: &Path, kitsnap_sock: &Path) -> Containerd {
        Self::start_with(version, dir, kitsnap_sock, None, false)
    }

    /// Like `start`, with kitsnap registered the way an operator does it: `kitsnap
    /// containerd install` (run twice: idempotent) writes a conf.d drop-in and adds it to
    /// the main config's `imports`. containerd 2.x gets a version 3 main config.
    pub fn start_registered(version: &Version, dir: &Path, kitsnap_sock: &Path) -> Containerd {
        Self::start_with(version, dir, kitsnap_sock, None, true)
    }

    /// Like `start`, with containerd's CRI plugin on (containerd 2.x only): the config is
    /// version 3 and `cri_config` (the CRI plugins' tables, and anything else) is appended.
    pub fn start_cri(
        version: &Version,
        dir: &Path,
        kitsnap_sock: &Path,
        cri_config: &str,
    ) -> Containerd {
        assert!(
            version.name.starts_with('2'),
            "the CRI tests need containerd 2.x, not {}",
            version.name
        );
        Self::start_with(version, dir, kitsnap_sock, Some(cri_config), false)
    }

    fn start_with(
        version: &Version,
        dir: &Path,
        kitsnap_sock: &Path,
        cri_config: Option<&str>,
        register: bool,
    ) -> Containerd {
        std::fs::create_dir_all(dir).unwrap();
        let sock = dir.join("containerd.sock");
        let v2 = version.name.starts_with('2');
        let head = match cri_config {
            Some(_) => "version = 3",
            None if register && v2 => {
                "version = 3\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]"
            }
            None => "version = 2\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]",
        };
        let cfg = format!(
            r#"{head}
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
{proxy}"#,
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = sock.display(),
            proxy = if register {
                String::new()
            } else {
                format!(
                    "[proxy_plugins.kitsnap]\n  type = \"snapshot\"\n  address = \"{}\"\n",
                    kitsnap_sock.display()
                )
            },
        );
        let mut cfg = cfg;
        if v2 && cri_config.is_none() && !register {
            // containerd 2's ctr imports through the transfer service, which unpacks only
            // for the platform/snapshotter pairs configured here (a CRI config sets its own);
            // overlayfs too, for the tests that compare with it.
            cfg.push_str(
                "[plugins.\"io.containerd.transfer.v1.local\"]\n  unpack_config = [{ platform = \"linux/amd64\", snapshotter = \"kitsnap\" }, { platform = \"linux/amd64\", snapshotter = \"overlayfs\" }]\n",
            );
        }
        cfg.push_str(cri_config.unwrap_or_default());
        std::fs::write(dir.join("config.toml"), cfg).unwrap();
        if register {
            let conf_dir = dir.join("conf.d");
            let mut args = vec![
                "containerd".to_string(),
                "install".into(),
                "--config".into(),
                dir.join("config.toml").display().to_string(),
                "--conf-dir".into(),
                conf_dir.display().to_string(),
                "--address".into(),
                kitsnap_sock.display().to_string(),
            ];
            if v2 {
                args.extend(["--unpack-platform".into(), "linux/amd64".into()]);
            }
            for round in 0..2 {
                let o = Command::new(super::bin()).args(&args).output().unwrap();
                let text = String::from_utf8_lossy(&o.stdout);
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                assert_eq!(
                    round == 1,
                    !text.contains("restart containerd"),
                    "install is idempotent: {text}"
                );
            }
        }
        let mut c = Containerd {
            version: version.clone(),
            dir: dir.to_path_buf(),
            sock,
            child: None,
        };
        c.spawn();
        c
    }

    pub fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.version.bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(&self.sock);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))
            .unwrap();
        let mut child = Command::new(self.version.bin_dir.join("containerd"))
            .args(["--config", self.dir.join("config.toml").to_str().unwrap()])
            .env("PATH", self.path_env())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_for(&self.sock, &mut child, "containerd");
        self.child = Some(child);
        // The socket appears before every service is registered: wait for the ones the
        // tests use. A plugin that failed to load (e.g. the metadata store, when a host
        // mountinfo line over 64 KiB defeats containerd's reader: "bufio.Scanner: token too
        // long") leaves its services unknown for good: fail here, with the log, not later.
        let start = Instant::now();
        loop {
            let failed = [
                &["version"][..],
                &["leases", "ls"],
                &["content", "ls", "-q"],
            ]
            .into_iter()
            .map(|args| self.ctr(args))
            .find(|o| !o.status.success());
            let Some(o) = failed else { break };
            if start.elapsed() > Duration::from_secs(30) {
                panic!(
                    "containerd {} is not ready: {}\n--- containerd log tail:\n{}",
                    self.version.name,
                    String::from_utf8_lossy(&o.stderr),
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
        self.spawn();
    }

    /// SIGKILL, as a crash or the OOM killer would; `start_again` brings it back.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// `ctr --address SOCK -n kitsnap-test ARGS`
    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_ns("kitsnap-test", args)
    }

    pub fn ctr_ns(&self, ns: &str, args: &[&str]) -> Output {
        Command::new(self.version.bin_dir.join("ctr"))
            .env("PATH", self.path_env())
            .args(["--address", self.sock.to_str().unwrap(), "-n", ns])
            .args(args)
            .output()
            .unwrap()
    }

    /// `ctr images import` of the image tar `tar` into `ns` on `snapshotter`.
    pub fn import_image(&self, ns: &str, snapshotter: &str, tar: &Path) {
        let o = self.ctr_ns(
            ns,
            &[
                "images",
                "import",
                "--snapshotter",
                snapshotter,
                tar.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }

    pub fn ctr_ok(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(
            o.status.success(),
            "containerd {}: ctr {args:?} failed:\n{}{}\n--- containerd log tail:\n{}",
            self.version.name,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Like `ctr_ok`, but retries for a few seconds while containerd's gRPC connection to a
    /// restarted snapshotter comes out of its reconnect backoff.
    pub fn ctr_ok_after_restart(&self, args: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let o = self.ctr(args);
            let err = String::from_utf8_lossy(&o.stderr);
            if o.status.success()
                // containerd 1.x says "Unavailable"; 2.x passes on "connection refused".
                || !(err.to_lowercase().contains("unavailable") || err.contains("connection refused"))
                || start.elapsed() > Duration::from_secs(15)
            {
                return self.ctr_ok(args);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn ctr_err(&self, args: &[&str]) -> String {
        let o = self.ctr(args);
        assert!(!o.status.success(), "ctr {args:?} unexpectedly succeeded");
        String::from_utf8_lossy(&o.stderr).into_owned()
    }

    /// `ctr snapshots --snapshotter kitsnap ARGS`, asserting success.
    pub fn snap_ok(&self, args: &[&str]) -> String {
        self.ctr_ok(&[&["snapshots", "--snapshotter", "kitsnap"], args].concat())
    }

    /// `ctr snapshots --snapshotter kitsnap ARGS`, asserting failure; returns stderr.
    pub fn snap_err(&self, args: &[&str]) -> String {
        self.ctr_err(&[&["snapshots", "--snapshotter", "kitsnap"], args].concat())
    }

    pub fn log_tail(&self) -> String {
        let l = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        l.lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Stop leftover tasks' shims with their containerd; then the daemon.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "pkill -9 -f 'containerd-shim.*-address {}' || true",
                self.sock.display()
            ))
            .output();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Unmount anything left under the state dir (rootfs mounts of killed tasks).
        umount_under(&self.dir);
    }
}

fn blob(dir: &Path, data: &[u8]) -> String {
    let d = hex::encode(Sha256::digest(data));
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("blobs/sha256").join(&d), data).unwrap();
    format!("sha256:{d}")
}

pub const BUSYBOX: &str = "/bin/busybox";
pub const IMAGE: &str = "docker.io/library/kitsnap-busybox:test";

/// Lazily unmounts everything mounted under `dir` (rootfs mounts of killed tasks, views),
/// deepest first.
pub fn umount_under(dir: &Path) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "grep -o ' {}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l",
            dir.display()
        ))
        .output();
}

/// An OCI image archive of a busybox-static rootfs (one layer), named `IMAGE`.
pub fn busybox_image(out_tar: &Path) {
    busybox_image_as(out_tar, IMAGE, &["/bin/sh"]);
}

/// The same image named `name`, running `cmd` (a CRI sandbox image must keep running).
pub fn busybox_image_as(out_tar: &Path, name: &str, cmd: &[&str]) {
    let layer = busybox_layer();
    let dir = tempfile::tempdir().unwrap();
    let ld = blob(dir.path(), &layer);
    busybox_oci(out_tar, dir, layer, ld, name, cmd);
}

/// The same rootfs as a `docker save` archive (Docker 20.10 loads no OCI archives).
pub fn busybox_docker_archive(out_tar: &Path, tag: &str) {
    let layer = busybox_layer();
    let ld = format!("sha256:{}", hex::encode(Sha256::digest(&layer)));
    let cfg = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [ld]}
    })
    .to_string();
    let manifest =
        serde_json::json!([{"Config": "config.json", "RepoTags": [tag], "Layers": ["layer.tar"]}])
            .to_string();
    let mut t = tar::Builder::new(std::fs::File::create(out_tar).unwrap());
    for (name, data) in [
        ("layer.tar", layer),
        ("config.json", cfg.into_bytes()),
        ("manifest.json", manifest.into_bytes()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        t.append_data(&mut h, name, &data[..]).unwrap();
    }
    t.into_inner().unwrap().flush().unwrap();
}

/// The busybox-static rootfs layer (an uncompressed tar) every test image is built on.
pub fn busybox_layer() -> Vec<u8> {
    assert!(
        Path::new(BUSYBOX).exists(),
        "busybox-static is required (apt-get install busybox-static)"
    );
    let mut layer = tar::Builder::new(Vec::new());
    for d in ["bin", "tmp", "etc", "proc", "sys", "dev", "models"] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        layer.append_data(&mut h, d, std::io::empty()).unwrap();
    }
    let bb = std::fs::read(BUSYBOX).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(bb.len() as u64);
    layer.append_data(&mut h, "bin/busybox", &bb[..]).unwrap();
    for a in [
        "sh",
        "cat",
        "echo",
        "ls",
        "sha256sum",
        "mkdir",
        "touch",
        "sleep",
        "true",
        "wc",
        "head",
        "stat",
        "df",
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        layer
            .append_link(&mut h, format!("bin/{a}"), "busybox")
            .unwrap();
    }
    layer.into_inner().unwrap()
}

fn busybox_oci(
    out_tar: &Path,
    dir: tempfile::TempDir,
    layer: Vec<u8>,
    ld: String,
    name: &str,
    cmd: &[&str],
) {
    let cfg = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [ld]}
    })
    .to_string();
    let cd = blob(dir.path(), cfg.as_bytes());
    let man = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cfg.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}]
    })
    .to_string();
    let md = blob(dir.path(), man.as_bytes());
    std::fs::write(
        dir.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let idx = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": man.len(),
        "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": "test"}}]});
    std::fs::write(dir.path().join("index.json"), idx.to_string()).unwrap();
    let f = std::fs::File::create(out_tar).unwrap();
    let mut t = tar::Builder::new(f);
    t.append_dir_all(".", dir.path()).unwrap();
    t.into_inner().unwrap().flush().unwrap();
}
