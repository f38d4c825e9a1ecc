#!/usr/bin/env python3
"""Scale: does kitsnap's time grow linearly with bytes, files and layers?

Three pairs of ModelKits, each pair differing 10x (or 8x) in one dimension only:
  bytes:  one model file of --small-gib and of 10x that (default 1 and 10 GiB);
  files:  a dataset directory of 10,000 and of 100,000 small files (one layer);
  layers: the same 512 MiB as 8 datasets of 64 MiB and as 64 datasets of 8 MiB (8 and 64
          layers: more layers must not cost more per byte).
For each kit: `kitsnap pack`, `push` (to an empty local docker-registry), `pull` (into an
empty store) and `unpack REF -d` (from the registry into an empty directory). The table
gives each time, the rate (MiB/s or files/s) and the big kit's rate over the
small one's: 1.0 is linear; the target is >= 0.8 (no worse than 25% slower per unit).
Each time includes a `sync` after the command: otherwise the page cache absorbs all of a
1 GiB kit's writes but not a 10 GiB one's, and the ratio would measure the cache.
Peak RSS of every command is printed too: it must not grow with the kit.

Needs docker-registry and a release build; about 54 GiB of free disk in /var/tmp with
the default sizes (it refuses to start with less). Usage: benches/scale.py [--small-gib 1] [--skip bytes,files,layers]
"""
import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pack_unpack import ROOT  # noqa: E402
from peers import measure, require_free  # noqa: E402
from registry import Registry  # noqa: E402


def random_file(path, mib):
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(1 << 20))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--small-gib", type=int, default=1)
    ap.add_argument("--skip", default="")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/kitsnap"))
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    if "bytes" not in skip:
        # The big kit's model, its tar in the store, the registry's copy, the pulled blob
        # and the unpacked file at once, and the small kits' leftovers: 54 GiB by default.
        big = 10 * a.small_gib << 30
        require_free("scale.py", f"a {10 * a.small_gib} GiB kit", 5 * big + (4 << 30),
                     "/var/tmp", "pass a smaller --small-gib or --skip bytes")
    work = tempfile.mkdtemp(prefix="kitsnap-scale-", dir="/var/tmp")
    reg = Registry(work)
    d = lambda *p: os.path.join(work, *p)  # noqa: E731
    env = dict(os.environ, KITSNAP_STORE=d("store"))
    ks = [a.bin, "--no-progress"]
    results = []  # (dimension, label, units, op, seconds, rss)

    def fresh(*paths):
        for p in paths:
            shutil.rmtree(p, ignore_errors=True)

    def kit(dim, label, units, build):
        src = d("src")
        fresh(src, d("store"), d("pulled"), d("out"))
        os.makedirs(src)
        build(src)
        subprocess.run(["sync"], check=True)
        reg.restart()
        ref = f"127.0.0.1:{reg.port}/scale/{dim}:v1"
        steps = [
            ("pack", ks + ["pack", src, "-t", ref], env),
            ("push", ks + ["push", ref, "--plain-http"], env),
            ("pull", ks + ["pull", ref, "--plain-http"], dict(env, KITSNAP_STORE=d("pulled"))),
            ("unpack", ks + ["unpack", ref, "-d", d("out"), "--plain-http"], dict(env, KITSNAP_STORE=d("none"))),
        ]
        for op, cmd, e in steps:
            subprocess.run(["sync"], check=True)
            t, rss, *_ = measure(" ".join(shlex.quote(x) for x in cmd) + " && sync", e, shell=True)
            results.append((dim, label, units, op, t, rss))
            print(f"  {dim:<7} {label:<22} {op:<7} {t:8.2f} s  {units / t:10.1f} /s  {rss:6.0f} MiB RSS", flush=True)
            if op == "pull":
                fresh(d("pulled"))
        fresh(src, d("store"), d("out"))

    def model(gib):
        return lambda src: (random_file(os.path.join(src, "model.bin"), gib * 1024), write_kitfile(
            src, "model:\n  path: model.bin\n"))

    def files(n):
        def build(src):
            for i in range(n):
                sub = os.path.join(src, "data", f"{i // 1000:03d}")
                if i % 1000 == 0:
                    os.makedirs(sub)
                with open(os.path.join(sub, f"{i}.txt"), "wb") as f:
                    f.write(b"%d\n" % i * 16)
            write_kitfile(src, "datasets:\n  - name: data\n    path: data\n")
        return build

    def layers(n):
        def build(src):
            lines = ["datasets:"]
            for i in range(n):
                random_file(os.path.join(src, f"{i}.bin"), 512 // n)
                lines += [f"  - name: d{i}", f"    path: {i}.bin"]
            write_kitfile(src, "\n".join(lines) + "\n")
        return build

    try:
        if "bytes" not in skip:
            for g in (a.small_gib, 10 * a.small_gib):
                kit("bytes", f"{g} GiB model", g * 1024, model(g))
        if "files" not in skip:
            for n in (10_000, 100_000):
                kit("files", f"{n:,} files", n, files(n))
        if "layers" not in skip:
            for n in (8, 64):
                kit("layers", f"{n} layers of {512 // n} MiB", 512, layers(n))
    finally:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)

    unit = {"bytes": "MiB/s", "files": "files/s", "layers": "MiB/s"}
    print("\n| scale | kit | op | time | rate | rate vs the small kit | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for dim in dict.fromkeys(r[0] for r in results):
        rows = [r for r in results if r[0] == dim]
        small = {r[3]: r[2] / r[4] for r in rows if r[1] == rows[0][1]}
        for _, label, units, op, t, rss in rows:
            rate = units / t
            rel = rate / small[op]
            mark = f"**{rel:.2f}**" if label != rows[0][1] else "1.00"
            print(f"| {dim} | {label} | {op} | {t:.2f} s | {rate:.1f} {unit[dim]} | {mark} | {rss:.0f} MiB |")


def write_kitfile(src, body):
    with open(os.path.join(src, "Kitfile"), "w") as f:
        f.write("manifestVersion: 1.0.0\npackage:\n  name: scale\n" + body)


if __name__ == "__main__":
    main()
