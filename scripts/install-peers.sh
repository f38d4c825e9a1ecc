#!/usr/bin/env bash
# Builds the real Go tools that the tests and benchmarks compare kitsnap against, pinned, from
# the Go module proxy into .cache/peers/bin/, with Go's own caches under .cache/go/ so that a
# fresh clone (CI) needs nothing but Go. A stamp file per tool (.cache/peers/bin/.NAME-VERSION)
# makes a re-run a no-op.
# Usage: scripts/install-peers.sh [kitops|oras|modctl|nerdctl ...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."

# Pins. To bump one: `go list -m -versions MODULE` (where the proxy lists none, ask for an exact
# version: `go list -m MODULE@VERSION`), edit the line, re-run: the stamp names the version.
# kitops: newest release found (Sep 2025); the proxy here refuses every kitops version, so it
# cannot be built on this workplace's machines and the script warns (see build_kitops).
KITOPS_VERSION=v1.8.0
ORAS_VERSION=v1.3.6
MODCTL_VERSION=v0.2.2
# nerdctl: --mount type=image (PR 4990) is on main only (merged 2026-07-17, in no tag up to
# v2.3.5), and the proxy here serves nerdctl's tags but no pseudo-version of main. Bump to the
# first tag that has it (v2.4.0?) once `go list -m github.com/containerd/nerdctl/v2@TAG` works.
NERDCTL_VERSION=v2.3.5
# nerdctl's go.mod requires tigron v0.0.0 and replaces it with ./mod/tigron, which a dependent
# module can't see: pin a published tigron instead (only tests import it, so any version links).
TIGRON_VERSION=v0.0.0-20260121031139-a630881afd01

tools=("$@")
((${#tools[@]})) || tools=(kitops oras modctl nerdctl)

GO=$(command -v go || true)
[ -n "$GO" ] || { [ -x /usr/local/go/bin/go ] && GO=/usr/local/go/bin/go; }
if [ -z "$GO" ]; then
  echo "install-peers: no go on PATH nor in /usr/local/go/bin: install Go >= 1.26.3 (nerdctl needs it) from go.dev/dl into /usr/local/go" >&2
  exit 1
fi
export GOPATH="$PWD/.cache/go" GOMODCACHE="$PWD/.cache/go/mod" GOCACHE="$PWD/.cache/go/build"
# local: never fetch another toolchain behind our back; static binaries where the tool allows.
export GOTOOLCHAIN=local CGO_ENABLED=0
# -modcacherw: the module cache stays deletable without root (rm -rf .cache/go).
goflags=(-modcacherw -trimpath)
bin="$PWD/.cache/peers/bin"
logs="$PWD/.cache/peers/log"
mkdir -p "$bin" "$logs"
exec 3>&2 # the build logs take stdout and stderr; notes for the user go to fd 3

# Each tool builds in a throwaway module under .cache/peers/src/ that requires it, rather than
# by `go install MODULE@VERSION`: that refuses a module with replace directives (nerdctl), and
# fails where the proxy lists no versions (modctl), as it asks @latest for deprecation notices.
# go_build NAME MODULE@VERSION PACKAGE LDFLAGS [go mod edit flags...]
go_build() {
  local name=$1 modver=$2 pkg=$3 ldflags=$4 src="$PWD/.cache/peers/src/$1"
  shift 4
  rm -rf "$src"
  mkdir -p "$src"
  cd "$src"
  "$GO" mod init "kitsnap.invalid/peers/$name"
  "$GO" mod edit -require="$modver" "$@"
  # -mod=mod: let the build fill go.sum (checked against the checksum database as usual).
  "$GO" build -mod=mod "${goflags[@]}" -ldflags "-s -w $ldflags" -o "$bin/$name" "$pkg"
}

# kitops' module root is its main package; our tests, like its docs, call it kit.
build_kitops() {
  go_build kitops "github.com/kitops-ml/kitops@$KITOPS_VERSION" github.com/kitops-ml/kitops \
    "-X github.com/kitops-ml/kitops/pkg/lib/constants.Version=${KITOPS_VERSION#v}"
  ln -sf kitops "$bin/kit"
  "$bin/kit" version
}

build_oras() {
  go_build oras "oras.land/oras@$ORAS_VERSION" oras.land/oras/cmd/oras \
    "-X oras.land/oras/internal/version.Version=${ORAS_VERSION#v} -X oras.land/oras/internal/version.BuildMetadata="
  "$bin/oras" version
}

# modctl's libgit2 backend sits behind the enable_libgit2 build tag; without it modctl is pure
# Go (go-git), so it needs no cgo nor system headers.
build_modctl() {
  go_build modctl "github.com/modelpack/modctl@$MODCTL_VERSION" github.com/modelpack/modctl \
    "-X github.com/modelpack/modctl/pkg/version.GitVersion=$MODCTL_VERSION"
  "$bin/modctl" version
}

build_nerdctl() {
  go_build nerdctl "github.com/containerd/nerdctl/v2@$NERDCTL_VERSION" github.com/containerd/nerdctl/v2/cmd/nerdctl \
    "-X github.com/containerd/nerdctl/v2/pkg/version.Version=$NERDCTL_VERSION" \
    -replace "github.com/containerd/nerdctl/mod/tigron@v0.0.0=github.com/containerd/nerdctl/mod/tigron@$TIGRON_VERSION"
  "$bin/nerdctl" --version
  # Say so when the pinned nerdctl lacks the one feature we pin it for.
  grep -q 'type=image' <<<"$("$bin/nerdctl" run --help)" ||
    echo "install-peers: note: nerdctl $NERDCTL_VERSION has no --mount type=image (PR 4990)" >&3
}

failed=()
for tool in "${tools[@]}"; do
  case $tool in
    kitops) version=$KITOPS_VERSION ;;
    oras) version=$ORAS_VERSION ;;
    modctl) version=$MODCTL_VERSION ;;
    nerdctl) version=$NERDCTL_VERSION ;;
    *) echo "install-peers: unknown tool '$tool' (kitops, oras, modctl, nerdctl)" >&2; exit 2 ;;
  esac
  stamp="$bin/.$tool-$version"
  [ -x "$bin/$tool" ] && [ -e "$stamp" ] && continue
  start=$SECONDS
  # Not `if (build)`: bash ignores set -e inside a condition, so a failed step would go unseen.
  set +e
  (set -e; "build_$tool") >"$logs/$tool.log" 2>&1
  rc=$?
  set -e
  if ((rc == 0)); then
    rm -f "$bin/.$tool-"*
    touch "$stamp"
    echo "install-peers: $tool $version -> .cache/peers/bin/$tool ($((SECONDS - start)) s)" >&2
  else
    tail -n 15 "$logs/$tool.log" >&2
    echo "install-peers: WARNING: $tool $version FAILED to build (log: .cache/peers/log/$tool.log); its peer tests cannot run" >&2
    failed+=("$tool")
  fi
done

# CI must not quietly lose a peer; a developer's run goes on without it.
if ((${#failed[@]})) && [ -n "${CI:-}" ]; then
  echo "install-peers: failed in CI: ${failed[*]}" >&2
  exit 1
fi
