#!/usr/bin/env bash
# What TLS and SCRAM cost, in one run on this machine: one broker started
# three ways — plaintext, TLS, TLS + SCRAM (authentication required) — each
# measured with the same `tern bench` workloads: produce 100 B and 1 KB
# (batches of 1,000, fsync), consume 100 B, a storm of 1,000 connections at
# once and 200 connections one after another (handshake time); then three
# brokers with replication factor 3, plaintext vs mutual TLS between
# brokers (and TLS + SCRAM for the client). Loopback only; every broker
# started here is stopped by PID at exit.
#
#   scripts/bench-security.sh [MESSAGES]     (default 2000000)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-2000000}
T=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d /tmp/tern-bench-sec.XXXXXX)
pid=
pids=()
cleanup() {
  [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== machine: $(nproc) cores, $(uname -r), $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD)"
C=$WORK/certs
"$T/tern" cert create-ca --dir "$C" >/dev/null
for i in 1 2 3; do "$T/tern" cert issue --dir "$C" --node-id "$i" --host 127.0.0.1 >/dev/null; done
export TERN_BOOTSTRAP_USER=bench TERN_BOOTSTRAP_PASSWORD=bench-password TERN_PASSWORD=bench-password

for mode in plaintext tls tls+scram; do
  server=(); client=()
  case $mode in
    tls*) server+=(--tls-cert "$C/node-1.pem" --tls-key "$C/node-1-key.pem" --tls-ca "$C/ca.pem")
          client+=(--tls-ca "$C/ca.pem") ;;
  esac
  case $mode in
    *scram) server+=(--auth-required --super-user bench); client+=(--username bench) ;;
  esac
  rm -rf "$WORK/data"
  "$T/ternd" --data-dir "$WORK/data" --listen 127.0.0.1:4770 --metrics-listen 127.0.0.1:4771 \
    --peer-listen 127.0.0.1:4772 --kafka-listen off --metrics-plaintext "${server[@]}" >"$WORK/ternd.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 200); do curl -sf 127.0.0.1:4771/ready >/dev/null && break; sleep 0.05; done
  tern() { "$T/tern" --broker 127.0.0.1:4770 "${client[@]}" "$@"; }
  echo "== $mode"
  tern bench produce --topic b100 --messages "$N" --size 100 --batch 1000
  tern bench produce --topic b1k --messages $((N / 5)) --size 1000 --batch 1000
  tern bench consume --topic b100 --messages "$N"
  tern bench connect --clients 1000 --concurrency 1000
  tern bench connect --clients 200 --concurrency 1
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
done

# Replication factor 3: three brokers, each mode as above; between brokers
# the TLS modes are mutual TLS with the node certificates.
for mode in plaintext tls tls+scram; do
  client=()
  case $mode in tls*) client+=(--tls-ca "$C/ca.pem") ;; esac
  case $mode in *scram) client+=(--username bench) ;; esac
  initial=""; for i in 1 2 3; do initial+="${initial:+,}$i@127.0.0.1:48${i}2"; done
  for i in 1 2 3; do
    server=()
    case $mode in
      tls*) server+=(--tls-cert "$C/node-$i.pem" --tls-key "$C/node-$i-key.pem" --tls-ca "$C/ca.pem") ;;
    esac
    case $mode in *scram) server+=(--auth-required --super-user bench) ;; esac
    rm -rf "$WORK/rf3-$i"
    "$T/ternd" --node-id "$i" --data-dir "$WORK/rf3-$i" --listen "127.0.0.1:48${i}0" \
      --metrics-listen "127.0.0.1:48${i}1" --peer-listen "127.0.0.1:48${i}2" --kafka-listen off \
      --initial-cluster "$initial" --metrics-plaintext "${server[@]}" >"$WORK/rf3-$i.log" 2>&1 &
    pids+=($!)
  done
  for i in 1 2 3; do
    for _ in $(seq 1 400); do curl -sf "127.0.0.1:48${i}1/ready" >/dev/null && continue 2; sleep 0.05; done
    echo "broker $i did not start"; cat "$WORK/rf3-$i.log"; exit 1
  done
  tern() { "$T/tern" --broker 127.0.0.1:4810,127.0.0.1:4820,127.0.0.1:4830 "${client[@]}" "$@"; }
  echo "== RF 3, $mode"
  tern bench produce --topic r100 --messages "$N" --size 100 --batch 1000 --partitions 3 --producers 3
  tern bench produce --topic r1k --messages $((N / 5)) --size 1000 --batch 1000 --partitions 3 --producers 3
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
done
