#!/usr/bin/env bash
# One benchmark run on this machine: the disk and RocksDB ceilings, Tern
# (durable and relaxed), NATS JetStream R1 and Redis Streams, in one go so
# the ratios compare like with like. Loopback only; everything started here
# is stopped by PID at exit. Results go to stdout (copy into docs/benchmarks.md).
#
#   scripts/bench.sh [MESSAGES]        (default 2000000)
#
# Needs: the release build (cargo build --release --workspace), python3 with
# rocksdict (pip install rocksdict), nats-server, redis-server/redis-benchmark
# (apt), and natsbench built from ../shared/peers (see its README).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000000}
T=${CARGO_TARGET_DIR:-target}/release
PEERS=${PEERS:-../shared/peers}
NATSBENCH=${NATSBENCH:-/tmp/natsbench/release/natsbench}
WORK=$(mktemp -d /tmp/tern-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$PEERS/peers.sh" stop "$WORK/peers" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== machine: $(nproc) cores, $(uname -r), $(date -u +%FT%TZ)"

echo "== disk ceiling: sequential writes, fdatasync per batch"
python3 - "$WORK/disk" <<'PY'
import os, sys, time
path = sys.argv[1]
for size, label in ((100 * 1000, "batch of 1000 x 100 B"), (1000 * 1000, "batch of 1000 x 1 KB")):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    buf = os.urandom(size); n = 0; t0 = time.time()
    while time.time() - t0 < 5:
        os.write(fd, buf); os.fdatasync(fd); n += 1
    dt = time.time() - t0; os.close(fd); os.unlink(path)
    print(f"disk {label}: {n/dt:.0f} syncs/s, {n*size/dt/1e6:.1f} MB/s, {n*1000/dt:.0f} msgs/s")
PY

echo "== RocksDB alone (peers/rocksdb_ceiling.py, 1 writer, sync)"
python3 "$PEERS/rocksdb_ceiling.py" "$WORK/rocks100" $((N / 1000)) 100 1 sync || echo "rocksdb_ceiling failed"
python3 "$PEERS/rocksdb_ceiling.py" "$WORK/rocks1k" $((N / 10000)) 1000 1 sync || echo "rocksdb_ceiling failed"
rm -rf "$WORK"/rocks*

start_tern() { # data-dir extra-args...
  local dir=$1; shift
  "$T/ternd" --data-dir "$dir" --listen 127.0.0.1:4750 --metrics-listen 127.0.0.1:4751 --kafka-listen 127.0.0.1:4753 "$@" >"$dir.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 200); do curl -sf 127.0.0.1:4751/ready >/dev/null && return 0; sleep 0.05; done
  echo "ternd did not start"; cat "$dir.log"; exit 1
}
stop_tern() { kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'; }
tern() { "$T/tern" --broker 127.0.0.1:4750 "$@"; }
disk_written() { awk '$3 ~ /^(vda|sda|nvme0n1|xvda)$/ {s += $10} END {print s * 512}' /proc/diskstats; }

echo "== Tern, durability=fsync (acknowledged after the WAL is fsync'd)"
start_tern "$WORK/tern-fsync"
d0=$(disk_written)
out1=$(tern bench produce --topic b100 --messages "$N" --size 100 --batch 1000); echo "$out1"
d1=$(disk_written)
echo "tern write amplification 100 B (disk bytes / payload bytes, incl. flush so far): $(python3 -c "print(round(($d1-$d0)/($N*100),2))")"
out2=$(tern bench produce --topic b100p --messages "$N" --size 100 --batch 1000 --producers 2); echo "$out2"
tern bench produce --topic b1k --messages $((N / 5)) --size 1000 --batch 1000
tern bench consume --topic b100 --messages "$N"
# Open loop: record i is due at start + i/RATE and its latency counts from
# then (coordinated omission corrected), at fractions of the maximum just
# measured (the better of the two 100 B closed-loop runs), with 2 producers
# like the better run (the rate is shared between them).
MAX=$(printf '%s\n%s\n' "$out1" "$out2" | sed -n 's/.*: \([0-9]*\) msgs\/s.*/\1/p' | sort -n | tail -1)
RATE_SECS=${RATE_SECS:-10}
echo "-- open-loop latency, 100 B, 2 producers, from each record's scheduled time (max measured: ${MAX:-?} msgs/s)"
echo "round trips (--rate 200 --batch 1): $(tern bench produce --topic b100rt --rate 200 --batch 1 --duration "$RATE_SECS")"
if [ -n "$MAX" ] && [ "$MAX" -ge 10 ]; then
  for pct in 10 50 80; do
    echo "at $pct % of max: $(tern bench produce --topic "b100r$pct" --rate $((MAX * pct / 100)) --duration "$RATE_SECS" --size 100 --batch 1000 --linger-ms 1 --producers 2)"
  done
else
  echo "SKIPPED: could not read the maximum rate"
fi
stop_tern

echo "== Tern, durability=page-cache (relaxed: acknowledged once in the OS page cache)"
start_tern "$WORK/tern-relaxed" --durability page-cache
tern bench produce --topic r100 --messages "$N" --size 100 --batch 1000
tern bench produce --topic r100p --messages "$N" --size 100 --batch 1000 --producers 2
stop_tern

echo "== Tern idle memory with 100 partitions"
start_tern "$WORK/tern-idle"
tern topic create idle --partitions 100 >/dev/null
sleep 2
echo "ternd RSS with 100 partitions: $(awk '/VmRSS/ {print $2 " kB"}' /proc/${pids[-1]}/status)"
stop_tern

echo "== NATS JetStream R1 (file storage; NATS does not fsync per message)"
if command -v nats-server >/dev/null && [ -x "$NATSBENCH" ]; then
  "$PEERS/peers.sh" start nats1 "$WORK/peers"
  "$NATSBENCH" nats://127.0.0.1:4222 100 "$N" 2000 1 1
  "$NATSBENCH" nats://127.0.0.1:4222 1000 $((N / 5)) 2000 1 1
  "$PEERS/peers.sh" stop "$WORK/peers"
else
  echo "SKIPPED: nats-server or natsbench missing"
fi

echo "== Redis Streams XADD, appendfsync always (50 connections, pipeline 64)"
if command -v redis-server >/dev/null; then
  "$PEERS/peers.sh" start redis "$WORK/peers"
  v100=$(head -c 50 /dev/urandom | od -An -tx1 | tr -d ' \n')
  v1k=$(head -c 500 /dev/urandom | od -An -tx1 | tr -d ' \n')
  rb() { redis-benchmark -q "$@" 2>&1 | tr '\r' '\n' | grep 'requests per second' | tail -1 | sed 's/^.*: \([0-9.]* requests\)/\1/'; }
  echo "redis 100 B: $(rb -n "$N" -P 64 -c 50 XADD s100 '*' f "$v100")"
  echo "redis 1 KB: $(rb -n $((N / 5)) -P 64 -c 50 XADD s1k '*' f "$v1k")"
  "$PEERS/peers.sh" stop "$WORK/peers"
else
  echo "SKIPPED: redis-server missing"
fi
