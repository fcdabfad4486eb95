#!/usr/bin/env bash
# Tollgate on a real kind cluster: builds the image, creates a cluster, loads
# the image, applies deploy/, and runs the dig + curl scenarios of the
# Kubernetes e2e test from real pods.
#
# Needs Docker (or podman as `docker`), kind and kubectl. It does NOT run in
# CI or on the development machine (no container engine there): the same
# scenarios run against a real kube-apiserver in tests/kube_e2e.rs instead.
#
# Usage: ./scripts/kind-e2e.sh            # KEEP=1 leaves the cluster up
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in docker kind kubectl; do
  if ! command -v "$tool" >/dev/null; then
    echo "kind-e2e: '$tool' not found; this script needs docker, kind and kubectl" >&2
    exit 2
  fi
done

CLUSTER=${CLUSTER:-tollgate-e2e}
IMAGE=ghcr.io/tollgate/tollgate:e2e
CTX="kind-$CLUSTER"
k() { kubectl --context "$CTX" "$@"; }
cleanup() { [ "${KEEP:-0}" = 1 ] || kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true; }
trap cleanup EXIT

pass=0
fail=0
check() { # check "what" command...
  local what=$1; shift
  if "$@"; then echo "ok   - $what"; pass=$((pass + 1)); else echo "FAIL - $what"; fail=$((fail + 1)); fi
}
eventually() { # eventually "what" command...: up to 60 s
  local what=$1; shift
  for _ in $(seq 1 60); do
    if "$@" 2>/dev/null; then echo "ok   - $what"; pass=$((pass + 1)); return 0; fi
    sleep 1
  done
  echo "FAIL - $what (60 s)"; fail=$((fail + 1))
}

echo "== image"
docker build -t "$IMAGE" .
echo "== cluster"
kind create cluster --name "$CLUSTER" --wait 120s
kind load docker-image "$IMAGE" --name "$CLUSTER"

echo "== tollgate"
k apply -k deploy/
k -n tollgate set image daemonset/tollgate agent="$IMAGE"
k -n tollgate rollout status daemonset/tollgate --timeout=180s

echo "== workloads"
# Two in-cluster sites: names the pods resolve through CoreDNS, as they would
# resolve external names.
k create namespace sites
for site in allowed denied; do
  k -n sites create deployment "$site" --image=nginx:1.27-alpine
  k -n sites expose deployment "$site" --port 80
done
k -n sites rollout status deployment/allowed deployment/denied --timeout=180s
k create namespace prod
k label namespace prod team=shop
k -n prod run app --image=nicolaka/netshoot --labels=app=app -- sleep infinity
k -n prod wait --for=condition=Ready pod/app --timeout=180s

ALLOWED=allowed.sites.svc.cluster.local
DENIED=denied.sites.svc.cluster.local
k apply -f - <<EOF
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: app-egress, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: app}}
  egress:
  - toEndpoints:
    - matchLabels: {k8s:io.kubernetes.pod.namespace: kube-system, k8s-app: kube-dns}
    toPorts:
    - ports: [{port: '53', protocol: UDP}, {port: '53', protocol: TCP}]
      rules: {dns: [{matchPattern: '*.sites.svc.cluster.local'}]}
  - toFQDNs: [{matchName: $ALLOWED}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
EOF

dig_status() { k -n prod exec app -- dig +tries=1 +timeout=2 +noall +comments "$1" | sed -n 's/.*status: \([A-Z]*\),.*/\1/p'; }
curl_ok() { k -n prod exec app -- curl -s -m 3 -o /dev/null -w '%{http_code}' "http://$1/" | grep -q 200; }
refused() { [ "$(dig_status "$1")" = REFUSED ]; }
not_curl() { ! curl_ok "$1"; }

echo "== scenarios"
eventually "the allowed name connects" curl_ok "$ALLOWED"
check "the other site's name resolves (DNS rule) but does not connect" not_curl "$DENIED"
check "a name outside the DNS rules is refused" refused example.com

k -n prod label pod app app=other --overwrite
eventually "relabelled out of the policy: the other site connects" curl_ok "$DENIED"
k -n prod label pod app app=app --overwrite
eventually "relabelled back: the other site is closed again" not_curl "$DENIED"

k apply -f - <<EOF
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: team-shop-no-egress}
spec:
  endpointSelector: {matchLabels: {io.cilium.k8s.namespace.labels.team: shop, app: web}}
  egress: [{toEntities: []}]
EOF
k -n prod run web --image=nicolaka/netshoot --labels=app=web -- sleep infinity
k -n prod wait --for=condition=Ready pod/web --timeout=180s
web_curl_ok() { k -n prod exec web -- curl -s -m 3 -o /dev/null -w '%{http_code}' "http://$ALLOWED/" | grep -q 200; }
web_closed() { ! web_curl_ok; }
eventually "a namespace-label selector applies" web_closed
k label namespace prod team=search --overwrite
eventually "the namespace leaves the team: web is free" web_curl_ok

k -n prod run server --image=nginx:1.27-alpine --labels=app=server
k -n prod run client --image=nicolaka/netshoot --labels=app=client -- sleep infinity
k -n prod run stranger --image=nicolaka/netshoot --labels=app=stranger -- sleep infinity
k -n prod wait --for=condition=Ready pod/server pod/client pod/stranger --timeout=180s
SERVER_IP=$(k -n prod get pod server -o jsonpath='{.status.podIP}')
k apply -f - <<EOF
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-ingress, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts: [{ports: [{port: '80', protocol: TCP}]}]
EOF
from_ok() { k -n prod exec "$1" -- curl -s -m 3 -o /dev/null -w '%{http_code}' "http://$SERVER_IP/" | grep -q 200; }
from_refused() { ! from_ok "$1"; }
eventually "ingress: a pod without the client label is refused" from_refused stranger
check "ingress: the client pod connects" from_ok client

k -n prod delete cnp app-egress
eventually "policy deleted: the other site connects" curl_ok "$DENIED"

echo "== $pass passed, $fail failed"
[ "$fail" = 0 ]
