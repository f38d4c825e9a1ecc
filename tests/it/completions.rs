//! Shell completions and manual pages generated from the CLI definition: each is loaded
//! by the real tool that reads it, and must complete or render what the CLI offers.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::{bin, have_cmd, ok, require};

/// Runs `shell -n` (parse only) on a script.
fn parses(shell: &str, script: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("completion");
    std::fs::write(&path, script).unwrap();
    let o = Command::new(shell).arg("-n").arg(&path).output().unwrap();
    assert!(
        o.status.success(),
        "{shell} -n: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Runs `shell -c program` with `script` on stdin; returns stdout. The shell gets a
/// private HOME so that nothing it caches (fish's history, zsh's dump) lands in root's.
fn run_shell(shell: &str, program: &str, script: &str) -> String {
    let home = tempfile::tempdir().unwrap();
    let mut c = Command::new(shell)
        .args(["-c", program])
        .env("HOME", home.path())
        .env_remove("XDG_DATA_HOME")
        .env_remove("XDG_CONFIG_HOME")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let o = c.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "{shell}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn bash_completion_parses_and_completes_verbs_and_flags() {
    let t = tempfile::tempdir().unwrap();
    let bash = ok(&t.path().join("store"), &["completion", "bash"]);
    parses("bash", &bash);
    // Loaded into bash, it registers itself and answers as bash would ask on TAB.
    let complete = |words: &str| {
        run_shell(
            "bash",
            &format!(
                "source /dev/stdin; complete -p kitsnap >/dev/null || exit 3; \
                 COMP_LINE='{words}'; read -ra COMP_WORDS <<< \"$COMP_LINE\"; \
                 COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)); COMP_POINT=${{#COMP_LINE}}; \
                 _kitsnap kitsnap \"${{COMP_WORDS[-1]}}\" \"${{COMP_WORDS[-2]}}\"; \
                 printf '%s\\n' \"${{COMPREPLY[@]}}\""
            ),
            &bash,
        )
    };
    let verbs = complete("kitsnap ini");
    assert_eq!(verbs.trim(), "init", "{verbs}");
    let verbs = complete("kitsnap com");
    assert_eq!(verbs.trim(), "completion", "{verbs}");
    let flags = complete("kitsnap init --f");
    assert_eq!(flags.trim(), "--force", "{flags}");

    let unknown = Command::new(bin())
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("possible values"));
}

#[test]
fn zsh_completion_parses_and_registers() {
    let t = tempfile::tempdir().unwrap();
    let zsh = ok(&t.path().join("store"), &["completion", "zsh"]);
    assert!(zsh.starts_with("#compdef kitsnap"));
    require!(
        have_cmd("zsh"),
        "zsh (apt-get install zsh; scripts/install-deps.sh does it)"
    );
    parses("zsh", &zsh);
    let registered = run_shell(
        "zsh",
        // -D: no dump file. (`-d /dev/null` made compdump `mv -f` its dump over
        // /dev/null as root, turning it into a regular file for the whole machine.)
        "autoload -Uz compinit && compinit -u -D && source /dev/stdin && print -r -- ${_comps[kitsnap]}",
        &zsh,
    );
    assert_eq!(registered.trim(), "_kitsnap");
}

#[test]
fn fish_completion_parses_and_completes() {
    let t = tempfile::tempdir().unwrap();
    let fish = ok(&t.path().join("store"), &["completion", "fish"]);
    assert!(fish.contains("complete -c kitsnap"));
    require!(
        have_cmd("fish"),
        "fish (apt-get install fish; scripts/install-deps.sh does it)"
    );
    parses("fish", &fish);
    let got = run_shell(
        "fish",
        "source; complete -C 'kitsnap ini'; complete -C 'kitsnap unpack --fil'",
        &fish,
    );
    assert!(
        got.lines().any(|l| l.starts_with("init\t")),
        "verbs come with their help: {got}"
    );
    assert!(got.lines().any(|l| l.starts_with("--filter")), "{got}");
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
    require!(
        have_cmd("man"),
        "man (apt-get install man-db; scripts/install-deps.sh does it)"
    );
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
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{page}: {err}");
        assert!(text.contains("NAME") && text.contains("SYNOPSIS"), "{text}");
        assert!(!err.contains("warning"), "{page}: {err}");
    }
    let init = Command::new("man")
        .arg("-l")
        .arg(dir.join("kitsnap-init.1"))
        .env("MANPAGER", "cat")
        .output()
        .unwrap();
    let text = plain(&init.stdout);
    assert!(
        text.contains("--force") && text.contains(".kitignore"),
        "{text}"
    );
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
