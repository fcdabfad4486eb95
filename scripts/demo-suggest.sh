#!/usr/bin/env bash
# The audit -> observe -> suggest -> enforce walk-through (needs root), for
# real: three pods run in audit mode under a visibility policy, their traffic
# is recorded with `tollgate observe --output json`, `tollgate policy
# suggest` writes one CiliumNetworkPolicy per workload from the recording,
# `policy check` and `policy explain` review it, and the pods switch to
# enforce on it: the same traffic passes, anything else is denied. Cleans up
# after. TOLLGATE_BIN=target/debug/tollgate uses that binary instead of a
# release build.
#
#   pods (namespaces)          node (agent, eBPF on each veth)       "internet"
#   prod/payments  10.0.1.10 ─┐                                   ┌ nsd      203.0.113.53 (zone test.)
#   prod/frontend  10.0.2.10 ─┼── tgsug-node ─────────────────────┤ api.test 203.0.113.10:80, evil.test .12
#   prod/db        10.0.3.10 ─┘                                   └ *.flood.test 198.51.100.66:80
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo-suggest.sh needs root (network namespaces, eBPF): sudo $0" >&2; exit 1; }
./scripts/setup.sh
if [ -n "${TOLLGATE_BIN:-}" ]; then
  TG=$(realpath "$TOLLGATE_BIN")
else
  cargo build --release --locked -q
  TG="$PWD/target/release/tollgate"
fi
P=tgsug
WORK=$(mktemp -d /tmp/tollgate-demo-suggest.XXXXXX)
PIN=/sys/fs/bpf/$P
PIDS=()

. scripts/demo-net.sh
trap demo_cleanup EXIT

say "Setting up: 3 pods, a node, an upstream DNS server and sites"
demo_network 198.51.100.66
demo_servers

# Step 1: audit. A visibility policy sends DNS through the proxy (every
# name answered and learned, so flows carry their names), HTTP to pods
# through the HTTP proxy (every request allowed and reported), and puts
# both directions in default deny, so that every flow is reported (as
# AUDIT: the pods are in audit mode, nothing is dropped).
mkdir -p "$WORK/policies"
cat > "$WORK/policies/observe-all.yaml" <<'EOF'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: observe-all, namespace: prod}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: []}]
  egress:
    - toCIDR: [203.0.113.53/32]
      toPorts:
        - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
          rules: {dns: [{matchPattern: "*"}]}
    - toEndpoints: [{}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules: {http: [{}]}
EOF
endpoints() { # $1: ", audit: true" or ""
  cat > "$WORK/endpoints.yaml" <<EOF
namespaces: [{name: prod}]
endpoints:
  - {name: payments, namespace: prod, labels: {app: payments}, ips: [10.0.1.10], interface: tgsug1$1}
  - {name: frontend, namespace: prod, labels: {app: frontend}, ips: [10.0.2.10], interface: tgsug2$1}
  - {name: db,       namespace: prod, labels: {app: db},       ips: [10.0.3.10], interface: tgsug3$1}
nodes:
  - {name: node, local: true, ips: [10.0.1.1, 10.0.2.1, 10.0.3.1, 203.0.113.1]}
EOF
}
endpoints ", audit: true"

say "1. Audit: the pods run in audit mode under a visibility policy"
cat "$WORK/policies/observe-all.yaml"
nsenter --net=/run/netns/$P-node "$TG" agent --policies "$WORK/policies" --endpoints "$WORK/endpoints.yaml" \
  --state-dir "$WORK/state" --pin-dir "$PIN" --metrics-addr 127.0.0.1:19964 --uninstall-on-exit \
  2> "$WORK/agent.log" & PIDS+=($!)
for _ in $(seq 1 100); do
  [ -S "$WORK/state/events.sock" ] && break
  sleep 0.1
done
[ -S "$WORK/state/events.sock" ] || { cat "$WORK/agent.log"; echo "the agent did not start" >&2; exit 1; }

say "2. Observe: record the workloads' traffic (tollgate observe --output json)"
"$TG" observe --state-dir "$WORK/state" --output json > "$WORK/observed.json" & OBSERVER=$!
PIDS+=("$OBSERVER")
sleep 0.5
traffic() {
  run_in $P-payments dig +short api.test
  run_in $P-payments curl -s -m 3 -o /dev/null -w '  -> HTTP %{http_code}\n' http://api.test/
  for n in x y z; do run_in $P-payments dig +short $n.flood.test; done
  run_in $P-payments curl -s -m 3 -o /dev/null -w '  -> HTTP %{http_code}\n' http://x.flood.test/
  run_in $P-frontend curl -s -m 3 -o /dev/null -w '  -> HTTP %{http_code}\n' http://10.0.3.10/
  run_in $P-frontend curl -s -m 3 -o /dev/null -w '  -> HTTP %{http_code}\n' http://10.0.3.10/index.html
}
traffic
sleep 1
kill "$OBSERVER"
echo "recorded $(wc -l < "$WORK/observed.json") events; the audited ones:"
grep -c '"verdict":"AUDIT"' "$WORK/observed.json" || true

say "3. Suggest (tollgate policy suggest --events observed.json)"
"$TG" policy suggest --events "$WORK/observed.json" -o "$WORK/suggested.yaml"
cat "$WORK/suggested.yaml"

say "   Review: tollgate policy check, tollgate policy explain"
"$TG" policy check "$WORK/suggested.yaml"
"$TG" policy explain --policies "$WORK/suggested.yaml" --endpoints "$WORK/endpoints.yaml" \
  --from prod/payments --to y.flood.test --port 80/TCP || true

say "4. Enforce: the suggestion replaces the visibility policy, the pods leave audit mode"
rm "$WORK/policies/observe-all.yaml"
cp "$WORK/suggested.yaml" "$WORK/policies/"
endpoints ""
sleep 1.5   # the agent reloads changed files every 0.5 s
grep -E 'reload|loaded' "$WORK/agent.log" | tail -n 2 || true
"$TG" observe --state-dir "$WORK/state" > "$WORK/enforced.txt" & PIDS+=($!)
sleep 0.5

say "   The same traffic passes"
traffic
say "   Anything else is denied: another name, address, method, pod"
run_in $P-payments dig +tries=1 +timeout=2 +noall +comments evil.test
run_in $P-payments curl -s -m 3 -o /dev/null -w '  -> HTTP %{http_code} (000 = blocked)\n' http://203.0.113.12/
run_in $P-frontend curl -s -m 3 -o /dev/null -w '  -> HTTP %{http_code}\n' -X DELETE http://10.0.3.10/
run_in $P-payments curl -s -m 3 -o /dev/null -w '  -> HTTP %{http_code} (000 = blocked)\n' http://10.0.3.10/

sleep 0.5
say "The flow events of the enforce phase that were not allowed (tollgate observe)"
grep -v -E 'ALLOWED|REDIRECTED' "$WORK/enforced.txt" || true

say "Done; cleaning up."
