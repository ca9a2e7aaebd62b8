#!/usr/bin/env bash
# Makes the base image the Dockerfile starts from (`debian:bookworm-slim` by
# default) available on a machine that cannot pull images: builds a minimal
# Debian root filesystem with debootstrap (from Debian's package mirror) and
# imports it with `docker import`. On a normal machine `docker pull` does the
# same job and this script is not needed. Idempotent: does nothing if the
# image exists.
#
#   deploy/base-image.sh [IMAGE]       (default debian:bookworm-slim)
set -euo pipefail
IMAGE=${1:-debian:bookworm-slim}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "base image $IMAGE present"
  exit 0
fi
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }
command -v debootstrap >/dev/null || as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
ROOTFS=$(mktemp -d /tmp/tern-rootfs.XXXXXX)
trap 'as_root rm -rf "$ROOTFS"' EXIT
echo "building $IMAGE with debootstrap (minbase bookworm)"
as_root debootstrap --variant=minbase bookworm "$ROOTFS" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}" >/dev/null
as_root rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
as_root tar -C "$ROOTFS" -c . | docker import --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
echo "imported $IMAGE"
