//! `kitsnap import`, as kit v1.7.0's `kit import` (what the KitOps Python SDK runs, with
//! "n\n" on standard input): repositories fetched with real git and git-lfs from a real
//! smart-HTTP git server (`git http-backend` behind a small Python HTTP server: kit's
//! `git clone --depth 1` needs the smart protocol, dumb HTTP cannot do shallow clones), and
//! through the Hugging Face API of a stand-in server (see [`HF_SERVER`]), then unpacked
//! and compared byte for byte.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::support::{bin, bytes, files, have_cmd, require, sha256_hex};

/// A git server for the tests: `git http-backend` (smart HTTP, protocol v2) behind
/// Python's HTTP server, serving the bare repositories under ROOT at /ORG/REPO.git. With a
/// TOKEN it answers 401 (Basic) unless the password is TOKEN. Prints its port first.
const GIT_SERVER: &str = r#"
import base64, http.server, os, subprocess, sys
ROOT, TOKEN = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "")
class H(http.server.BaseHTTPRequestHandler):
    def handle_one(self):
        if TOKEN:
            auth = self.headers.get("Authorization", "")
            ok = False
            if auth.startswith("Basic "):
                user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                ok = pw == TOKEN
            if not ok:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        path, _, query = self.path.partition("?")
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        env = dict(os.environ, GIT_PROJECT_ROOT=ROOT, GIT_HTTP_EXPORT_ALL="1",
                   REQUEST_METHOD=self.command, PATH_INFO=path, QUERY_STRING=query,
                   CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   CONTENT_LENGTH=str(len(body)), REMOTE_ADDR="127.0.0.1")
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True).stdout
        head, _, rest = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.split(b"\r\n"):
            k, _, v = line.decode().partition(":")
            if k.lower() == "status":
                status = int(v.split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(rest)))
        self.end_headers()
        self.wfile.write(rest)
    do_GET = do_POST = handle_one
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// A STAND-IN FOR huggingface.co, which these machines cannot reach: the two endpoints
/// `kit import` uses, served from ROOT/ORG/REPO (branch `main` only), as the Hub answers:
/// - `GET /api/models/ORG/REPO/tree/REF[/PATH]`: the directory's entries, `type` "file" or
///   "directory", `path`, `size`, `oid`, and `lfs {oid (sha256), size, pointerSize}` for
///   *.safetensors and *.bin; PAGE entries per page, the rest behind a `Link: rel="next"`;
///   errors as `{"error": ...}` (404 "Repository not found", 404 "Invalid rev id: REF",
///   401 for a wrong or missing token when TOKEN is set);
/// - `GET /ORG/REPO/resolve/REF/PATH`: the file, each download held DELAY seconds so that
///   concurrent downloads overlap; `GET /_stats` tells the most downloads seen at once and
///   the paths downloaded.
const HF_SERVER: &str = r#"
import hashlib, http.server, json, os, sys, threading, time, urllib.parse
ROOT, TOKEN, PAGE, DELAY = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
lock = threading.Lock()
state = {"now": 0, "max": 0, "downloads": []}
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def reply(self, status, body, ctype="application/json", headers=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)
    def error(self, status, msg):
        self.reply(status, json.dumps({"error": msg}).encode())
    def do_GET(self):
        path, _, query = self.path.partition("?")
        parts = [urllib.parse.unquote(p) for p in path.strip("/").split("/")]
        if parts == ["_stats"]:
            with lock:
                return self.reply(200, json.dumps({"max_in_flight": state["max"],
                                                   "downloads": state["downloads"]}).encode())
        if TOKEN and self.headers.get("Authorization") != "Bearer " + TOKEN:
            return self.error(401, "Invalid credentials in Authorization header")
        if parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] == "tree":
            org, repo, ref, sub = parts[2], parts[3], parts[5], "/".join(parts[6:])
            base = os.path.join(ROOT, org, repo)
            if not os.path.isdir(base):
                return self.error(404, "Repository not found")
            if ref != "main":
                return self.error(404, "Invalid rev id: " + ref)
            d = os.path.join(base, sub)
            if not os.path.isdir(d):
                return self.error(404, "Entry not found")
            entries = []
            for name in sorted(os.listdir(d)):
                rel = (sub + "/" + name) if sub else name
                full = os.path.join(d, name)
                if os.path.isdir(full):
                    entries.append({"type": "directory", "oid": "0" * 40, "size": 0, "path": rel})
                    continue
                data = open(full, "rb").read()
                e = {"type": "file", "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest(),
                     "size": len(data), "path": rel}
                if name.endswith((".safetensors", ".bin")):
                    e["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                "pointerSize": 134}
                entries.append(e)
            start = int(urllib.parse.parse_qs(query).get("cursor", ["0"])[0])
            page, headers = entries[start:start + PAGE], []
            if start + PAGE < len(entries):
                host = self.headers.get("Host")
                headers.append(("Link", '<http://%s%s?cursor=%d>; rel="next"' % (host, path, start + PAGE)))
            return self.reply(200, json.dumps(page).encode(), headers=headers)
        if len(parts) >= 5 and parts[2] == "resolve":
            org, repo, ref, rel = parts[0], parts[1], parts[3], "/".join(parts[4:])
            full = os.path.join(ROOT, org, repo, rel)
            if ref != "main" or not os.path.isfile(full):
                return self.error(404, "Entry not found")
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
                state["downloads"].append(rel)
            try:
                time.sleep(DELAY)
                self.reply(200, open(full, "rb").read(), "application/octet-stream")
            finally:
                with lock:
                    state["now"] -= 1
            return
        self.error(404, "Not found")
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

/// A server process started by a test, killed when the test ends.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Runs SCRIPT with python3 and ARGS; the script prints its port once it listens.
    fn start(dir: &Path, name: &str, script: &str, args: &[&str]) -> Server {
        let path = dir.join(name);
        fs::write(&path, script).unwrap();
        let mut child = Command::new("python3")
            .arg(&path)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line.trim().parse().unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("{name} did not start (printed {line:?})")
        });
        Server { child, port }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private store and scratch space for one test.
struct Ctx {
    t: tempfile::TempDir,
}

impl Ctx {
    fn new() -> Ctx {
        Ctx {
            t: tempfile::tempdir().unwrap(),
        }
    }
    fn p(&self, s: &str) -> PathBuf {
        self.t.path().join(s)
    }
    fn store(&self) -> PathBuf {
        self.p("store")
    }
    /// kitsnap ARGS with the SDK's "n\n" (or `stdin`) on standard input.
    fn run(&self, args: &[&str], env: &[(&str, &str)], stdin: Option<&str>) -> Output {
        let mut child = Command::new(bin())
            .env("KITSNAP_STORE", self.store())
            .env_remove("KITSNAP_HOME")
            .env_remove("HF_ENDPOINT")
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let _ = input.write_all(stdin.unwrap_or("n\n").as_bytes());
        drop(input);
        child.wait_with_output().unwrap()
    }
    fn ok(&self, args: &[&str], env: &[(&str, &str)]) -> (String, String) {
        self.ok_stdin(args, env, None)
    }
    fn ok_stdin(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> (String, String) {
        let o = self.run(args, env, stdin);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "kitsnap {args:?} failed:\n{err}");
        (String::from_utf8_lossy(&o.stdout).into_owned(), err)
    }
    /// Runs, expects failure; returns the `error:` line (asserting there is exactly one).
    fn fails(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let o = self.run(args, env, None);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(
            !o.status.success(),
            "kitsnap {args:?} unexpectedly succeeded:\n{err}"
        );
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "one error line expected:\n{err}");
        errors[0].to_string()
    }
    /// `name:tag` of every ModelKit in the store, sorted.
    fn tags(&self) -> Vec<String> {
        let (out, _) = self.ok(&["list", "--format", "json"], &[]);
        let rows: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mut tags: Vec<String> = rows
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| {
                let repo = r["repo"].as_str().unwrap().to_string();
                r["tags"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(move |t| format!("{repo}:{}", t.as_str().unwrap()))
            })
            .collect();
        tags.sort();
        tags
    }
    fn unpack(&self, reference: &str, dir: &str) -> Vec<(String, Vec<u8>)> {
        self.ok(
            &["unpack", reference, "-d", self.p(dir).to_str().unwrap()],
            &[],
        );
        files(&self.p(dir))
    }
    /// Nothing is left of the import's working directories.
    fn assert_no_leftovers(&self) {
        let left: Vec<_> = fs::read_dir(self.store().join("import"))
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "working directories left: {left:?}");
    }
}

/// A `git http-backend` server for the bare repositories under `root`; with `token`, it
/// asks for that password.
fn git_server(c: &Ctx, root: &Path, token: Option<&str>) -> Server {
    let mut args = vec![root.to_str().unwrap()];
    args.extend(token);
    Server::start(c.t.path(), "git_server.py", GIT_SERVER, &args)
}

/// The Hugging Face stand-in (script `name`.py) serving `root`: `token` ("" for none), the
/// page size of the tree listing and a delay per download in seconds.
fn hf_server(c: &Ctx, name: &str, root: &Path, token: &str, page: &str, delay: &str) -> Server {
    Server::start(
        c.t.path(),
        &format!("{name}.py"),
        HF_SERVER,
        &[root.to_str().unwrap(), token, page, delay],
    )
}

fn write(root: &Path, rel: &str, data: impl AsRef<[u8]>) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

fn git(dir: &Path, args: &[&str]) {
    let o = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=kitsnap tests",
            "-c",
            "user.email=tests@kitsnap.invalid",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "protocol.file.allow=always",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Commits the tree `work` and publishes it as the bare repository SRV/org/NAME.git.
fn publish(work: &Path, srv: &Path, name: &str) {
    git(work, &["init", "-q", "-b", "main"]);
    git(work, &["add", "-A"]);
    git(work, &["commit", "-q", "-m", "import me"]);
    let bare = srv.join("org").join(format!("{name}.git"));
    fs::create_dir_all(bare.parent().unwrap()).unwrap();
    git(
        work,
        &["clone", "-q", "--bare", ".", bare.to_str().unwrap()],
    );
}

/// The small model repository of the git tests.
fn model_tree(dir: &Path) {
    write(dir, "model.safetensors", bytes(70_000, 7));
    write(dir, "README.md", "# A model\n");
    write(dir, "data/train.csv", "x,y\n1,2\n3,4\n");
    write(dir, "data/.gitattributes", "*.csv text\n");
    write(dir, ".gitignore", "*.log\n");
}

macro_rules! require_git {
    () => {
        require!(
            have_cmd("git") && have_cmd("git-lfs"),
            "git and git-lfs (apt-get install git git-lfs; scripts/install-deps.sh does it)"
        );
        require!(
            have_cmd("python3"),
            "python3 (scripts/install-deps.sh installs it)"
        );
    };
}

fn kitfile_of(files: &[(String, Vec<u8>)]) -> String {
    let kf = files.iter().find(|(n, _)| n == "Kitfile").expect("Kitfile");
    String::from_utf8(kf.1.clone()).unwrap()
}

/// The SDK's call: `kit import URL --tool git -t T` with "n\n" on stdin. The files come
/// back byte for byte, the Kitfile is generated (package named after the repository,
/// authored by its organisation), Git's metadata stays out, no working directory is left;
/// without -t the tag is ORG/REPO:latest from the URL's path, `.git` included, as kit does.
#[test]
fn git_import_packs_the_repository() {
    require_git!();
    let c = Ctx::new();
    let src = c.p("src");
    model_tree(&src);
    publish(&src, &c.p("srv"), "repo");
    let server = git_server(&c, &c.p("srv"), None);
    let url = server.url("/org/repo.git");

    let (digest, err) = c.ok(&["import", &url, "--tool", "git", "-t", "imp/repo:v1"], &[]);
    assert!(digest.trim().starts_with("sha256:"), "{digest}");
    assert!(err.contains("Model is packed as imp/repo:v1"), "{err}");
    c.assert_no_leftovers();
    let out = c.unpack("imp/repo:v1", "out");
    let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "Kitfile",
            "README.md",
            "data/train.csv",
            "model.safetensors"
        ]
    );
    for (name, data) in &out {
        if name != "Kitfile" {
            assert_eq!(data, &fs::read(src.join(name)).unwrap(), "{name}");
        }
    }
    let kf = kitfile_of(&out);
    assert!(kf.contains("name: repo.git"), "{kf}");
    assert!(kf.contains("authors: [org]"), "{kf}");
    assert!(kf.contains("path: model.safetensors"), "{kf}");

    // Without -t: the tag comes from the URL's path (lowercased), `.git` and all.
    let (_, err) = c.ok(&["import", &url], &[]);
    assert!(
        err.contains("Using tag org/repo.git:latest. Use flag --tag to override"),
        "{err}"
    );
    assert_eq!(c.tags(), ["imp/repo:v1", "org/repo.git:latest"]);
    c.assert_no_leftovers();
}

/// A repository with its own Kitfile is packed with it; --file (a path, or `-` for
/// standard input) wins over it.
#[test]
fn git_import_takes_the_repository_kitfile_or_file() {
    require_git!();
    let c = Ctx::new();
    let src = c.p("src");
    model_tree(&src);
    write(
        &src,
        "Kitfile",
        "manifestVersion: 1.0.0\npackage:\n  name: from-the-repo\nmodel:\n  name: m\n  path: model.safetensors\n",
    );
    publish(&src, &c.p("srv"), "withkf");
    let server = git_server(&c, &c.p("srv"), None);
    let url = server.url("/org/withkf.git");

    let (_, err) = c.ok(&["import", &url, "-t", "kf:repo"], &[]);
    assert!(err.contains("Using the repository's Kitfile"), "{err}");
    let out = c.unpack("kf:repo", "repo");
    let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Kitfile", "model.safetensors"]);
    assert!(kitfile_of(&out).contains("name: from-the-repo"));

    let given = c.p("Kitfile.given");
    fs::write(
        &given,
        "manifestVersion: 1.0.0\npackage:\n  name: given\ndatasets:\n  - name: train\n    path: data/train.csv\ndocs:\n  - path: README.md\n",
    )
    .unwrap();
    c.ok(
        &[
            "import",
            &url,
            "-t",
            "kf:file",
            "-f",
            given.to_str().unwrap(),
        ],
        &[],
    );
    let out = c.unpack("kf:file", "file");
    let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Kitfile", "README.md", "data/train.csv"]);
    assert!(kitfile_of(&out).contains("name: given"));

    let stdin_kf = "manifestVersion: 1.0.0\npackage:\n  name: piped\ndocs:\n  - path: README.md\n";
    c.ok_stdin(
        &["import", &url, "-t", "kf:stdin", "-f", "-"],
        &[],
        Some(stdin_kf),
    );
    let out = c.unpack("kf:stdin", "stdin");
    let names: Vec<&str> = out.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Kitfile", "README.md"]);
    assert!(kitfile_of(&out).contains("name: piped"));
    c.assert_no_leftovers();
}

/// A repository that is not there (404), a private one without its token (401, no
/// prompt) and a wrong --ref: a non-zero exit, one error line saying what to check,
/// nothing tagged, nothing left behind. The right --token gets through (git's credential
/// helper, as kit configures it).
#[test]
fn git_import_failures_and_token() {
    require_git!();
    let c = Ctx::new();
    let src = c.p("src");
    model_tree(&src);
    publish(&src, &c.p("srv"), "private");
    let open = git_server(&c, &c.p("srv"), None);
    let locked = git_server(&c, &c.p("srv"), Some("s3cret"));

    let e = c.fails(
        &["import", &open.url("/org/missing.git"), "-t", "x:missing"],
        &[],
    );
    assert!(
        e.contains("not found") && e.contains("check the URL"),
        "{e}"
    );
    let e = c.fails(
        &[
            "import",
            &open.url("/org/private.git"),
            "-t",
            "x:ref",
            "--ref",
            "nosuch",
        ],
        &[],
    );
    assert!(e.contains("nosuch") && e.contains("--ref"), "{e}");
    let e = c.fails(
        &["import", &locked.url("/org/private.git"), "-t", "x:noauth"],
        &[],
    );
    assert!(e.contains("--token"), "{e}");
    let e = c.fails(
        &[
            "import",
            &locked.url("/org/private.git"),
            "-t",
            "x:bad",
            "--token",
            "wrong",
        ],
        &[],
    );
    assert!(e.contains("--token"), "{e}");
    assert!(
        c.tags().is_empty(),
        "a failed import tags nothing: {:?}",
        c.tags()
    );
    c.assert_no_leftovers();

    c.ok(
        &[
            "import",
            &locked.url("/org/private.git"),
            "-t",
            "x:auth",
            "--token",
            "s3cret",
        ],
        &[],
    );
    let out = c.unpack("x:auth", "auth");
    let model = out.iter().find(|(n, _)| n == "model.safetensors").unwrap();
    assert_eq!(model.1, bytes(70_000, 7));
    c.assert_no_leftovers();
}

/// An LFS-tracked file comes back as its content, not its pointer: the clone skips the
/// smudge and `git lfs pull` fetches it, as kit does. The LFS objects are served by
/// git-lfs itself, from a local repository named in the repository's `.lfsconfig`
/// (git-lfs's standalone file transfer), so no LFS server is faked.
#[test]
fn git_import_pulls_lfs_files() {
    require_git!();
    let c = Ctx::new();
    let src = c.p("src");
    let srv = c.p("srv");
    let bare = srv.join("org/lfs.git");
    fs::create_dir_all(&bare).unwrap();
    git(&bare, &["init", "-q", "--bare", "-b", "main"]);
    fs::create_dir_all(&src).unwrap();
    git(&src, &["init", "-q", "-b", "main"]);
    git(&src, &["lfs", "install", "--local"]);
    git(&src, &["lfs", "track", "*.bin"]);
    let weights = bytes(300_000, 11);
    write(&src, "weights.bin", &weights);
    write(&src, "README.md", "# LFS model\n");
    let lfs_url = format!("file://{}", bare.display());
    write(&src, ".lfsconfig", format!("[lfs]\n\turl = {lfs_url}\n"));
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-q", "-m", "lfs"]);
    git(&src, &["push", "-q", &lfs_url, "main"]);
    let pointer = Command::new("git")
        .current_dir(&bare)
        .args(["show", "main:weights.bin"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&pointer.stdout).starts_with("version https://git-lfs"),
        "weights.bin is an LFS pointer in the repository"
    );
    let server = git_server(&c, &srv, None);

    c.ok(
        &["import", &server.url("/org/lfs.git"), "-t", "lfs:v1"],
        &[],
    );
    let out = c.unpack("lfs:v1", "out");
    let w = out
        .iter()
        .find(|(n, _)| n == "weights.bin")
        .expect("weights.bin");
    assert_eq!(sha256_hex(&w.1), sha256_hex(&weights));
    assert!(out.iter().all(|(n, _)| n != ".gitattributes"));
    c.assert_no_leftovers();
}

/// A Hugging Face-shaped repository with nested directories, LFS entries and a root
/// listing that spans pages.
fn hf_tree(root: &Path) -> PathBuf {
    let repo = root.join("hf/acme/tiny-llm");
    write(&repo, "model.safetensors", bytes(200_000, 1));
    write(&repo, "config.json", r#"{"model_type": "tiny"}"#);
    write(&repo, "tokenizer.json", r#"{"model": {"type": "BPE"}}"#);
    write(
        &repo,
        "README.md",
        "---\nlicense: apache-2.0\n---\n# tiny\n",
    );
    write(&repo, "onnx/model.onnx", bytes(50_000, 2));
    write(&repo, "onnx/extra/deep/notes.txt", "deep\n");
    write(&repo, "data/train.csv", "a,b\n1,2\n");
    write(&repo, ".gitattributes", "*.safetensors filter=lfs\n");
    repo
}

/// `kit import ORG/REPO` through the Hugging Face API (of the stand-in, via
/// HF_ENDPOINT): every file byte for byte after unpack, nested directories included, the
/// Kitfile named after the repository, never more than --concurrency downloads at once.
#[test]
fn hf_import_downloads_the_tree() {
    require!(
        have_cmd("python3"),
        "python3 (scripts/install-deps.sh installs it)"
    );
    let c = Ctx::new();
    let repo = hf_tree(c.t.path());
    let hf = hf_server(&c, "hf_standin", &c.p("hf"), "", "3", "0.5");
    let endpoint = hf.url("");
    let env = [("HF_ENDPOINT", endpoint.as_str())];

    let (digest, err) = c.ok(&["import", "acme/tiny-llm", "--concurrency", "2"], &env);
    assert!(digest.trim().starts_with("sha256:"), "{digest}");
    assert!(err.contains("Using tag acme/tiny-llm:latest"), "{err}");
    c.assert_no_leftovers();
    let out = c.unpack("acme/tiny-llm:latest", "out");
    let mut want: Vec<(String, Vec<u8>)> = files(&repo)
        .into_iter()
        .filter(|(n, _)| n != ".gitattributes")
        .collect();
    let got: Vec<(String, Vec<u8>)> = out
        .iter()
        .filter(|(n, _)| n != "Kitfile")
        .cloned()
        .collect();
    want.sort();
    assert_eq!(
        got.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        want.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>()
    );
    assert!(got == want, "unpacked files differ from the repository's");
    let kf = kitfile_of(&out);
    assert!(
        kf.contains("name: tiny-llm") && kf.contains("authors: [acme]"),
        "{kf}"
    );
    assert!(kf.contains("path: model.safetensors"), "{kf}");

    let stats: serde_json::Value = reqwest::blocking::get(hf.url("/_stats"))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(stats["max_in_flight"], 2, "--concurrency 2: {stats}");
}

/// Ctrl-C in the middle of the downloads: the process dies of SIGINT, as kit's does, and
/// nothing is tagged; the working directory it leaves (its lock now free) is removed by
/// the next import, while that one runs.
#[test]
fn hf_import_interrupted_is_cleaned_up_by_the_next() {
    require!(
        have_cmd("python3"),
        "python3 (scripts/install-deps.sh installs it)"
    );
    let c = Ctx::new();
    hf_tree(c.t.path());
    let root = c.p("hf");
    let slow = hf_server(&c, "hf_slow", &root, "", "100", "30");
    let fast = hf_server(&c, "hf_fast", &root, "", "100", "0");

    let mut child = Command::new(bin())
        .env("KITSNAP_STORE", c.store())
        .env("HF_ENDPOINT", slow.url(""))
        .args(["import", "acme/tiny-llm", "-t", "cut:v1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("Downloading file") {
        line.clear();
        assert!(err.read_line(&mut line).unwrap() > 0, "no download started");
    }
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGINT)
    );
    let left = fs::read_dir(c.store().join("import")).unwrap().count();
    assert_eq!(left, 1, "the interrupted import's working directory");

    let fast_url = fast.url("");
    c.ok(
        &["import", "acme/tiny-llm", "-t", "whole:v1"],
        &[("HF_ENDPOINT", &fast_url)],
    );
    c.assert_no_leftovers();
    assert_eq!(c.tags(), ["whole:v1"]);
}

/// With --file only what the Kitfile packs is downloaded (as kit filters the listing).
#[test]
fn hf_import_with_file_downloads_what_the_kitfile_needs() {
    require!(
        have_cmd("python3"),
        "python3 (scripts/install-deps.sh installs it)"
    );
    let c = Ctx::new();
    let repo = hf_tree(c.t.path());
    let hf = hf_server(&c, "hf_standin", &c.p("hf"), "tok", "100", "0");
    let endpoint = hf.url("");
    let env = [("HF_ENDPOINT", endpoint.as_str())];
    let kf = c.p("Kitfile");
    fs::write(
        &kf,
        "manifestVersion: 1.0.0\npackage:\n  name: onnx-only\nmodel:\n  name: m\n  path: onnx\n",
    )
    .unwrap();
    c.ok(
        &[
            "import",
            &format!("{endpoint}/acme/tiny-llm"),
            "--tool",
            "hf",
            "--token",
            "tok",
            "-t",
            "o:v1",
            "-f",
            kf.to_str().unwrap(),
        ],
        &env,
    );
    let stats: serde_json::Value = reqwest::blocking::get(hf.url("/_stats"))
        .unwrap()
        .json()
        .unwrap();
    let mut downloaded: Vec<&str> = stats["downloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    downloaded.sort();
    assert_eq!(downloaded, ["onnx/extra/deep/notes.txt", "onnx/model.onnx"]);
    let out = c.unpack("o:v1", "out");
    let onnx = out.iter().find(|(n, _)| n == "onnx/model.onnx").unwrap();
    assert_eq!(onnx.1, fs::read(repo.join("onnx/model.onnx")).unwrap());
}

/// A wrong token (401), a repository that is not there and a wrong --ref: one error line
/// naming the fix, nothing tagged, nothing left behind.
#[test]
fn hf_import_errors() {
    require!(
        have_cmd("python3"),
        "python3 (scripts/install-deps.sh installs it)"
    );
    let c = Ctx::new();
    hf_tree(c.t.path());
    let hf = hf_server(&c, "hf_standin", &c.p("hf"), "right", "100", "0");
    let endpoint = hf.url("");
    let env = [("HF_ENDPOINT", endpoint.as_str())];

    let e = c.fails(&["import", "acme/tiny-llm", "--token", "wrong"], &env);
    assert!(e.contains("401") && e.contains("--token"), "{e}");
    let e = c.fails(&["import", "acme/tiny-llm"], &env);
    assert!(e.contains("401") && e.contains("--token"), "{e}");
    let e = c.fails(&["import", "acme/nothing", "--token", "right"], &env);
    assert!(e.contains("not found") && e.contains("ORG/REPO"), "{e}");
    let e = c.fails(
        &["import", "acme/tiny-llm", "--token", "right", "--ref", "v9"],
        &env,
    );
    assert!(
        e.contains("reference 'v9' not found") && e.contains("--ref"),
        "{e}"
    );
    assert!(c.tags().is_empty());
    c.assert_no_leftovers();
}

/// kit's argument checks: each a non-zero exit and one line naming the fix.
#[test]
fn import_validation_errors() {
    let c = Ctx::new();
    let e = c.fails(&["import", "org/repo", "-t", "x:y", "--tool", "svn"], &[]);
    assert!(e.contains("--tool git or --tool hf"), "{e}");
    let e = c.fails(
        &["import", "org/repo", "-t", "x:y", "--concurrency", "0"],
        &[],
    );
    assert!(e.contains("must be at least 1"), "{e}");
    let e = c.fails(
        &["import", "org/repo", "-t", "x:y", "--concurrency", "-3"],
        &[],
    );
    assert!(e.contains("must be at least 1"), "{e}");
    let e = c.fails(&["import", "https://example.com/a/b/c"], &[]);
    assert!(e.contains("use flag --tag"), "{e}");
    let e = c.fails(
        &[
            "import",
            "https://example.com/a/b/c",
            "-t",
            "x:y",
            "--tool",
            "hf",
        ],
        &[],
    );
    assert!(e.contains("--tool git"), "{e}");
    let e = c.fails(&["import", "org/repo", "-t", "Not A Tag"], &[]);
    assert!(e.contains("--tag NAME[:TAG]"), "{e}");
    let e = c.fails(
        &[
            "import",
            "org/repo",
            "-t",
            "x:y",
            "-f",
            "/nonexistent/Kitfile",
        ],
        &[],
    );
    assert!(e.contains("--file"), "{e}");

    // git without git-lfs: said before anything is cloned.
    if have_cmd("git") {
        let git = String::from_utf8(
            Command::new("sh")
                .args(["-c", "command -v git"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let only_git = c.p("only-git");
        fs::create_dir_all(&only_git).unwrap();
        std::os::unix::fs::symlink(git.trim(), only_git.join("git")).unwrap();
        let path = only_git.to_str().unwrap();
        let e = c.fails(
            &["import", "https://example.com/a/b.git", "-t", "x:y"],
            &[("PATH", path), ("GIT_EXEC_PATH", path)],
        );
        assert!(
            e.contains("git-lfs is not installed") && e.contains("apt-get install"),
            "{e}"
        );
    }
    assert!(c.tags().is_empty());
}

/// The KitOps Python SDK's `import_from_hf` (it runs `kit import REPO --tag T` with "n" on
/// standard input) with kitsnap on PATH as `kit`: from a Git repository over HTTP (real git
/// and `git http-backend`) and, through HF_ENDPOINT, from the Hugging Face stand-in.
#[test]
fn python_sdk_import_from_hf() {
    require_git!();
    require!(
        Command::new("python3")
            .args(["-c", "import kitops.cli.kit"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "the KitOps Python SDK (pip install kitops==1.5.0; scripts/install-deps.sh does it)"
    );
    let c = Ctx::new();
    let src = c.p("src");
    model_tree(&src);
    publish(&src, &c.p("srv"), "repo");
    let git = git_server(&c, &c.p("srv"), None);
    hf_tree(c.t.path());
    let hf = hf_server(&c, "hf_standin", &c.p("hf"), "", "100", "0");
    let bindir = c.p("bin");
    fs::create_dir_all(&bindir).unwrap();
    std::os::unix::fs::symlink(bin(), bindir.join("kit")).unwrap();
    let script = r#"
import sys
from kitops.cli import kit
kit.import_from_hf(sys.argv[1], tag="sdk/from-git:v1")
kit.import_from_hf("acme/tiny-llm", tag="sdk/from-hf:v1")
print("sdk import ok")
"#;
    let o = Command::new("python3")
        .args(["-c", script, &git.url("/org/repo.git")])
        .env(
            "PATH",
            format!(
                "{}:{}",
                bindir.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("KITSNAP_STORE", c.store())
        .env_remove("KITSNAP_HOME")
        .env("HF_ENDPOINT", hf.url(""))
        .output()
        .unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("sdk import ok"),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(c.tags(), ["sdk/from-git:v1", "sdk/from-hf:v1"]);
    let out = c.unpack("sdk/from-git:v1", "out");
    let model = out
        .iter()
        .find(|(n, _)| n == "model.safetensors")
        .expect("the model is in the kit");
    assert_eq!(model.1, fs::read(src.join("model.safetensors")).unwrap());
    c.assert_no_leftovers();
}
