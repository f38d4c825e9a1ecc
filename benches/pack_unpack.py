#!/usr/bin/env python3
"""Pack/unpack benchmark: kitsnap against tar-based baselines measured in the same run.

  pack   --compression none   vs  tar -cf - DIR | sha256sum      (target ratio <= 1.2)
  unpack (digest-verified)    vs  tar -xf LAYER                  (target ratio <= 1.2)
  pack   --compression zstd   vs  tar -cf - DIR | zstd -1        (throughput)

Each command runs REPEAT times on a warm page cache; the best wall time counts. Peak RSS
is the child's ru_maxrss. Usage: benches/pack_unpack.py [--size-mib N] [--repeat N]
"""
import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, shell=False, env=None):
    """Runs a command; returns (seconds, peak RSS in MiB of that command's processes)."""
    wrapped = [sys.executable, "-c", RUSAGE_CHILD, "1" if shell else "0"] + (
        [cmd] if shell else cmd
    )
    t0 = time.perf_counter()
    out = subprocess.run(wrapped, env=env, check=True, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    return dt, int(out.stdout.strip().splitlines()[-1]) / 1024


# A tiny runner so that ru_maxrss covers only the measured command (and its pipeline).
RUSAGE_CHILD = r"""
import resource, subprocess, sys
shell = sys.argv[1] == "1"
args = sys.argv[2] if shell else sys.argv[2:]
subprocess.run(args, shell=shell, check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def best(label, repeat, fn, setup=None):
    times, rss = [], 0.0
    for _ in range(repeat):
        if setup:
            setup()
        dt, r = fn()
        times.append(dt)
        rss = max(rss, r)
    t = min(times)
    print(f"  {label:<44} {t:7.2f} s  peak RSS {rss:6.1f} MiB", flush=True)
    return t, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/kitsnap"))
    a = ap.parse_args()

    work = tempfile.mkdtemp(prefix="kitsnap-bench-")
    try:
        src = os.path.join(work, "src")
        os.makedirs(src)
        weights = os.path.join(src, "model.bin")
        # Half random (incompressible), half text-like: a realistic mix for compression.
        with open(weights, "wb") as f:
            chunk = 1 << 20
            for i in range(a.size_mib):
                if i % 2 == 0:
                    f.write(os.urandom(chunk))
                else:
                    f.write((b"%08d weights 0.125 -0.5 1e-3\n" % i) * (chunk // 32))
        with open(os.path.join(src, "Kitfile"), "w") as f:
            f.write("manifestVersion: 1.0.0\nmodel:\n  path: model.bin\n")
        store = os.path.join(work, "store")
        env = dict(os.environ, KITSNAP_STORE=store)
        size_gib = a.size_mib / 1024
        print(f"kitsnap benchmark: {a.size_mib} MiB model, best of {a.repeat}, {os.cpu_count()} cores")

        def fresh_store():
            shutil.rmtree(store, ignore_errors=True)

        print("pack (--compression none)")
        base, _ = best("baseline: tar -cf - | sha256sum", a.repeat,
                       lambda: run(f"tar -cf - -C {src} model.bin | sha256sum", shell=True))
        ossl = None
        if shutil.which("openssl"):
            ossl, _ = best("stronger baseline: tar | openssl sha256", a.repeat,
                           lambda: run(f"tar -cf - -C {src} model.bin | openssl dgst -sha256", shell=True))
        ours, rss_pack = best("kitsnap pack", a.repeat,
                              lambda: run([a.bin, "--no-progress", "pack", src, "-t", "bench:none"], env=env),
                              setup=fresh_store)
        r_pack = ours / base

        layer = subprocess.run(
            [a.bin, "inspect", "bench:none"], env=env, check=True, capture_output=True, text=True
        ).stdout
        import json
        digest = json.loads(layer)["manifest"]["layers"][0]["digest"].split(":")[1]
        blob = os.path.join(store, "blobs/sha256", digest)
        out = os.path.join(work, "out")

        def fresh_out():
            shutil.rmtree(out, ignore_errors=True)
            os.makedirs(out)

        print("unpack")
        ubase, _ = best("baseline: tar -xf layer", a.repeat,
                        lambda: run(["tar", "-xf", blob, "-C", out]), setup=fresh_out)
        uours, rss_unpack = best("kitsnap unpack (digest verified)", a.repeat,
                                 lambda: run([a.bin, "--no-progress", "unpack", "bench:none", "-d", out,
                                              "--filter", "model"], env=env), setup=fresh_out)
        r_unpack = uours / ubase

        print("pack (--compression zstd)")
        zbase, _ = best("baseline: tar -cf - | zstd -1", a.repeat,
                        lambda: run(f"tar -cf - -C {src} model.bin | zstd -1 -q -c > {work}/z.tar.zst",
                                    shell=True))
        zours, rss_z = best("kitsnap pack --compression zstd", a.repeat,
                            lambda: run([a.bin, "--no-progress", "pack", src, "-t", "bench:zstd",
                                         "--compression", "zstd"], env=env), setup=fresh_store)
        print()
        print("| operation | baseline | kitsnap | ratio (kitsnap/baseline) | kitsnap peak RSS |")
        print("|---|---|---|---|---|")
        print(f"| pack {size_gib:.0f} GiB, none | tar\\|sha256sum {base:.2f} s ({size_gib/base:.2f} GiB/s) "
              f"| {ours:.2f} s ({size_gib/ours:.2f} GiB/s) | **{r_pack:.2f}** (target <= 1.2) | {rss_pack:.0f} MiB |")
        if ossl:
            print(f"| pack {size_gib:.0f} GiB, none | tar\\|openssl sha256 {ossl:.2f} s ({size_gib/ossl:.2f} GiB/s) "
                  f"| {ours:.2f} s | **{ours/ossl:.2f}** | {rss_pack:.0f} MiB |")
        print(f"| unpack {size_gib:.0f} GiB | tar -xf {ubase:.2f} s | {uours:.2f} s | **{r_unpack:.2f}** (target <= 1.2) "
              f"| {rss_unpack:.0f} MiB |")
        print(f"| pack {size_gib:.0f} GiB, zstd | tar\\|zstd -1 {zbase:.2f} s ({size_gib/zbase:.2f} GiB/s) "
              f"| {zours:.2f} s ({size_gib/zours:.2f} GiB/s) | **{zours/zbase:.2f}** | {rss_z:.0f} MiB |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
