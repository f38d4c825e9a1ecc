#!/usr/bin/env python3
"""The node under load: concurrent pulls, and pulls of kits with many layers.

Concurrency: 8 distinct ModelKits of --size-mib each (random weights, one layer), pulled
  into containerd with `kitsnap pull --containerd` one after another, then (after removing
  them and letting containerd's GC clean up) all 8 at once. Target: at once <= one after
  another, in total wall time.
Scale: kits of 250, 500 and 1,000 layers (small files), each pulled into an empty
  namespace; layers/s must stay constant within 20% (pull time linear in layers).
Layers at once: one kit of 4 layers of --size-mib each, pulled with `pull_concurrency = 1`
  (one layer after another, as before 2026-12-05) and with the default (4), kitsnap serve
  restarted in between. Target: concurrent <= one at a time.

Needs root, containerd, runc, docker-registry and a release build.
Usage: benches/node.py [--size-mib N] [--layers 250,500,1000] [--containerd-bin DIR]
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from registry import Registry  # noqa: E402
from snapshotter import wait_sock  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--kits", type=int, default=8)
    ap.add_argument("--layers", default="250,500,1000")
    ap.add_argument("--containerd-bin", default="/usr/bin")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/kitsnap"))
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kitsnap-nodebench-", dir="/var/tmp")
    procs = []
    reg = Registry(work)
    try:
        reg.restart()
        addr = f"127.0.0.1:{reg.port}"
        store = dict(os.environ, KITSNAP_STORE=os.path.join(work, "store"))

        def pack_push(src, ref):
            subprocess.run([a.bin, "pack", src, "-t", ref, "--no-progress"], env=store, check=True,
                           capture_output=True)
            subprocess.run([a.bin, "push", ref, "--plain-http", "--no-progress"], env=store, check=True,
                           capture_output=True)

        kits = []
        for i in range(a.kits):
            src = os.path.join(work, f"kit{i}")
            os.makedirs(src)
            with open(os.path.join(src, "model.bin"), "wb") as f:
                for _ in range(a.size_mib):
                    f.write(os.urandom(1 << 20))
            with open(os.path.join(src, "Kitfile"), "w") as f:
                f.write(f"manifestVersion: 1.0.0\npackage:\n  name: k{i}\nmodel:\n  path: model.bin\n")
            ref = f"{addr}/bench/kit{i}:v1"
            pack_push(src, ref)
            shutil.rmtree(src)
            kits.append(ref)
        many = {}
        for n in [int(x) for x in a.layers.split(",")]:
            src = os.path.join(work, f"many{n}")
            os.makedirs(os.path.join(src, "d"))
            lines = ["manifestVersion: 1.0.0", "package:", f"  name: many{n}", "datasets:"]
            for j in range(n):
                with open(os.path.join(src, "d", f"{j}.txt"), "w") as f:
                    f.write(f"layer {j}\n" * 64)
                lines += [f"  - name: d{j}", f"    path: d/{j}.txt"]
            with open(os.path.join(src, "Kitfile"), "w") as f:
                f.write("\n".join(lines) + "\n")
            ref = f"{addr}/bench/many{n}:v1"
            pack_push(src, ref)
            shutil.rmtree(src)
            many[n] = ref
        src = os.path.join(work, "wide")
        os.makedirs(src)
        lines = ["manifestVersion: 1.0.0", "package:", "  name: wide", "datasets:"]
        for j in range(4):
            with open(os.path.join(src, f"{j}.bin"), "wb") as f:
                for _ in range(a.size_mib):
                    f.write(os.urandom(1 << 20))
            lines += [f"  - name: d{j}", f"    path: {j}.bin"]
        with open(os.path.join(src, "Kitfile"), "w") as f:
            f.write("\n".join(lines) + "\n")
        wide = f"{addr}/bench/wide:v1"
        pack_push(src, wide)
        shutil.rmtree(src)
        shutil.rmtree(os.path.join(work, "store"))

        ks_sock = os.path.join(work, "kitsnap.sock")
        ctd_sock = os.path.join(work, "containerd.sock")

        def start_ks(concurrency):
            cfg = os.path.join(work, f"kitsnap-{concurrency}.toml")
            with open(cfg, "w") as f:
                f.write(f"pull_concurrency = {concurrency}\n")
            p = subprocess.Popen([a.bin, "serve", "--config", cfg, "--root", os.path.join(work, "ks"),
                                  "--address", ks_sock, "--containerd-address", ctd_sock, "--mount-root",
                                  os.path.join(work, "mounts"), "--no-docker-plugin", "--log-level", "warn"],
                                 stderr=subprocess.DEVNULL)
            wait_sock(ks_sock)
            return p

        ks = start_ks(4)
        procs.append(ks)
        with open(os.path.join(work, "config.toml"), "w") as f:
            f.write(f'version = 2\nroot = "{work}/root"\nstate = "{work}/state"\n'
                    f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "{ctd_sock}"\n'
                    f'[proxy_plugins.kitsnap]\n  type = "snapshot"\n  address = "{ks_sock}"\n')
        env = dict(os.environ, PATH=f"{a.containerd_bin}:{os.environ['PATH']}", KITSNAP_ADDRESS=ks_sock,
                   KITSNAP_STORE=os.path.join(work, "empty-store"))
        procs.append(subprocess.Popen([os.path.join(a.containerd_bin, "containerd"), "--config",
                                       os.path.join(work, "config.toml")], env=env, stderr=subprocess.DEVNULL))
        wait_sock(ctd_sock)
        time.sleep(0.5)
        version = subprocess.run([os.path.join(a.containerd_bin, "containerd"), "--version"],
                                 capture_output=True, text=True).stdout.split()[2]

        def pull(ref, ns):
            r = subprocess.run([a.bin, "pull", "--containerd", ref, "-n", ns, "--plain-http", "--no-progress"],
                               env=env, capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"pull {ref}: {r.stderr}")

        def clean(ns, refs):
            ctr = [os.path.join(a.containerd_bin, "ctr"), "--address", ctd_sock, "-n", ns]
            for i, ref in enumerate(refs):
                last = i == len(refs) - 1
                subprocess.run(ctr + ["images", "rm"] + (["--sync"] if last else []) + [ref],
                               capture_output=True, check=True)

        print(f"node benchmark: containerd {version}, {os.cpu_count()} cores, local registry")
        t = time.monotonic()
        for ref in kits:
            pull(ref, "seq")
        seq = time.monotonic() - t
        clean("seq", kits)
        threads = [threading.Thread(target=pull, args=(ref, "conc")) for ref in kits]
        errors = []
        t = time.monotonic()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        conc = time.monotonic() - t
        clean("conc", kits)
        gib = a.kits * a.size_mib / 1024
        print("\n| measure | one after another | all at once | ratio |\n|---|---|---|---|")
        print(f"| {a.kits} pulls of {a.size_mib} MiB ({gib:.1f} GiB) | {seq:.2f} s | {conc:.2f} s | "
              f"**{conc / seq:.2f}** (target <= 1.0) |")
        rates = {}
        for n, ref in many.items():
            t = time.monotonic()
            pull(ref, f"many{n}")
            rates[n] = n / (time.monotonic() - t)
            clean(f"many{n}", [ref])
        base = rates[min(rates)]
        print("\n| layers | pull time | layers/s | vs the smallest |\n|---|---|---|---|")
        for n, r in rates.items():
            print(f"| {n} | {n / r:.2f} s | {r:.1f} | **{r / base:.2f}** (target 0.8-1.2) |")
        wide_times = {}
        for conc in [1, 4]:
            ks.terminate()
            ks.wait(timeout=60)
            procs.remove(ks)
            ks = start_ks(conc)
            procs.append(ks)
            time.sleep(1)
            subprocess.run(["sync"], check=True)
            t = time.monotonic()
            pull(wide, f"wide{conc}")
            wide_times[conc] = time.monotonic() - t
            clean(f"wide{conc}", [wide])
        print("\n| 4 layers of %d MiB | one at a time | 4 at once | ratio |\n|---|---|---|---|" % a.size_mib)
        print(f"| pull --containerd | {wide_times[1]:.2f} s | {wide_times[4]:.2f} s | "
              f"**{wide_times[4] / wide_times[1]:.2f}** (target <= 1.0) |")
        if errors:
            raise RuntimeError(errors)
    finally:
        for p in procs:
            p.terminate()
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        reg.stop()
        subprocess.run(["umount", "-R", os.path.join(work, "mounts")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
