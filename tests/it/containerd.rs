//! `kitsnap serve` as containerd's proxy snapshotter, against real containerd 1.6, 1.7 and
//! 2.x daemons started here, running real containers with runc.

use kitsnap_node::api::snapshots as pb;

use crate::support::containerd::*;
use crate::support::*;

/// Every snapshot the daemon holds, asked over its own socket: (name, kind).
fn backend_snapshots(sock: &std::path::Path) -> Vec<(String, i32)> {
    let sock = sock.to_path_buf();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(async move {
            let mut c = snapshots_client(&sock).await;
            let mut s = c
                .list(pb::ListSnapshotsRequest::default())
                .await
                .unwrap()
                .into_inner();
            let mut out = Vec::new();
            while let Some(b) = s.message().await.unwrap() {
                out.extend(b.info.into_iter().map(|i| (i.name, i.kind)));
            }
            out
        })
}

fn run_suite(v: &Version) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let mut ks = Kitsnap::start(dir);
    // Registered as an operator does it: `kitsnap containerd install` (a conf.d drop-in).
    let mut ctd = Containerd::start_registered(v, &dir.join("containerd"), &ks.sock);
    let img = dir.join("busybox.tar");
    busybox_image(&img);
    let ctx = format!("containerd {}", v.name);

    // Import and unpack onto kitsnap; the layer becomes a committed snapshot.
    ctd.ctr_ok(&[
        "images",
        "import",
        "--snapshotter",
        "kitsnap",
        img.to_str().unwrap(),
    ]);
    let ls = ctd.snap_ok(&["ls"]);
    let layer = ls
        .lines()
        .skip(1)
        .find(|l| l.contains("Committed"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{ctx}: no committed snapshot in\n{ls}"))
        .to_string();
    let info = ctd.snap_ok(&["info", &layer]);
    assert!(
        info.to_lowercase().contains("\"kind\": \"committed\""),
        "{ctx}: {info}"
    );
    let usage = ctd.snap_ok(&["usage", &layer]);
    let size_line = usage.lines().nth(1).unwrap_or("");
    assert!(
        size_line.contains("MiB") || size_line.contains("KiB"),
        "{ctx}: usage {usage}"
    );

    // A container runs on it; its writes land in our upper directory.
    let out = ctd.ctr_ok(&[
        "run",
        "--snapshotter",
        "kitsnap",
        IMAGE,
        "c1",
        "sh",
        "-c",
        "echo kitsnap-was-here > /written && cat /written && ls /bin/busybox",
    ]);
    assert!(out.contains("kitsnap-was-here"), "{ctx}: {out}");
    let written: Vec<_> = std::fs::read_dir(ks.root.join("snapshots"))
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("fs/written")).ok())
        .collect();
    assert_eq!(
        written,
        [b"kitsnap-was-here\n".to_vec()],
        "{ctx}: the write is in one upper dir"
    );
    let ls = ctd.snap_ok(&["ls"]);
    assert!(ls.contains("c1") && ls.contains("Active"), "{ctx}: {ls}");
    // containerd's view and the daemon's agree: same snapshots, same kinds (the backend
    // names carry containerd's namespace/sequence prefix).
    let ours = backend_snapshots(&ks.sock);
    let theirs: Vec<&str> = ls.lines().skip(1).collect();
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{ctx}: ctr {theirs:?} vs kitsnap {ours:?}"
    );
    for line in &theirs {
        let key = line.split_whitespace().next().unwrap_or("");
        let kind = if line.contains("Committed") { 3 } else { 2 };
        assert!(
            ours.iter()
                .any(|(n, k)| n.ends_with(&format!("/{key}")) && *k == kind),
            "{ctx}: {key} not in kitsnap as kind {kind}: {ours:?}"
        );
    }

    // Restart the daemon while containerd runs; then containerd: both keep working.
    ks.restart();
    let out = ctd.ctr_ok_after_restart(&[
        "run",
        "--rm",
        "--snapshotter",
        "kitsnap",
        IMAGE,
        "c2",
        "cat",
        "/bin/busybox",
    ]);
    assert!(!out.is_empty(), "{ctx}");
    ctd.restart();
    let out = ctd.ctr_ok(&[
        "run",
        "--rm",
        "--snapshotter",
        "kitsnap",
        IMAGE,
        "c3",
        "sh",
        "-c",
        "echo after-restart",
    ]);
    assert!(out.contains("after-restart"), "{ctx}");
    // kill -9 and restart keeps every snapshot.
    ks.kill9();
    ks.start_again();
    let ls2 = ctd.ctr_ok_after_restart(&["snapshots", "--snapshotter", "kitsnap", "ls"]);
    assert!(ls2.contains(&layer) && ls2.contains("c1"), "{ctx}: {ls2}");

    // Bad input gets the right errors back through containerd.
    let e = ctd.snap_err(&["prepare", "k1", "no-such-parent"]);
    assert!(e.contains("not found"), "{ctx}: {e}");
    ctd.snap_ok(&["prepare", "k1", &layer]);
    let e = ctd.snap_err(&["prepare", "k1", &layer]);
    assert!(e.contains("already exists"), "{ctx}: {e}");
    ctd.snap_ok(&["commit", "k1-done", "k1"]);
    let e = ctd.snap_err(&["commit", "k1-again", "k1"]);
    assert!(e.contains("not found"), "{ctx}: double commit: {e}");
    let e = ctd.snap_err(&["rm", &layer]);
    assert!(
        e.to_lowercase().contains("child") || e.contains("precondition"),
        "{ctx}: remove with children: {e}"
    );
    let e = ctd.snap_err(&["info", "unknown-key"]);
    assert!(e.contains("not found"), "{ctx}: {e}");
    ctd.snap_ok(&["rm", "k1-done"]);
    ctd.snap_ok(&["label", &layer, "team=ml"]);
    let info = ctd.snap_ok(&["info", &layer]);
    assert!(info.contains("\"team\": \"ml\""), "{ctx}: {info}");

    // Removing the container and image lets containerd's GC remove our snapshots.
    ctd.ctr_ok(&["containers", "rm", "c1"]);
    ctd.ctr_ok(&["images", "rm", "--sync", IMAGE]);
    ks.wait_until_empty();
    let ls = ctd.snap_ok(&["ls"]);
    assert_eq!(ls.lines().count(), 1, "{ctx}: containerd GC left {ls}");
    assert_eq!(
        ks.snapshot_dirs(),
        0,
        "{ctx}: snapshot directories left behind"
    );
    assert!(
        !ks.log().contains("ERROR"),
        "{ctx}: errors in the daemon log:\n{}",
        ks.log()
    );
}

/// Remote-snapshot path: containerd's pull unpacker labels Prepare with
/// `containerd.io/snapshot.ref`; a layer kitsnap already holds is answered with
/// ALREADY_EXISTS and found by List, so a second namespace pulling the same image
/// unpacks nothing.
fn remote_snapshot_path(v: &Version) -> bool {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let ks = Kitsnap::start(dir);
    let ctd = Containerd::start(v, &dir.join("containerd"), &ks.sock);
    let ctx = format!("containerd {}", v.name);
    let img = dir.join("busybox.tar");
    busybox_image(&img);
    let reg = registry::RegistryProc::start(&dir.join("registry"), None, None);
    let remote = format!("{}/kitsnap/busybox:test", reg.addr());
    let o = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--dest-tls-verify=false",
            &format!("oci-archive:{}", img.display()),
            &format!("docker://{remote}"),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for ns in ["ns-one", "ns-two"] {
        let o = ctd.ctr_ns(
            ns,
            &[
                "images",
                "pull",
                "--plain-http",
                "--snapshotter",
                "kitsnap",
                &remote,
            ],
        );
        assert!(
            o.status.success(),
            "{ctx} {ns}: {}{}",
            String::from_utf8_lossy(&o.stderr),
            ctd.log_tail()
        );
        if !ks.log().contains(super_label()) {
            // This ctr unpacks client-side without the target label (ctr 1.6 and 1.7 do;
            // CRI and the transfer service send it), so there is nothing to share. Not a
            // skip: the test asserts below that containerd 2.x does exercise the path.
            eprintln!(
                "note: {ctx}: ctr's pull does not send {} on Prepare; remote path not exercised with this version",
                super_label()
            );
            return false;
        }
        assert_eq!(
            ks.snapshot_dirs(),
            1,
            "{ctx} {ns}: one layer, unpacked once\n{}",
            ks.log()
        );
    }
    assert!(
        ks.log().contains("held by this snapshotter"),
        "{ctx}: remote path not taken"
    );
    let o = ctd.ctr_ns(
        "ns-two",
        &[
            "run",
            "--rm",
            "--snapshotter",
            "kitsnap",
            &remote,
            "r1",
            "sh",
            "-c",
            "echo shared",
        ],
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("shared"),
        "{ctx}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Removing the image in one namespace keeps the layer the other still uses.
    assert!(
        ctd.ctr_ns("ns-one", &["images", "rm", "--sync", &remote])
            .status
            .success()
    );
    assert_eq!(
        ks.snapshot_dirs(),
        1,
        "{ctx}: GC removed a layer ns-two uses"
    );
    assert!(
        ctd.ctr_ns("ns-two", &["images", "rm", "--sync", &remote])
            .status
            .success()
    );
    ks.wait_until_empty();
    assert_eq!(
        ks.snapshot_dirs(),
        0,
        "{ctx}: layer left after both images went"
    );
    true
}

fn super_label() -> &'static str {
    "containerd.io/snapshot.ref"
}

#[test]
fn remote_snapshot_path_shares_layers_across_namespaces() {
    require_containers!();
    require_registry!();
    require!(
        have_cmd("skopeo"),
        "skopeo (apt-get install skopeo; scripts/install-deps.sh does it)"
    );
    let _heavy = heavy();
    let versions = versions(test_name!());
    let mut exercised = 0;
    for v in &versions {
        eprintln!("--- containerd {}", v.name);
        exercised += remote_snapshot_path(v) as usize;
    }
    // containerd 2.x pulls through the transfer service, whose unpacker sends the label.
    if versions.iter().any(|v| v.name.starts_with('2')) {
        assert!(
            exercised > 0,
            "no containerd version exercised the remote-snapshot path"
        );
    }
}

#[test]
fn snapshotter_with_every_containerd_version() {
    require_containers!();
    let _heavy = heavy();
    let versions = versions(test_name!());
    for v in &versions {
        eprintln!("--- containerd {}", v.name);
        run_suite(v);
    }
    assert!(
        !versions.is_empty(),
        "no containerd at all: apt-get install containerd"
    );
}
