#!/usr/bin/env python3
"""Registry benchmark: kitsnap push/pull of a ModelKit against `skopeo copy` of the same
artifact between an OCI layout (kitsnap's store) and a local CNCF distribution registry,
measured in the same run. Target: kitsnap/skopeo <= 0.7. Peak RSS is reported too.

Every run starts from an empty registry (and, for pulls, an empty destination), so both
tools move every byte. Usage: benches/registry.py [--size-mib N] [--repeat N]
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pack_unpack import ROOT, run  # noqa: E402


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Registry:
    def __init__(self, work):
        self.work = work
        self.proc = None
        self.port = free_port()

    def restart(self):
        self.stop()
        data = os.path.join(self.work, "regdata")
        shutil.rmtree(data, ignore_errors=True)
        cfg = os.path.join(self.work, "reg.yml")
        with open(cfg, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n"
                    f"storage:\n  filesystem:\n    rootdirectory: {data}\n"
                    f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: bench\n")
        self.proc = subprocess.Popen(["docker-registry", "serve", cfg],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("registry did not start")

    def stop(self):
        if self.proc:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/kitsnap"))
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="kitsnap-regbench-")
    reg = Registry(work)
    try:
        src = os.path.join(work, "src")
        os.makedirs(src)
        with open(os.path.join(src, "model.bin"), "wb") as f:
            for _ in range(a.size_mib):
                f.write(os.urandom(1 << 20))
        with open(os.path.join(src, "Kitfile"), "w") as f:
            f.write("manifestVersion: 1.0.0\nmodel:\n  path: model.bin\n")
        store = os.path.join(work, "store")
        env = dict(os.environ, KITSNAP_STORE=store, DOCKER_CONFIG=os.path.join(work, "docker"),
                   KITSNAP_HOSTS_DIR=os.path.join(work, "hosts"))
        subprocess.run([a.bin, "--no-progress", "pack", src, "-t", "bench:v1"], env=env, check=True,
                       capture_output=True)
        addr = lambda: f"127.0.0.1:{reg.port}"  # noqa: E731
        print(f"registry benchmark: {a.size_mib} MiB ModelKit, best of {a.repeat}, {os.cpu_count()} cores")

        res = {}
        def measure(name, fn, setup):
            best_t, rss = None, 0.0
            for _ in range(a.repeat):
                setup()
                t, r = fn()
                best_t = t if best_t is None else min(best_t, t)
                rss = max(rss, r)
            res[name] = (best_t, rss)
            print(f"  {name:<40} {best_t:7.2f} s  peak RSS {rss:6.1f} MiB", flush=True)

        measure("skopeo copy oci-layout -> registry",
                lambda: run(["skopeo", "copy", "-q", "--dest-tls-verify=false",
                             f"oci:{store}:localhost/bench:v1", f"docker://{addr()}/m:v1"]),
                reg.restart)
        measure("kitsnap push",
                lambda: run([a.bin, "--no-progress", "push", "bench:v1", f"{addr()}/m:v1", "--plain-http"], env=env),
                reg.restart)
        # Pulls read from a registry filled once.
        reg.restart()
        subprocess.run([a.bin, "--no-progress", "push", "bench:v1", f"{addr()}/m:v1", "--plain-http"],
                       env=env, check=True, capture_output=True)
        dst = os.path.join(work, "dst")
        store2 = os.path.join(work, "store2")
        env2 = dict(env, KITSNAP_STORE=store2)

        def clean():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.rmtree(store2, ignore_errors=True)
        measure("skopeo copy registry -> oci-layout",
                lambda: run(["skopeo", "copy", "-q", "--src-tls-verify=false",
                             f"docker://{addr()}/m:v1", f"oci:{dst}:v1"]), clean)
        measure("kitsnap pull",
                lambda: run([a.bin, "--no-progress", "pull", f"{addr()}/m:v1", "--plain-http"], env=env2), clean)

        gib = a.size_mib / 1024
        sp, kp = res["skopeo copy oci-layout -> registry"], res["kitsnap push"]
        sl, kl = res["skopeo copy registry -> oci-layout"], res["kitsnap pull"]
        print()
        print("| operation | skopeo copy | kitsnap | ratio (kitsnap/skopeo) | kitsnap peak RSS |")
        print("|---|---|---|---|---|")
        print(f"| push {gib:.0f} GiB | {sp[0]:.2f} s | {kp[0]:.2f} s ({gib/kp[0]:.2f} GiB/s) | **{kp[0]/sp[0]:.2f}** (target <= 0.7) | {kp[1]:.0f} MiB |")
        print(f"| pull {gib:.0f} GiB | {sl[0]:.2f} s | {kl[0]:.2f} s ({gib/kl[0]:.2f} GiB/s) | **{kl[0]/sl[0]:.2f}** (target <= 0.7) | {kl[1]:.0f} MiB |")
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
