//! The Docker volume plugin against a real dockerd (Debian's docker.io) started here on
//! its own socket and state directories: `docker run --mount type=volume,volume-driver=...`
//! pulls the ModelKit on first use, containers read it read-only and share one mount.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::containerd::*;
use crate::support::{self, *};

const DOCKERD: &str = "/usr/sbin/dockerd";
const DOCKER: &str = "/usr/bin/docker";
const TAG: &str = "kitsnap-busybox:test";

struct Dockerd {
    child: Child,
    host: String,
    dir: PathBuf,
}

impl Dockerd {
    fn start(dir: &Path) -> Dockerd {
        std::fs::create_dir_all(dir).unwrap();
        let sock = dir.join("docker.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new(DOCKERD)
            .args([
                "--host",
                &format!("unix://{}", sock.display()),
                "--data-root",
                dir.join("data").to_str().unwrap(),
                "--exec-root",
                dir.join("exec").to_str().unwrap(),
                "--pidfile",
                dir.join("dockerd.pid").to_str().unwrap(),
                "--iptables=false",
                "--ip-masq=false",
                "--bridge=none",
                "--storage-driver=overlay2",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Dockerd {
            child,
            host: format!("unix://{}", sock.display()),
            dir: dir.to_path_buf(),
        };
        let start = Instant::now();
        while !d.docker(&["version"]).status.success() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "dockerd did not come up:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new(DOCKER)
            .env("DOCKER_HOST", &self.host)
            .args(args)
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.status.success(),
            "docker {args:?}:\n{}{}\n--- dockerd log tail:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log()
                .lines()
                .rev()
                .take(15)
                .collect::<Vec<_>>()
                .join("\n")
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        for c in ["c1", "c2"] {
            let _ = self.docker(&["rm", "-f", c]);
        }
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        support::containerd::umount_under(&self.dir);
    }
}

fn holders(ks: &Kitsnap, name: &str) -> Option<usize> {
    let o = Command::new(support::bin())
        .env("KITSNAP_ADDRESS", &ks.sock)
        .args(["mount", "--list"])
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&o.stdout).into_owned();
    list.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|h| h.parse().ok())
}

#[test]
fn docker_volume_plugin_shares_a_modelkit() {
    require_containers!();
    require_registry!();
    require!(
        Path::new(DOCKERD).exists() && Path::new(DOCKER).exists(),
        "{DOCKERD} and {DOCKER} (apt-get install docker.io; scripts/install-deps.sh does it)"
    );
    // Any one containerd will do for kitsnap's side.
    let v = known_versions().into_iter().find(Version::available);
    require!(
        v.is_some(),
        "a containerd for kitsnap (apt-get install containerd)"
    );
    let v = v.unwrap();
    let _heavy = heavy();
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let reg = registry::RegistryProc::start(&dir.join("registry"), None, None);
    let store = dir.join("store");
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    let model = support::bytes(2 << 20, 5);
    std::fs::write(tree.join("model.bin"), &model).unwrap();
    std::fs::write(
        tree.join("Kitfile"),
        "manifestVersion: 1.0.0\npackage:\n  name: dv\nmodel:\n  name: dv\n  path: model.bin\n",
    )
    .unwrap();
    let r = format!("{}/kits/docker:v1", reg.addr());
    support::ok(&store, &["pack", tree.to_str().unwrap(), "-t", &r]);
    support::ok(&store, &["push", &r, "--plain-http"]);
    let want = sha256_hex(&model);

    // A plugin name of our own: Docker discovers plugins by socket name in a fixed dir.
    let driver = format!("kitsnap-test-{}", std::process::id());
    let plugin = PathBuf::from(format!("/run/docker/plugins/{driver}.sock"));
    // Declared before the daemons, so dropped after them: the socket goes even on a panic.
    let _plugin_sock = RemoveOnDrop(plugin.clone());
    let ks = Kitsnap::start_with_plugin(dir, &plugin);
    let _ctd = Containerd::start(&v, &dir.join("containerd"), &ks.sock);
    let dockerd = Dockerd::start(&dir.join("docker"));
    let img = dir.join("busybox-docker.tar");
    busybox_docker_archive(&img, TAG);
    dockerd.ok(&["load", "-i", img.to_str().unwrap()]);

    let mnt = format!(
        "type=volume,volume-driver={driver},src=kv,dst=/models,volume-opt=ref={r},volume-opt=plain-http=true"
    );
    // First use pulls the kit into containerd and mounts it.
    let out = dockerd.ok(&[
        "run",
        "--rm",
        "--mount",
        &mnt,
        TAG,
        "sha256sum",
        "/models/model.bin",
    ]);
    assert!(out.contains(&want), "{out}\n{}", ks.log());
    assert_eq!(
        holders(&ks, "docker-kv"),
        None,
        "unmounted after the last container"
    );

    // Two running containers share one mount (two holders), read-only.
    for c in ["c1", "c2"] {
        dockerd.ok(&[
            "run", "-d", "--name", c, "--mount", &mnt, TAG, "sleep", "300",
        ]);
    }
    assert_eq!(holders(&ks, "docker-kv"), Some(2), "{}", ks.log());
    let o = dockerd.docker(&["exec", "c2", "sh", "-c", "echo x > /models/x"]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Read-only file system"),
        "write must fail: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = dockerd.ok(&["exec", "c1", "sha256sum", "/models/model.bin"]);
    assert!(out.contains(&want), "{out}");
    // Removing a volume in use fails; after both containers it goes.
    dockerd.ok(&["rm", "-f", "c1"]);
    assert_eq!(holders(&ks, "docker-kv"), Some(1));
    let o = dockerd.docker(&["volume", "rm", "kv"]);
    assert!(!o.status.success(), "volume in use was removed");
    dockerd.ok(&["rm", "-f", "c2"]);
    assert_eq!(holders(&ks, "docker-kv"), None);
    dockerd.ok(&["volume", "rm", "kv"]);
    let ls = dockerd.ok(&["volume", "ls", "-q"]);
    assert!(!ls.contains("kv"), "{ls}");
    // A volume without ref is refused with a clear message.
    let o = dockerd.docker(&["volume", "create", "-d", &driver, "noref"]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("ref="),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    drop(dockerd);
}

/// Removes a file (the plugin socket, in the host's /run/docker/plugins) when dropped.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
