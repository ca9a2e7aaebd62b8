#!/usr/bin/env bash
# Replication benchmark, one run on this machine: the disk ceiling, Tern with
# 3 brokers and replication factor 3 (acks=all, fsync), Tern with 1 broker
# (RF 1) for the cost of replication, and NATS JetStream R3 — so the ratios
# compare like with like. All on loopback; every process started here is
# stopped by PID at exit. Results go to stdout (copy into docs/benchmarks.md).
#
#   scripts/bench-cluster.sh [MESSAGES]        (default 1000000)
#
# Needs: the release build, nats-server (apt) and natsbench built from
# ../shared/peers (see its README).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
RATE_SECS=${RATE_SECS:-10}  # length of each open-loop run
T=${CARGO_TARGET_DIR:-target}/release
PEERS=${PEERS:-../shared/peers}
NATSBENCH=${NATSBENCH:-/tmp/natsbench/release/natsbench}
WORK=$(mktemp -d /tmp/tern-bench-cluster.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  "$PEERS/peers.sh" stop "$WORK/peers" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== machine: $(nproc) cores, $(uname -r), $(date -u +%FT%TZ)"

echo "== disk ceiling: sequential writes, fdatasync per write"
python3 - "$WORK/disk" <<'PY'
import os, sys, time
path = sys.argv[1]
for size, label in ((100 * 1000, "100 KB writes"), (1000 * 1000, "1 MB writes")):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    buf = os.urandom(size); n = 0; t0 = time.time()
    while time.time() - t0 < 5:
        os.write(fd, buf); os.fdatasync(fd); n += 1
    dt = time.time() - t0; os.close(fd); os.unlink(path)
    print(f"disk {label}: {n/dt:.0f} syncs/s, {n*size/dt/1e6:.1f} MB/s")
PY

# start_cluster N: brokers on ports 47x0 (clients), 47x1 (metrics), 47x2 (Raft).
start_cluster() {
  local n=$1 initial="" i
  for i in $(seq 1 "$n"); do initial+="${initial:+,}$i@127.0.0.1:47${i}2"; done
  for i in $(seq 1 "$n"); do
    "$T/ternd" --node-id "$i" --data-dir "$WORK/n$n-$i" --listen "127.0.0.1:47${i}0" \
      --metrics-listen "127.0.0.1:47${i}1" --peer-listen "127.0.0.1:47${i}2" --kafka-listen "127.0.0.1:47${i}3" \
      --initial-cluster "$initial" >"$WORK/n$n-$i.log" 2>&1 &
    pids+=($!)
  done
  for i in $(seq 1 "$n"); do
    for _ in $(seq 1 400); do curl -sf "127.0.0.1:47${i}1/ready" >/dev/null && continue 2; sleep 0.05; done
    echo "broker $i did not start"; cat "$WORK/n$n-$i.log"; exit 1
  done
  SEEDS=$(for i in $(seq 1 "$n"); do printf '127.0.0.1:47%s0,' "$i"; done); SEEDS=${SEEDS%,}
}
stop_cluster() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
disk_written() { awk '$3 ~ /^(vda|sda|nvme0n1|xvda)$/ {s += $10} END {print s * 512}' /proc/diskstats; }

for n in 3 1; do
  echo "== Tern, $n broker(s), replication factor $n, acks=all, durability=fsync"
  start_cluster "$n"
  tern() { "$T/tern" --broker "$SEEDS" "$@"; }
  d0=$(disk_written)
  out=$(tern bench produce --topic c100 --messages "$N" --size 100 --batch 1000 --partitions 3 --producers 3); echo "$out"
  MAX=$(sed -n 's/.*: \([0-9]*\) msgs\/s.*/\1/p' <<<"$out")
  d1=$(disk_written)
  echo "disk bytes written per payload byte, all replicas (100 B run): $(python3 -c "print(round(($d1-$d0)/($N*100),2))")"
  d0=$(disk_written)
  tern bench produce --topic c1k --messages $((N / 5)) --size 1000 --batch 1000 --partitions 3 --producers 3
  d1=$(disk_written)
  echo "disk bytes written per payload byte, all replicas (1 KB run): $(python3 -c "print(round(($d1-$d0)/($N/5*1000),2))")"
  # Open loop: record i is due at start + i/RATE and its latency counts
  # from then (coordinated omission corrected), at fractions of the
  # maximum just measured, with the same partitions and producers.
  echo "-- open-loop latency, 100 B, RF $n, from each record's scheduled time (max measured: ${MAX:-?} msgs/s)"
  echo "round trips (--rate 200 --batch 1): $(tern bench produce --topic c100rt --rate 200 --batch 1 --duration "$RATE_SECS")"
  if [ -n "$MAX" ] && [ "$MAX" -ge 10 ]; then
    for pct in 10 50 80; do
      echo "at $pct % of max: $(tern bench produce --topic "c100r$pct" --rate $((MAX * pct / 100)) --duration "$RATE_SECS" \
        --size 100 --batch 1000 --linger-ms 1 --partitions 3 --producers 3)"
    done
  else
    echo "SKIPPED: could not read the maximum rate"
  fi
  tern bench consume --topic c100 --messages "$N"
  stop_cluster
done

echo "== NATS JetStream R3 (3 servers, file storage; NATS does not fsync per message)"
if command -v nats-server >/dev/null && [ -x "$NATSBENCH" ]; then
  "$PEERS/peers.sh" start nats3 "$WORK/peers"
  "$NATSBENCH" nats://127.0.0.1:4231 100 $((N / 4)) 2000 1 3
  "$NATSBENCH" nats://127.0.0.1:4231 1000 $((N / 10)) 2000 1 3
  "$PEERS/peers.sh" stop "$WORK/peers"
else
  echo "SKIPPED: nats-server or natsbench missing"
fi
