#!/usr/bin/env bash
# The Kafka path against the native one, same broker, same run: librdkafka
# (confluent-kafka, linger.ms=5, batch.size=1 MiB, acks=all) producing and
# consuming 100 B and 1 KB records through the Kafka listener, and
# `tern bench` doing the same natively. Loopback only; the broker started
# here is stopped by PID at exit. Results go to stdout.
#
#   scripts/bench-kafka.sh [MESSAGES]        (default 1000000)
#
# Needs: the release build, python3 with confluent-kafka
# (scripts/install-test-deps.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000000}
T=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d /tmp/tern-bench-kafka.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

"$T/ternd" --data-dir "$WORK/data" --listen 127.0.0.1:4780 --metrics-listen 127.0.0.1:4781 \
  --peer-listen 127.0.0.1:4782 --kafka-listen 127.0.0.1:4783 >"$WORK/ternd.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 400); do curl -sf http://127.0.0.1:4781/ready >/dev/null && break; sleep 0.05; done
tern() { timeout 600 "$T/tern" --broker 127.0.0.1:4780 "$@"; }
echo "== machine: $(nproc) cores, $(uname -r), $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD)"

kafka() { # produce|consume topic count size
  timeout 600 python3 - "$@" <<'PY'
import sys, time
from confluent_kafka import Consumer, Producer, TopicPartition
mode, topic, n, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
addr = "127.0.0.1:4783"
if mode == "produce":
    p = Producer({"bootstrap.servers": addr, "acks": "all", "linger.ms": 5,
                  "batch.size": 1048576, "queue.buffering.max.messages": 1000000,
                  "enable.idempotence": True})
    value = b"x" * size
    t0 = time.time()
    for i in range(n):
        while True:
            try:
                p.produce(topic, value); break
            except BufferError:
                p.poll(0.001)
    left = p.flush(300)
    dt = time.time() - t0
    assert left == 0, f"{left} undelivered"
else:
    c = Consumer({"bootstrap.servers": addr, "group.id": "bench", "enable.auto.commit": False,
                  "fetch.max.bytes": 52428800, "max.partition.fetch.bytes": 8388608})
    c.assign([TopicPartition(topic, 0, 0)])
    got, t0 = 0, time.time()
    while got < n:
        got += len([m for m in c.consume(10000, 1.0) if not m.error()])
    dt = time.time() - t0
    c.close()
print(f"kafka {mode} {size} B: {n / dt:,.0f} msgs/s, {n * size / dt / 1e6:,.1f} MB/s ({n} in {dt:.2f} s)")
PY
}

for size in 100 1000; do
  n=$N; [ "$size" = 1000 ] && n=$((N / 4))
  tern topic create "native$size" --partitions 1 >/dev/null
  tern topic create "kafka$size" --partitions 1 >/dev/null
  echo "native produce $size B: $(tern bench produce --topic "native$size" --messages "$n" --size "$size" --batch 1000 | tail -1)"
  kafka produce "kafka$size" "$n" "$size"
  echo "native consume $size B: $(tern bench consume --topic "native$size" --messages "$n" | tail -1)"
  kafka consume "kafka$size" "$n" "$size"
done
