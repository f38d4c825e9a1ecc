//! containerd 2.x's CRI plugin, driven over gRPC as kubelet drives it (crictl is not
//! packaged): a node with containerd (CRI on, host networking only, no CNI), `kitsnap serve`
//! as its proxy snapshotter, a hosts.toml directory for plain-HTTP registries and mirrors,
//! and a busybox image imported into `k8s.io` as the sandbox (pause) image. And the image
//! volume scenario every case runs (`image_volume_case`): pull, two pods mounting the image
//! read-only, the file's sha256 read inside, one copy on disk, and nothing left after GC.

use crate::support::copies_under;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kitsnap_cri_client::runtime::v1 as cri;
use tonic::transport::Channel;

use cri::image_service_client::ImageServiceClient;
use cri::runtime_service_client::RuntimeServiceClient;

use super::containerd::{Containerd, IMAGE, Kitsnap, Version, busybox_image_as, umount_under};

/// The CRI's namespace in containerd.
pub const NS: &str = "k8s.io";
/// The sandbox image the CRI is configured with (containerd 2.1's default name); a local
/// busybox image is imported under it.
pub const SANDBOX_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// How long one step (the CRI answering, an image showing up, a container exiting, GC
/// finishing) may take before a test calls it stuck: generous, as the machine that runs
/// the tests may be loaded (a bound, never a timing assertion).
const PATIENCE: Duration = Duration::from_secs(180);

/// Where the image volume is mounted in the test containers.
pub const VOLUME: &str = "/volume";

/// Which snapshotter the CRI unpacks and runs containers on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Snapshotter {
    Overlayfs,
    Kitsnap,
}

impl Snapshotter {
    pub fn name(self) -> &'static str {
        match self {
            Snapshotter::Overlayfs => "overlayfs",
            Snapshotter::Kitsnap => "kitsnap",
        }
    }
}

/// How the volume's image reaches the node before the pods use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pull {
    /// kubelet's PullImage (through whatever hosts.toml names).
    Cri,
    /// `kitsnap pull --containerd -n k8s.io REF --plain-http` first; then kubelet, with
    /// `pullPolicy: IfNotPresent` and the image present, only asks ImageStatus for its ID.
    KitsnapPull,
}

/// The containerd 2.x build the CRI tests need; reports it as `require!` does when missing.
pub fn cri_version(test: &str) -> Option<Version> {
    let v = super::containerd::known_versions()
        .into_iter()
        .find(|v| v.name.starts_with('2'))?;
    if v.available() {
        Some(v)
    } else {
        super::missing(
            test,
            &format!(
                "containerd {} (not in {}; run {})",
                v.name,
                v.bin_dir.display(),
                v.how
            ),
        );
        None
    }
}

/// containerd's CRI configuration for these tests (appended to the version 3 config
/// `Containerd::start_cri` writes, after the `kitsnap` proxy snapshotter).
pub fn cri_config(dir: &Path, hosts_dir: &Path, snapshotter: Snapshotter) -> String {
    let snap = snapshotter.name();
    format!(
        r#"[plugins."io.containerd.cri.v1.images"]
  # PullImage unpacks here (it reads the runtime handler only from an experimental annotation).
  snapshotter = "{snap}"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{SANDBOX_IMAGE}"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "{hosts}"
[plugins."io.containerd.cri.v1.runtime"]
  # runc cannot lower oom_score_adj on these machines ("can't get final child's PID from
  # pipe: EOF"): keep the containers' at or above containerd's own.
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      # Containers' rootfs and image volumes (client-side Unpack + Prepare) go here.
      snapshotter = "{snap}"
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{cni}/bin"]
    conf_dir = "{cni}/net.d"
[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins."io.containerd.nri.v1.nri"]
  socket_path = "{nri}"
[plugins."io.containerd.transfer.v1.local"]
  unpack_config = [{{ platform = "linux/amd64", snapshotter = "{snap}" }}]
"#,
        hosts = hosts_dir.display(),
        cni = dir.join("cni").display(),
        nri = dir.join("nri.sock").display(),
    )
}

/// Unmounts whatever is left under a test's directory once the daemons are gone.
struct UnmountUnder(PathBuf);

impl Drop for UnmountUnder {
    fn drop(&mut self) {
        umount_under(&self.0);
    }
}

/// A Kubernetes node without kubelet: containerd with the CRI and `kitsnap serve`.
pub struct CriNode {
    // Dropped in this order: the clients and their runtime, containerd, kitsnap, leftover
    // mounts, the directory.
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    pub ctd: Containerd,
    pub ks: Kitsnap,
    _unmount: UnmountUnder,
    pub snapshotter: Snapshotter,
    pub dir: PathBuf,
    pub hosts_dir: PathBuf,
    /// An empty kitsnap store for the CLI (kits come from registries).
    pub store: PathBuf,
    pub ctx: String,
    _t: tempfile::TempDir,
}

impl CriNode {
    /// Starts kitsnap (with `serve_args`, and a `--config` naming the node's hosts
    /// directory, plus `serve_config`), containerd with the CRI on `snapshotter`, imports
    /// the busybox image as the sandbox image and as `IMAGE`, and waits until the CRI
    /// answers and knows both.
    pub fn start(
        v: &Version,
        snapshotter: Snapshotter,
        serve_args: &[&str],
        serve_config: Option<&str>,
    ) -> CriNode {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().to_path_buf();
        let hosts_dir = dir.join("certs.d");
        std::fs::create_dir_all(&hosts_dir).unwrap();
        // kitsnap reads the node's hosts directory, as containerd does (and as the
        // DaemonSet mounts /etc/containerd for it).
        let cfg = dir.join("kitsnap.toml");
        std::fs::write(
            &cfg,
            format!(
                "hosts_dir = \"{}\"\n{}",
                hosts_dir.display(),
                serve_config.unwrap_or_default()
            ),
        )
        .unwrap();
        let mut args = serve_args.to_vec();
        args.extend(["--config", cfg.to_str().unwrap()]);
        let ks = Kitsnap::start_with_args(&dir, Path::new(""), &args);
        let ctd = Containerd::start_cri(
            v,
            &dir.join("containerd"),
            &ks.sock,
            &cri_config(&dir, &hosts_dir, snapshotter),
        );
        let rt = tokio::runtime::Runtime::new().unwrap();
        let ch = rt
            .block_on(kitsnap_node::containerd::unix_channel(&ctd.sock))
            .unwrap();
        let mut node = CriNode {
            rt,
            runtime: RuntimeServiceClient::new(ch.clone()),
            images: ImageServiceClient::new(ch),
            ctd,
            ks,
            _unmount: UnmountUnder(dir.clone()),
            snapshotter,
            dir: dir.clone(),
            hosts_dir,
            store: dir.join("empty-store"),
            ctx: format!("containerd {} CRI on {}", v.name, snapshotter.name()),
            _t: t,
        };
        node.wait_ready();
        // The sandbox must keep running: busybox with a long sleep as its command
        // (StopPodSandbox SIGKILLs it, so PID 1 ignoring SIGTERM is fine).
        let img = dir.join("sandbox.tar");
        busybox_image_as(&img, SANDBOX_IMAGE, &["sleep", "1000000"]);
        ctr_ok(
            &node.ctd,
            &[
                "images",
                "import",
                "--local",
                "--snapshotter",
                snapshotter.name(),
                img.to_str().unwrap(),
            ],
        );
        ctr_ok(
            &node.ctd,
            &["images", "tag", "--force", SANDBOX_IMAGE, IMAGE],
        );
        for image in [SANDBOX_IMAGE, IMAGE] {
            node.wait_image(image);
        }
        node
    }

    fn wait_ready(&mut self) {
        let start = Instant::now();
        loop {
            let r = self
                .rt
                .block_on(self.runtime.clone().version(cri::VersionRequest::default()));
            match r {
                Ok(v) => {
                    let v = v.into_inner();
                    assert_eq!(v.runtime_name, "containerd", "{}", self.ctx);
                    return;
                }
                Err(e) if start.elapsed() > PATIENCE => panic!(
                    "{}: the CRI does not answer: {e}\n--- containerd log tail:\n{}",
                    self.ctx,
                    self.ctd.log_tail()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    /// Waits until the CRI's image store knows `image` (it follows containerd's events).
    pub fn wait_image(&mut self, image: &str) -> String {
        let start = Instant::now();
        loop {
            if let Some(id) = self.image_id(image) {
                return id;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "{}: the CRI does not know {image}",
                self.ctx
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// ImageStatus: the image's ID, if the CRI has it.
    pub fn image_id(&mut self, image: &str) -> Option<String> {
        let r = self
            .rt
            .block_on(self.images.image_status(cri::ImageStatusRequest {
                image: Some(spec(image)),
                verbose: false,
            }))
            .unwrap_or_else(|e| panic!("{}: ImageStatus {image}: {e}", self.ctx));
        r.into_inner().image.map(|i| i.id)
    }

    /// PullImage, as kubelet calls it (with the pod's sandbox config): the image ref.
    pub fn pull_image(&mut self, image: &str) -> String {
        let r = self
            .rt
            .block_on(self.images.pull_image(cri::PullImageRequest {
                image: Some(spec(image)),
                auth: None,
                sandbox_config: Some(self.sandbox_config("puller")),
            }));
        match r {
            Ok(r) => r.into_inner().image_ref,
            Err(e) => panic!(
                "{}: PullImage {image}: {e}\n--- containerd log tail:\n{}",
                self.ctx,
                self.ctd.log_tail()
            ),
        }
    }

    /// ListImages: (ID, size) of every image, as kubelet's image GC sees them.
    pub fn list_images(&mut self) -> Vec<(String, u64)> {
        self.rt
            .block_on(
                self.images
                    .list_images(cri::ListImagesRequest { filter: None }),
            )
            .unwrap_or_else(|e| panic!("{}: ListImages: {e}", self.ctx))
            .into_inner()
            .images
            .into_iter()
            .map(|i| (i.id, i.size))
            .collect()
    }

    /// RemoveImage (kubelet's image GC does this for unused images).
    pub fn remove_image(&mut self, image: &str) {
        self.rt
            .block_on(self.images.remove_image(cri::RemoveImageRequest {
                image: Some(spec(image)),
            }))
            .unwrap_or_else(|e| panic!("{}: RemoveImage {image}: {e}", self.ctx));
    }

    fn sandbox_config(&self, name: &str) -> cri::PodSandboxConfig {
        let node = cri::NamespaceMode::Node as i32;
        cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "default".into(),
                attempt: 0,
            }),
            // Host network shares the host's UTS namespace: no hostname of its own.
            log_directory: self.dir.join("pods").join(name).display().to_string(),
            linux: Some(cri::LinuxPodSandboxConfig {
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: node,
                        pid: cri::NamespaceMode::Container as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// RunPodSandbox with host networking (no CNI): the pod sandbox ID.
    pub fn run_pod(&mut self, name: &str) -> String {
        let config = self.sandbox_config(name);
        std::fs::create_dir_all(&config.log_directory).unwrap();
        let r = self
            .rt
            .block_on(self.runtime.run_pod_sandbox(cri::RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: String::new(),
            }));
        match r {
            Ok(r) => r.into_inner().pod_sandbox_id,
            Err(e) => panic!(
                "{}: RunPodSandbox {name}: {e}\n--- containerd log tail:\n{}",
                self.ctx,
                self.ctd.log_tail()
            ),
        }
    }

    /// CreateContainer + StartContainer in pod `pod` (named `pod_name`): busybox running
    /// `sh -c script`, with the image `volume_image` mounted read-only at `VOLUME`; waits
    /// for it to exit and returns its exit code and output (read from its CRI log file).
    pub fn run_container(
        &mut self,
        pod: &str,
        pod_name: &str,
        name: &str,
        volume_image: &str,
        script: &str,
    ) -> (i32, String) {
        let sandbox_config = self.sandbox_config(pod_name);
        let log_path = Path::new(&sandbox_config.log_directory).join(format!("{name}.log"));
        let config = cri::ContainerConfig {
            metadata: Some(cri::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(spec(IMAGE)),
            command: vec!["/bin/sh".into(), "-c".into(), script.into()],
            log_path: format!("{name}.log"),
            mounts: vec![cri::Mount {
                container_path: VOLUME.into(),
                readonly: true,
                image: Some(spec(volume_image)),
                ..Default::default()
            }],
            linux: Some(cri::LinuxContainerConfig {
                security_context: Some(cri::LinuxContainerSecurityContext {
                    namespace_options: sandbox_config
                        .linux
                        .as_ref()
                        .and_then(|l| l.security_context.as_ref())
                        .and_then(|s| s.namespace_options.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created =
            self.rt
                .block_on(self.runtime.create_container(cri::CreateContainerRequest {
                    pod_sandbox_id: pod.into(),
                    config: Some(config),
                    sandbox_config: Some(sandbox_config),
                }));
        let id = match created {
            Ok(r) => r.into_inner().container_id,
            Err(e) => panic!(
                "{}: CreateContainer {name} with image volume {volume_image}: {e}\n--- containerd log tail:\n{}",
                self.ctx,
                self.ctd.log_tail()
            ),
        };
        self.rt
            .block_on(self.runtime.start_container(cri::StartContainerRequest {
                container_id: id.clone(),
            }))
            .unwrap_or_else(|e| {
                panic!(
                    "{}: StartContainer {name}: {e}\n--- containerd log tail:\n{}",
                    self.ctx,
                    self.ctd.log_tail()
                )
            });
        let start = Instant::now();
        let status = loop {
            let st = self
                .rt
                .block_on(self.runtime.container_status(cri::ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: false,
                }))
                .unwrap_or_else(|e| panic!("{}: ContainerStatus {name}: {e}", self.ctx))
                .into_inner()
                .status
                .unwrap_or_else(|| panic!("{}: no status for {name}", self.ctx));
            if st.state == cri::ContainerState::ContainerExited as i32 {
                break st;
            }
            assert!(
                start.elapsed() < PATIENCE,
                "{}: container {name} still {} after {PATIENCE:?}\n--- containerd log tail:\n{}",
                self.ctx,
                st.state,
                self.ctd.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let log = std::fs::read_to_string(&log_path)
            .unwrap_or_else(|e| panic!("{}: container log {}: {e}", self.ctx, log_path.display()));
        (status.exit_code, cri_log_text(&log))
    }

    /// StopPodSandbox + RemovePodSandbox, as kubelet does when a pod goes.
    pub fn remove_pod(&mut self, pod: &str) {
        let r = self.rt.block_on(async {
            self.runtime
                .stop_pod_sandbox(cri::StopPodSandboxRequest {
                    pod_sandbox_id: pod.into(),
                })
                .await?;
            self.runtime
                .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                    pod_sandbox_id: pod.into(),
                })
                .await
        });
        if let Err(e) = r {
            panic!(
                "{}: removing pod {pod}: {e}\n--- containerd log tail:\n{}",
                self.ctx,
                self.ctd.log_tail()
            );
        }
    }

    /// Every pod sandbox the CRI knows.
    fn pods(&mut self) -> Vec<String> {
        self.rt
            .block_on(
                self.runtime
                    .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None }),
            )
            .map(|r| r.into_inner().items.into_iter().map(|p| p.id).collect())
            .unwrap_or_default()
    }

    /// The snapshots containerd holds in `k8s.io` on this node's snapshotter: (key, kind).
    pub fn snapshots(&self) -> BTreeSet<(String, String)> {
        let out = ctr_ok(
            &self.ctd,
            &["snapshots", "--snapshotter", self.snapshotter.name(), "ls"],
        );
        out.lines()
            .skip(1)
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                Some((f.first()?.to_string(), f.last()?.to_string()))
            })
            .collect()
    }

    /// Runs containerd's garbage collection now (a lease deleted with --sync).
    pub fn gc(&self) {
        let id = format!("kitsnap-cri-gc-{}", std::process::id());
        ctr_ok(&self.ctd, &["leases", "create", "--id", &id]);
        ctr_ok(&self.ctd, &["leases", "rm", "--sync", &id]);
    }

    /// Copies of a file named `name` with sha256 `sha256` stored on this node: (under
    /// containerd's root, under kitsnap's root), not crossing into mounts (those are views
    /// of the copies).
    pub fn copies_on_disk(&self, name: &str, sha256: &str) -> (usize, usize) {
        (
            copies_under(&self.ctd.dir.join("root"), name, sha256),
            copies_under(&self.ks.root, name, sha256),
        )
    }

    /// `kitsnap ARGS` against this node's daemon in namespace `k8s.io`, asserting success.
    pub fn kitsnap_ok(&self, args: &[&str]) -> String {
        let o = Command::new(super::bin())
            .env("KITSNAP_STORE", &self.store)
            .env("KITSNAP_ADDRESS", &self.ks.sock)
            .env("CONTAINERD_NAMESPACE", NS)
            .env_remove("KITSNAP_HOME")
            .env_remove("KITSNAP_LOG")
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{}: kitsnap {args:?} failed:\n{}\n--- kitsnap log tail:\n{}",
            self.ctx,
            String::from_utf8_lossy(&o.stderr),
            tail(&self.ks.log())
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// hosts.toml for `registry` (host:port): plain HTTP to it, or to `mirror` first.
    pub fn hosts_toml(&self, registry: &str, mirror: Option<&str>) {
        let d = self.hosts_dir.join(registry);
        std::fs::create_dir_all(&d).unwrap();
        let host = mirror.unwrap_or(registry);
        std::fs::write(
            d.join("hosts.toml"),
            format!(
                "server = \"http://{registry}\"\n\n[host.\"http://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n"
            ),
        )
        .unwrap();
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        // Pods a failed test left: their sandboxes would outlive containerd.
        for pod in self.pods() {
            let _ = self.rt.block_on(async {
                let _ = self
                    .runtime
                    .stop_pod_sandbox(cri::StopPodSandboxRequest {
                        pod_sandbox_id: pod.clone(),
                    })
                    .await;
                self.runtime
                    .remove_pod_sandbox(cri::RemovePodSandboxRequest {
                        pod_sandbox_id: pod,
                    })
                    .await
            });
        }
    }
}

/// `ctr -n k8s.io ARGS`, asserting success; stdout.
fn ctr_ok(ctd: &Containerd, args: &[&str]) -> String {
    let o = ctd.ctr_ns(NS, args);
    assert!(
        o.status.success(),
        "containerd {}: ctr -n {NS} {args:?} failed:\n{}\n--- containerd log tail:\n{}",
        ctd.version.name,
        String::from_utf8_lossy(&o.stderr),
        ctd.log_tail()
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn spec(image: &str) -> cri::ImageSpec {
    cri::ImageSpec {
        image: image.into(),
        ..Default::default()
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The text of a CRI container log (`<time> <stdout|stderr> <F|P> <text>`; P = a partial
/// line), both streams as they came.
pub fn cri_log_text(log: &str) -> String {
    let mut out = String::new();
    for l in log.lines() {
        let mut f = l.splitn(4, ' ');
        let (_, _, tag, msg) = (f.next(), f.next(), f.next(), f.next().unwrap_or(""));
        out.push_str(msg);
        if tag == Some("F") {
            out.push('\n');
        }
    }
    out
}

/// What an image volume holds for the test: the file at `path` (relative to the volume's
/// root) with this sha256.
pub struct Expected<'a> {
    pub path: &'a str,
    pub sha256: &'a str,
}

/// The whole image volume scenario, as kubelet drives it, for the image `reference`:
/// the image reaches the node (`pull`), two pods each run a container with the image
/// mounted read-only at `VOLUME`: it reads the file's sha256 and fails to write; the node
/// holds one copy of the file for both pods; kubelet's ListImages counts the image;
/// removing the pods and the image lets containerd's GC remove every snapshot and file the
/// image brought.
pub fn image_volume_case(node: &mut CriNode, pull: Pull, reference: &str, want: Expected) {
    let ctx = format!("{}: {reference}", node.ctx);
    let name = Path::new(want.path)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_else(|| panic!("{ctx}: {} names no file", want.path));
    let before = node.snapshots();
    assert_eq!(node.copies_on_disk(name, want.sha256), (0, 0), "{ctx}");

    // kubelet: PullImage (or, with IfNotPresent and the image present, ImageStatus); the
    // Mount names the image by the ref it got back.
    let image_ref = match pull {
        Pull::Cri => node.pull_image(reference),
        Pull::KitsnapPull => {
            // A CRI on overlayfs unpacks the view itself, from the blobs in the content
            // store: kitsnap keeps uncompressed ones only when asked.
            let mut args = vec!["pull", "--containerd", "-n", NS, reference, "--plain-http"];
            if node.snapshotter == Snapshotter::Overlayfs {
                args.push("--keep-blobs");
            }
            node.kitsnap_ok(&args);
            node.wait_image(reference)
        }
    };
    assert!(image_ref.starts_with("sha256:"), "{ctx}: {image_ref}");
    // kubelet's image GC counts it like any image: listed, with its size.
    let listed = node.list_images();
    assert!(
        listed
            .iter()
            .any(|(id, size)| *id == image_ref && *size > 0),
        "{ctx}: {image_ref} is not listed with a size: {listed:?}"
    );

    let file = format!("{VOLUME}/{}", want.path.trim_start_matches('/'));
    let script = format!(
        "sha256sum {file}; \
         if echo x > {VOLUME}/kitsnap-write; then echo WRITE-SUCCEEDED; else echo WRITE-REFUSED; fi; \
         if echo x >> {file}; then echo APPEND-SUCCEEDED; else echo APPEND-REFUSED; fi"
    );
    let mut pods = Vec::new();
    for p in ["pod-a", "pod-b"] {
        let pod = node.run_pod(p);
        let (code, out) = node.run_container(&pod, p, "reader", &image_ref, &script);
        assert_eq!(code, 0, "{ctx}: {p}'s container exited {code}:\n{out}");
        assert!(
            out.contains(&format!("{}  {file}", want.sha256)),
            "{ctx}: {p} read another sha256 (want {}):\n{out}",
            want.sha256
        );
        assert!(
            out.contains("WRITE-REFUSED")
                && out.contains("APPEND-REFUSED")
                && out.contains("Read-only file system"),
            "{ctx}: {p} could write to the read-only volume:\n{out}"
        );
        pods.push(pod);
    }
    // Two pods, one copy in the snapshotter the CRI uses: (containerd's overlayfs,
    // kitsnap). kitsnap's own pull unpacks on kitsnap, so a CRI on overlayfs unpacks the
    // image a second time there (a node that pre-pulls with kitsnap runs pods on kitsnap).
    let copies = match (pull, node.snapshotter) {
        (Pull::Cri, Snapshotter::Overlayfs) => (1, 0),
        (_, Snapshotter::Kitsnap) => (0, 1),
        (Pull::KitsnapPull, Snapshotter::Overlayfs) => (1, 1),
    };
    assert_eq!(
        node.copies_on_disk(name, want.sha256),
        copies,
        "{ctx}: copies of {} on disk (under containerd's root, kitsnap's root)",
        want.path
    );
    let snapshots = node.snapshots();
    assert!(
        snapshots.len() > before.len(),
        "{ctx}: no new snapshot on {}: {snapshots:?}",
        node.snapshotter.name()
    );

    // The pods go, then kubelet's image GC removes the unused image: containerd's GC
    // removes its snapshots and files.
    for pod in &pods {
        node.remove_pod(pod);
    }
    node.remove_image(&image_ref);
    assert_eq!(
        node.image_id(reference),
        None,
        "{ctx}: the image is still known"
    );
    assert!(
        !node.list_images().iter().any(|(id, _)| *id == image_ref),
        "{ctx}: the image is still listed"
    );
    let start = Instant::now();
    loop {
        let (now, copies) = (node.snapshots(), node.copies_on_disk(name, want.sha256));
        if now == before && copies == (0, 0) {
            break;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{ctx}: after the pods and the image went, {copies:?} copies are left and the snapshots are\n{now:?}\nnot as before\n{before:?}"
        );
        node.gc();
        std::thread::sleep(Duration::from_millis(250));
    }
}
