#!/usr/bin/env bash
# Build a local Debian bookworm base image with Python 3.11 + venv + ca-certificates (no registry
# needed: debootstrap, then docker import) and print its tag as the last line of stdout; everything
# else goes to stderr, so `BASE=$(.ci/base-image.sh)` works. The tag is a hash of this script: an
# unchanged script reuses the image already in /var/lib/docker.
set -euo pipefail
tag="ktcluster-base:bookworm-$(sha256sum "$0" | cut -c1-12)"
if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "reusing $tag" >&2
  echo "$tag"
  exit 0
fi

rootfs=$(mktemp -d /var/tmp/ktcluster-rootfs.XXXXXX)  # not /tmp: may be a noexec/nodev tmpfs
cleanup() {
  # debootstrap mounts proc/sys (and may bind /dev) inside the rootfs; if it died without
  # unmounting, never let rm walk into the host's /proc or /dev.
  grep -o " $rootfs/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf --one-file-system "$rootfs" "$rootfs.log"
}
trap cleanup EXIT

echo "debootstrap bookworm -> $tag" >&2
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" \
  >"$rootfs.log" 2>&1 || { tail -n 30 "$rootfs.log" >&2; exit 1; }
# Smaller image, and apt inside it uses the same (deb822) sources as this host.
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/etc/apt/sources.list
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  cp /etc/apt/sources.list.d/debian.sources "$rootfs"/etc/apt/sources.list.d/
fi
tar --numeric-owner -C "$rootfs" -c . |
  docker import -c 'CMD ["/bin/bash"]' -c 'ENV LANG=C.UTF-8' - "$tag" >&2
echo "$tag"
