#!/usr/bin/env bash
# Installs what the build and the whole test suite need on a Debian machine:
# libclang (RocksDB's bindings), Prometheus + promtool (the dashboard check),
# curl, debootstrap (the container image's base), kcat and the Kafka client
# libraries the Kafka-listener tests drive (confluent-kafka, kafka-python),
# and the Python modules the deployment checks use. Safe to run repeatedly; installs only what is missing.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

pkgs=()
if ! ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || ! command -v clang >/dev/null; then
  pkgs+=(clang libclang-dev)
fi
{ command -v prometheus >/dev/null && command -v promtool >/dev/null; } || pkgs+=(prometheus)
command -v curl >/dev/null || pkgs+=(curl)
command -v debootstrap >/dev/null || pkgs+=(debootstrap)
command -v kcat >/dev/null || pkgs+=(kcat)
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "install-test-deps: apt-get install ${pkgs[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}"
fi

py=()
python3 -c 'import yaml' 2>/dev/null || py+=(pyyaml)
python3 -c 'import kubernetes_validate' 2>/dev/null || py+=(kubernetes-validate)
python3 -c 'import confluent_kafka' 2>/dev/null || py+=('confluent-kafka==2.16.2')
python3 -c 'import kafka' 2>/dev/null || py+=('kafka-python==3.0.12')
if [ ${#py[@]} -gt 0 ]; then
  echo "install-test-deps: pip install ${py[*]}"
  python3 -m pip install -q "${py[@]}"
fi
