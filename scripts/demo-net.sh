# shellcheck shell=bash
# Sourced by demo.sh and demo-suggest.sh: the demo's network and servers,
# and the helpers both print with. The caller sets P (the name prefix),
# WORK, PIN, TG and PIDS=() first.
#
#   pods (namespaces)          node (agent, eBPF on each veth)       "internet" ($P-ext)
#   prod/payments  10.0.1.10 ─┐                                   ┌ nsd      203.0.113.53 (zone test.)
#   prod/frontend  10.0.2.10 ─┼── $P-node ────────────────────────┤ api.test 203.0.113.10:80
#   prod/db        10.0.3.10 ─┘                                   └ evil.test 203.0.113.12:80
#
# The pods' host-side veths are ${P}1..3; db serves HTTP on 80 too.

demo_cleanup() {
  set +e
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  sleep 0.5
  "$TG" datapath uninstall --pin-dir "$PIN" >/dev/null 2>&1
  for ns in node ext payments frontend db; do ip netns del "$P-$ns" 2>/dev/null; rm -rf "/etc/netns/$P-$ns"; done
  rm -rf "$WORK"
}

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
run_in() { local ns=$1; shift; printf '\033[2m[%s]$ %s\033[0m\n' "${ns#$P-}" "$*"; ip netns exec "$ns" "$@" || true; }

# demo_network [EXTRA_EXT_ADDRESS...]: namespaces, veths, routes, resolv.conf;
# extra /32 addresses on the "internet" side are routed to it.
demo_network() {
  local a n pod
  for ns in node ext payments frontend db; do ip netns add "$P-$ns"; ip -n "$P-$ns" link set lo up; done
  ip netns exec "$P-node" sysctl -qw net.ipv4.ip_forward=1
  ip -n "$P-node" link add ext0 type veth peer name eth0 netns "$P-ext"
  ip -n "$P-node" link set ext0 up; ip -n "$P-node" addr add 203.0.113.1/24 dev ext0
  ip -n "$P-ext" link set eth0 up
  for a in 10 12 53; do ip -n "$P-ext" addr add 203.0.113.$a/24 dev eth0; done
  for a in "$@"; do
    ip -n "$P-ext" addr add "$a/32" dev eth0
    ip -n "$P-node" route add "$a/32" via 203.0.113.10
  done
  ip -n "$P-ext" route add default via 203.0.113.1
  n=0
  for pod in payments frontend db; do
    n=$((n + 1))
    ip -n "$P-node" link add "$P$n" type veth peer name eth0 netns "$P-$pod"
    ip -n "$P-node" link set "$P$n" up; ip -n "$P-node" addr add "10.0.$n.1/24" dev "$P$n"
    ip -n "$P-$pod" link set eth0 up; ip -n "$P-$pod" addr add "10.0.$n.10/24" dev eth0
    ip -n "$P-$pod" route add default via "10.0.$n.1"
    mkdir -p "/etc/netns/$P-$pod"; echo "nameserver 203.0.113.53" > "/etc/netns/$P-$pod/resolv.conf"
  done
}

# demo_servers: nsd for the zone `test.` on 203.0.113.53, a web site on
# every "internet" address and in the db pod.
demo_servers() {
  cp testdata/zones/test.zone "$WORK/"
  cat > "$WORK/nsd.conf" <<NSD
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
NSD
  ip netns exec "$P-ext" nsd -d -c "$WORK/nsd.conf" & PIDS+=($!)
  mkdir -p "$WORK/www"; echo "hello from a demo site" > "$WORK/www/index.html"
  ip netns exec "$P-ext" python3 -m http.server 80 --bind 0.0.0.0 --directory "$WORK/www" >/dev/null 2>&1 & PIDS+=($!)
  ip netns exec "$P-db" python3 -m http.server 80 --bind 0.0.0.0 --directory "$WORK/www" >/dev/null 2>&1 & PIDS+=($!)
}
