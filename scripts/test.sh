#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit and integration tests (the same as CI).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
# Seconds since the start after each step: the suite's budget is 25 minutes on 2 cores.
took() { echo "test.sh: $1 done at ${SECONDS} s" >&2; }
bash scripts/install-deps.sh
took "apt packages"
# containerd 1.7 and 2.x for the snapshotter tests. Without them those versions are skipped
# loudly on a developer machine, and fail the run under CI (CI=true): the rest still runs.
bash scripts/fetch-containerd.sh || echo "test.sh: WARNING: could not fetch containerd 1.7/2.x" >&2
# Docker 28 (containerd image store, `--mount type=image`) from sid, for the image-mount test.
bash scripts/fetch-docker.sh || echo "test.sh: WARNING: could not fetch Docker 28" >&2
# The real nerdctl for the native-pull tests (built from the Go module proxy, cached under
# .cache/). Without it that test is skipped loudly, or fails under CI.
bash scripts/install-peers.sh nerdctl modctl || echo "test.sh: WARNING: could not build nerdctl or modctl" >&2
took "containerd, Docker and Go peers"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
took "fmt and clippy"
# /dev/null must still be the null device after the tests (a test that replaced it with a
# file, as zsh's compdump once did, poisons every later command on the machine).
check_dev_null() {
  [ -c /dev/null ] || { echo "test.sh: /dev/null is not a character device ($1): a test replaced it" >&2; exit 1; }
}
check_dev_null "before the tests"
status=0
cargo test --workspace --quiet 2>&1 || status=$?
took "cargo test"
# Tests of peers the Go module proxy cannot serve (kit: 403; nerdctl's main: no
# pseudo-version) are #[ignore]d, so cargo reports them as ignored, never as passed. They
# run here when the binary is at hand.
kit=${KITSNAP_KIT:-.cache/peers/bin/kit}
if [ -x "$kit" ]; then
  KITSNAP_KIT=$(realpath "$kit") cargo test --quiet --test it -- --ignored kit_conformance:: 2>&1 || status=$?
else
  echo "test.sh: IGNORED kit_conformance::kit_reads_kitsnap_and_back and kit_conformance::kit_unpack_from_a_registry_writes_tampered_bytes_kitsnap_refuses_them: no kit binary (KITSNAP_KIT)" >&2
fi
nerdctl_main=${KITSNAP_NERDCTL_MAIN:-.cache/peers/bin/nerdctl-main}
if [ -x "$nerdctl_main" ]; then
  KITSNAP_NERDCTL_MAIN=$(realpath "$nerdctl_main") cargo test --quiet --test it -- --ignored mirror::nerdctl_main_mounts_a_modelkit_with_type_image 2>&1 || status=$?
else
  echo "test.sh: IGNORED mirror::nerdctl_main_mounts_a_modelkit_with_type_image: no nerdctl built from main (KITSNAP_NERDCTL_MAIN)" >&2
fi
check_dev_null "after the tests"
took "the whole suite"
exit "$status"
