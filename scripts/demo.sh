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

cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  sleep 0.5
  "$TG" datapath uninstall --pin-dir "$PIN" >/dev/null 2>&1
  for ns in node ext payments frontend db; do ip netns del "$P-$ns" 2>/dev/null; rm -rf "/etc/netns/$P-$ns"; done
  rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
run_in() { local ns=$1; shift; printf '\033[2m[%s]$ %s\033[0m\n' "${ns#$P-}" "$*"; ip netns exec "$ns" "$@" || true; }

say "Setting up: 3 pods, a node, an upstream DNS server and two sites"
for ns in node ext payments frontend db; do ip netns add "$P-$ns"; ip -n "$P-$ns" link set lo up; done
ip netns exec "$P-node" sysctl -qw net.ipv4.ip_forward=1
ip -n "$P-node" link add ext0 type veth peer name eth0 netns "$P-ext"
ip -n "$P-node" link set ext0 up; ip -n "$P-node" addr add 203.0.113.1/24 dev ext0
ip -n "$P-ext" link set eth0 up
for a in 10 12 53; do ip -n "$P-ext" addr add 203.0.113.$a/24 dev eth0; done
ip -n "$P-ext" route add default via 203.0.113.1
n=0
for pod in payments frontend db; do
  n=$((n + 1))
  ip -n "$P-node" link add "tgdemo$n" type veth peer name eth0 netns "$P-$pod"
  ip -n "$P-node" link set "tgdemo$n" up; ip -n "$P-node" addr add "10.0.$n.1/24" dev "tgdemo$n"
  ip -n "$P-$pod" link set eth0 up; ip -n "$P-$pod" addr add "10.0.$n.10/24" dev eth0
  ip -n "$P-$pod" route add default via "10.0.$n.1"
  mkdir -p "/etc/netns/$P-$pod"; echo "nameserver 203.0.113.53" > "/etc/netns/$P-$pod/resolv.conf"
done

cp testdata/zones/test.zone "$WORK/"
cat > "$WORK/nsd.conf" <<EOF
server:
  ip-address: 203.0.113.53
  username: ""
  chroot: ""
  zonesdir: "$WORK"
  pidfile: "$WORK/nsd.pid"
  database: ""
  xfrdfile: "$WORK/xfrd.state"
  zonelistfile: "$WORK/zone.list"
  rrl-ratelimit: 0
remote-control:
  control-enable: no
zone:
  name: "test"
  zonefile: "test.zone"
EOF
ip netns exec "$P-ext" nsd -d -c "$WORK/nsd.conf" & PIDS+=($!)
mkdir -p "$WORK/www"; echo "hello from a demo site" > "$WORK/www/index.html"
ip netns exec "$P-ext" python3 -m http.server 80 --bind 0.0.0.0 --directory "$WORK/www" >/dev/null 2>&1 & PIDS+=($!)
ip netns exec "$P-db" python3 -m http.server 80 --bind 0.0.0.0 --directory "$WORK/www" >/dev/null 2>&1 & PIDS+=($!)

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
