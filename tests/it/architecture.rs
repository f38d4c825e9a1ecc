//! The workspace's layering, as the README states it: kitsnap-core <- kitsnap-registry <-
//! kitsnap-node <- the kitsnap binary, imports only pointing down, and no async runtime or
//! gRPC stack below the node; the test-only CRI client used by nothing but tests. Checked on
//! cargo's resolved dependency graph.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// Package name -> names of its normal (non-dev, non-build) dependencies, transitively.
fn normal_closure() -> HashMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // This platform's graph: what is built here, and all of it is already downloaded.
    let rustc = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc names its host");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let name_of: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap()))
        .collect();
    let mut direct: HashMap<String, Vec<String>> = HashMap::new();
    for node in meta["resolve"]["nodes"].as_array().unwrap() {
        let id = node["id"].as_str().unwrap();
        let deps = node["deps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|k| k["kind"].is_null())
            })
            .map(|d| name_of[d["pkg"].as_str().unwrap()].to_string())
            .collect();
        direct.insert(name_of[id].to_string(), deps);
    }
    let mut closure = HashMap::new();
    for name in direct.keys() {
        let mut seen = BTreeSet::new();
        let mut stack = direct[name].clone();
        while let Some(d) = stack.pop() {
            if seen.insert(d.clone()) {
                stack.extend(direct.get(&d).cloned().unwrap_or_default());
            }
        }
        closure.insert(name.clone(), seen);
    }
    closure
}

#[test]
fn imports_point_down_and_the_core_has_no_runtime() {
    let c = normal_closure();
    let ours = |n: &str| -> Vec<String> {
        c[n].iter()
            .filter(|d| d.starts_with("kitsnap"))
            .cloned()
            .collect()
    };
    assert_eq!(ours("kitsnap-core"), Vec::<String>::new());
    assert_eq!(ours("kitsnap-registry"), ["kitsnap-core"]);
    assert_eq!(ours("kitsnap-node"), ["kitsnap-core", "kitsnap-registry"]);
    assert_eq!(
        ours("kitsnap"),
        ["kitsnap-core", "kitsnap-node", "kitsnap-registry"]
    );
    for heavy in ["tokio", "tonic", "prost", "hyper", "reqwest"] {
        assert!(
            !c["kitsnap-core"].contains(heavy),
            "kitsnap-core must not depend on {heavy}"
        );
    }
    // The CRI client is test tooling: it depends on none of ours, and nothing that ships
    // depends on it (the root package has it as a dev-dependency only).
    assert_eq!(ours("kitsnap-cri-client"), Vec::<String>::new());
    for (pkg, deps) in &c {
        assert!(
            !deps.contains("kitsnap-cri-client"),
            "{pkg} must not depend on kitsnap-cri-client (tests only)"
        );
    }
    for grpc in ["tonic", "prost", "containerd-client", "redb"] {
        assert!(
            !c["kitsnap-registry"].contains(grpc),
            "kitsnap-registry must not depend on {grpc}"
        );
    }
}
