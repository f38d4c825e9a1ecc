#!/usr/bin/env bash
# Builds kitsnap and runs the packaging lifecycle on a small generated model:
# init -> pack (ModelKit and ModelPack) -> list -> inspect -> unpack (all, then model only);
# then, as root, the node side: a private registry, kitsnap serve and containerd started
# here, push -> pull --containerd -> mount -> a busybox container reading the model ->
# a container with the model as rootfs layers -> df -> umount -> images rm.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/install-deps.sh
cargo build --release --quiet
K="$PWD/target/release/kitsnap"

work=$(mktemp -d /tmp/kitsnap-demo.XXXXXX)
export KITSNAP_STORE="$work/store"
mkdir -p "$work/model/weights" "$work/model/data" "$work/model/src"
head -c 8388608 /dev/urandom > "$work/model/weights/model.safetensors"
echo '{"model_type": "demo"}' > "$work/model/weights/config.json"
printf 'text,label\nhello,1\nbye,0\n' > "$work/model/data/train.csv"
printf 'print("inference")\n' > "$work/model/src/serve.py"
printf '# Demo model\nA tiny generated model.\n' > "$work/model/README.md"

set -x
"$K" init "$work/model" --name demo --desc "A generated demo model"
cat "$work/model/Kitfile"
"$K" pack "$work/model" -t demo:v1
"$K" pack "$work/model" -t demo:v1-modelpack --use-model-pack --compression zstd
"$K" list
"$K" inspect demo:v1
"$K" unpack demo:v1 -d "$work/unpacked"
"$K" unpack demo:v1 -d "$work/model-only" --filter model
set +x
cmp "$work/model/weights/model.safetensors" "$work/unpacked/weights/model.safetensors"
find "$work/unpacked" "$work/model-only" -type f | sort
echo "demo OK: the unpacked weights match the source (store: $KITSNAP_STORE)"

if [ "$(id -u)" -ne 0 ]; then
  echo "demo: the containerd part needs root; skipped" >&2
  exit 0
fi
# --- ModelKits in containers, with every daemon private to this demo.
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  grep -o " $work[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
}
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port, secret: demo}
YML
docker-registry serve "$work/registry.yml" >/dev/null 2>&1 & pids+=($!)
"$K" serve --root "$work/kitsnap" --address "$work/kitsnap.sock" --containerd-address "$work/containerd.sock" \
  --mount-root "$work/mounts" --no-docker-plugin --log-level warn & pids+=($!)
cat > "$work/containerd.toml" <<TOML
version = 2
root = "$work/containerd/root"
state = "$work/containerd/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
[proxy_plugins.kitsnap]
  type = "snapshot"
  address = "$work/kitsnap.sock"
TOML
containerd --config "$work/containerd.toml" 2>"$work/containerd.log" & pids+=($!)
for _ in $(seq 100); do [ -S "$work/containerd.sock" ] && [ -S "$work/kitsnap.sock" ] && break; sleep 0.1; done
sleep 1
export KITSNAP_ADDRESS="$work/kitsnap.sock" CONTAINERD_NAMESPACE=demo
CTR=(ctr --address "$work/containerd.sock" -n demo)
# A one-layer busybox image for the app container.
mkdir -p "$work/app/rootfs/bin" "$work/app/rootfs/models"
cp /bin/busybox "$work/app/rootfs/bin/"
for a in sh sha256sum ls cat; do ln -s busybox "$work/app/rootfs/bin/$a"; done
python3 - "$work/app" <<'PY'
import hashlib, io, json, os, sys, tarfile
out = sys.argv[1]
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w") as t:
    t.add(f"{out}/rootfs", arcname=".")
def blob(b):
    d = hashlib.sha256(b).hexdigest(); os.makedirs(f"{out}/oci/blobs/sha256", exist_ok=True)
    open(f"{out}/oci/blobs/sha256/{d}", "wb").write(b); return "sha256:" + d
l = buf.getvalue(); ld = blob(l)
c = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Env": ["PATH=/bin"]},
                "rootfs": {"type": "layers", "diff_ids": [ld]}}).encode(); cd = blob(c)
m = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(c)},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": len(l)}]}).encode()
md = blob(m)
open(f"{out}/oci/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
json.dump({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md,
           "size": len(m), "annotations": {"io.containerd.image.name": "docker.io/library/demo-app:v1"}}]},
          open(f"{out}/oci/index.json", "w"))
PY
tar -C "$work/app/oci" -cf "$work/app.tar" .
"${CTR[@]}" images import --snapshotter kitsnap "$work/app.tar" >/dev/null
REF="127.0.0.1:$port/demo/model:v1"
want=$(sha256sum "$work/model/weights/model.safetensors" | cut -d' ' -f1)
set -x
"$K" tag demo:v1 "$REF"
"$K" push "$REF" --plain-http
"$K" pull --containerd "$REF" --plain-http --store "$work/empty"
"${CTR[@]}" images ls -q
P=$("$K" mount "$REF")
"${CTR[@]}" run --rm --snapshotter kitsnap --mount "type=bind,src=$P,dst=/models,options=rbind:ro" \
  docker.io/library/demo-app:v1 demo1 sha256sum /models/weights/model.safetensors | tee "$work/in-container"
"${CTR[@]}" run --rm --snapshotter kitsnap \
  --snapshotter-label "containerd.io/snapshot/kitsnap.modelkit=$REF:/models" \
  docker.io/library/demo-app:v1 demo2 ls -l /models /models/weights
"$K" df
"$K" umount "$P"
"${CTR[@]}" images rm --sync "$REF" docker.io/library/demo-app:v1
set +x
grep -q "$want" "$work/in-container"
echo "demo OK: a container read the ModelKit's weights from a kitsnap mount (sha256 $want)"
