#!/usr/bin/env bash
# L7 HTTP benchmark (needs root): wrk from a client pod to nginx in a server
# pod, both behind the tollgate agent (local mode) in their own network
# namespaces. Port 8080 is allowed by a plain L4 rule (eBPF only: the
# baseline); port 80 carries `rules.http` (every request through the HTTP
# proxy). The anchors, on the same node and path: nginx and HAProxy as
# reverse proxies in the node namespace in front of port 8080, configured
# as their maintainers recommend for this (2 workers/threads, upstream
# keep-alive / http-reuse always). Each round runs all four in a rotated
# order; figures are requests/s and wrk's latency percentiles, medians,
# and the ratios to direct and to the best anchor. Each run also reports
# the proxy's CPU time per request (all its threads, user and kernel, from
# /proc/<pid>/task/*/schedstat): steadier than rates on a shared box, since
# it does not depend on who else got the cores; and the whole machine's
# busy CPU per request (/proc/stat), which adds what the path costs outside
# the proxy (the kernel's packet work, the client and the server).
#
# Usage: sudo ./scripts/bench-http.sh [ROUNDS] [SECONDS] [CONNECTIONS]   (5 10 32)
# TG_BIN=/path/to/tollgate runs another build (an A/B of two commits).
# CALLGRIND=1 (with ONLY=tollgate) runs the agent under valgrind's callgrind
# and reports its user-space instructions per proxied request: a count that
# holds still on a noisy box, where rates do not (the rate itself is then
# meaningless). E.g. CALLGRIND=1 ONLY=tollgate ./scripts/bench-http.sh 1 10 8
# CALLGRIND_OUT=/path keeps that profile (callgrind_annotate reads it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
SECS=${2:-10}
CONNS=${3:-32}
./scripts/setup.sh bench >/dev/null
[ -n "${TG_BIN:-}" ] || cargo build --release --locked -q --bin tollgate
BIN=${TG_BIN:-$PWD/target/release/tollgate}

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
  [ -f "$WORK/rp/nginx.pid" ] && kill "$(cat "$WORK/rp/nginx.pid")" 2>/dev/null || true
  [ -f "$WORK/haproxy.pid" ] && kill "$(cat "$WORK/haproxy.pid")" 2>/dev/null || true
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

# The anchors: reverse proxies on the node in front of the server's port
# 8080, listening on the node's address on the client's side.
mkdir -p "$WORK/rp"
cat > "$WORK/rp/nginx.conf" <<EOF
worker_processes 2;
pid $WORK/rp/nginx.pid;
error_log $WORK/rp/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream server_pod { server 10.0.2.10:8080; keepalive 64; keepalive_requests 1000000; }
  server {
    listen 10.0.1.1:8081;
    location / {
      proxy_pass http://server_pod;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
cat > "$WORK/haproxy.cfg" <<EOF
global
  nbthread 2
  maxconn 8192
  pidfile $WORK/haproxy.pid
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend bench
  bind 10.0.1.1:8082
  default_backend server_pod
backend server_pod
  server s1 10.0.2.10:8080
EOF

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
UNDER=()
[ -n "${CALLGRIND:-}" ] && UNDER=(valgrind --tool=callgrind --compress-strings=no --compress-pos=no
  --callgrind-out-file="$WORK/callgrind.out")
nsenter --net=/run/netns/$NODE "${UNDER[@]}" "$BIN" agent --policies "$WORK/policies" --endpoints "$WORK/endpoints.yaml" \
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

ip netns exec $NODE nginx -c "$WORK/rp/nginx.conf" -p "$WORK/rp"
ip netns exec $NODE haproxy -D -f "$WORK/haproxy.cfg"
for port in 8081 8082; do
  ip netns exec $CLIENT curl -s -m 2 -o /dev/null -w '%{http_code}' http://10.0.1.1:$port/ | grep -q 200 \
    || { echo "the reverse proxy on port $port does not answer" >&2; exit 1; }
done

allowed_requests() {
  nsenter --net=/run/netns/$NODE curl -s -m 5 http://127.0.0.1:9963/metrics |
    awk '/^tollgate_http_requests_total\{verdict="allowed"\}/ { print $2 }'
}

# The processes of each proxy (the agent serves the tollgate path).
procs() {
  case $1 in
    tollgate) echo "$AGENT" ;;
    nginx) local m; m=$(cat "$WORK/rp/nginx.pid"); echo "$m $(pgrep -P "$m" | tr '\n' ' ')" ;;
    haproxy) cat "$WORK/haproxy.pid" ;;
  esac
}
# Jiffies the whole machine spent busy (user, nice, system, irq, softirq; not
# idle, iowait or steal, the hypervisor's time for others): with the
# proxy's own CPU, it shows what a path costs outside the proxy (the
# kernel's work in softirqs, the client's and the server's share).
box_busy() {
  awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat
}
# Nanoseconds of CPU the processes $@ have used, all threads.
cpu_ns() {
  for p in "$@"; do cat /proc/"$p"/task/*/schedstat 2>/dev/null || true; done | awk '{ s += $1 } END { printf "%.0f\n", s }'
}

# wrk's summary -> "rps p50_ms p99_ms"
run() {
  ip netns exec $CLIENT wrk -t2 -c"$CONNS" -d"${SECS}s" --latency "$1" | awk '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = ms($2) }
    $1 == "99%" { p99 = ms($2) }
    END { printf "%.0f %.3f %.3f\n", rps, p50, p99 }'
}

NAMES=(direct tollgate nginx haproxy)
# Profiling aid: ONLY=tollgate runs that path alone.
[ -n "${ONLY:-}" ] && NAMES=("$ONLY")
declare -A URL=(
  [direct]=http://10.0.2.10:8080/
  [tollgate]=http://10.0.2.10:80/
  [nginx]=http://10.0.1.1:8081/
  [haproxy]=http://10.0.1.1:8082/
)
echo "machine: $(nproc) cores, $(uname -r); wrk -t2 -c$CONNS -d${SECS}s, $ROUNDS rounds, the order rotated each round"
printf "%-6s %-9s %10s %9s %9s %12s %12s\n" round path req/s p50_ms p99_ms cpu_us/req box_us/req
for name in "${NAMES[@]}"; do : > "$WORK/$name"; done
for r in $(seq 1 "$ROUNDS"); do
  for k in "${!NAMES[@]}"; do
    name=${NAMES[$(( (k + r) % ${#NAMES[@]} ))]}
    if [ -n "${CALLGRIND:-}" ] && [ "$name" = tollgate ]; then
      # Counted from just before the run's first request to just after its
      # last (the metrics scrapes outside the count).
      before=$(allowed_requests)
      callgrind_control -z "$AGENT" >/dev/null 2>&1 || { echo "callgrind_control -z failed" >&2; exit 1; }
      out=$(run "${URL[$name]}")
      callgrind_control -d "$AGENT" >/dev/null 2>&1 || { echo "callgrind_control -d failed" >&2; exit 1; }
      after=$(allowed_requests)
      [ -n "$before" ] && [ -n "$after" ] && [ "$after" -gt "$before" ] \
        || { echo "no allowed requests counted (before: '$before', after: '$after')" >&2; exit 1; }
      profile=$(ls -t "$WORK"/callgrind.out.* | head -1)
      ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$profile")
      [ -z "${CALLGRIND_OUT:-}" ] || cp "$profile" "$CALLGRIND_OUT"
      echo "callgrind: $ir user-space instructions over $((after - before)) requests: $((ir / (after - before))) per request"
    else
      pids=$(procs "$name")
      before=$(cpu_ns $pids)
      box_before=$(box_busy)
      out=$(run "${URL[$name]}")
      box_after=$(box_busy)
      after=$(cpu_ns $pids)
      cpu=$(awk -v b="$before" -v a="$after" -v r="${out%% *}" -v s="$SECS" \
        'BEGIN { if (r > 0 && a > b) printf "%.2f", (a - b) / 1000 / (r * s); else print "-" }')
      [ "$name" = direct ] && cpu=-
      hz=$(getconf CLK_TCK)
      box=$(awk -v b="$box_before" -v a="$box_after" -v r="${out%% *}" -v s="$SECS" -v hz="$hz" \
        'BEGIN { if (r > 0 && a > b) printf "%.2f", (a - b) * 1000000 / hz / (r * s); else print "-" }')
      out="$out $cpu $box"
    fi
    echo "$out" >> "$WORK/$name"
    printf "%-6s %-9s %10s %9s %9s %12s %12s\n" "$r" "$name" $out
  done
done

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR == 0) print "-"; else print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
declare -A RPS P50 P99 CPU BOX
for name in "${NAMES[@]}"; do
  RPS[$name]=$(cut -d' ' -f1 "$WORK/$name" | median)
  P50[$name]=$(cut -d' ' -f2 "$WORK/$name" | median)
  P99[$name]=$(cut -d' ' -f3 "$WORK/$name" | median)
  CPU[$name]=$(cut -d' ' -f4 "$WORK/$name" | { grep -v -- - || true; } | median)
  BOX[$name]=$(cut -d' ' -f5 "$WORK/$name" | { grep -v -- - || true; } | median)
done
[ -n "${ONLY:-}" ] && exit 0
echo
echo "| path | req/s | / direct | p50 | p99 | proxy CPU per request | machine CPU per request |"
echo "|---|---|---|---|---|---|---|"
for name in "${NAMES[@]}"; do
  awk -v n="$name" -v r="${RPS[$name]}" -v d="${RPS[direct]}" -v p50="${P50[$name]}" -v p99="${P99[$name]}" -v c="${CPU[$name]}" -v m="${BOX[$name]}" \
    'BEGIN { printf "| %s | %.0f | %.2f | %.3f ms | %.3f ms | %s | %s us |\n", n, r, r / d, p50, p99, (n == "direct" ? "-" : c " us"), m }'
done
best=nginx
awk -v a="${RPS[haproxy]}" -v b="${RPS[nginx]}" 'BEGIN { exit !(a > b) }' && best=haproxy
awk -v t="${RPS[tollgate]}" -v b="${RPS[$best]}" -v tp="${P99[tollgate]}" -v bp="${P99[$best]}" -v n="$best" \
  'BEGIN { printf "\nTollgate / best anchor (%s): **%.2fx** in req/s; p99 %.3f ms vs %.3f ms\n", n, t / b, tp, bp }'
echo "Proxy CPU per request (medians): Tollgate ${CPU[tollgate]} us (the whole agent), nginx ${CPU[nginx]} us, HAProxy ${CPU[haproxy]} us"
echo "Machine CPU per request (medians): direct ${BOX[direct]} us, Tollgate ${BOX[tollgate]} us, nginx ${BOX[nginx]} us, HAProxy ${BOX[haproxy]} us"
