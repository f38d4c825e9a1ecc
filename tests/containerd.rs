//! `kitsnap serve` as containerd's proxy snapshotter, against real containerd 1.6, 1.7 and
//! 2.x daemons started here, running real containers with runc.

#[path = "support/containerd.rs"]
mod support;

use support::*;

fn run_suite(v: &Version) {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let mut ks = Kitsnap::start(dir);
    let mut ctd = Containerd::start(v, &dir.join("containerd"), &ks.sock);
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
    let ls = ctd.ctr_ok(&["snapshots", "--snapshotter", "kitsnap", "ls"]);
    let layer = ls
        .lines()
        .skip(1)
        .find(|l| l.contains("Committed"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{ctx}: no committed snapshot in\n{ls}"))
        .to_string();
    let info = ctd.ctr_ok(&["snapshots", "--snapshotter", "kitsnap", "info", &layer]);
    assert!(
        info.to_lowercase().contains("\"kind\": \"committed\""),
        "{ctx}: {info}"
    );
    let usage = ctd.ctr_ok(&["snapshots", "--snapshotter", "kitsnap", "usage", &layer]);
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
    let ls = ctd.ctr_ok(&["snapshots", "--snapshotter", "kitsnap", "ls"]);
    assert!(ls.contains("c1") && ls.contains("Active"), "{ctx}: {ls}");

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
    let e = ctd.ctr_err(&[
        "snapshots",
        "--snapshotter",
        "kitsnap",
        "prepare",
        "k1",
        "no-such-parent",
    ]);
    assert!(e.contains("not found"), "{ctx}: {e}");
    ctd.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        "kitsnap",
        "prepare",
        "k1",
        &layer,
    ]);
    let e = ctd.ctr_err(&[
        "snapshots",
        "--snapshotter",
        "kitsnap",
        "prepare",
        "k1",
        &layer,
    ]);
    assert!(e.contains("already exists"), "{ctx}: {e}");
    ctd.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        "kitsnap",
        "commit",
        "k1-done",
        "k1",
    ]);
    let e = ctd.ctr_err(&[
        "snapshots",
        "--snapshotter",
        "kitsnap",
        "commit",
        "k1-again",
        "k1",
    ]);
    assert!(e.contains("not found"), "{ctx}: double commit: {e}");
    let e = ctd.ctr_err(&["snapshots", "--snapshotter", "kitsnap", "rm", &layer]);
    assert!(
        e.to_lowercase().contains("child") || e.contains("precondition"),
        "{ctx}: remove with children: {e}"
    );
    let e = ctd.ctr_err(&[
        "snapshots",
        "--snapshotter",
        "kitsnap",
        "info",
        "unknown-key",
    ]);
    assert!(e.contains("not found"), "{ctx}: {e}");
    ctd.ctr_ok(&["snapshots", "--snapshotter", "kitsnap", "rm", "k1-done"]);
    ctd.ctr_ok(&[
        "snapshots",
        "--snapshotter",
        "kitsnap",
        "label",
        &layer,
        "team=ml",
    ]);
    let info = ctd.ctr_ok(&["snapshots", "--snapshotter", "kitsnap", "info", &layer]);
    assert!(info.contains("\"team\": \"ml\""), "{ctx}: {info}");

    // Removing the container and image lets containerd's GC remove our snapshots.
    ctd.ctr_ok(&["containers", "rm", "c1"]);
    ctd.ctr_ok(&["images", "rm", "--sync", IMAGE]);
    let start = std::time::Instant::now();
    while ks.snapshot_dirs() > 0 && start.elapsed() < std::time::Duration::from_secs(20) {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let ls = ctd.ctr_ok(&["snapshots", "--snapshotter", "kitsnap", "ls"]);
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

#[test]
fn snapshotter_with_every_containerd_version() {
    if !can_run_containers() {
        return;
    }
    let versions = versions();
    for v in &versions {
        eprintln!("--- containerd {}", v.name);
        run_suite(v);
    }
    assert!(
        !versions.is_empty(),
        "no containerd at all: apt-get install containerd"
    );
}
