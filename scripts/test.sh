#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (the same as CI).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
bash scripts/install-deps.sh
# containerd 1.7 and 2.x for the snapshotter tests; without them those versions are skipped
# (loudly), so a failed download does not stop the rest of the suite.
bash scripts/fetch-containerd.sh || echo "test.sh: WARNING: could not fetch containerd 1.7/2.x" >&2
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo test --workspace --quiet 2>&1
