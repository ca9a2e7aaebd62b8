#!/usr/bin/env bash
# Coordination benchmark, one run on this machine: uncontended lock acquire +
# release on etcd 3 nodes (its v3 lock API, via its JSON gateway) and on Tern
# 3 brokers, measured by the same client loop (`tern bench lock`) at several
# client counts; both fsync before acknowledging (etcd always does; Tern's
# default durability is fsync). Then the consumer-group rebalance time when
# a member joins or leaves cleanly (`tern bench rebalance`). Every process
# started here is stopped by PID at exit. Results go to stdout.
#
#   scripts/bench-coord.sh [OPERATIONS]        (default 10000 per client count)
#
# Needs: the release build and etcd-server/etcd-client (apt; peers.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
T=${CARGO_TARGET_DIR:-target}/release
PEERS=${PEERS:-../shared/peers}
WORK=$(mktemp -d /tmp/tern-bench-coord.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  "$PEERS/peers.sh" stop "$WORK/peers" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
CLIENTS="1 8 32 64"
export RUST_BACKTRACE=0
echo "== machine: $(nproc) cores, $(uname -r), $(date -u +%FT%TZ)"

echo "== etcd 3 nodes: v3 lock + unlock under one session lease per client"
"$PEERS/peers.sh" start etcd3 "$WORK/peers"
for c in $CLIENTS; do
  "$T/tern" bench lock --etcd 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 \
    --clients "$c" --operations "$(( c == 1 ? N / 5 : N ))"
done
"$PEERS/peers.sh" stop "$WORK/peers"

echo "== Tern 3 brokers: lock acquire (lease 10 s) + release"
initial="1@127.0.0.1:48120,2@127.0.0.1:48220,3@127.0.0.1:48320"
for i in 1 2 3; do
  "$T/ternd" --node-id "$i" --data-dir "$WORK/n$i" --listen "127.0.0.1:48${i}00" \
    --metrics-listen "127.0.0.1:48${i}10" --peer-listen "127.0.0.1:48${i}20" --kafka-listen "127.0.0.1:48${i}30" \
    --initial-cluster "$initial" >"$WORK/n$i.log" 2>&1 &
  pids+=($!)
done
for i in 1 2 3; do
  for _ in $(seq 1 400); do curl -sf "127.0.0.1:48${i}10/ready" >/dev/null && continue 2; sleep 0.05; done
  echo "broker $i did not start"; cat "$WORK/n$i.log"; exit 1
done
SEEDS=127.0.0.1:48100,127.0.0.1:48200,127.0.0.1:48300
for c in $CLIENTS; do
  "$T/tern" --broker "$SEEDS" bench lock --clients "$c" --operations "$(( c == 1 ? N / 5 : N ))"
done
echo "== Tern consumer group rebalance (12 partitions, 3 members + 1 joining then leaving)"
"$T/tern" --broker "$SEEDS" bench rebalance --rounds 10
