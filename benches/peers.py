#!/usr/bin/env python3
"""kitsnap against the tools users would pick instead, on the same model (2 GiB unless
--size-mib says otherwise), the same local registry (Debian's docker-registry), in one
run: KitOps' `kit` (when KITSNAP_KIT or
--kit names a binary: the Go proxy refuses kitops, so the project's scripts cannot build
it), the `oras` CLI, Dragonfly's `modctl` (both built by scripts/install-peers.sh), skopeo,
and the physical floors: `tar | tee | openssl sha256`, `tar | zstd`, and for the registry
rows what curl needs to PUT or GET the same bytes (the registry's and the disk's floor).

Each row: wall time (best of --repeat rounds; each round runs every tool of the operation
once, so that a slow spell of the VM falls on all of them), peak RSS of the command, bytes
it wrote to disk (getrusage ru_oublock), its CPU seconds and the registry's over the same
time, and the ratio against the best peer. Page cache warm (the source
is read once before). Every push starts from an empty registry, every pull/unpack from an
empty destination. A peer that checks no digest is timed but left out of the ratio.

Every row's output is removed after the row, and each tool's store and the source once
pushed for the pull rows, so that the peak disk use is about five times the model (the
source, three tools' stores and the registry): a 10 GiB run peaked at 51 GB (measured).

Usage: benches/peers.py [--size-mib 2048] [--repeat 1] [--kit PATH] [--skip gzip]
"""
import argparse
import bisect
import hashlib
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from pack_unpack import ROOT  # noqa: E402
from registry import Registry  # noqa: E402

RUNNER = r"""
import resource, subprocess, sys
shell = sys.argv[1] == "1"
args = sys.argv[2] if shell else sys.argv[2:]
subprocess.run(args, shell=shell, executable="/bin/bash" if shell else None, check=True,
               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(r.ru_maxrss, r.ru_oublock, r.ru_utime + r.ru_stime)
"""


KITFILE = "manifestVersion: 1.0.0\npackage:\n  name: bench\nmodel:\n  name: m\n  path: model.safetensors\n"


def at_once(url, blob, out, fdatasync):
    """A shell command running the registry's GET of `url`, `openssl sha256` of `blob` and
    `dd` of it to `out` concurrently, failing if any fails."""
    sync = " conv=fdatasync" if fdatasync else ""
    return (f"curl -sf {url} >/dev/null & a=$!; openssl sha256 {blob} >/dev/null & b=$!; "
            f"dd if={blob} of={out} bs=1M status=none{sync} & c=$!; "
            f"wait $a; ra=$?; wait $b; rb=$?; wait $c && [ $ra = 0 ] && [ $rb = 0 ]")


def bf16_weights(dst, mib):
    """A Kitfile and `mib` MiB of bf16 weights drawn from N(0, 0.02): the low byte is noise,
    the high one (sign and exponent) takes a few values, as in a trained model's tensors."""
    rng = random.Random(7)
    counts = {}
    for _ in range(1 << 16):
        hi = struct.pack("<f", rng.gauss(0, 0.02))[3]
        counts[hi] = counts.get(hi, 0) + 1
    values, cum, acc = sorted(counts), [], 0
    for v in values:
        acc += counts[v]
        cum.append(acc)
    # Maps a uniform byte to a high byte with that distribution.
    table = bytes(values[min(bisect.bisect_right(cum, (i + 0.5) / 256 * acc), len(values) - 1)]
                  for i in range(256))
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(dst, "model.safetensors"), "wb") as f:
        for _ in range(mib):
            buf = bytearray(1 << 20)
            buf[0::2] = os.urandom(1 << 19)
            buf[1::2] = os.urandom(1 << 19).translate(table)
            f.write(buf)
    with open(os.path.join(dst, "Kitfile"), "w") as f:
        f.write(KITFILE)


def cpu_seconds(pid):
    """User + system CPU seconds a live process has used (0 without one)."""
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(cmd, env, shell=False, cwd=None, reg_pid=None):
    """(seconds, peak RSS MiB, MiB written, CPU seconds, the registry's CPU seconds) of one
    command and its children. The registry's share shows which rows it bounds: on these 2
    cores it hashes every blob it takes in Go 1.19's SHA-256 (400-460 MB/s here), one core's
    work that no client can shorten."""
    wrapped = [sys.executable, "-c", RUNNER, "1" if shell else "0"] + ([cmd] if shell else cmd)
    r0 = cpu_seconds(reg_pid)
    t0 = time.perf_counter()
    out = subprocess.run(wrapped, env=env, capture_output=True, text=True, cwd=cwd)
    dt = time.perf_counter() - t0
    r1 = cpu_seconds(reg_pid)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd}: {out.stderr[-2000:]}")
    rss, oublock, cpu = out.stdout.strip().splitlines()[-1].split()
    return dt, int(rss) / 1024, int(oublock) * 512 / 2**20, float(cpu), r1 - r0


def require_free(script, what, need, where, fix):
    """Exits unless `where` has `need` bytes free: a disk that fills mid-run takes every
    other process on the machine down with it, so a benchmark refuses before it starts."""
    free = shutil.disk_usage(where).free
    if free < need:
        sys.exit(f"{script}: {what} needs about {need >> 30} GiB free in {where}, which has "
                 f"{free >> 30} GiB: free some, or {fix}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target/release/kitsnap"))
    ap.add_argument("--kit", default=os.environ.get("KITSNAP_KIT", ""))
    ap.add_argument("--skip", default="", help="comma-separated words: rows whose operation contains "
                    "one are left out (e.g. gzip: at 10 GiB its rows take 9 minutes)")
    a = ap.parse_args()
    peers = os.path.join(ROOT, ".cache/peers/bin")
    oras, modctl = os.path.join(peers, "oras"), os.path.join(peers, "modctl")
    kit = a.kit if a.kit and os.path.isfile(a.kit) else None
    for need in (oras, modctl, a.bin):
        if not os.path.isfile(need):
            sys.exit(f"missing {need}: run scripts/install-peers.sh and cargo build --release")

    # About five copies of the model at once (the docstring).
    require_free("peers.py", f"{a.size_mib} MiB", 5 * a.size_mib * (1 << 20) + (1 << 30),
                 tempfile.gettempdir(), "set TMPDIR to a roomier disk")
    work = tempfile.mkdtemp(prefix="kitsnap-peers-")
    reg = Registry(work)
    reg.restart()
    addr = f"127.0.0.1:{reg.port}"
    src = os.path.join(work, "src")
    os.makedirs(src)
    with open(os.path.join(src, "model.safetensors"), "wb") as f:
        for _ in range(a.size_mib):
            f.write(os.urandom(1 << 20))
    with open(os.path.join(src, "Kitfile"), "w") as f:
        f.write(KITFILE)
    with open(os.path.join(src, "Modelfile"), "w") as f:
        f.write("NAME bench\nARCH transformer\nFAMILY bench\nFORMAT safetensors\nMODEL model.safetensors\n")
    subprocess.run(["cat", os.path.join(src, "model.safetensors")], stdout=subprocess.DEVNULL, check=True)

    d = lambda *p: os.path.join(work, *p)  # noqa: E731
    env = dict(os.environ, KITSNAP_STORE=d("ks-store"), KITOPS_HOME=d("kit-home"),
               DOCKER_CONFIG=d("docker"), HOME=d("home"))
    os.makedirs(d("home"), exist_ok=True)

    def fresh(*paths):
        for p in paths:
            shutil.rmtree(p, ignore_errors=True)

    def fresh_file(p):
        if os.path.exists(p):
            os.remove(p)

    rows = []  # (operation, tool, seconds, rss, written, cpu, registry cpu)

    def skipped(op):
        return any(w in op for w in a.skip.split(",") if w)

    pending = []  # the rows of the operation being defined, timed together by flush()

    def bench(op, tool, cmd, setup=None, shell=False, cwd=None, leaves=()):
        """A row of operation `op`, timed at the next flush(); `leaves` are the paths it
        writes, removed after each run."""
        if skipped(op):
            return
        assert not pending or pending[0][0] == op, f"flush() {pending[0][0]} before {op}"
        pending.append((op, tool, cmd, setup, shell, cwd, leaves))

    def flush():
        """Times the pending rows: each round runs every row once, so that a slow spell of
        this shared VM falls on every tool alike (timings move by up to 30% between
        minutes); each row keeps its best round."""
        best = {}
        for _ in range(a.repeat):
            for i, (_op, _tool, cmd, setup, shell, cwd, leaves) in enumerate(pending):
                if setup:
                    setup()
                r = measure(cmd, env, shell, cwd, reg.proc.pid if reg.proc else None)
                for p in leaves:
                    if os.path.isfile(p):
                        fresh_file(p)
                    else:
                        fresh(p)
                if i not in best or r[0] < best[i][0]:
                    best[i] = r
        for i, (op, tool, *_rest) in enumerate(pending):
            rows.append((op, tool) + best[i])
            t, rss, w, cpu, rcpu = best[i]
            print(f"  {op:<24} {tool:<34} {t:7.2f} s {rss:7.0f} MiB RSS {w:8.0f} MiB written "
                  f"{cpu:6.2f} + {rcpu:5.2f} CPU s", flush=True)
        pending.clear()

    ks = a.bin
    mc = [modctl, "--storage-dir", d("modctl"), "--no-progress", "--log-dir", d("modctl-logs")]
    print(f"peers benchmark: {a.size_mib} MiB model, best of {a.repeat}, {os.cpu_count()} cores, "
          f"kit {'at ' + kit if kit else 'absent'}")

    # --- pack, uncompressed (and the floor)
    bench("pack none", "floor: tar | tee blob | sha256",
          f"tar -C {src} -cf - model.safetensors | tee {d('floor.tar')} | openssl sha256 >/dev/null",
          shell=True, leaves=[d("floor.tar")])
    # kitsnap fsyncs every blob before it is named (no torn blob after a crash).
    bench("pack none", "floor: tar | tee blob | sha256 + sync blob",
          f"tar -C {src} -cf - model.safetensors | tee {d('floor.tar')} | openssl sha256 >/dev/null"
          f" && sync {d('floor.tar')}", shell=True, leaves=[d("floor.tar")])
    bench("pack none", "kitsnap pack", [ks, "--no-progress", "pack", src, "-t", "bench:v1"],
          setup=lambda: fresh(d("ks-store")), leaves=[d("ks-store")])
    if kit:
        bench("pack none", "kit pack", [kit, "pack", src, "-t", "bench:v1", "--progress", "none"],
              setup=lambda: fresh(d("kit-home")), leaves=[d("kit-home")])
    bench("pack none", "modctl build (raw)", mc + ["build", "-t", f"{addr}/mc/bench:v1", "-f",
          os.path.join(src, "Modelfile"), "--no-creation-time", src],
          setup=lambda: fresh(d("modctl")), leaves=[d("modctl")])
    flush()
    # --- pack, compressed
    # Random bytes do not compress, so kitsnap stores them (pargz's probe) and what bounds it
    # is the two digests of a compressed layer, as for zstd. gzip -6 is the baseline users
    # know; on random bytes it spends a core searching for matches.
    bench("pack gzip", "baseline: tar | gzip -6", f"tar -C {src} -cf - model.safetensors | gzip -6 >{d('f.gz')}",
          shell=True, leaves=[d("f.gz")])
    bench("pack gzip", "floor: tar | sha256 | tee blob | sha256",
          f"tar -C {src} -cf - model.safetensors | tee >(openssl sha256 >/dev/null) "
          f"| tee {d('f.gz')} | openssl sha256 >/dev/null", shell=True, leaves=[d("f.gz")])
    def gzip_pack(op, source):
        bench(op, "kitsnap pack --compression gzip",
              [ks, "--no-progress", "pack", source, "-t", "gz:v1", "--compression", "gzip"],
              setup=lambda: fresh(d("ks-store")), leaves=[d("ks-store")])
        if kit:
            bench(op, "kit pack --compression gzip",
                  [kit, "pack", source, "-t", "gz:v1", "--compression", "gzip", "--progress", "none"],
                  setup=lambda: fresh(d("kit-home")), leaves=[d("kit-home")])

    gzip_pack("pack gzip", src)
    flush()
    # Compressible weights (bf16 of N(0, 0.02), which gzip -6 takes to 0.80), a quarter of
    # the size: on these every block is deflated. Synced first, so that no row pays for
    # writing the source back.
    if not skipped("pack gzip, bf16 weights"):
        bf16_weights(d("src-bf16"), max(a.size_mib // 4, 16))
        os.sync()
        gzip_pack("pack gzip, bf16 weights", d("src-bf16"))
        flush()
        fresh(d("src-bf16"))
    bench("pack zstd", "floor: tar | zstd -3 -T2",
          f"tar -C {src} -cf - model.safetensors | zstd -q -3 -T2 -o {d('f.zst')} -f", shell=True, leaves=[d("f.zst")])
    # A compressed layer needs two digests, the blob's and the uncompressed tar's (the
    # Kitfile's diffId, as kit records it): the floor of what pack must do hashes both.
    bench("pack zstd", "floor: tar | sha256 | zstd -3 -T2 | sha256",
          f"tar -C {src} -cf - model.safetensors | tee >(openssl sha256 >/dev/null) | zstd -q -3 -T2 "
          f"| tee {d('f.zst')} | openssl sha256 >/dev/null", shell=True, leaves=[d("f.zst")])
    bench("pack zstd", "kitsnap pack --compression zstd (level 3)",
          [ks, "--no-progress", "pack", src, "-t", "zs:v1", "--compression", "zstd"],
          setup=lambda: fresh(d("ks-store")), leaves=[d("ks-store")])
    flush()

    # Stores to push from: kitsnap's, kit's, modctl's.
    subprocess.run([ks, "--no-progress", "pack", src, "-t", f"{addr}/ks/bench:v1"], env=env, check=True,
                   capture_output=True)
    if kit:
        subprocess.run([kit, "pack", src, "-t", f"{addr}/kit/bench:v1", "--progress", "none"], env=env,
                       check=True, capture_output=True)
    subprocess.run(mc + ["build", "-t", f"{addr}/mc/bench:v1", "-f", os.path.join(src, "Modelfile"),
                         "--no-creation-time", src], env=env, check=True, capture_output=True)

    # The layer blob kitsnap packed, for the registry floors.
    with open(d("ks-store", "index.json")) as f:
        man_digest = next(m["digest"] for m in json.load(f)["manifests"]
                          if m.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
                          .endswith("/ks/bench:v1"))
    with open(d("ks-store", "blobs", "sha256", man_digest.split(":")[1])) as f:
        layer = json.load(f)["layers"][0]["digest"]
    # The layer's bytes for the floors, read where they are (no copy, to spare the disk):
    # kitsnap's store for the push rows, the registry's storage for the pull rows.
    blob = d("ks-store", "blobs", "sha256", layer.split(":")[1])
    # What the registry needs to take or give the blob, nothing else: one streamed PUT, one
    # GET. (A 2-line curl with no retries, no progress, no manifest.)
    start_upload = (f"loc=$(curl -sf -o /dev/null -D - -X POST http://{addr}/v2/floor/bench/blobs/uploads/"
                    f" | tr -d '\\r' | sed -n 's/^[Ll]ocation: //p'); "
                    f"case $loc in /*) loc=http://{addr}$loc;; esac; ")
    blob_url = f"http://{addr}/v2/ks/bench/blobs/{layer}"

    # --- push
    bench("push", "floor: curl PUT of the blob", ["bash", "-c", start_upload +
          f"curl -sf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' -T {blob} "
          f"\"$loc&digest={layer}\""], setup=reg.restart)
    bench("push", "kitsnap push", [ks, "--no-progress", "push", f"{addr}/ks/bench:v1", "--plain-http"],
          setup=reg.restart)
    if kit:
        bench("push", "kit push", [kit, "push", f"{addr}/kit/bench:v1", "--plain-http", "--progress", "none"],
              setup=reg.restart)
    bench("push", "oras push (file)", [oras, "push", "--plain-http", "--no-tty", f"{addr}/oras/bench:v1",
                                       "model.safetensors"], setup=reg.restart, cwd=src)
    bench("push", "modctl push", mc + ["push", "--plain-http", f"{addr}/mc/bench:v1"], setup=reg.restart)
    bench("push", "skopeo copy oci -> registry",
          ["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{d('ks-store')}:{addr}/ks/bench:v1",
           f"docker://{addr}/sk/bench:v1"], setup=reg.restart)
    flush()
    # --- pack straight to the registry
    # The registry taking the source file's bytes in one streamed PUT (its digest computed
    # beforehand): pack --push cannot beat the registry's intake of the same bytes.
    h = hashlib.sha256()
    with open(os.path.join(src, "model.safetensors"), "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    bench("pack + push, no copy", "floor: curl PUT of the source file", ["bash", "-c", start_upload +
          f"curl -sf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' "
          f"-T {os.path.join(src, 'model.safetensors')} \"$loc&digest=sha256:{h.hexdigest()}\""],
          setup=reg.restart)
    bench("pack + push, no copy", "kitsnap pack --push",
          [ks, "--no-progress", "pack", src, "-t", f"{addr}/ks/bench:v1", "--push", "--plain-http"],
          setup=reg.restart)
    bench("pack + push, no copy", "modctl build --output-remote",
          mc + ["build", "-t", f"{addr}/mc/bench:v1", "-f", os.path.join(src, "Modelfile"),
                "--no-creation-time", "--output-remote", "--plain-http", src], setup=reg.restart)
    flush()

    # The registry rows: their setup (every tool pushing its kit) is skipped with them.
    if not (skipped("pull") and skipped("unpack from registry")):
        # One registry holding every tool's artifact for the pulls.
        reg.restart()
        # The rows below read from the registry only: each store goes once it is pushed.
        subprocess.run([ks, "--no-progress", "push", f"{addr}/ks/bench:v1", "--plain-http"], env=env, check=True,
                       capture_output=True)
        fresh(d("ks-store"))
        blob = os.path.join(reg.work, "regdata", "docker", "registry", "v2", "blobs", "sha256",
                            layer.split(":")[1][:2], layer.split(":")[1], "data")
        if kit:
            subprocess.run([kit, "push", f"{addr}/kit/bench:v1", "--plain-http", "--progress", "none"], env=env,
                           check=True, capture_output=True)
            fresh(d("kit-home"))
        subprocess.run([oras, "push", "--plain-http", "--no-tty", f"{addr}/oras/bench:v1", "model.safetensors"],
                       env=env, check=True, capture_output=True, cwd=src)
        fresh(src)
        subprocess.run(mc + ["push", "--plain-http", f"{addr}/mc/bench:v1"], env=env, check=True,
                       capture_output=True)
        fresh(d("modctl"))

        # The registry's first serve of a blob after it starts costs it several times what later
        # serves do: read every tool's blobs once, so that no row pays that for the others.
        def warm(repo):
            accept = "application/vnd.oci.image.manifest.v1+json"
            req = urllib.request.Request(f"http://{addr}/v2/{repo}/manifests/v1", headers={"Accept": accept})
            with urllib.request.urlopen(req) as r:
                man = json.load(r)
            for l in man["layers"] + [man["config"]]:
                with urllib.request.urlopen(f"http://{addr}/v2/{repo}/blobs/{l['digest']}") as r:
                    while r.read(1 << 20):
                        pass
        for repo in ["ks/bench", "oras/bench", "mc/bench"] + (["kit/bench"] if kit else []):
            warm(repo)

        def registry_floors(op, fdatasync):
            """The floors of taking the blob from the registry, each alone: the registry sending
            it (to /dev/null), one core verifying it (openssl's sha256, SHA extensions), and the
            disk taking it (`dd` of the same bytes from the page cache; fdatasync'd for a pull,
            as kitsnap fsyncs a pulled blob). A pipeline of curl, tee and `openssl sha256` is no
            floor: it was slower than kitsnap, which hashes on a second core while it writes."""
            out = d("floor.blob")
            bench(op, "floor: registry GET to /dev/null", f"curl -sf {blob_url} >/dev/null", shell=True)
            bench(op, "floor: openssl sha256 of the blob", ["openssl", "sha256", blob])
            bench(op, "floor: dd of the blob, fdatasync" if fdatasync else "floor: dd of the blob",
                  ["dd", f"if={blob}", f"of={out}", "bs=1M"] + (["conv=fdatasync"] if fdatasync else []),
                  setup=lambda: fresh_file(out), leaves=[out])
            # The same three at once, uncoupled, on the same 2 cores. Not a floor: each reads the
            # blob from the page cache, where a pull hands one read on.
            bench(op, "baseline: the three above at once", at_once(blob_url, blob, out, fdatasync),
                  shell=True, setup=lambda: fresh_file(out), leaves=[out])

        # --- pull into each tool's store
        registry_floors("pull", fdatasync=True)
        bench("pull", "kitsnap pull", [ks, "--no-progress", "pull", f"{addr}/ks/bench:v1", "--plain-http"],
              setup=lambda: fresh(d("ks-store")), leaves=[d("ks-store")])
        if kit:
            bench("pull", "kit pull", [kit, "pull", f"{addr}/kit/bench:v1", "--plain-http", "--progress", "none"],
                  setup=lambda: fresh(d("kit-home")), leaves=[d("kit-home")])
        bench("pull", "modctl pull", mc + ["pull", "--plain-http", f"{addr}/mc/bench:v1"],
              setup=lambda: fresh(d("modctl")), leaves=[d("modctl")])
        bench("pull", "skopeo copy registry -> oci",
              ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{addr}/ks/bench:v1",
               f"oci:{d('sk-oci')}:bench"], setup=lambda: fresh(d("sk-oci")), leaves=[d("sk-oci")])
        flush()
        # --- from the registry to files in a directory
        registry_floors("unpack from registry", fdatasync=False)
        bench("unpack from registry", "kitsnap unpack REF -d",
              [ks, "--no-progress", "unpack", f"{addr}/ks/bench:v1", "-d", d("out"), "--plain-http"],
              setup=lambda: fresh(d("out"), d("ks-store")), leaves=[d("out"), d("ks-store")])
        if kit:
            # Straight from a registry, kit's unpack checks no digest (see
            # kit_conformance::kit_unpack_from_a_registry_writes_tampered_bytes_kitsnap_refuses_them):
            # timed, but kitsnap is compared with kit's verified path, pull then unpack.
            bench("unpack from registry", "kit unpack REF -d (unverified)",
                  [kit, "unpack", f"{addr}/kit/bench:v1", "-d", d("out"), "--plain-http", "--progress", "none"],
                  setup=lambda: fresh(d("out"), d("kit-home")), leaves=[d("out"), d("kit-home")])
            bench("unpack from registry", "kit pull + kit unpack -d",
                  f"{kit} pull {addr}/kit/bench:v1 --plain-http --progress none && "
                  f"{kit} unpack {addr}/kit/bench:v1 -d {d('out')} --progress none",
                  shell=True, setup=lambda: fresh(d("out"), d("kit-home")), leaves=[d("out"), d("kit-home")])
        bench("unpack from registry", "oras pull -o", [oras, "pull", "--plain-http", "--no-tty", "-o", d("out"),
                                                        f"{addr}/oras/bench:v1"], setup=lambda: fresh(d("out")),
              leaves=[d("out")])
        bench("unpack from registry", "modctl pull --extract-from-remote",
              mc + ["pull", "--plain-http", "--extract-from-remote", "--extract-dir", d("out"),
                    f"{addr}/mc/bench:v1"], setup=lambda: fresh(d("out"), d("modctl")),
              leaves=[d("out"), d("modctl")])
        flush()

    print()
    print("| operation | tool | wall | kitsnap / best peer | kitsnap / floor | peak RSS | written "
          "| CPU: tool + registry |")
    print("|---|---|---|---|---|---|---|---|")
    for op in dict.fromkeys(r[0] for r in rows):
        group = [r for r in rows if r[0] == op]
        peer_t = [r[2] for r in group
                  if not r[1].startswith(("kitsnap", "floor", "baseline")) and "unverified" not in r[1]]
        floor_t = [r[2] for r in group if r[1].startswith("floor")]
        for _, tool, t, rss, w, cpu, rcpu in group:
            ours = tool.startswith("kitsnap")
            vs_peer = f"**{t / min(peer_t):.2f}**" if ours and peer_t else ""
            vs_floor = f"{t / max(floor_t):.2f}" if ours and floor_t else ""
            print(f"| {op} | {tool.replace('|', '&#124;')} | {t:.2f} s | {vs_peer} | {vs_floor} | {rss:.0f} MiB | {w:.0f} MiB "
                  f"| {cpu:.2f} + {rcpu:.2f} s |")
    reg.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
