#!/bin/bash
# Uploads of one stored blob, alternating: `kitsnap push --chunk-size-mib 64` (64 MiB
# PATCHes, the default before 2026-12-06), `kitsnap push` (one streamed PATCH, the default
# now) and `curl -T` of the same blob into a monolithic PUT (the floor), each into a fresh
# repository of the same local docker-registry, whose stored blobs are removed between rows.
# MODES picks the rows (default "chunks64 stream curl"); "indexed" is `kitsnap push` as
# users run it, publishing the lazy index too (the others pass --no-lazy-index); "kit" is
# KitOps' `kit push` of the same kit (KITSNAP_KIT names the binary).
# Each row gives the client's CPU seconds and the registry's over the same time: the
# registry hashes what it takes in on one core, which bounds every client alike.
#
# Usage: cargo build --release && [MODES="..."] bash benches/upload_modes.sh [SIZE_MIB [ROUNDS]]
# Needs docker-registry and curl; peak disk about 3x SIZE_MIB (model removed after pack).
set -euo pipefail
size_mib=${1:-2048}
rounds=${2:-3}
bin=${KITSNAP_BIN:-$(dirname "$0")/../target/release/kitsnap}
port=${PORT:-55661}
. "$(dirname "$0")/lib/kit_and_registry.sh"
bench_setup upload-modes "$size_mib" "$port"
reg=127.0.0.1:$port
export KITSNAP_STORE=$work/store
quiet "$bin" pack "$work/kit" -t "$reg/src/kit:v1" --no-progress
kit=${KITSNAP_KIT:-}
case " ${MODES:-} " in *" kit "*)
  [ -x "$kit" ] || { echo "MODES has kit: set KITSNAP_KIT to a kit binary" >&2; exit 1; }
  KITOPS_HOME=$work/kit-home quiet "$kit" pack "$work/kit" -t "$reg/src/kit:v1" --progress none ;;
esac
rm -f "$work/kit/model.bin"
blob=$(ls -S "$work/store/blobs/sha256/" | head -1)
tick=$(getconf CLK_TCK)
regcpu() { awk -v t="$tick" '{ print ($14 + $15) / t }' "/proc/$reg_pid/stat"; }
echo "upload of one ${size_mib} MiB blob, $rounds rounds ($(date -u +%F), $(nproc) cores)"
for i in $(seq "$rounds"); do
  for mode in ${MODES:-chunks64 stream curl}; do
    sync
    rm -rf "$work/reg/docker/registry/v2/repositories/r"* "$work/reg/docker/registry/v2/blobs"
    dst=$reg/r$i$mode/kit:v1
    case $mode in
      chunks64) cmd=("$bin" push "$reg/src/kit:v1" "$dst" --plain-http --no-progress --no-lazy-index --chunk-size-mib 64) ;;
      stream) cmd=("$bin" push "$reg/src/kit:v1" "$dst" --plain-http --no-progress --no-lazy-index) ;;
      indexed) cmd=("$bin" push "$reg/src/kit:v1" "$dst" --plain-http --no-progress) ;;
      kit) cmd=(env KITOPS_HOME="$work/kit-home" "$kit" push "$reg/src/kit:v1" "$dst" --plain-http --progress none) ;;
      curl)
        loc=$(curl -s -i -X POST "http://$reg/v2/r$i$mode/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
        case $loc in http*) ;; *) loc=http://$reg$loc ;; esac
        cmd=(curl -s -f -o /dev/null -X PUT -H Content-Type:application/octet-stream -T "$work/store/blobs/sha256/$blob" "$loc&digest=sha256:$blob") ;;
    esac
    r0=$(regcpu)
    start=$EPOCHREALTIME
    quiet /usr/bin/time -f "%U %S" -o "$work/cpu" "${cmd[@]}"
    end=$EPOCHREALTIME
    r1=$(regcpu)
    read -r user sys < "$work/cpu"
    awk -v i="$i" -v m="$mode" -v a="$start" -v b="$end" -v u="$user" -v s="$sys" -v r0="$r0" -v r1="$r1" \
      'BEGIN { printf "round %d  %-9s %6.2f s  client %5.2f CPU s  registry %5.2f CPU s\n", i, m, b - a, u + s, r1 - r0 }'
  done
done
