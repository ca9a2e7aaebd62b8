#!/usr/bin/env bash
# Read-cache strategies under two access patterns, driven by `tern bench`:
#   tail   — a producer and a consumer tailing it (the consumer reads what was
#            just written);
#   replay — a consumer replaying history larger than the cache while a
#            producer and a tailing consumer keep going.
# Prints the hit ratio (from tern_read_cache_* metrics) and the consumers'
# throughput for each cache plugin. Loopback only; brokers stopped by PID.
#
#   scripts/bench-cache.sh [MESSAGES] [CACHE_BYTES]   (default 1000000, 33554432)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
CACHE=${2:-33554432}
T=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d /tmp/tern-cache-bench.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
tern() { "$T/tern" --broker 127.0.0.1:4760 "$@"; }
counter() { curl -s 127.0.0.1:4761/metrics | awk -v m="$1" '$1 ~ "^"m"\\{" {s += $2} END {print s + 0}'; }
ratio() { python3 -c "h=$1;m=$2;print(f'{h/(h+m):.3f}' if h+m else 'n/a')"; }

for strategy in lru s3-fifo; do
  "$T/ternd" --data-dir "$WORK/$strategy" --listen 127.0.0.1:4760 --metrics-listen 127.0.0.1:4761 --kafka-listen 127.0.0.1:4763 \
    --cache-plugin "$strategy" --read-cache-bytes "$CACHE" >"$WORK/$strategy.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 200); do curl -sf 127.0.0.1:4761/ready >/dev/null && break; sleep 0.05; done

  tern topic create t --partitions 1 >/dev/null
  h0=$(counter tern_read_cache_hits_total); m0=$(counter tern_read_cache_misses_total)
  tern bench produce --topic t --messages "$N" --size 100 --batch 1000 >/dev/null &
  p=$!
  tail_out=$(tern bench consume --topic t --messages "$N")
  wait $p
  h1=$(counter tern_read_cache_hits_total); m1=$(counter tern_read_cache_misses_total)
  echo "$strategy tail:   hit ratio $(ratio $((h1-h0)) $((m1-m0)))  | $tail_out"

  # History t (N records, > cache) is replayed while new data is tailed on u.
  tern topic create u --partitions 1 >/dev/null
  tern bench produce --topic u --messages "$N" --size 100 --batch 1000 >/dev/null &
  p=$!
  tern bench consume --topic u --messages "$N" >"$WORK/tail2" &
  c=$!
  replay_out=$(tern bench consume --topic t --messages "$N")
  wait $p $c
  h2=$(counter tern_read_cache_hits_total); m2=$(counter tern_read_cache_misses_total)
  echo "$strategy replay: hit ratio $(ratio $((h2-h1)) $((m2-m1)))  | replay: $replay_out"
  echo "$strategy replay:                   | tail:   $(cat "$WORK/tail2")"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
done
