#!/usr/bin/env bash
# Installs what building, testing and benchmarking kitsnap needs on a fresh Debian machine.
# Idempotent: it only calls apt when something is missing.
set -euo pipefail

need=()
command -v cc >/dev/null || need+=(build-essential)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v zstd >/dev/null || need+=(zstd)
command -v python3 >/dev/null || need+=(python3)
command -v tar >/dev/null || need+=(tar)
# git and git-lfs: `kitsnap import --tool git` runs them (as kit does), and its tests.
command -v git >/dev/null || need+=(git)
command -v git-lfs >/dev/null || need+=(git-lfs)
command -v openssl >/dev/null || need+=(openssl)
# protoc: the containerd-client crate generates its gRPC code at build time.
command -v protoc >/dev/null || need+=(protobuf-compiler)
# Real peers for the registry tests: CNCF distribution and skopeo.
[ -x /usr/bin/docker-registry ] || need+=(docker-registry)
command -v skopeo >/dev/null || need+=(skopeo)
# containerd 1.6, runc and a static busybox for the snapshotter tests (containerd 1.7 and
# 2.x come from scripts/fetch-containerd.sh, unpacked rather than installed).
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || need+=(busybox-static)
command -v systemd-analyze >/dev/null || need+=(systemd)
# dockerd 20.10 for the Docker volume plugin test (started by the test on its own socket).
[ -x /usr/sbin/dockerd ] || need+=(docker.io)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
# The shells and man that load the generated completions and manual pages in the tests.
command -v zsh >/dev/null || need+=(zsh)
command -v fish >/dev/null || need+=(fish)
command -v man >/dev/null || need+=(man-db)
# GNU time: the shell benchmarks' CPU seconds of a command (benches/upload_modes.sh).
[ -x /usr/bin/time ] || need+=(time)
# A real terminal for the progress-bar test.
command -v tmux >/dev/null || need+=(tmux)

if ((${#need[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "install-deps: apt-get install ${need[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The Python oras client, an independent registry client for interoperability tests.
if ! python3 -c 'import oras.client' 2>/dev/null; then
  echo "install-deps: pip install oras" >&2
  python3 -m pip install --quiet oras 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages oras
fi

# The KitOps Python SDK (pinned): it shells out to `kit`; the conformance test runs it with
# kitsnap in kit's place.
if ! python3 -c 'import kitops.cli.kit' 2>/dev/null; then
  echo "install-deps: pip install kitops==1.5.0" >&2
  python3 -m pip install --quiet kitops==1.5.0 2>/dev/null ||
    python3 -m pip install --quiet --break-system-packages kitops==1.5.0
fi

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    echo "install-deps: add \$HOME/.cargo/bin to PATH" >&2
  else
    echo "install-deps: a Rust toolchain (cargo) is required: see https://rustup.rs" >&2
    exit 1
  fi
fi
