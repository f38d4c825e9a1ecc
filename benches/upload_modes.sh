#!/bin/bash
# Uploads of one stored blob, alternating: `kitsnap push --chunk-size-mib 64` (64 MiB
# PATCHes, the default before 2026-12-06), `kitsnap push` (one streamed PATCH, the default
# now) and `curl -T` of the same blob into a monolithic PUT (the floor), each into a fresh
# repository of the same local docker-registry, whose stored blobs are removed between rows.
#
# Usage: cargo build --release && bash benches/upload_modes.sh [SIZE_MIB [ROUNDS]]
# Needs docker-registry and curl; peak disk about 3x SIZE_MIB (model removed after pack).
set -euo pipefail
size_mib=${1:-2048}
rounds=${2:-3}
bin=${KITSNAP_BIN:-$(dirname "$0")/../target/release/kitsnap}
port=${PORT:-55661}
work=$(mktemp -d "${TMPDIR:-/var/tmp}/upload-modes.XXXXXX")
reg_pid=
cleanup() { [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/kit" "$work/reg"
head -c $((size_mib << 20)) /dev/urandom > "$work/kit/model.bin"
printf 'manifestVersion: 1.0.0\npackage:\n  name: bench\nmodel:\n  name: bench\n  path: model.bin\n' > "$work/kit/Kitfile"
cat > "$work/reg.yml" <<EOT
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/reg
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  secret: bench
EOT
docker-registry serve "$work/reg.yml" 2>/dev/null &
reg_pid=$!
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
reg=127.0.0.1:$port
export KITSNAP_STORE=$work/store
"$bin" pack "$work/kit" -t "$reg/src/kit:v1" --no-progress >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
rm -f "$work/kit/model.bin"
blob=$(ls -S "$work/store/blobs/sha256/" | head -1)
echo "upload of one ${size_mib} MiB blob, $rounds rounds ($(date -u +%F), $(nproc) cores)"
for i in $(seq "$rounds"); do
  for mode in chunks64 stream curl; do
    sync
    rm -rf "$work/reg/docker/registry/v2/repositories/r"* "$work/reg/docker/registry/v2/blobs"
    dst=$reg/r$i$mode/kit:v1
    case $mode in
      chunks64) cmd=("$bin" push "$reg/src/kit:v1" "$dst" --plain-http --no-progress --no-lazy-index --chunk-size-mib 64) ;;
      stream) cmd=("$bin" push "$reg/src/kit:v1" "$dst" --plain-http --no-progress --no-lazy-index) ;;
      curl)
        loc=$(curl -s -i -X POST "http://$reg/v2/r$i$mode/blobs/uploads/" | tr -d '\r' | awk 'tolower($1)=="location:"{print $2}')
        case $loc in http*) ;; *) loc=http://$reg$loc ;; esac
        cmd=(curl -s -f -o /dev/null -X PUT -H Content-Type:application/octet-stream -T "$work/store/blobs/sha256/$blob" "$loc&digest=sha256:$blob") ;;
    esac
    start=$EPOCHREALTIME
    "${cmd[@]}" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
    awk -v i="$i" -v m="$mode" -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "round %d  %-9s %6.2f s\n", i, m, b - a }'
  done
done
