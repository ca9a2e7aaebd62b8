#!/usr/bin/env bash
# Container fault test: builds the tern image (base image made locally with
# debootstrap when it cannot be pulled), starts the 3 brokers of
# deploy/compose.yaml on their private network (on free host ports), produces
# and consumes through the published ports with the host's `tern` CLI
# (over TLS with the compose file's `admin` client certificate: every port of
# the compose brokers is TLS, between brokers mutual TLS),
# `docker kill`s the leader of a partition in the middle of a produce stream
# (which must complete: nothing acknowledged lost), then runs a seeded fault
# campaign of `docker kill`, `docker pause` and `docker network disconnect`
# under load, and checks: every acknowledged record present exactly once, in
# order within its partition, and all replicas byte-identical. Tears the
# project down (containers, network, volumes) on exit.
# Skips LOUDLY (exit 0) when no Docker engine answers.
#   DOCKER_CAMPAIGN_SECS (default 30), DOCKER_CAMPAIGN_SEED (default random)
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}/release
export RUST_BACKTRACE=0

# Deployment files: Kubernetes manifests (structure, and ternd must accept
# the ConfigMap's config file) and the compose file.
python3 deploy/k8s/check.py
# Against the Kubernetes OpenAPI schemas (the ServiceMonitor CRD has none: warned, not failed).
python3 -m kubernetes_validate --strict --quiet deploy/k8s/tern.yaml
# The Secret the StatefulSet mounts, as deploy/k8s/make-secret.sh makes it.
secrets=$(mktemp -d /tmp/tern-k8s-secret.XXXXXX)
TERN="$T/tern" deploy/k8s/make-secret.sh "$secrets" 3 default >"$secrets/tern-tls.yaml" 2>/dev/null
python3 -m kubernetes_validate --strict --quiet "$secrets/tern-tls.yaml"
grep -q "node-3-key.pem:" "$secrets/tern-tls.yaml" && ! grep -q "ca-key" "$secrets/tern-tls.yaml" ||
  { echo "tern-tls Secret must hold ca.pem and every node's certificate and key, never the CA key"; exit 1; }
# ternd accepts the ConfigMap's config file with the Secret's files (the
# StatefulSet passes them as flags: each pod its own node certificate).
cfg=$(mktemp /tmp/tern-k8s-config.XXXXXX.toml)
python3 -c 'import sys, yaml; [print(d["data"]["tern.toml"]) for d in yaml.safe_load_all(open("deploy/k8s/tern.yaml")) if d and d["kind"] == "ConfigMap"]' >"$cfg"
"$T/ternd" --config "$cfg" --tls-ca "$secrets/ca.pem" --tls-cert "$secrets/node-1.pem" --tls-key "$secrets/node-1-key.pem" plugins list >/dev/null
rm -f "$cfg"
rm -rf "$secrets"
if command -v docker-compose >/dev/null; then
  docker-compose -f deploy/compose.yaml config -q && echo "compose file valid"
fi

if ! docker info >/dev/null 2>&1; then
  echo "!!!!! SKIPPED: container fault test needs a Docker engine (docker info failed) !!!!!"
  exit 0
fi
deploy/build-image.sh tern:test

P=terntest$$
WORK=$(mktemp -d /tmp/tern-docker.XXXXXX)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export TERN_IMAGE=tern:test
for i in 1 2 3; do export TERN_PORT_$i="$(port)" TERN_HTTP_$i="$(port)"; done
dc() { docker-compose -p "$P" -f deploy/compose.yaml "$@"; }
cleanup() {
  docker ps -q --filter "label=com.docker.compose.project=$P" | xargs -r docker unpause >/dev/null 2>&1 || true
  dc down -v --remove-orphans >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
cid() { dc ps -q "tern-$1"; }
http() { eval echo "\$TERN_HTTP_$1"; }
wait_ready() { # broker...
  for i in "$@"; do
    for _ in $(seq 1 600); do
      curl -sf --cacert "$WORK/certs/ca.pem" "https://127.0.0.1:$(http "$i")/ready" >/dev/null && continue 2
      sleep 0.1
    done
    dc logs --tail 30 "tern-$i"; echo "broker $i not ready"; exit 1
  done
}
# The init service makes the certificates first (depends_on), then the brokers start.
dc up -d tern-1 tern-2 tern-3 >/dev/null 2>&1 || { dc logs tern-certs; echo "compose up failed"; exit 1; }
certs=$(docker ps -aq --filter "label=com.docker.compose.project=$P" --filter "label=com.docker.compose.service=tern-certs")
docker cp "$certs:/etc/tern/certs" "$WORK/certs"
[ ! -e "$WORK/certs/ca-key.pem" ] || { echo "the CA key must not be in the brokers' certificate volume"; exit 1; }
wait_ready 1 2 3
if curl -sf "http://127.0.0.1:$TERN_HTTP_1/ready" >/dev/null; then echo "metrics port answered plain HTTP"; exit 1; fi
SEEDS="127.0.0.1:$TERN_PORT_1,127.0.0.1:$TERN_PORT_2,127.0.0.1:$TERN_PORT_3"
tls=(--tls-ca "$WORK/certs/ca.pem" --tls-cert "$WORK/certs/admin.pem" --tls-key "$WORK/certs/admin-key.pem")
tern() { timeout 300 "$T/tern" --broker "$SEEDS" "${tls[@]}" "$@"; }
# Without TLS the brokers answer nothing useful.
if timeout 20 "$T/tern" --broker "127.0.0.1:$TERN_PORT_1" topic list >/dev/null 2>&1; then
  echo "a plaintext client was served"; exit 1
fi
# Authorization is on: the brokers' own certificates are no super-users.
node=(--tls-ca "$WORK/certs/ca.pem" --tls-cert "$WORK/certs/node-1.pem" --tls-key "$WORK/certs/node-1-key.pem")
if timeout 60 "$T/tern" --broker "$SEEDS" "${node[@]}" topic create stray --partitions 1 >"$WORK/denied.txt" 2>&1; then
  echo "a principal without an ACL rule created a topic"; exit 1
fi
grep -q "access_denied\|not allowed\|denied" "$WORK/denied.txt" || { cat "$WORK/denied.txt"; echo "expected an access denial"; exit 1; }
echo "docker: brokers up with TLS on every port (mutual TLS between brokers), authentication and ACLs on"
[ "$(docker inspect -f '{{.Config.User}}' "$(cid 1)")" = tern ] || { echo "image must run as non-root"; exit 1; }

N=20000
tern topic create orders --partitions 3 --replication-factor 3 >/dev/null
tern topic describe orders
seq -f 'a-%.0f' 1 $N | tern produce orders 2>/dev/null
echo "docker: $N records acknowledged by the 3-broker cluster"

# pace PREFIX COUNT RATE: PREFIX-1 .. PREFIX-COUNT, RATE lines per second.
pace() {
  python3 -c 'import sys, time
prefix, n, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]); t0 = time.time()
for i in range(1, n + 1):
    sys.stdout.write(f"{prefix}-{i}\n")
    if i % 1000 == 0:
        sys.stdout.flush(); time.sleep(max(0, t0 + i / rate - time.time()))' "$@"
}

# Kill the leader of partition 0 while a stream runs: the stream must finish.
leader=$(tern topic describe orders | awk '$1 == "0" {print $2}')
B=300000
(set +e; pace b $B 50000 | tern produce orders >"$WORK/b.out" 2>&1; echo $? >"$WORK/b.rc") &
bg=$!
sleep 1
[ ! -e "$WORK/b.rc" ] || { cat "$WORK/b.out"; echo "stream b ended before the kill"; exit 1; }
docker kill --signal KILL "$(cid "$leader")" >/dev/null
wait $bg || true
[ "$(cat "$WORK/b.rc")" = 0 ] || { cat "$WORK/b.out"; echo "produce failed across the leader's docker kill"; exit 1; }
for _ in $(seq 1 100); do
  new_leader=$(tern topic describe orders | awk '$1 == "0" {print $2}')
  [ "$new_leader" != "$leader" ] && [ "$new_leader" != 0 ] && break
  sleep 0.1
done
echo "docker: leader tern-$leader killed mid-stream; tern-$new_leader took over; all $B records of the stream acknowledged"
[ "$new_leader" != "$leader" ] || { echo "no new leader"; exit 1; }
docker start "$(cid "$leader")" >/dev/null
wait_ready "$leader"

# Seeded fault campaign under load.
SECS=${DOCKER_CAMPAIGN_SECS:-30}
SEED=${DOCKER_CAMPAIGN_SEED:-$RANDOM}
# Stream c is paced so it spans the whole campaign.
C=$((10000 * SECS * 3 / 2))
echo "docker campaign: seed $SEED, $SECS s (replay: DOCKER_CAMPAIGN_SEED=$SEED DOCKER_CAMPAIGN_SECS=$SECS)"
(set +e; pace c $C 10000 | tern produce orders >"$WORK/c.out" 2>&1; echo $? >"$WORK/c.rc") &
bg=$!
NET=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$(cid 1)")
python3 - "$SEED" "$SECS" >"$WORK/schedule" <<'PY'
import random, sys
rng = random.Random(int(sys.argv[1])); t = 0.0
while t < float(sys.argv[2]):
    gap = rng.uniform(0.3, 1.5); hold = rng.uniform(0.5, 3.0)
    print(f"{gap:.2f} {rng.choice(['kill', 'pause', 'disconnect'])} {rng.randint(1, 3)} {hold:.2f}")
    t += gap + hold
PY
while read -r gap fault node hold; do
  sleep "$gap"
  c=$(cid "$node")
  echo "docker campaign: $fault tern-$node for ${hold}s"
  case $fault in
    kill) docker kill --signal KILL "$c" >/dev/null; sleep "$hold"; docker start "$c" >/dev/null ;;
    pause) docker pause "$c" >/dev/null; sleep "$hold"; docker unpause "$c" >/dev/null ;;
    disconnect) docker network disconnect "$NET" "$c" >/dev/null; sleep "$hold"; docker network connect --alias "tern-$node" "$NET" "$c" >/dev/null ;;
  esac
done <"$WORK/schedule"
wait_ready 1 2 3
wait $bg || true
[ "$(cat "$WORK/c.rc")" = 0 ] || { cat "$WORK/c.out"; echo "produce failed during the campaign"; exit 1; }
echo "docker campaign: all $C records of the stream acknowledged"

# Checker: every acknowledged record exactly once, in order per partition.
for p in 0 1 2; do tern consume orders --partition "$p" --from-beginning >"$WORK/p$p.txt"; done
python3 - "$WORK" "$N" "$B" "$C" <<'PY'
import collections, sys
work, n, b, c = sys.argv[1], *map(int, sys.argv[2:])
seen = collections.Counter(); reordered = 0
for p in range(3):
    last = {}
    for line in open(f"{work}/p{p}.txt").read().split():
        stream, num = line.split("-"); num = int(num)
        seen[line] += 1
        if num <= last.get(stream, 0):
            reordered += 1
        last[stream] = num
expected = [f"a-{i}" for i in range(1, n + 1)] + [f"b-{i}" for i in range(1, b + 1)] + [f"c-{i}" for i in range(1, c + 1)]
lost = sum(1 for r in expected if seen[r] == 0)
dups = sum(1 for r, k in seen.items() if k > 1)
print(f"docker checker: acknowledged {len(expected)}, lost {lost}, duplicates {dups}, reordered {reordered}")
assert lost == 0 and dups == 0 and reordered == 0
PY
tern topic verify-replicas orders --wait-secs 60
echo "docker: container fault test passed"
