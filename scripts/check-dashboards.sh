#!/usr/bin/env bash
# Proves the Grafana dashboards against reality: starts a 3-broker cluster
# and a real Prometheus (Debian's `prometheus`) scraping it, drives load with
# `tern bench` (plus retention, the read cache, a refused request, a leader
# kill so failover shows, locks and a consumer group), then
# evaluates every query of every panel through Prometheus's HTTP API and
# fails if one returns no series or names a metric the broker does not
# export. Also runs `promtool check metrics` on /metrics and checks the
# dashboard JSON is generated from grafana/dashboards.py.
# Everything runs on loopback and is stopped by PID at exit; bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}/release

python3 grafana/dashboards.py --check
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  echo "!!!!! SKIPPED: dashboard check needs Debian's prometheus package (apt-get install prometheus); .ci/run installs it !!!!!"
  exit 0
fi

WORK=$(mktemp -d /tmp/tern-dash.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PROM=127.0.0.1:$(port)
declare -a CLIENT HTTPS PEER KAFKA
for i in 1 2 3; do
  CLIENT[$i]=127.0.0.1:$(port); HTTPS[$i]=127.0.0.1:$(port); PEER[$i]=127.0.0.1:$(port); KAFKA[$i]=127.0.0.1:$(port)
done
INITIAL="1@${PEER[1]},2@${PEER[2]},3@${PEER[3]}"
start_broker() { # i
  "$T/ternd" --node-id "$1" --data-dir "$WORK/data$1" --listen "${CLIENT[$1]}" \
    --metrics-listen "${HTTPS[$1]}" --peer-listen "${PEER[$1]}" --initial-cluster "$INITIAL" --kafka-listen "${KAFKA[$1]}" \
    --retention-check-ms 300 >>"$WORK/ternd$1.log" 2>&1 &
  pids[$1]=$!
}
for i in 1 2 3; do start_broker $i; done
for i in 1 2 3; do
  for _ in $(seq 1 400); do curl -sf "http://${HTTPS[$i]}/ready" >/dev/null && break; sleep 0.05; done
  curl -sf "http://${HTTPS[$i]}/ready" >/dev/null || { cat "$WORK/ternd$i.log"; exit 1; }
done
HTTP=${HTTPS[1]}
BROKER="${CLIENT[1]},${CLIENT[2]},${CLIENT[3]}"

cat >"$WORK/prometheus.yml" <<YML
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: tern
    static_configs: [{targets: ["${HTTPS[1]}", "${HTTPS[2]}", "${HTTPS[3]}"]}]
YML
promtool check config "$WORK/prometheus.yml" >/dev/null
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prom" \
  --web.listen-address="$PROM" >"$WORK/prometheus.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 200); do curl -sf "http://$PROM/-/ready" >/dev/null && break; sleep 0.1; done

tern() { timeout 120 "$T/tern" --broker "$BROKER" "$@"; }
tern topic create load --partitions 2 >/dev/null
tern topic create small --partitions 1 --retention-bytes 2000 >/dev/null
if tern topic create 'bad name!' >/dev/null 2>&1; then echo "a bad topic name was accepted"; exit 1; fi
for round in 1 2 3; do
  tern bench produce --topic load --messages 100000 --size 100 >/dev/null
  tern bench consume --topic load --messages $((round * 100000)) >/dev/null
  seq 1 300 | tern produce small 2>/dev/null
  if [ $round = 2 ]; then
    # Kill the leader of load/0 and bring it back: elections show up.
    leader=$(tern topic describe load | awk '$1 == "0" {print $2}')
    kill -9 "${pids[$leader]}"; wait "${pids[$leader]}" 2>/dev/null || true
    sleep 1.5
    start_broker "$leader"
    for _ in $(seq 1 400); do curl -sf "http://${HTTPS[$leader]}/ready" >/dev/null && break; sleep 0.05; done
  fi
  sleep 1.5
done
# Coordination: uncontended lock traffic, a lease that expires (its holder
# is SIGKILLed), a holder with a waiter queued behind it, and a consumer
# group with a member that stays and one that commits and leaves.
tern bench lock --operations 2000 --clients 4 >/dev/null
# Kafka clients: kcat produces and consumes through every broker's Kafka
# listener, asks for a topic that does not exist (an error per partition)
# and one raw request of an unknown API (a closed connection).
KBROKERS="${KAFKA[1]},${KAFKA[2]},${KAFKA[3]}"
seq 1 2000 | sed 's/^/k&:v&/' | timeout 60 kcat -b "$KBROKERS" -P -t load -K: -X linger.ms=5
timeout 60 kcat -b "$KBROKERS" -C -t load -o beginning -c 2000 -e >/dev/null
timeout 30 kcat -b "$KBROKERS" -C -t no-such-topic -o beginning -e >/dev/null 2>&1 || true
python3 - "${KAFKA[1]}" <<'PY' || true
import socket, sys
host, port = sys.argv[1].rsplit(":", 1)
s = socket.create_connection((host, int(port)), timeout=10)
s.sendall(b"\0\0\0\x0a\x03\xe7\0\0\0\0\0\x01\xff\xff")  # API 999: closed
s.recv(1)
PY
"$T/tern" --broker "$BROKER" lock acquire expiring --lease 1s >/dev/null 2>&1 &
expiring=$!
"$T/tern" --broker "$BROKER" lock acquire held --lease 10s >/dev/null 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do tern lock list | grep -q "^expiring" && tern lock list | grep -q "^held" && break; sleep 0.1; done
# (It may have exited already: a 1 s lease can be lost on a loaded machine.)
kill -9 "$expiring" 2>/dev/null || true; wait "$expiring" 2>/dev/null || true
"$T/tern" --broker "$BROKER" lock acquire held --lease 10s >/dev/null 2>&1 &
pids+=($!)
"$T/tern" --broker "$BROKER" consume load --group dashboard --from-beginning --follow >/dev/null 2>&1 &
pids+=($!)
tern consume load --group dashboard --from-beginning --count 50000 >/dev/null
tern bench produce --topic load --messages 20000 --size 100 >/dev/null
for _ in $(seq 1 100); do tern lock list | grep -q "waiter" && break; sleep 0.1; done
tern group describe dashboard >/dev/null
sleep 3   # a few more scrapes after the last load

# What the cluster exports: the union of the brokers' /metrics (a broker
# that leads nothing has no per-topic produce series).
: >"$WORK/metrics.txt"
for i in 1 2 3; do
  curl -sf "http://${HTTPS[$i]}/metrics" >"$WORK/metrics$i.txt"
  promtool check metrics <"$WORK/metrics$i.txt"
  cat "$WORK/metrics$i.txt" >>"$WORK/metrics.txt"
done

python3 - "$PROM" "$WORK/metrics.txt" grafana/dashboards/*.json <<'PY'
import json, re, sys, urllib.parse, urllib.request
prom, metrics_file, files = sys.argv[1], sys.argv[2], sys.argv[3:]
exported = set()
for line in open(metrics_file):
    if line.startswith("# TYPE "):
        name, kind = line.split()[2:4]
        exported.add(name)
        if kind == "histogram":
            exported |= {name + "_bucket", name + "_sum", name + "_count"}
failures, checked = [], 0
for f in files:
    for p in json.load(open(f))["panels"]:
        for t in p["targets"]:
            expr = t["expr"].replace("$__rate_interval", "1m")
            checked += 1
            for name in set(re.findall(r"\b((?:tern|process)_[a-z0-9_]+)\b", expr)):
                if name not in exported:
                    failures.append(f"{f}: {p['title']!r}: metric {name} is not exported")
            url = f"http://{prom}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            body = json.load(urllib.request.urlopen(url, timeout=10))
            if body.get("status") != "success":
                failures.append(f"{f}: {p['title']!r}: query failed: {body}")
            elif not body["data"]["result"]:
                failures.append(f"{f}: {p['title']!r}: no series for {expr}")
print(f"dashboard check: {checked} queries evaluated against a live 3-broker cluster")
if failures:
    print("\n".join(failures))
    sys.exit(1)
PY
