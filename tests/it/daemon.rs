//! `kitsnap serve` as a systemd service: readiness notification, socket activation,
//! socket permissions, graceful stop, and the gRPC API called directly.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kitsnap_node::api::snapshots as pb;

use crate::support::{bin, require, snapshots_client as client};

#[test]
fn notifies_systemd_and_stops_cleanly() {
    let t = tempfile::tempdir().unwrap();
    let notify = t.path().join("notify");
    let nsock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    nsock
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let sock = t.path().join("run/kitsnap.sock");
    let mut child = Command::new(bin())
        .args([
            "serve",
            "--root",
            t.path().join("root").to_str().unwrap(),
            "--address",
            sock.to_str().unwrap(),
            "--mount-root",
            t.path().join("mounts").to_str().unwrap(),
            "--containerd-address",
            t.path().join("no-containerd.sock").to_str().unwrap(),
            "--no-docker-plugin",
            "--mirror-addr",
            "off",
        ])
        .env("NOTIFY_SOCKET", &notify)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = nsock.recv(&mut buf).expect("READY=1 from kitsnap");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1"), "{msg}");
    // Ready means serving: the socket exists with mode 0660.
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o660
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = client(&sock).await;
        let p = c
            .prepare(pb::PrepareSnapshotRequest {
                key: "k".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(p.mounts[0].r#type, "bind");
        let e = c
            .prepare(pb::PrepareSnapshotRequest {
                key: "k".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::AlreadyExists);
        let e = c
            .stat(pb::StatSnapshotRequest {
                key: "nope".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        let e = c
            .commit(pb::CommitSnapshotRequest {
                name: "c".into(),
                key: "nope".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        c.commit(pb::CommitSnapshotRequest {
            name: "c".into(),
            key: "k".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let e = c
            .mounts(pb::MountsRequest {
                key: "c".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        let mut s = c
            .list(pb::ListSnapshotsRequest {
                filters: vec!["kind==committed".into()],
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let batch = s.message().await.unwrap().unwrap();
        assert_eq!(batch.info.len(), 1);
        assert_eq!(batch.info[0].kind, pb::Kind::Committed as i32);
        let e = c
            .list(pb::ListSnapshotsRequest {
                filters: vec!["labels.\"open".into()],
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
    let n = nsock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(!sock.exists(), "socket removed on exit");
}

#[test]
fn serves_a_socket_passed_by_systemd() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("activated.sock");
    let log = t.path().join("daemon.log");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("sh");
    // `exec` keeps the shell's pid, which is what LISTEN_PID must name.
    cmd.args([
        "-c",
        &format!(
            "LISTEN_PID=$$ LISTEN_FDS=1 exec {} serve --root {} --address /nonexistent/unused.sock --mount-root {} --containerd-address {} --no-docker-plugin",
            bin().display(),
            t.path().join("root").display(),
            t.path().join("mounts").display(),
            t.path().join("no-containerd.sock").display()
        ),
    ])
    .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: dup2 is async-signal-safe; fd 3 becomes the listening socket, as systemd does.
    unsafe {
        cmd.pre_exec(move || {
            if fd == 3 {
                // dup2(3, 3) would keep close-on-exec set: clear it instead.
                let flags = libc::fcntl(3, libc::F_GETFD);
                if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let n = rt.block_on(async {
        // Our copy of the listener keeps connects from failing even if the daemon died:
        // bound the wait so a broken hand-over fails instead of hanging.
        tokio::time::timeout(Duration::from_secs(20), async {
            let mut c = client(&sock).await;
            let mut s = c
                .list(pb::ListSnapshotsRequest::default())
                .await
                .unwrap()
                .into_inner();
            let mut n = 0;
            while let Some(b) = s.message().await.unwrap() {
                n += b.info.len();
            }
            n
        })
        .await
    });
    let n = n.unwrap_or_else(|_| {
        panic!(
            "no answer on the activated socket; daemon status {:?}",
            child.try_wait()
        )
    });
    assert_eq!(n, 0);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let st = child.wait().unwrap();
    assert!(
        st.success(),
        "{st}: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        sock.exists(),
        "an activated socket belongs to systemd and stays"
    );
}

#[test]
fn systemd_units_are_valid() {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    require!(
        ok,
        "systemd-analyze (apt-get install systemd; scripts/install-deps.sh does it)"
    );
    // systemd-analyze checks ExecStart's binary exists: point a copy of the unit at ours.
    let t = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let unit = std::fs::read_to_string(root.join("kitsnap.service"))
        .unwrap()
        .replace("/usr/local/bin/kitsnap", bin().to_str().unwrap());
    std::fs::write(t.path().join("kitsnap.service"), unit).unwrap();
    std::fs::copy(root.join("kitsnap.socket"), t.path().join("kitsnap.socket")).unwrap();
    let o = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(t.path().join("kitsnap.service"))
        .arg(t.path().join("kitsnap.socket"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && !err.contains("kitsnap."), "{err}");
    let daemon_cfg = std::fs::read_to_string(root.join("config.toml")).unwrap();
    let parsed: kitsnap_node::daemon::Config = toml::from_str(&daemon_cfg).unwrap();
    assert!(parsed.root.is_some());
}

/// `--metrics-addr` serves Prometheus metrics that count the calls made, `--log-format
/// json` writes one JSON object per line starting with the version and the settings, and
/// `--check-config` reports every problem without starting.
#[test]
fn metrics_json_logs_and_check_config() {
    let t = tempfile::tempdir().unwrap();
    let port = crate::support::registry::free_port();
    let addr = format!("127.0.0.1:{port}");
    let ks = crate::support::containerd::Kitsnap::start_with_args(
        t.path(),
        Path::new(""),
        &["--metrics-addr", &addr, "--log-format", "json"],
    );
    let sock = t.path().join("kitsnap.sock");
    let o = Command::new(bin())
        .args(["mount", "--list", "--address", sock.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let text = reqwest::blocking::get(format!("http://{addr}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    for want in [
        "kitsnap_pulls_total",
        "kitsnap_pull_bytes_total",
        "kitsnap_layers_held 0",
        "kitsnap_mounts 0",
        "kitsnap_request_duration_seconds_count{service=\"node\"",
    ] {
        assert!(text.contains(want), "{want} missing from\n{text}");
    }
    let other = reqwest::blocking::get(format!("http://{addr}/")).unwrap();
    assert_eq!(other.status().as_u16(), 404);

    let log = ks.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let start = lines
        .iter()
        .find(|l| l["message"] == "kitsnap serve starting")
        .unwrap_or_else(|| panic!("no start-up line in\n{log}"));
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(start["metrics"], addr.as_str());
    assert!(
        start["containerd"]
            .as_str()
            .is_some_and(|c| c.ends_with("containerd.sock"))
    );
    drop(ks);

    let check = |args: &[&str]| {
        Command::new(bin())
            .args(["serve", "--check-config", "--mirror-addr", "off"])
            .args(args)
            .output()
            .unwrap()
    };
    let o = check(&["--root", t.path().join("r").to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("metrics:            off"));
    let o = check(&["--root", "relative", "--log-level", "loud"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        e.contains("2 problem(s)")
            && e.contains("not an absolute path")
            && e.contains("unknown log level"),
        "{e}"
    );
    let bad = t.path().join("bad.toml");
    std::fs::write(&bad, "rot = \"/x\"\n").unwrap();
    let o = check(&["--config", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown field `rot`"));
}
