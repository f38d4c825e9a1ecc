#!/bin/bash
# `unpack REF -d` from a local docker-registry with two kitsnap binaries, alternating, and
# the floor of one core hashing the blob (`openssl sha256` of the registry's stored copy,
# warm page cache): for A/B runs of a change to the download or extraction path.
#
# Usage: bash benches/unpack_ab.sh OLD_BIN NEW_BIN [SIZE_MIB [ROUNDS]]
# Needs docker-registry, curl and openssl; peak disk about 3x SIZE_MIB.
set -euo pipefail
old=$(realpath "$1")
new=$(realpath "$2")
size_mib=${3:-2048}
rounds=${4:-3}
port=${PORT:-55662}
. "$(dirname "$0")/lib/kit_and_registry.sh"
bench_setup unpack-ab "$size_mib" "$port"
ref=127.0.0.1:$port/b/kit:v1
KITSNAP_STORE=$work/store quiet "$new" pack "$work/kit" -t "$ref" --no-progress
rm -f "$work/kit/model.bin"
KITSNAP_STORE=$work/store quiet "$new" push "$ref" --plain-http --no-progress
blob=$(ls -S "$work/store/blobs/sha256/" | head -1)
rm -rf "$work/store"
stored=$work/reg/docker/registry/v2/blobs/sha256/${blob:0:2}/$blob/data
cat "$stored" >/dev/null
echo "unpack of a ${size_mib} MiB layer from the registry, $rounds rounds ($(date -u +%F), $(nproc) cores)"
for i in $(seq "$rounds"); do
  for mode in old new floor; do
    rm -rf "$work/out" "$work/empty"
    sync
    case $mode in
      floor) cmd=(openssl sha256 "$stored") ;;
      old) cmd=("$old" unpack "$ref" -d "$work/out" --plain-http --no-progress) ;;
      new) cmd=("$new" unpack "$ref" -d "$work/out" --plain-http --no-progress) ;;
    esac
    start=$EPOCHREALTIME
    KITSNAP_STORE=$work/empty quiet "${cmd[@]}"
    awk -v i="$i" -v m="$mode" -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "round %d  %-6s %6.2f s\n", i, m, b - a }'
  done
done
