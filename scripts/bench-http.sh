#!/usr/bin/env bash
# L7 HTTP benchmark (needs root): wrk from a client pod to nginx in a server
# pod, both behind the tollgate agent (local mode) in their own network
# namespaces. Port 8080 is allowed by a plain L4 rule (eBPF only: the
# baseline); port 80 carries `rules.http` (every request through the HTTP
# proxy). Rounds alternate between the two in the same run; figures are
# requests/s and wrk's latency percentiles, and the ratios proxied/direct.
#
# Usage: sudo ./scripts/bench-http.sh [ROUNDS] [SECONDS] [CONNECTIONS]   (5 10 32)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
SECS=${2:-10}
CONNS=${3:-32}
./scripts/setup.sh bench >/dev/null
cargo build --release --locked -q --bin tollgate
BIN=$PWD/target/release/tollgate

ID=tgbh$$
NODE=$ID-node
CLIENT=$ID-client
SERVER=$ID-server
WORK=$(mktemp -d)
PIN=/sys/fs/bpf/$ID
AGENT=
cleanup() {
  [ -n "$AGENT" ] && kill "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null || true
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  nsenter --net=/run/netns/$NODE "$BIN" datapath uninstall --pin-dir "$PIN" >/dev/null 2>&1 || true
  for ns in $NODE $CLIENT $SERVER; do ip netns del $ns 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

for ns in $NODE $CLIENT $SERVER; do ip netns add $ns; ip -n $ns link set lo up; done
ip netns exec $NODE sysctl -qw net.ipv4.ip_forward=1
n=1
for pod in $CLIENT $SERVER; do
  ip -n $NODE link add tgb$n type veth peer name eth0 netns $pod
  ip -n $NODE link set tgb$n up
  ip -n $NODE addr add 10.0.$n.1/24 dev tgb$n
  ip -n $pod link set eth0 up
  ip -n $pod addr add 10.0.$n.10/24 dev eth0
  ip -n $pod route add default via 10.0.$n.1
  n=$((n + 1))
done

cat > "$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 80;
    listen 8080;
    location / { return 200 "hello from the server pod\n"; }
  }
}
EOF
ip netns exec $SERVER nginx -c "$WORK/nginx.conf" -p "$WORK"

mkdir -p "$WORK/policies"
cat > "$WORK/endpoints.yaml" <<EOF
namespaces: [{name: bench}]
endpoints:
  - {name: client, namespace: bench, labels: {app: client}, ips: [10.0.1.10], interface: tgb1}
  - {name: server, namespace: bench, labels: {app: server}, ips: [10.0.2.10], interface: tgb2}
nodes:
  - {name: node, local: true, ips: [10.0.1.1, 10.0.2.1]}
EOF
cat > "$WORK/policies/bench.yaml" <<EOF
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: server-ingress, namespace: bench}
spec:
  endpointSelector: {matchLabels: {app: server}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "8080", protocol: TCP}]
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/.*"}
EOF
nsenter --net=/run/netns/$NODE "$BIN" agent --policies "$WORK/policies" --endpoints "$WORK/endpoints.yaml" \
  --state-dir "$WORK/state" --pin-dir "$PIN" 2>"$WORK/agent.log" &
AGENT=$!
for _ in $(seq 1 150); do
  nsenter --net=/run/netns/$NODE curl -sf -m 1 -o /dev/null http://127.0.0.1:9963/healthz && break
  sleep 0.2
done
ip netns exec $CLIENT curl -s -m 2 -o /dev/null -w '%{http_code}' http://10.0.2.10:80/ | grep -q 200 \
  || { echo "the proxied port does not answer; agent log:" >&2; cat "$WORK/agent.log" >&2; exit 1; }
deny=$(ip netns exec $CLIENT curl -s -m 2 -o /dev/null -w '%{http_code}' -X POST http://10.0.2.10:80/)
[ "$deny" = 403 ] || { echo "expected the proxy's 403 for POST, got $deny" >&2; ip netns exec $NODE nft list ruleset >&2; cat "$WORK/agent.log" >&2; exit 1; }

# wrk's summary -> "rps p50_ms p99_ms"
run() {
  ip netns exec $CLIENT wrk -t2 -c"$CONNS" -d"${SECS}s" --latency "http://10.0.2.10:$1/" | awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    END { printf "%.0f %.3f %.3f\n", rps, p50, p99 }'
}

echo "machine: $(nproc) cores, $(uname -r); wrk -t2 -c$CONNS -d${SECS}s, $ROUNDS rounds each, alternating"
printf "%-6s %-8s %10s %9s %9s\n" round path req/s p50_ms p99_ms
: > "$WORK/direct"; : > "$WORK/proxied"
for r in $(seq 1 "$ROUNDS"); do
  d=$(run 8080); echo "$d" >> "$WORK/direct"
  printf "%-6s %-8s %10s %9s %9s\n" "$r" direct $d
  p=$(run 80); echo "$p" >> "$WORK/proxied"
  printf "%-6s %-8s %10s %9s %9s\n" "$r" proxied $p
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
for col in 1 2 3; do
  dm=$(cut -d' ' -f$col "$WORK/direct" | median)
  pm=$(cut -d' ' -f$col "$WORK/proxied" | median)
  name=$(echo "req/s p50_ms p99_ms" | cut -d' ' -f$col)
  awk -v n="$name" -v d="$dm" -v p="$pm" 'BEGIN { printf "median %-7s direct %10.3f  proxied %10.3f  proxied/direct %.3f\n", n, d, p, p / d }'
done
