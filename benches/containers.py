#!/usr/bin/env python3
"""ModelKits in containers: kitsnap against the same weights baked into an image layer.

Cold: from an empty node to the first byte of the model read inside a container.
  kitsnap:  `kitsnap pull --containerd` + `kitsnap mount` + `ctr run --mount ... head -c1`
            (the app image, busybox, is already on the node: it is not the model)
  baseline: `ctr pull` of busybox + a layer holding the same weights (overlayfs snapshotter),
            then `ctr run IMAGE head -c1`
  Both read from one local registry (Debian's docker-registry); the page cache is dropped
  before every round. Target: kitsnap/baseline <= 0.6.
Native (issue 11): the same cold measure with no kitsnap command: `ctr images pull` through
  kitsnap serve's registry mirror (named in hosts.toml by `kitsnap hosts install`) onto the
  kitsnap snapshotter, `ctr images mount` of the image view, `ctr run` with it bound. The
  kit is pushed by `kitsnap push`, which publishes its lazy index: on containerd 2.x the
  layer is committed at once and served through FUSE as it arrives (chunks verified).
Mirror pass-through: `ctr images pull` of the baked image through the mirror vs directly.
nerdctl (containerd 2.x, with .cache/peers/bin/nerdctl from scripts/install-peers.sh):
  `nerdctl run --mount type=modelkit` through kitsnap's front vs `nerdctl run` of the baked
  image, cold and warm.
Peers: the same cold measure with the tools users would pick instead (kitsnap both ways:
  `pull --containerd` and the native lazy pull), each fetching the
  model into a host directory that `ctr run` binds: `kit unpack REF -d` (--kit or
  KITSNAP_KIT), `oras pull -o`, `modctl pull --extract-dir` (.cache/peers/bin), and the
  floor: the registry's GET of the model layer to /dev/null, then the same run.
  Target: kitsnap <= 0.7 of the best, or within 1.05x of the floor.
Warm: a container with the model mounted vs the same container without: extra <= 50 ms.
Disk: `kitsnap df` node total after the pull over the model size: <= 1.1.

Needs root, containerd, runc, docker-registry, skopeo, busybox-static, a release build.
Usage: benches/containers.py [--size-mib N] [--rounds N] [--containerd-bin DIR] [--kit PATH]
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from registry import Registry  # noqa: E402
from registry import free_port  # noqa: E402
from snapshotter import layer, oci_layout, wait_sock  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = "docker.io/library/kitsnap-app:latest"


def busybox_layer():
    base = [(d, "dir", None) for d in ["bin", "tmp", "etc", "proc", "sys", "dev", "models"]]
    base.append(("bin/busybox", "file", open("/bin/busybox", "rb").read()))
    base += [(f"bin/{a}", "link", "busybox") for a in ["sh", "true", "cat", "ls", "head", "sha256sum"]]
    return layer(base)


def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def nerdctl_rows(a, work, env, ctr, ctd_sock, hosts, kit_ref, img_ref, nerdctl):
    """`nerdctl run --mount type=modelkit` through kitsnap's front (real nerdctl behind it)
    against `nerdctl run` of the baked image, cold and warm (issue 12's benchmarks)."""
    sbin = os.path.join(work, "sbin")
    no_hosts = os.path.join(work, "no-hosts")
    os.makedirs(no_hosts)
    nenv = dict(env, PATH=f"{sbin}:{os.path.dirname(nerdctl)}:{env['PATH']}")

    def sh(cmd):
        r = subprocess.run(cmd, env=nenv, capture_output=True, text=True, errors="replace")
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
        return r

    sh([a.bin, "front", "install", "--dir", sbin])

    def nerd(args, hosts_dir=hosts):
        return sh([os.path.join(sbin, "nerdctl"), "--address", ctd_sock, "--namespace", "bench",
                   "--snapshotter", "kitsnap", "--hosts-dir", hosts_dir,
                   "--data-root", os.path.join(work, "nerdctl")] + args)

    def released():
        for _ in range(100):
            if len(sh([a.bin, "mount", "--list"]).stdout.strip().splitlines()) <= 1:
                return
            time.sleep(0.2)
        raise RuntimeError("the front's mount was not released")

    mount = f"type=modelkit,src={kit_ref},dst=/models"
    front, baked = [], []
    for i in range(a.rounds):
        drop_caches()
        t0 = time.perf_counter()
        nerd(["run", "--rm", "--net", "host", "--insecure-registry", img_ref, "head", "-c1",
              "/models/model.bin"], hosts_dir=no_hosts)
        baked.append(time.perf_counter() - t0)
        sh(ctr + ["images", "rm", "--sync", img_ref])
        drop_caches()
        t0 = time.perf_counter()
        nerd(["run", "--rm", "--net", "host", "--mount", mount, APP, "head", "-c1", "/models/model.bin"])
        front.append(time.perf_counter() - t0)
        released()
        if i + 1 < a.rounds:
            sh(ctr + ["images", "rm", "--sync", kit_ref])
    # Warm: the kit is on the node; each run mounts (and releases) its view.
    with_m, without = [], []
    for _ in range(7):
        t0 = time.perf_counter()
        nerd(["run", "--rm", "--net", "host", APP, "true"])
        without.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        nerd(["run", "--rm", "--net", "host", "--mount", mount, APP, "true"])
        with_m.append(time.perf_counter() - t0)
        released()
    f, b = statistics.median(front), statistics.median(baked)
    w0, w1 = statistics.median(without), statistics.median(with_m)
    print(f"| nerdctl, cold: run reading the first byte | `nerdctl run` of the baked image {b:.2f} s | "
          f"`nerdctl run --mount type=modelkit` (front) {f:.2f} s | **{f / b:.2f}** (target <= 0.3) |")
    print(f"| nerdctl, warm: start a container | no mount {w0 * 1000:.0f} ms | "
          f"`--mount type=modelkit` {w1 * 1000:.0f} ms | **{(w1 - w0) * 1000:+.0f} ms** (target <= 50 ms) |")


def peer_rows(a, work, addr, sh, ctr, kit_ref, k, hosts):
    """Registry to first byte in a container with the tools users would pick instead: each
    fetches the model into a host directory (kit, oras pull, modctl pull --extract-dir),
    then `ctr run` binds that directory read-only and reads the first byte. kitsnap's
    `pull --containerd` + mount + run is measured again here, its rounds interleaved with
    the peers' so that every tool meets the same disk (k seconds, measured above, is shown
    for reference). kit's `unpack REF -d` straight from a registry does not verify the
    layer's digest (kit_conformance::kit_unpack_from_a_registry_writes_tampered_bytes_kitsnap_refuses_them),
    so kit is timed both ways: that, and `kit pull` (verified) + `kit unpack`."""
    peers = os.path.join(ROOT, ".cache/peers/bin")
    oras, modctl = os.path.join(peers, "oras"), os.path.join(peers, "modctl")
    kit = a.kit if a.kit and os.path.isfile(a.kit) else None
    src = os.path.join(work, "kit")
    with open(os.path.join(src, "Modelfile"), "w") as f:
        f.write("NAME bench\nARCH transformer\nFAMILY bench\nFORMAT safetensors\nMODEL model.bin\n")
    d = lambda *p: os.path.join(work, *p)  # noqa: E731
    mc = [modctl, "--storage-dir", d("modctl"), "--no-progress", "--log-dir", d("modctl-logs")]
    kit_env = ["env", f"KITOPS_HOME={d('kit-home')}"]

    def kitsnap_fetch(out):
        sh([a.bin, "pull", "--containerd", kit_ref, "--plain-http", "--no-progress"])
        return sh([a.bin, "mount", kit_ref, "--name", "peerbench"]).stdout.strip()

    def kitsnap_native(out):
        # containerd's own pull through the mirror: with the lazy index `kitsnap push`
        # published, kitsnap commits the layer at once and serves it as it arrives.
        os.makedirs(out, exist_ok=True)
        sh(ctr + ["images", "pull", "--hosts-dir", hosts, "--snapshotter", "kitsnap", kit_ref])
        sh(ctr + ["images", "mount", "--snapshotter", "kitsnap", kit_ref, out])
        return out

    def kitsnap_clean():
        if sh([a.bin, "mount", "--list"]).stdout.count("peerbench"):
            sh([a.bin, "umount", "peerbench"])
        out = d("peer-out")
        if os.path.ismount(out):
            sh(ctr + ["images", "unmount", out])
        for lease in sh(ctr + ["leases", "ls", "-q"]).stdout.split():
            subprocess.run(ctr + ["leases", "rm", lease], capture_output=True)
        subprocess.run(ctr + ["images", "rm", "--sync", kit_ref], capture_output=True)

    # (name, verifies the digest, fetch(out) -> the directory to bind)
    tools = [("kitsnap pull --containerd + mount + run", True, kitsnap_fetch),
             ("kitsnap native, lazy: ctr pull through the mirror + images mount + run", True, kitsnap_native)]
    # The floor: the registry sending the model layer (to /dev/null: no disk, no hash, no
    # manifest, no snapshot; `curl -o` into a file, or a pipe through `openssl sha256` or
    # `tar -x`, took longer than kitsnap), then the same run reading an empty model.bin.
    repo, tag = kit_ref.split("/", 1)[1].rsplit(":", 1)
    req = urllib.request.Request(f"http://{addr}/v2/{repo}/manifests/{tag}",
                                 headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    with urllib.request.urlopen(req) as r:
        layer = max(json.load(r)["layers"], key=lambda l: l["size"])["digest"]
    tools.append(("floor: registry GET to /dev/null + run", None, lambda out: (sh(
        ["bash", "-c", f"mkdir -p {out} && touch {out}/model.bin && "
         f"curl -sf http://{addr}/v2/{repo}/blobs/{layer} >/dev/null"]), out)[-1]))
    if kit:
        tools.append(("kit pull + kit unpack -d + run", True, lambda out: (
            sh(kit_env + [kit, "pull", kit_ref, "--plain-http", "--progress", "none"]),
            sh(kit_env + [kit, "unpack", kit_ref, "-d", out, "--progress", "none"]), out)[-1]))
        tools.append(("kit unpack REF -d + run (unverified)", False, lambda out: (sh(
            kit_env + [kit, "unpack", kit_ref, "-d", out, "--plain-http", "--progress", "none"]), out)[-1]))
    if os.access(oras, os.X_OK):
        sh([oras, "push", "--plain-http", "--no-tty", f"{addr}/oras/bench:v1", "model.bin"], cwd=src)
        tools.append(("oras pull -o + run", True, lambda out: (sh(
            [oras, "pull", "--plain-http", "--no-tty", "-o", out, f"{addr}/oras/bench:v1"]), out)[-1]))
    if os.access(modctl, os.X_OK):
        sh(mc + ["build", "-t", f"{addr}/mc/bench:v1", "-f", os.path.join(src, "Modelfile"),
                 "--no-creation-time", "--output-remote", "--plain-http", src])
        tools.append(("modctl pull --extract-dir + run", True, lambda out: (sh(
            mc + ["pull", "--plain-http", "--extract-from-remote", "--extract-dir", out,
                  f"{addr}/mc/bench:v1"]), out)[-1]))
    times = {name: [] for name, _, _ in tools}
    for i in range(a.rounds):
        for name, _, fetch in tools:
            out = d("peer-out")
            for p in (out, d("kit-home"), d("modctl")):
                shutil.rmtree(p, ignore_errors=True)
            kitsnap_clean()
            drop_caches()
            t0 = time.perf_counter()
            bind = fetch(out)
            sh(ctr + ["run", "--rm", "--snapshotter", "kitsnap", "--mount",
                      f"type=bind,src={bind},dst=/models,options=rbind:ro", APP, f"p{i}", "head", "-c1",
                      "/models/model.bin"])
            times[name].append(time.perf_counter() - t0)
    kitsnap_clean()
    for p in (d("peer-out"), d("kit-home"), d("modctl")):
        shutil.rmtree(p, ignore_errors=True)
    med = {name: statistics.median(t) for name, t in times.items()}
    mine = [n for n, _, _ in tools if n.startswith("kitsnap")]
    own = min(med[n] for n in mine)
    peers_v = [(n, med[n]) for n, v, _ in tools if v and n not in mine]
    peers_all = [(n, med[n]) for n, v, _ in tools if v is not None and n not in mine]
    floor = [med[n] for n, v, _ in tools if v is None]
    if peers_all:
        print()
        print(f"| registry to first byte in a container (rounds interleaved) | wall (median) | kitsnap (its faster way) / this |")
        print("|---|---|---|")
        for name, t in med.items():
            print(f"| {name} | {t:.2f} s | {'' if name in mine else f'{own / t:.2f}'} |")
        print(f"| (kitsnap in the first table, measured apart) | {k:.2f} s | |")
        if peers_v:
            bn, bt = min(peers_v, key=lambda r: r[1])
            print(f"| kitsnap vs the best peer that verifies digests ({bn}) | | **{own / bt:.2f}** (target <= 0.7) |")
        bn, bt = min(peers_all, key=lambda r: r[1])
        print(f"| kitsnap vs the best peer ({bn}) | | **{own / bt:.2f}** |")
        if floor:
            print(f"| kitsnap vs the floor (registry GET + run) | | **{own / floor[0]:.2f}** (target <= 1.05) |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--containerd-bin", default="/usr/bin")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/kitsnap"))
    ap.add_argument("--kit", default=os.environ.get("KITSNAP_KIT", ""))
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kitsnap-ctrbench-", dir="/var/tmp")
    procs = []
    reg = Registry(work)
    try:
        reg.restart()
        addr = f"127.0.0.1:{reg.port}"
        model = os.path.join(work, "kit", "model.bin")
        os.makedirs(os.path.dirname(model))
        with open(model, "wb") as f:
            for _ in range(a.size_mib):
                f.write(os.urandom(1 << 20))
        with open(os.path.join(work, "kit", "Kitfile"), "w") as f:
            f.write("manifestVersion: 1.0.0\npackage:\n  name: bench\nmodel:\n  name: bench\n  path: model.bin\n")
        kit_ref = f"{addr}/bench/kit:v1"
        env_store = dict(os.environ, KITSNAP_STORE=os.path.join(work, "store"))
        subprocess.run([a.bin, "pack", os.path.join(work, "kit"), "-t", kit_ref, "--no-progress"], env=env_store,
                       check=True, capture_output=True)
        subprocess.run([a.bin, "push", kit_ref, "--plain-http", "--no-progress"], env=env_store, check=True,
                       capture_output=True)
        shutil.rmtree(os.path.join(work, "store"))
        # The baseline image: the app layer plus the same weights in a layer at /models.
        bb = busybox_layer()
        img_ref = f"{addr}/bench/baked:v1"
        baked = os.path.join(work, "baked")
        with open(model, "rb") as f:
            weights = f.read()
        oci_layout(baked, [bb, layer([("models/model.bin", "file", weights)])], img_ref, "latest")
        del weights
        subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{baked}", f"docker://{img_ref}"],
                       check=True, capture_output=True)
        shutil.rmtree(baked)
        app = os.path.join(work, "app")
        oci_layout(app, [bb], APP, "latest")
        subprocess.run(["tar", "-C", app, "-cf", app + ".tar", "."], check=True)

        ks_sock = os.path.join(work, "kitsnap.sock")
        ctd_sock = os.path.join(work, "containerd.sock")
        mounts = os.path.join(work, "mounts")
        hosts = os.path.join(work, "certs.d")
        mirror = f"127.0.0.1:{free_port()}"
        with open(os.path.join(work, "kitsnap.toml"), "w") as f:
            f.write(f'plain_http = ["{addr}"]\nhosts_dir = "{hosts}"\n')
        procs.append(subprocess.Popen([a.bin, "serve", "--config", os.path.join(work, "kitsnap.toml"),
                                       "--root", os.path.join(work, "ks"), "--address", ks_sock,
                                       "--containerd-address", ctd_sock, "--mount-root", mounts,
                                       "--mirror-addr", mirror, "--no-docker-plugin", "--log-level", "warn"],
                                      stderr=subprocess.DEVNULL))
        wait_sock(ks_sock)
        subprocess.run([a.bin, "hosts", "install", addr, "--hosts-dir", hosts, "--mirror", f"http://{mirror}",
                        "--plain-http"], check=True, capture_output=True)
        # containerd 2.x pulls through its transfer service, which unpacks only for the
        # platform/snapshotter pairs named here (1.x ignores the section).
        with open(os.path.join(work, "config.toml"), "w") as f:
            f.write(f'version = 2\nroot = "{work}/root"\nstate = "{work}/state"\n'
                    f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "{ctd_sock}"\n'
                    f'[proxy_plugins.kitsnap]\n  type = "snapshot"\n  address = "{ks_sock}"\n'
                    f'[plugins."io.containerd.transfer.v1.local"]\n  unpack_config = ['
                    f'{{ platform = "linux/amd64", snapshotter = "overlayfs" }}, '
                    f'{{ platform = "linux/amd64", snapshotter = "kitsnap" }}]\n')
        env = dict(os.environ, PATH=f"{a.containerd_bin}:{os.environ['PATH']}", KITSNAP_ADDRESS=ks_sock,
                   CONTAINERD_NAMESPACE="bench", KITSNAP_STORE=os.path.join(work, "empty-store"))
        procs.append(subprocess.Popen([os.path.join(a.containerd_bin, "containerd"), "--config",
                                       os.path.join(work, "config.toml")], env=env, stderr=subprocess.DEVNULL))
        wait_sock(ctd_sock)
        time.sleep(0.5)
        ctr = [os.path.join(a.containerd_bin, "ctr"), "--address", ctd_sock, "-n", "bench"]

        def sh(cmd, **kw):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace", **kw)
            if r.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)}: exit {r.returncode}\n{r.stdout}{r.stderr}")
            return r

        sh(ctr + ["images", "import", "--snapshotter", "kitsnap", app + ".tar"])
        version = sh([os.path.join(a.containerd_bin, "containerd"), "--version"]).stdout.split()[2]
        print(f"containers benchmark: {a.size_mib} MiB model, containerd {version}, local registry, "
              f"median of {a.rounds} cold rounds, {os.cpu_count()} cores")

        def cold_kitsnap(i):
            drop_caches()
            t0 = time.perf_counter()
            sh([a.bin, "pull", "--containerd", kit_ref, "--plain-http", "--no-progress"])
            t1 = time.perf_counter()
            path = sh([a.bin, "mount", kit_ref, "--name", "bench"]).stdout.strip()
            t2 = time.perf_counter()
            sh(ctr + ["run", "--rm", "--snapshotter", "kitsnap", "--mount",
                      f"type=bind,src={path},dst=/models,options=rbind:ro", APP, f"k{i}", "head", "-c1",
                      "/models/model.bin"])
            t = time.perf_counter() - t0
            steps.append((t1 - t0, t2 - t1, t0 + t - t2))
            df = sh([a.bin, "df"]).stdout
            return t, df

        def cleanup_kitsnap():
            sh([a.bin, "umount", "bench"])
            sh(ctr + ["images", "rm", "--sync", kit_ref])

        def cold_baseline(i):
            drop_caches()
            t0 = time.perf_counter()
            sh(ctr + ["images", "pull", "--plain-http", img_ref])
            sh(ctr + ["run", "--rm", img_ref, f"b{i}", "head", "-c1", "/models/model.bin"])
            t = time.perf_counter() - t0
            sh(ctr + ["images", "rm", "--sync", img_ref])
            return t

        def in_container(name, pull, cmd):
            # From a cold node: `pull`, `ctr images mount` of the view, `ctr run` of `cmd`
            # with it bound at /models; then everything goes again (the lease `ctr images
            # mount` keeps on 1.7+ too), cold for the next round.
            drop_caches()
            mnt = os.path.join(work, name)
            os.makedirs(mnt)
            t0 = time.perf_counter()
            pull()
            sh(ctr + ["images", "mount", "--snapshotter", "kitsnap", kit_ref, mnt])
            sh(ctr + ["run", "--rm", "--snapshotter", "kitsnap", "--mount",
                      f"type=bind,src={mnt},dst=/models,options=rbind:ro", APP, name] + cmd)
            t = time.perf_counter() - t0
            sh(ctr + ["images", "unmount", mnt])
            for lease in sh(ctr + ["leases", "ls", "-q"]).stdout.split():
                sh(ctr + ["leases", "rm", lease])
            sh(ctr + ["images", "rm", "--sync", kit_ref])
            return t

        def native_pull():
            sh(ctr + ["images", "pull", "--hosts-dir", hosts, "--snapshotter", "kitsnap", kit_ref])

        def cold_native(i):
            return in_container(f"n{i}", native_pull, ["head", "-c1", "/models/model.bin"])

        def pull_only(i, through_mirror):
            drop_caches()
            t0 = time.perf_counter()
            if through_mirror:
                sh(ctr + ["images", "pull", "--hosts-dir", hosts, img_ref])
            else:
                sh(ctr + ["images", "pull", "--plain-http", img_ref])
            t = time.perf_counter() - t0
            sh(ctr + ["images", "rm", "--sync", img_ref])
            return t

        def whole(i, lazy):
            # Registry to the whole model read in a container (sha256sum: what a server
            # loading its weights does): the native lazy pull against `pull --containerd`.
            pull = native_pull if lazy else (
                lambda: sh([a.bin, "pull", "--containerd", kit_ref, "--plain-http", "--no-progress"]))
            return in_container(f"s{i}{int(lazy)}", pull, ["sha256sum", "/models/model.bin"])

        ks, base, native, via, direct, df, steps = [], [], [], [], [], "", []
        whole_lazy, whole_eager = [], []
        for i in range(a.rounds):
            whole_eager.append(whole(i, False))
            whole_lazy.append(whole(i, True))
        for i in range(a.rounds):
            base.append(cold_baseline(i))
            native.append(cold_native(i))
            direct.append(pull_only(i, False))
            via.append(pull_only(i, True))
            t, df = cold_kitsnap(i)
            ks.append(t)
            if i + 1 < a.rounds:
                cleanup_kitsnap()
        k, b, n = statistics.median(ks), statistics.median(base), statistics.median(native)
        pv, pd = statistics.median(via), statistics.median(direct)

        # Warm: the model is on the node and mounted; start containers with and without it.
        path = os.path.join(mounts, "bench")
        with_m, without = [], []
        for i in range(7):
            t0 = time.perf_counter()
            sh(ctr + ["run", "--rm", "--snapshotter", "kitsnap", APP, f"w{i}", "true"])
            without.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            sh(ctr + ["run", "--rm", "--snapshotter", "kitsnap", "--mount",
                      f"type=bind,src={path},dst=/models,options=rbind:ro", APP, f"m{i}", "true"])
            with_m.append(time.perf_counter() - t0)
        w0, w1 = statistics.median(without), statistics.median(with_m)
        with open(f"/proc/{procs[0].pid}/status") as f:
            hwm = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))

        total = re.search(r"total ([0-9.]+ \w+)", df)
        size = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
        num, unit = total.group(1).split() if total else ("0", "B")
        disk = float(num) * size[unit]
        model_bytes = a.size_mib << 20
        print()
        print("| measure | baseline | kitsnap | result |")
        print("|---|---|---|---|")
        print(f"| cold: registry to first byte read in a container | `ctr pull` + run (overlayfs) {b:.2f} s | "
              f"pull --containerd + mount + run {k:.2f} s | **{k / b:.2f}** (target <= 0.6) |")
        sp, sm, sr = (statistics.median(x[j] for x in steps) for j in range(3))
        print(f"| where kitsnap's cold time goes | | pull --containerd {sp:.2f} s, mount {sm:.2f} s, "
              f"run {sr:.2f} s | |")
        print(f"| cold, native (no kitsnap command): `ctr pull` through the mirror + `ctr images mount` + run "
              f"| pull --containerd + mount + run {k:.2f} s | native {n:.2f} s | **{n / k:.2f}** (target <= 1.1) |")
        print(f"| cold, native vs the baked image | `ctr pull` + run (overlayfs) {b:.2f} s | native {n:.2f} s | "
              f"**{n / b:.2f}** (target <= 0.3) |")
        we, wl = statistics.median(whole_eager), statistics.median(whole_lazy)
        print(f"| cold: registry to the whole model read in a container (`sha256sum`) | pull --containerd + "
              f"mount + run {we:.2f} s | native, lazy {wl:.2f} s | **{wl / we:.2f}** |")
        print(f"| `ctr pull` of the {a.size_mib} MiB baked image | directly {pd:.2f} s | through the mirror "
              f"{pv:.2f} s | **{pv / pd:.2f}** (target <= 1.1) |")
        print(f"| warm: start a container | no mount {w0 * 1000:.0f} ms | model mounted {w1 * 1000:.0f} ms | "
              f"**{(w1 - w0) * 1000:+.0f} ms** (target <= 50 ms) |")
        print(f"| disk after pull (`kitsnap df` node total) | model {model_bytes / (1 << 30):.2f} GiB | "
              f"{disk / (1 << 30):.2f} GiB | **{disk / model_bytes:.3f}x** (target <= 1.1) |")
        print(f"| kitsnap serve peak RSS over every pull above (mirror included) | | {hwm / 1024:.0f} MiB | "
              f"(target < 64 MiB) |")
        sh([a.bin, "umount", "bench"])
        peer_rows(a, work, addr, sh, ctr, kit_ref, k, hosts)
        nerdctl = os.path.join(ROOT, ".cache/peers/bin/nerdctl")
        if version.startswith("2") and os.access(nerdctl, os.X_OK):
            sh(ctr + ["images", "rm", "--sync", kit_ref])
            nerdctl_rows(a, work, env, ctr, ctd_sock, hosts, kit_ref, img_ref, nerdctl)
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()
        reg.stop()
        subprocess.run(f"grep -o ' {work}[^ ]*' /proc/mounts | sort -r | xargs -r -n1 umount -l", shell=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
