#!/usr/bin/env bash
# The quick start (needs root): builds tollgate and runs the agent in local
# mode on a built-in demo, then shows allowed and denied `dig`/`curl` results
# from inside the pods and the flow events that explain them. Cleans up after.
#
#   pods (namespaces)          node (agent, eBPF on each veth)       "internet"
#   prod/payments  10.0.1.10 ─┐                                   ┌ nsd      203.0.113.53 (zone test.)
#   prod/frontend  10.0.2.10 ─┼── tgdemo-node ────────────────────┤ api.test 203.0.113.10:80
#   prod/db        10.0.3.10 ─┘                                   └ evil.test 203.0.113.12:80
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "demo.sh needs root (network namespaces, eBPF): sudo $0" >&2; exit 1; }
./scripts/setup.sh
cargo build --release --locked -q
TG="$PWD/target/release/tollgate"
P=tgdemo
WORK=$(mktemp -d /tmp/tollgate-demo.XXXXXX)
PIN=/sys/fs/bpf/$P
PIDS=()

. scripts/demo-net.sh
trap demo_cleanup EXIT

say "Setting up: 3 pods, a node, an upstream DNS server and two sites"
demo_network
demo_servers

mkdir -p "$WORK/policies"
cat > "$WORK/policies/default-deny.yaml" <<'EOF'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: default-deny, namespace: prod}
spec:
  endpointSelector: {}
  ingress: [{fromEntities: []}]
  egress: [{toEntities: []}]
EOF
cat > "$WORK/policies/frontend-to-db.yaml" <<'EOF'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: frontend-to-db, namespace: prod}
specs:
  - endpointSelector: {matchLabels: {app: frontend}}
    egress:
      - toEndpoints: [{matchLabels: {app: db}}]
        toPorts: [{ports: [{port: "80", protocol: TCP}]}]
  - endpointSelector: {matchLabels: {app: db}}
    ingress:
      - fromEndpoints: [{matchLabels: {app: frontend}}]
        toPorts:
          - ports: [{port: "80", protocol: TCP}]
            rules: {http: [{method: GET, path: "/"}]}
EOF
cat > "$WORK/policies/payments-to-api.yaml" <<'EOF'
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: payments-to-api, namespace: prod}
spec:
  endpointSelector: {matchLabels: {app: payments}}
  egress:
    - toCIDR: [203.0.113.53/32]
      toPorts:
        - ports: [{port: "53", protocol: UDP}, {port: "53", protocol: TCP}]
          rules: {dns: [{matchName: api.test}]}
    - toFQDNs: [{matchName: api.test}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
EOF
cat > "$WORK/endpoints.yaml" <<'EOF'
namespaces: [{name: prod}]
endpoints:
  - {name: payments, namespace: prod, labels: {app: payments}, ips: [10.0.1.10], interface: tgdemo1}
  - {name: frontend, namespace: prod, labels: {app: frontend}, ips: [10.0.2.10], interface: tgdemo2}
  - {name: db,       namespace: prod, labels: {app: db},       ips: [10.0.3.10], interface: tgdemo3}
nodes:
  - {name: node, local: true, ips: [10.0.1.1, 10.0.2.1, 10.0.3.1, 203.0.113.1]}
EOF

say "Policies (tollgate policy check)"
"$TG" policy check "$WORK/policies"

say "Starting the agent (local mode)"
nsenter --net=/run/netns/$P-node "$TG" agent --policies "$WORK/policies" --endpoints "$WORK/endpoints.yaml" \
  --state-dir "$WORK/state" --pin-dir "$PIN" --metrics-addr 127.0.0.1:19963 --uninstall-on-exit \
  2> "$WORK/agent.log" & PIDS+=($!)
for _ in $(seq 1 100); do
  [ -S "$WORK/state/events.sock" ] && break
  sleep 0.1
done
[ -S "$WORK/state/events.sock" ] || { cat "$WORK/agent.log"; echo "the agent did not start" >&2; exit 1; }
"$TG" observe --state-dir "$WORK/state" > "$WORK/events.txt" & PIDS+=($!)
sleep 0.5

say "payments may resolve and reach api.test, and nothing else"
run_in $P-payments dig +short api.test
run_in $P-payments curl -s -m 3 -w '  -> HTTP %{http_code}\n' http://api.test/
run_in $P-payments dig +tries=1 +timeout=2 +noall +comments evil.test
run_in $P-payments curl -s -m 3 -o /dev/null -w '  -> HTTP %{http_code} (000 = blocked)\n' http://203.0.113.12/

say "frontend may GET / from db on port 80 (an L7 rule); nothing else; payments may not connect"
run_in $P-frontend curl -s -m 3 -w '  -> HTTP %{http_code}\n' http://10.0.3.10/
run_in $P-frontend curl -s -m 3 -w '  -> HTTP %{http_code}\n' -X DELETE http://10.0.3.10/
run_in $P-frontend curl -s -m 3 -w '  -> HTTP %{http_code}\n' http://10.0.3.10/admin
run_in $P-payments curl -s -m 3 -o /dev/null -w '  -> HTTP %{http_code} (000 = blocked)\n' http://10.0.3.10/

sleep 0.5
say "The flow events that explain it (tollgate observe)"
cat "$WORK/events.txt"

say "Why was payments -> db dropped? (tollgate policy explain)"
"$TG" policy explain --policies "$WORK/policies" --endpoints "$WORK/endpoints.yaml" \
  --from prod/payments --to prod/db --port 80/TCP || true

say "Metrics (excerpt of http://127.0.0.1:19963/metrics)"
nsenter --net=/run/netns/$P-node curl -s http://127.0.0.1:19963/metrics | grep -E '^tollgate_dns_queries_total|drop_default_deny|pass_fqdn|^tollgate_http_requests_total' || true

say "Done; cleaning up."
