#!/usr/bin/env bash
# Build a local Debian bookworm base image with Python 3.11 + venv (no registry needed) and print
# its tag on stdout. The tag is a hash of this script: an unchanged script reuses the image.
set -euo pipefail
tag="ktcluster-base:bookworm-$(sha256sum "$0" | cut -c1-12)"
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "$tag"
  exit 0
fi
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
echo "debootstrap bookworm -> $tag" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
  >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; exit 1; }
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/etc/apt/sources.list
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$rootfs"/etc/apt/sources.list.d/
fi
tar --numeric-owner -C "$rootfs" -c . |
  docker import -c 'CMD ["/bin/bash"]' -c 'ENV LANG=C.UTF-8' - "$tag" >&2
echo "$tag"
