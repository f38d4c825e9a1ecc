//! Shell completions and manual pages generated from the CLI definition: each must be
//! accepted by the real tool that reads it.

use std::process::Command;

use crate::support::{bin, ok};

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `shell -n` (parse only) on a script; returns its stderr on failure.
fn parses(shell: &str, script: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("completion");
    std::fs::write(&path, script).unwrap();
    let o = Command::new(shell).arg("-n").arg(&path).output().unwrap();
    if o.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

#[test]
fn completion_scripts_parse_and_know_the_verbs() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let bash = ok(&store, &["completion", "bash"]);
    for verb in ["init", "pack", "unpack", "pull", "completion", "man"] {
        assert!(bash.contains(verb), "{verb} missing");
    }
    assert!(
        bash.contains("complete -F"),
        "a bash completion registers itself"
    );
    parses("bash", &bash).unwrap();
    // Loaded into a real bash, it registers a completion for kitsnap.
    let o = Command::new("bash")
        .args(["-c", "source /dev/stdin && complete -p kitsnap"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(bash.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("kitsnap"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    let zsh = ok(&store, &["completion", "zsh"]);
    assert!(zsh.starts_with("#compdef kitsnap"), "{}", &zsh[..40]);
    let fish = ok(&store, &["completion", "fish"]);
    assert!(fish.contains("complete -c kitsnap"));
    // zsh and fish check their syntax too where installed (Debian: zsh, fish).
    for (shell, script) in [("zsh", &zsh), ("fish", &fish)] {
        if have(shell) {
            parses(shell, script).unwrap();
        } else {
            eprintln!("{shell} not installed: only its header was checked");
        }
    }
    let unknown = Command::new(bin())
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("possible values"));
}

#[test]
fn man_pages_render() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let roff = ok(&store, &["man"]);
    assert!(
        roff.contains(".TH kitsnap 1"),
        "{}",
        &roff[..200.min(roff.len())]
    );
    assert!(roff.contains(".SH NAME") && roff.contains(".SH SYNOPSIS"));
    assert!(roff.contains("kitsnap\\-init"), "subcommands are listed");

    let dir = t.path().join("man1");
    ok(&store, &["man", "--dir", dir.to_str().unwrap()]);
    let mut pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    pages.sort();
    for want in [
        "kitsnap.1",
        "kitsnap-init.1",
        "kitsnap-pack.1",
        "kitsnap-completion.1",
    ] {
        assert!(pages.iter().any(|p| p == want), "{want} missing: {pages:?}");
    }
    if !have("man") {
        eprintln!("man not installed: only the roff headers were checked");
        return;
    }
    // man -l renders every page; groff's warnings (--warnings) would show broken roff.
    for page in &pages {
        let o = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(dir.join(page))
            .env("MANWIDTH", "100")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()
            .unwrap();
        let text = plain(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{text}");
        assert!(
            !String::from_utf8_lossy(&o.stderr).contains("warning"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let init = Command::new("man")
        .arg("-l")
        .arg(dir.join("kitsnap-init.1"))
        .env("MANPAGER", "cat")
        .output()
        .unwrap();
    assert!(plain(&init.stdout).contains("--force"));
}

/// man's output without overstrike (bold `N\x08N`, underline `_\x08x`) formatting.
fn plain(out: &[u8]) -> String {
    let mut s = String::new();
    for c in String::from_utf8_lossy(out).chars() {
        if c == '\u{8}' {
            s.pop();
        } else {
            s.push(c);
        }
    }
    s
}
