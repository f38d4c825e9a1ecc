#!/usr/bin/env bash
# Builds kitsnap and runs the packaging lifecycle on a small generated model:
# init -> pack (ModelKit and ModelPack) -> list -> inspect -> unpack (all, then model only).
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
