#!/usr/bin/env python3
"""Snapshotter benchmark: unpack and start a container image with `--snapshotter kitsnap`
against containerd's built-in `overlayfs` snapshotter, same containerd, same run.

The image is built locally: a busybox-static layer plus a layer of PAYLOAD_MIB random bytes
(so unpacking costs something). Each round imports (unpacks) the image onto the snapshotter,
runs `true` in a container, and removes everything again (GC included). Needs root,
containerd, runc and busybox-static. Target: kitsnap/overlayfs <= 1.1.
Usage: benches/snapshotter.py [--rounds N] [--payload-mib N] [--containerd-bin DIR]
"""
import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "docker.io/library/kitsnap-bench:latest"


def blob(out, data):
    d = hashlib.sha256(data).hexdigest()
    os.makedirs(f"{out}/blobs/sha256", exist_ok=True)
    with open(f"{out}/blobs/sha256/{d}", "wb") as f:
        f.write(data)
    return "sha256:" + d


def layer(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, kind, data in entries:
            ti = tarfile.TarInfo(name)
            if kind == "dir":
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                t.addfile(ti)
            elif kind == "link":
                ti.type, ti.linkname = tarfile.SYMTYPE, data
                t.addfile(ti)
            else:
                ti.size, ti.mode = len(data), 0o755
                t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


def oci_layout(out, layers, name, ref_name=None):
    """Writes an OCI image layout at `out`: one image of uncompressed `layers`, named `name`
    for containerd (and `ref_name` for skopeo's `oci:` transport, when given)."""
    ds = [blob(out, l) for l in layers]
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
                      "rootfs": {"type": "layers", "diff_ids": ds}}).encode()
    cd = blob(out, cfg)
    man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                      "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(cfg)},
                      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(l)}
                                 for d, l in zip(ds, layers)]}).encode()
    md = blob(out, man)
    with open(f"{out}/oci-layout", "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    annotations = {"io.containerd.image.name": name}
    if ref_name:
        annotations["org.opencontainers.image.ref.name"] = ref_name
    with open(f"{out}/index.json", "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                   "digest": md, "size": len(man), "annotations": annotations}]}, f)


def build_image(work, payload_mib):
    out = os.path.join(work, "img")
    base = [(d, "dir", None) for d in ["bin", "tmp", "etc", "proc", "sys", "dev", "data"]]
    base.append(("bin/busybox", "file", open("/bin/busybox", "rb").read()))
    base += [(f"bin/{a}", "link", "busybox") for a in ["sh", "true", "cat", "ls"]]
    layers = [layer(base), layer([("data/payload.bin", "file", os.urandom(payload_mib << 20))])]
    oci_layout(out, layers, IMAGE)
    tar = os.path.join(work, "img.tar")
    subprocess.run(["tar", "-C", out, "-cf", tar, "."], check=True)
    return tar


def wait_sock(p):
    for _ in range(400):
        if os.path.exists(p):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{p} did not appear")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--payload-mib", type=int, default=256)
    ap.add_argument("--containerd-bin", default="/usr/bin")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/kitsnap"))
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kitsnap-snapbench-")
    procs = []
    try:
        ks_sock = os.path.join(work, "kitsnap.sock")
        ctd_sock = os.path.join(work, "containerd.sock")
        procs.append(subprocess.Popen([a.bin, "serve", "--root", os.path.join(work, "ks"), "--address", ks_sock,
                                       "--log-level", "warn"], stderr=subprocess.DEVNULL))
        wait_sock(ks_sock)
        with open(os.path.join(work, "config.toml"), "w") as f:
            f.write(f'version = 2\nroot = "{work}/root"\nstate = "{work}/state"\n'
                    f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "{ctd_sock}"\n'
                    f'[proxy_plugins.kitsnap]\n  type = "snapshot"\n  address = "{ks_sock}"\n')
        env = dict(os.environ, PATH=f"{a.containerd_bin}:{os.environ['PATH']}")
        procs.append(subprocess.Popen([os.path.join(a.containerd_bin, "containerd"), "--config",
                                       os.path.join(work, "config.toml")], env=env, stderr=subprocess.DEVNULL))
        wait_sock(ctd_sock)
        time.sleep(0.5)
        tar = build_image(work, a.payload_mib)
        ctr = [os.path.join(a.containerd_bin, "ctr"), "--address", ctd_sock, "-n", "bench"]
        version = subprocess.run([os.path.join(a.containerd_bin, "containerd"), "--version"], capture_output=True,
                                 text=True).stdout.split()[2]
        print(f"snapshotter benchmark: containerd {version}, image busybox + {a.payload_mib} MiB layer, "
              f"median of {a.rounds} rounds, {os.cpu_count()} cores")

        def once(snap, i):
            t0 = time.perf_counter()
            subprocess.run(ctr + ["images", "import", "--snapshotter", snap, tar], env=env, check=True,
                           capture_output=True)
            t1 = time.perf_counter()
            subprocess.run(ctr + ["run", "--rm", "--snapshotter", snap, IMAGE, f"c-{snap}-{i}", "true"], env=env,
                           check=True, capture_output=True)
            t2 = time.perf_counter()
            subprocess.run(ctr + ["images", "rm", "--sync", IMAGE], env=env, check=True, capture_output=True)
            return t1 - t0, t2 - t1

        res = {"overlayfs": [], "kitsnap": []}
        for i in range(a.rounds):
            for snap in ("overlayfs", "kitsnap"):  # interleaved, so drift hits both alike
                res[snap].append(once(snap, i))
        rows = {}
        for snap, xs in res.items():
            unpack = statistics.median(x[0] for x in xs)
            start = statistics.median(x[1] for x in xs)
            total = statistics.median(x[0] + x[1] for x in xs)
            rows[snap] = (unpack, start, total)
            print(f"  {snap:<10} import+unpack {unpack:6.3f} s   run {start:6.3f} s   total {total:6.3f} s")
        o, k = rows["overlayfs"], rows["kitsnap"]
        print()
        print("| step | overlayfs | kitsnap | ratio (kitsnap/overlayfs) |")
        print("|---|---|---|---|")
        print(f"| import + unpack | {o[0]:.3f} s | {k[0]:.3f} s | {k[0]/o[0]:.2f} |")
        print(f"| run `true` | {o[1]:.3f} s | {k[1]:.3f} s | {k[1]/o[1]:.2f} |")
        print(f"| total | {o[2]:.3f} s | {k[2]:.3f} s | **{k[2]/o[2]:.2f}** (target <= 1.1) |")
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()
        subprocess.run(f"grep -o ' {work}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l", shell=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
