#!/usr/bin/env bash
# Downloads containerd from Debian's newer suites (trixie: 1.7, sid: 2.x) as .deb files and
# unpacks them with `dpkg -x` under .cache/containerd/<suite>/, without installing them:
# the tests run each version's binaries side by side with bookworm's runc.
# Usage: scripts/fetch-containerd.sh [SUITE...]   (default: trixie sid)
set -euo pipefail
cd "$(dirname "$0")/.."
suites=("$@")
((${#suites[@]})) || suites=(trixie sid)
cache="$PWD/.cache/containerd"
for suite in "${suites[@]}"; do
  dest="$cache/$suite"
  if [ -x "$dest/root/usr/bin/containerd" ]; then
    echo "fetch-containerd: $suite already at $dest ($("$dest/root/usr/bin/containerd" --version | awk '{print $3}'))" >&2
    continue
  fi
  apt_dir=$(mktemp -d)
  mkdir -p "$apt_dir/lists/partial" "$dest"
  cat > "$apt_dir/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $suite main
SRC
  opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=-"
        -o "Dir::State::Lists=$apt_dir/lists" -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root" -qq)
  apt-get "${opts[@]}" update
  (cd "$dest" && rm -f ./*.deb && apt-get "${opts[@]}" download containerd)
  rm -rf "$dest/root"
  dpkg -x "$dest"/containerd_*.deb "$dest/root"
  rm -rf "$apt_dir"
  echo "fetch-containerd: $suite -> $("$dest/root/usr/bin/containerd" --version)" >&2
done
