//! Errors that say what to do next, and a registry that is down or speaks plain HTTP.

use std::io::Write;
use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::registry::{REGISTRY_BIN, RegistryProc, free_port};
use crate::support::*;

/// A small kit `demo:v1` in a fresh store.
fn demo_store(t: &std::path::Path) -> std::path::PathBuf {
    let (src, store) = (t.join("src"), t.join("store"));
    demo_tree(&src);
    ok(&store, &["pack", src.to_str().unwrap(), "-t", "demo:v1"]);
    store
}

/// No control characters (colours, cursor moves, carriage returns) in what went to a pipe.
fn assert_plain(text: &str) {
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "control characters on a non-terminal stderr: {text:?}"
    );
}

#[test]
fn a_registry_that_is_down_is_retried_aloud_naming_its_url_once() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let port = free_port(); // nothing listens there
    let o = run(&store, &["pull", &format!("127.0.0.1:{port}/x/m:v1")]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_plain(&err);
    let notices: Vec<&str> = err.lines().filter(|l| l.contains("retrying (")).collect();
    assert_eq!(notices.len(), 5, "one notice per retry: {err}");
    assert!(
        notices[1].contains("retrying (2/5) in 0.4 s: ") && notices[1].contains("refused"),
        "{err}"
    );
    let url = format!("127.0.0.1:{port}/v2/x/m/manifests/v1");
    for l in err.lines() {
        assert!(l.matches(&url).count() <= 1, "URL repeated in {l:?}");
    }
    assert!(
        notices[0].contains(&url),
        "the first notice names the request: {err}"
    );
    assert!(
        notices[1..].iter().all(|l| !l.contains(&url)),
        "later notices do not repeat it: {err}"
    );
    assert_eq!(err.matches("(os error").count(), notices.len() + 1, "{err}");
}

#[test]
fn a_local_registry_without_tls_is_used_over_plain_http() {
    require_registry!();
    let t = tempfile::tempdir().unwrap();
    let store = demo_store(t.path());
    let reg = RegistryProc::start(&t.path().join("reg"), None, None);
    for host in ["127.0.0.1", "localhost"] {
        let r = format!("{host}:{}/local/m:v1", reg.port);
        ok(&store, &["tag", "demo:v1", &r]);
        // No --plain-http: like Docker, a loopback registry may speak plain HTTP.
        let pushed = ok(&store, &["push", &r]);
        let store2 = t.path().join(format!("store-{host}"));
        assert_eq!(ok(&store2, &["pull", &r]), pushed);
    }
}

/// This machine's address on its default route (no packet is sent).
fn non_loopback_ip() -> Option<std::net::IpAddr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn tls_to_a_remote_plain_http_registry_says_use_plain_http() {
    require_registry!();
    let ip = non_loopback_ip();
    require!(
        ip.is_some(),
        "a non-loopback IPv4 address (a default route)"
    );
    let ip = ip.unwrap();
    let t = tempfile::tempdir().unwrap();
    let store = demo_store(t.path());
    let port = free_port();
    let dir = t.path().join("reg");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.yml"),
        format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {ip}:{port}\n",
            dir.join("data").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(REGISTRY_BIN)
        .args(["serve", dir.join("config.yml").to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while std::net::TcpStream::connect((ip, port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "registry did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = format!("{ip}:{port}/remote/m:v1");
    ok(&store, &["tag", "demo:v1", &r]);
    let e = fails(&store, &["push", &r]);
    assert!(
        e.contains("the registry speaks plain HTTP: use --plain-http"),
        "{e}"
    );
    assert!(!e.contains("retrying"), "not a failure to retry: {e}");
    ok(&store, &["push", &r, "--plain-http"]);
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn password_stdin_without_username_fails_before_reading_stdin() {
    let t = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .env("KITSNAP_STORE", t.path().join("store"))
        .args(["login", "registry.invalid", "--password-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // stdin stays open and empty: a login that read it would wait here for ever.
    let stdin = child.stdin.take().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("login read standard input before checking its arguments");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    drop(stdin);
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("--username"), "{err}");
}

#[test]
fn bad_input_is_refused_with_what_to_do() {
    let t = tempfile::tempdir().unwrap();
    let store = demo_store(t.path());

    let e = fails(&store, &["tag", "demo:v1", "name:v/1"]);
    assert!(
        e.contains("invalid reference") && e.contains("cannot contain '/'"),
        "{e}"
    );
    let e = fails(&store, &["pull", "name:v/1"]);
    assert!(e.contains("invalid reference"), "{e}");

    // A filter that matches nothing: an error that lists what the kit holds.
    let out = t.path().join("out");
    let e = fails(
        &store,
        &[
            "unpack",
            "demo:v1",
            "-d",
            out.to_str().unwrap(),
            "--filter",
            "model:nosuch",
        ],
    );
    assert!(e.contains("no layer matches the filter"), "{e}");
    for held in [
        "model models/weights.safetensors",
        "dataset data/train.csv",
        "code src",
    ] {
        assert!(e.contains(held), "{held} missing from: {e}");
    }

    // -d naming a file (or a path below one) says so, once.
    let file = t.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    for d in [file.clone(), file.join("sub")] {
        let e = fails(&store, &["unpack", "demo:v1", "-d", d.to_str().unwrap()]);
        assert!(e.contains("is a file, not a directory"), "{e}");
        assert_eq!(e.matches(file.to_str().unwrap()).count(), 1, "{e}");
        assert!(!e.contains("os error"), "{e}");
    }

    // An I/O error's `(os error N)` appears once.
    let e = fails(
        &store,
        &[
            "pack",
            t.path().join("nonexistent").to_str().unwrap(),
            "-t",
            "x:y",
        ],
    );
    assert_eq!(e.matches("(os error 2)").count(), 1, "{e}");

    // Kitfile mistakes: a tab, a misspelt field.
    let src = t.path().join("bad");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("m.bin"), b"m").unwrap();
    let mut kf = std::fs::File::create(src.join("Kitfile")).unwrap();
    kf.write_all(b"manifestVersion: 1.0.0\npackage:\n\tname: x\nmodel:\n  path: m.bin\n")
        .unwrap();
    let e = fails(&store, &["pack", src.to_str().unwrap(), "-t", "bad:v1"]);
    assert!(e.contains("tabs are not allowed"), "{e}");
    std::fs::write(
        src.join("Kitfile"),
        "manifestVersion: 1.0.0\npackage:\n  name: x\nmodle:\n  path: m.bin\n",
    )
    .unwrap();
    let e = fails(&store, &["pack", src.to_str().unwrap(), "-t", "bad:v1"]);
    assert!(e.contains("did you mean `model`?"), "{e}");
}
