#!/usr/bin/env python3
"""Structural check of deploy/k8s/*.yaml (no cluster or kubeconform here):
every document parses, has apiVersion/kind/metadata.name, selectors match
pod labels, probes point at real endpoints and ports, the StatefulSet has a
headless Service and volume claims, and the embedded config is valid TOML
with the keys ternd accepts."""
import pathlib, sys, tomllib
import yaml

docs = []
for f in sorted(pathlib.Path(__file__).parent.glob("*.yaml")):
    docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
kinds = {d["kind"]: d for d in docs}
errors = []
for d in docs:
    for key in ("apiVersion", "kind", "metadata"):
        if key not in d:
            errors.append(f"{d.get('kind')}: missing {key}")
need = {"ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget", "ServiceMonitor"}
errors += [f"missing {k}" for k in need - kinds.keys()]
sts = kinds["StatefulSet"]["spec"]
labels = sts["template"]["metadata"]["labels"]
if sts["selector"]["matchLabels"].items() - labels.items():
    errors.append("StatefulSet selector does not match its pod labels")
headless = [d for d in docs if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"]
if not headless or headless[0]["metadata"]["name"] != sts["serviceName"]:
    errors.append("StatefulSet serviceName must name a headless Service")
if not sts.get("volumeClaimTemplates"):
    errors.append("StatefulSet needs volumeClaimTemplates")
c = sts["template"]["spec"]["containers"][0]
ports = {p["name"] for p in c["ports"]}
for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
    g = c[probe]["httpGet"]
    if g["path"] != path or g["port"] not in ports:
        errors.append(f"{probe} must GET {path} on a declared port")
if sts["replicas"] < 3 or sts["replicas"] % 2 == 0:
    errors.append("a Raft cluster needs an odd number of at least 3 brokers")
n_initial = len(cfg_initial := tomllib.loads(kinds["ConfigMap"]["data"]["tern.toml"])["broker"]["initial_cluster"].split(","))
if n_initial != sts["replicas"]:
    errors.append(f"initial_cluster lists {n_initial} brokers for {sts['replicas']} replicas")
if "memory" not in c["resources"].get("requests", {}):
    errors.append("resource requests missing")
cfg = tomllib.loads(kinds["ConfigMap"]["data"]["tern.toml"])
allowed = {"broker": {"data_dir", "listen", "metrics_listen", "advertise", "durability",
                      "retention_check_ms", "default_retention_ms", "node_id", "read_cache_bytes",
                      "peer_listen", "initial_cluster", "cluster_name", "election_timeout_ms",
                      "min_free_bytes", "insecure", "connections_max", "connections_per_ip_max",
                      "handshake_timeout_ms", "idle_timeout_ms", "request_bytes_in_flight_max",
                      "cluster_topics_max", "cluster_partitions_max"},
           "plugins": {"lock", "balancer", "cache", "dir"},
           "tls": {"cert", "key", "ca", "metrics_plaintext"},
           "auth": {"super_users", "required", "authorization"}}
for table, keys in cfg.items():
    if table not in allowed or set(keys) - allowed[table]:
        errors.append(f"config: unknown keys in [{table}]: {set(keys) - allowed.get(table, set())}")
# TLS on: every broker mounts the tern-tls Secret and passes its files.
vols = {v["name"]: v for v in sts["template"]["spec"]["volumes"]}
if vols.get("tls", {}).get("secret", {}).get("secretName") != "tern-tls":
    errors.append("brokers must mount the tern-tls Secret")
args = " ".join(c.get("args", []))
for flag in ("--tls-ca", "--tls-cert", "--tls-key"):
    if flag not in args:
        errors.append(f"ternd needs {flag}")
if not (cfg.get("auth", {}).get("required") and cfg.get("auth", {}).get("authorization")):
    errors.append("[auth] required and authorization must be on")
if cfg.get("broker", {}).get("insecure"):
    errors.append("insecure = true: TLS must be on")
for probe in ("readinessProbe", "livenessProbe"):
    if c[probe]["httpGet"].get("scheme") != "HTTPS":
        errors.append(f"{probe} must use HTTPS (the metrics port serves TLS)")
if errors:
    sys.exit("\n".join(errors))
print(f"k8s manifests: {len(docs)} objects check out")
