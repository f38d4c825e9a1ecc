//! Stamps `kitsnap version` with the commit, the build date and the compiler, when known.

use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(cmd).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    let commit = output("git", &["rev-parse", "--short=12", "HEAD"]).unwrap_or("unknown".into());
    let dirty = output("git", &["status", "--porcelain", "--untracked-files=no"]).is_some();
    // SOURCE_DATE_EPOCH keeps release builds reproducible.
    let date = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(e) => output(
            "date",
            &["-u", "-d", &format!("@{e}"), "+%Y-%m-%dT%H:%M:%SZ"],
        ),
        Err(_) => output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
    }
    .unwrap_or("unknown".into());
    let rustc = std::env::var("RUSTC").unwrap_or("rustc".into());
    let rustc = output(&rustc, &["--version"]).unwrap_or("unknown".into());
    println!(
        "cargo:rustc-env=KITSNAP_COMMIT={commit}{}",
        if dirty { "-dirty" } else { "" }
    );
    println!("cargo:rustc-env=KITSNAP_BUILT={date}");
    println!("cargo:rustc-env=KITSNAP_RUSTC={rustc}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
}
