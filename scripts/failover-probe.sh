#!/usr/bin/env bash
# Failover as a client sees it: a 3-broker cluster on loopback, one record
# produced every 50 ms with the DEFAULT client and producer settings; the
# leader of the partition is SIGKILLed RUNS times, then SIGSTOPped (a hung
# host: no TCP reset) RUNS times. Prints, per fault, the time from the fault
# to the acknowledgement of the first record sent after it (records in flight
# at the fault are acknowledged before it, in order), then min/median/max,
# and checks that no acknowledged record was lost or stored twice.
#
#   scripts/failover-probe.sh [RUNS]        (default 10)
#
# The brokers are the test harness's (tests/src/lib.rs): started by this
# run, killed by PID when it ends, even on failure; `timeout` bounds it all.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-10}
LOG=$(mktemp /tmp/tern-failover-probe.XXXXXX)
cargo build --release --workspace
echo "== $(nproc) cores, $(uname -r), $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD)"
if TERN_PROBE_RUNS=$RUNS timeout $((300 + 120 * RUNS)) \
  cargo test --release -p tern-tests --test cluster -- --ignored --exact failover_probe --nocapture \
  >"$LOG" 2>&1; then
  grep -E '^(SIGKILL|SIGSTOP|failover probe|partition)' "$LOG"
  rm -f "$LOG"
else
  tail -n 60 "$LOG"
  echo "failover probe failed; full output in $LOG" >&2
  exit 1
fi
