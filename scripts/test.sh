#!/usr/bin/env bash
# The whole test suite: unit tests, doc tests and end-to-end tests that start
# real ternd processes. Builds the binaries first (the end-to-end tests run
# them), in the one profile the project uses (release), so RocksDB's C++ is
# compiled once and reused by every later run.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace
cargo test --release --workspace -- --test-threads 2
# Every panel query of every Grafana dashboard against a real Prometheus
# scraping a live broker (says loudly if Prometheus is not installed).
scripts/check-dashboards.sh
# A broker container SIGKILLed and paused under load (says loudly if no Docker).
scripts/test-docker.sh
