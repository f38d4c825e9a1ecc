//! deploy/kubernetes: the manifests parse and say what the README says (host mounts and
//! their propagation, the flags, the probe, the example pod's image volume); kitsnap has
//! the flags and commands the DaemonSet runs (or they are listed as pending); the installer
//! script the init container runs is idempotent and leaves foreign files alone; and
//! containerd 2.x accepts the config drop-in it installs.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml_ng::Value;

use crate::support::*;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

/// Every YAML document of `deploy/kubernetes/<name>`.
fn docs(name: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(deploy_dir().join(name)).unwrap();
    text.split("\n---\n")
        .map(|d| serde_yaml_ng::from_str(d).unwrap_or_else(|e| panic!("{name}: {e}")))
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind))
        .unwrap_or_else(|| panic!("no {kind} in {docs:?}"))
}

fn strs(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .map(|s| s.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The ConfigMap's data entry `key`.
fn config_entry<'a>(docs: &'a [Value], key: &str) -> &'a str {
    of_kind(docs, "ConfigMap")["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("ConfigMap has no {key}"))
}

#[test]
fn the_daemonset_and_the_example_pod_say_what_the_readme_says() {
    let d = docs("kitsnap.yaml");
    let kinds: Vec<&str> = d.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["Namespace", "ConfigMap", "DaemonSet"]);
    let ds = of_kind(&d, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(
        pod["hostNetwork"].as_bool(),
        Some(true),
        "the mirror is on loopback"
    );

    let serve = &pod["containers"][0];
    let cmd = strs(&serve["command"]);
    assert_eq!(cmd[..2], ["/usr/bin/kitsnap", "serve"]);
    let mirror = config_entry(&d, "MIRROR_ADDR");
    assert!(
        cmd.contains(&format!("--mirror-addr={mirror}").as_str()),
        "{cmd:?}"
    );
    assert_eq!(serve["securityContext"]["privileged"].as_bool(), Some(true));
    let probe = strs(&serve["readinessProbe"]["exec"]["command"]);
    assert_eq!(probe[..2], ["/usr/bin/kitsnap", "status"]);

    // Host paths: the socket and views dir and the snapshot contents with Bidirectional
    // propagation, at the same paths as on the host (containerd mounts them by path).
    let host_path = |vol: &str| -> String {
        pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"].as_str() == Some(vol))
            .and_then(|v| v["hostPath"]["path"].as_str())
            .unwrap_or_else(|| panic!("no hostPath volume {vol}"))
            .to_string()
    };
    let mounts = serve["volumeMounts"].as_sequence().unwrap();
    for (path, propagation) in [
        ("/run/kitsnap", Some("Bidirectional")),
        ("/var/lib/kitsnap", Some("Bidirectional")),
        ("/run/containerd", None),
        ("/etc/containerd", None),
    ] {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(path))
            .unwrap_or_else(|| panic!("kitsnap serve does not mount {path}"));
        assert_eq!(m["mountPropagation"].as_str(), propagation, "{path}");
        assert_eq!(host_path(m["name"].as_str().unwrap()), path);
    }
    let flag = |name: &str| -> &str {
        cmd.iter()
            .find_map(|a| a.strip_prefix(&format!("--{name}=")))
            .unwrap_or_else(|| panic!("no --{name} in {cmd:?}"))
    };
    assert!(flag("address").starts_with("/run/kitsnap/"));
    assert!(flag("mount-root").starts_with("/run/kitsnap/"));
    assert_eq!(flag("root"), "/var/lib/kitsnap");
    assert_eq!(
        flag("containerd-address"),
        "/run/containerd/containerd.sock"
    );

    // The drop-in registers the snapshotter at the socket kitsnap serves.
    let dropin: toml::Table = config_entry(&d, "kitsnap.toml").parse().unwrap();
    assert_eq!(dropin["version"].as_integer(), Some(3));
    let plugin = &dropin["proxy_plugins"]["kitsnap"];
    assert_eq!(plugin["type"].as_str(), Some("snapshot"));
    assert_eq!(plugin["address"].as_str(), Some(flag("address")));
    assert_eq!(
        dropin["plugins"]["io.containerd.cri.v1.images"]["registry"]["config_path"].as_str(),
        Some("/etc/containerd/certs.d")
    );

    // The init container runs the installer from the ConfigMap with the host's
    // /etc/containerd.
    let init = &pod["initContainers"][0];
    assert_eq!(strs(&init["command"]), ["/bin/sh", "/config/install.sh"]);
    let init_mounts: Vec<&str> = init["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert!(
        init_mounts.contains(&"/host/etc/containerd"),
        "{init_mounts:?}"
    );

    let p = docs("example-pod.yaml");
    let pod = of_kind(&p, "Pod");
    let vol = &pod["spec"]["volumes"][0];
    assert!(
        vol["image"]["reference"]
            .as_str()
            .is_some_and(|r| r.contains(':'))
    );
    assert_eq!(vol["image"]["pullPolicy"].as_str(), Some("IfNotPresent"));
    let m = &pod["spec"]["containers"][0]["volumeMounts"][0];
    assert_eq!(m["name"], vol["name"]);
    assert_eq!(m["readOnly"].as_bool(), Some(true));
}

/// What the DaemonSet runs that kitsnap does not have yet (the status command for the
/// readiness probe). The test below fails once one of them exists, so that this list
/// shrinks as they land.
const PENDING: [&str; 1] = ["status"];

/// Whether `kitsnap ARGS --help` knows `flag` (a subcommand when `flag` is "").
fn kitsnap_knows(args: &[&str], flag: &str) -> bool {
    let o = Command::new(bin())
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    // Option lines of clap's help: "      --root <DIR>", "  -n, --namespace <NS>".
    let names = |l: &str| -> bool {
        l.trim_start()
            .split(", ")
            .any(|part| part == flag || part.starts_with(&format!("{flag} ")))
    };
    o.status.success() && (flag.is_empty() || String::from_utf8_lossy(&o.stdout).lines().any(names))
}

#[test]
fn the_daemonset_runs_kitsnap_with_flags_it_has() {
    let d = docs("kitsnap.yaml");
    let pod = &of_kind(&d, "DaemonSet")["spec"]["template"]["spec"];
    let serve = &pod["containers"][0];
    let cmd = strs(&serve["command"]);
    for arg in &cmd[2..] {
        let flag = arg.split('=').next().unwrap();
        let pending = PENDING.contains(&format!("serve {flag}").as_str());
        assert_eq!(
            kitsnap_knows(&["serve"], flag),
            !pending,
            "kitsnap serve {flag} (pending: {pending})"
        );
    }
    let probe = strs(&serve["readinessProbe"]["exec"]["command"]);
    let pending = PENDING.contains(&probe[1]);
    assert_eq!(
        kitsnap_knows(&[probe[1]], ""),
        !pending,
        "kitsnap {} (pending: {pending})",
        probe[1]
    );
}

/// A shell to run the installer with: the host's `sh`, or busybox's with nothing but its
/// own applets on PATH (as in the init container's busybox image).
struct Shell {
    program: PathBuf,
    path: Option<PathBuf>,
}

impl Shell {
    fn host() -> Shell {
        Shell {
            program: "sh".into(),
            path: None,
        }
    }

    /// `dir/bin` holds a link to busybox for every applet the installer may call.
    fn busybox(dir: &Path) -> Shell {
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let applets = [
            "sh", "cat", "cmp", "cp", "echo", "grep", "mkdir", "mv", "nsenter", "printf", "sed",
        ];
        for a in applets {
            std::os::unix::fs::symlink(crate::support::containerd::BUSYBOX, bin.join(a)).unwrap();
        }
        Shell {
            program: bin.join("sh"),
            path: Some(bin),
        }
    }

    /// Runs the installer as the init container does, against `host` (a fake host root).
    fn install(&self, config: &Path, host: &Path, registries: &str) -> std::process::Output {
        let mut c = Command::new(&self.program);
        if let Some(p) = &self.path {
            c.env("PATH", p);
        }
        c.arg(config.join("install.sh"))
            .env("HOST_ROOT", host)
            .env("CONFIG_DIR", config)
            .env("MIRRORED_REGISTRIES", registries)
            .env("MIRROR_ADDR", "127.0.0.1:5050")
            .env("RESTART_CONTAINERD", "false")
            .output()
            .unwrap()
    }
}

#[test]
fn the_installer_is_idempotent_and_leaves_foreign_files_alone() {
    installer_case(&Shell::host());
}

#[test]
fn the_installer_runs_with_busybox_alone() {
    require!(
        Path::new(crate::support::containerd::BUSYBOX).exists(),
        "{} (apt-get install busybox-static)",
        crate::support::containerd::BUSYBOX
    );
    let t = tempfile::tempdir().unwrap();
    installer_case(&Shell::busybox(t.path()));
}

/// Twice on a fake host: the drop-in installed, config.toml given one `imports` line,
/// hosts.toml naming the mirror for each registry but a foreign one; then a config.toml
/// with its own `imports` is reported and left as it is.
fn installer_case(sh: &Shell) {
    let d = docs("kitsnap.yaml");
    let t = tempfile::tempdir().unwrap();
    let config = t.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    for key in ["install.sh", "kitsnap.toml"] {
        std::fs::write(config.join(key), config_entry(&d, key)).unwrap();
    }
    let host = t.path().join("host");
    let etc = host.join("etc/containerd");
    std::fs::create_dir_all(etc.join("certs.d/quay.io")).unwrap();
    let main =
        "version = 3\n\n[plugins.\"io.containerd.cri.v1.runtime\"]\n  enable_selinux = false\n";
    std::fs::write(etc.join("config.toml"), main).unwrap();
    let foreign = "server = \"https://quay.io\"\n";
    std::fs::write(etc.join("certs.d/quay.io/hosts.toml"), foreign).unwrap();

    for round in 0..2 {
        let o = sh.install(&config, &host, "ghcr.io registry.example.com:5000 quay.io");
        assert!(
            o.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("quay.io/hosts.toml exists and is not kitsnap's"),
            "{err}"
        );
        // config.toml gains one imports line, after `version`, and nothing else.
        let conf = std::fs::read_to_string(etc.join("config.toml")).unwrap();
        assert_eq!(
            conf,
            main.replacen(
                "version = 3\n",
                "version = 3\nimports = [\"/etc/containerd/conf.d/*.toml\"]\n",
                1
            ),
            "round {round}"
        );
        assert_eq!(
            std::fs::read_to_string(etc.join("conf.d/kitsnap.toml")).unwrap(),
            config_entry(&d, "kitsnap.toml")
        );
        for reg in ["ghcr.io", "registry.example.com:5000"] {
            let h: toml::Table =
                std::fs::read_to_string(etc.join("certs.d").join(reg).join("hosts.toml"))
                    .unwrap()
                    .parse()
                    .unwrap();
            let caps: Vec<&str> = h["host"]["http://127.0.0.1:5050"]["capabilities"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|c| c.as_str())
                .collect();
            assert_eq!(caps, ["pull", "resolve"], "{reg}");
            assert!(
                !h.contains_key("server"),
                "{reg}: falls back to the registry"
            );
        }
        assert_eq!(
            std::fs::read_to_string(etc.join("certs.d/quay.io/hosts.toml")).unwrap(),
            foreign
        );
    }

    // A config.toml with its own imports list is reported, not edited.
    std::fs::write(
        etc.join("config.toml"),
        "version = 3\nimports = [\"/x.toml\"]\n",
    )
    .unwrap();
    let o = sh.install(&config, &host, "ghcr.io");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("has its own 'imports'"));
    assert_eq!(
        std::fs::read_to_string(etc.join("config.toml")).unwrap(),
        "version = 3\nimports = [\"/x.toml\"]\n"
    );
}

/// containerd 2.x loads the drop-in through `imports` and merges it: the proxy snapshotter
/// and the CRI's hosts directory are in its effective config (`containerd config dump`).
#[test]
fn containerd_2_merges_the_drop_in() {
    let Some(v) = crate::support::cri::cri_version(test_name!()) else {
        return;
    };
    let d = docs("kitsnap.yaml");
    let t = tempfile::tempdir().unwrap();
    let dropin = t.path().join("conf.d/kitsnap.toml");
    std::fs::create_dir_all(dropin.parent().unwrap()).unwrap();
    std::fs::write(&dropin, config_entry(&d, "kitsnap.toml")).unwrap();
    let main = t.path().join("config.toml");
    std::fs::write(
        &main,
        format!(
            "version = 3\nimports = [\"{}/conf.d/*.toml\"]\nroot = \"{}\"\n",
            t.path().display(),
            t.path().join("root").display()
        ),
    )
    .unwrap();
    let o = Command::new(v.bin_dir.join("containerd"))
        .args(["--config", main.to_str().unwrap(), "config", "dump"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dump: toml::Table = String::from_utf8_lossy(&o.stdout).parse().unwrap();
    let plugin = &dump["proxy_plugins"]["kitsnap"];
    assert_eq!(plugin["type"].as_str(), Some("snapshot"));
    assert_eq!(
        plugin["address"].as_str(),
        Some("/run/kitsnap/kitsnap.sock")
    );
    assert_eq!(
        dump["plugins"]["io.containerd.cri.v1.images"]["registry"]["config_path"].as_str(),
        Some("/etc/containerd/certs.d")
    );
}
