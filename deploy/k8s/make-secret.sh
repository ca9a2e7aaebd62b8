#!/usr/bin/env bash
# Makes the Kubernetes Secret `tern-tls` that deploy/k8s/tern.yaml mounts:
# a cluster CA, one certificate per broker (node N = pod tern-(N-1), naming
# its headless-Service DNS name and the client Service) and a client
# certificate `admin` (a super-user in the ConfigMap). Prints the Secret's
# manifest on stdout; the CA's key and the admin client files stay in DIR.
#
#   deploy/k8s/make-secret.sh DIR [BROKERS] [NAMESPACE] > tern-tls.yaml
#   kubectl apply -f tern-tls.yaml
#   tern --broker tern.default.svc:4650 --tls-ca DIR/ca.pem \
#        --tls-cert DIR/admin.pem --tls-key DIR/admin-key.pem topic list
#
# Needs the `tern` CLI on PATH (or TERN=path/to/tern).
set -euo pipefail
dir=${1:?usage: make-secret.sh DIR [BROKERS] [NAMESPACE]}
brokers=${2:-3}
ns=${3:-default}
tern=${TERN:-tern}
mkdir -p "$dir"
[ -e "$dir/ca.pem" ] || "$tern" cert create-ca --dir "$dir" >&2
for n in $(seq 1 "$brokers"); do
  pod="tern-$((n - 1))"
  [ -e "$dir/node-$n.pem" ] || "$tern" cert issue --dir "$dir" --node-id "$n" \
    --host "$pod.tern-headless.$ns.svc" --host "$pod.tern-headless.$ns.svc.cluster.local" \
    --host "tern.$ns.svc" --host "tern.$ns.svc.cluster.local" --host tern >&2
done
[ -e "$dir/admin.pem" ] || "$tern" cert issue --dir "$dir" --client admin >&2
python3 - "$dir" "$brokers" "$ns" <<'PY'
import base64, pathlib, sys
d, n, ns = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
files = ["ca.pem"] + [f"node-{i}{s}.pem" for i in range(1, n + 1) for s in ("", "-key")]
print("apiVersion: v1\nkind: Secret\nmetadata:\n  name: tern-tls\n"
      f"  namespace: {ns}\n  labels: {{app.kubernetes.io/name: tern}}\ntype: Opaque\ndata:")
for f in files:
    print(f"  {f}: {base64.b64encode((d / f).read_bytes()).decode()}")
PY
