#!/usr/bin/env bash
# The whole test suite: unit tests, doc tests and end-to-end tests that start
# real ternd processes. Builds the binaries first (the end-to-end tests run
# them), in the one profile the project uses (release), so RocksDB's C++ is
# compiled once and reused by every later run.
#
# Stops at once, before building, if a tool the suite needs is missing, with
# the command that installs it (scripts/install-test-deps.sh installs all).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
{ ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 && command -v clang >/dev/null; } ||
  missing+=("clang and libclang-dev (RocksDB's bindings): apt-get install -y clang libclang-dev")
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } ||
  missing+=("prometheus and promtool (dashboard check): apt-get install -y prometheus")
command -v curl >/dev/null || missing+=("curl: apt-get install -y curl")
command -v kcat >/dev/null || missing+=("kcat (Kafka-listener tests): apt-get install -y kcat")
python3 -c 'import confluent_kafka' 2>/dev/null ||
  missing+=("Python module confluent_kafka: python3 -m pip install confluent-kafka")
python3 -c 'import kafka' 2>/dev/null ||
  missing+=("Python module kafka (kafka-python): python3 -m pip install kafka-python")
python3 -c 'import yaml' 2>/dev/null || missing+=("Python module yaml: python3 -m pip install pyyaml")
python3 -c 'import kubernetes_validate' 2>/dev/null ||
  missing+=("Python module kubernetes_validate: python3 -m pip install kubernetes-validate")
if docker info >/dev/null 2>&1 && ! command -v debootstrap >/dev/null; then
  missing+=("debootstrap (the container image's base): apt-get install -y debootstrap")
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/test.sh: missing what the test suite needs:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  echo "Install everything at once with: scripts/install-test-deps.sh" >&2
  exit 2
fi

cargo build --release --workspace
cargo test --release --workspace -- --test-threads 2
# Every panel query of every Grafana dashboard against a real Prometheus
# scraping a live broker.
scripts/check-dashboards.sh
# A broker container SIGKILLed and paused under load (says loudly if no Docker).
scripts/test-docker.sh
