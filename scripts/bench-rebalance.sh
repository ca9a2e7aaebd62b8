#!/usr/bin/env bash
# What growing a cluster costs, one run on this machine: three brokers
# holding MB megabytes (replication factor 3) in 24 partitions; a 4th broker
# joins and `tern cluster rebalance --wait` moves the replicas whose
# placement changed (about 1/4), first unthrottled, then — after removing
# and re-adding the broker — with a throttle. During each move an open-loop
# producer (200 records/s, one per request) measures what producers see.
# Loopback only; every broker started here is stopped by PID at exit.
#
#   scripts/bench-rebalance.sh [MB] [THROTTLE_BYTES_PER_SEC]   (defaults 5000, 20000000)
set -euo pipefail
cd "$(dirname "$0")/.."
MB=${1:-5000}
THROTTLE=${2:-20000000}
T=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d /tmp/tern-bench-rebalance.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== machine: $(nproc) cores, $(uname -r), $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD)"
initial=""; for i in 1 2 3 4; do initial+="${initial:+,}$i@127.0.0.1:49${i}2"; done
start_broker() { # start_broker I [--join]
  local i=$1; shift
  "$T/ternd" --node-id "$i" --data-dir "$WORK/n$i" --listen "127.0.0.1:49${i}0" \
    --metrics-listen "127.0.0.1:49${i}1" --peer-listen "127.0.0.1:49${i}2" --kafka-listen off \
    --initial-cluster "$initial" "$@" >>"$WORK/n$i.log" 2>&1 &
  pids+=($!)
  eval "pid$i=$!"
}
wait_ready() {
  for _ in $(seq 1 600); do curl -sf "127.0.0.1:49${1}1/ready" >/dev/null && return; sleep 0.1; done
  echo "broker $1 did not become ready"; cat "$WORK/n$1.log"; exit 1
}
# The first three form the cluster (the 4th is in --initial-cluster only as
# an address: it is not a member until added).
initial3=""; for i in 1 2 3; do initial3+="${initial3:+,}$i@127.0.0.1:49${i}2"; done
for i in 1 2 3; do
  "$T/ternd" --node-id "$i" --data-dir "$WORK/n$i" --listen "127.0.0.1:49${i}0" \
    --metrics-listen "127.0.0.1:49${i}1" --peer-listen "127.0.0.1:49${i}2" --kafka-listen off \
    --initial-cluster "$initial3" >"$WORK/n$i.log" 2>&1 &
  pids+=($!)
done
for i in 1 2 3; do wait_ready "$i"; done
tern() { "$T/tern" --broker 127.0.0.1:4910,127.0.0.1:4920,127.0.0.1:4930 "$@"; }

echo "== filling: $MB MB of 1 KB records, 24 partitions, RF 3"
tern bench produce --topic big --messages $((MB * 1000)) --size 1000 --batch 1000 --partitions 24 --producers 3

move() { # move LABEL [rebalance flags]
  local label=$1; shift
  # The probe: 5-second open-loop windows until the move is done.
  rm -f "$WORK/done" "$WORK/probe.out"
  ( while [ ! -f "$WORK/done" ]; do
      tern bench produce --topic probe --partitions 3 --rate 200 --batch 1 --duration 5 2>&1 | tail -1 >>"$WORK/probe.out"
    done ) &
  local probe=$!
  sleep 5
  local t0; t0=$(date +%s.%N)
  tern cluster rebalance --wait "$@" | tail -1
  local t1; t1=$(date +%s.%N)
  touch "$WORK/done"
  wait "$probe" 2>/dev/null || true
  echo "$label: rebalance took $(python3 -c "print(round($t1-$t0,1))") s"
  echo "$label: producer at 200 records/s, one per request, in 5 s windows from 5 s before the move to its end:"
  sed 's/^/  /' "$WORK/probe.out"
}

echo "== broker 4 joins; unthrottled"
start_broker 4 --join
tern cluster add-broker 4 127.0.0.1:4942
wait_ready 4
tern cluster rebalance --dry-run | tail -1
move "unthrottled"

echo "== broker 4 leaves (its replicas move back), is wiped, joins again; throttled to $THROTTLE B/s"
tern cluster remove-broker 4 >/dev/null
kill "$pid4" 2>/dev/null || true
wait "$pid4" 2>/dev/null || true
rm -rf "$WORK/n4"
start_broker 4 --join
tern cluster add-broker 4 127.0.0.1:4942
wait_ready 4
move "throttled to $THROTTLE B/s" --throttle "$THROTTLE"
