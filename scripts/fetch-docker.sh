#!/usr/bin/env bash
# Downloads Docker 28 (Debian sid's docker.io and docker-cli) as .deb files and unpacks them
# with `dpkg -x` under .cache/docker/sid/root, without installing them: the image-mount
# test runs that dockerd (with the containerd image store) next to bookworm's Docker 20.10.
# Both binaries run on bookworm (libc, libsystemd). Usage: scripts/fetch-docker.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dest="$PWD/.cache/docker/sid"
if [ -x "$dest/root/usr/sbin/dockerd" ] && [ -x "$dest/root/usr/bin/docker" ]; then
  echo "fetch-docker: already at $dest ($("$dest/root/usr/sbin/dockerd" --version))" >&2
  exit 0
fi
apt_dir=$(mktemp -d)
trap 'rm -rf "$apt_dir"' EXIT
mkdir -p "$apt_dir/lists/partial" "$dest"
cat > "$apt_dir/sources.list" <<SRC
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian sid main
SRC
opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=-"
      -o "Dir::State::Lists=$apt_dir/lists" -o "APT::Get::List-Cleanup=0" -o "APT::Sandbox::User=root" -qq)
apt-get "${opts[@]}" update
(cd "$dest" && rm -f ./*.deb && apt-get "${opts[@]}" download docker.io docker-cli)
rm -rf "$dest/root"
for deb in "$dest"/*.deb; do dpkg -x "$deb" "$dest/root"; done
echo "fetch-docker: sid -> $("$dest/root/usr/sbin/dockerd" --version)" >&2
