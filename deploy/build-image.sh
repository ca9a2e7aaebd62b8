#!/usr/bin/env bash
# Builds the `tern:latest` image from the release build.
#   deploy/build-image.sh [TAG]
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:-tern:latest}
T=${CARGO_TARGET_DIR:-target}/release
cargo build --release --workspace
deploy/base-image.sh
CTX=$(mktemp -d /tmp/tern-image.XXXXXX)
trap 'rm -rf "$CTX"' EXIT
mkdir -p "$CTX/bin" "$CTX/plugins"
cp "$T/ternd" "$T/tern" "$CTX/bin/"
strip "$CTX/bin/ternd" "$CTX/bin/tern" 2>/dev/null || true
for p in cache_lru cache_s3fifo balancer_round_robin balancer_sticky lock_exclusive lock_read_write; do
  cp "$T/libtern_$p.so" "$CTX/plugins/"
done
cp deploy/Dockerfile "$CTX/Dockerfile"
docker build -q -t "$TAG" "$CTX" >/dev/null
echo "built $TAG ($(docker image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
