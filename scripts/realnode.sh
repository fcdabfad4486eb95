#!/usr/bin/env bash
# A real single-node Kubernetes cluster on this machine, offline, with the
# Tollgate DaemonSet on it: etcd + kube-apiserver + controller-manager +
# scheduler + kubelet + kube-proxy (iptables), all Kubernetes 1.20.2 built
# from Debian's source package; containerd + runc + CNI plugins from Debian;
# images built from Debian packages and imported (no registry). Why each
# piece is the way it is: docs/realnode.md.
#
# The node is a "node container" like kind's, without a container engine:
# its own network namespace ($NS: its iptables, routes, pod veths; reached
# from here through the veth tgrn-host), its own mount namespace (its own
# bpffs, kubelet's sysctl writes contained, its mounts vanish with it) and
# its own cgroup subtree (/tgrn in every hierarchy: every process it runs).
# Next to it, an "outside" host ($EXT_NS, routed from the node): the
# addresses cluster DNS gives for names outside the cluster (api.stripe.com:
# 198.51.100.10), for toFQDNs policies; tests run their servers there.
#
# Usage: sudo ./scripts/realnode.sh up     # idempotent; the last two lines are
#                                          #   NODE_NETNS=<netns> and KUBECONFIG=<path>
#        sudo ./scripts/realnode.sh down   # removes everything up made
#        sudo ./scripts/realnode.sh status
# Settings (environment):
#   TOLLGATE_CNI=ptp|bridge  pod network layout (default ptp: a veth and a /32
#                            route per pod; bridge: veths enslaved to tgrn-br0)
#   TOLLGATE_BIN=PATH        the tollgate binary for localhost/tollgate:dev
#                            (default: cargo build --release, as the Dockerfile)
#   TOLLGATE_REALNODE_LOGS=DIR  down copies the components' logs there first
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

NS=tgrn-node                      # the node's network namespace
HOST_IF=tgrn-host                 # its link to this namespace
HOST_IP=10.250.77.1 NODE_IP=10.250.77.2
EXT_NS=tgrn-ext                   # the "outside" host, linked to the node only
EXT_LINK_NODE=10.250.78.1 EXT_LINK_EXT=10.250.78.2
EXT_ADDRS="198.51.100.10 198.51.100.11"  # in kube-dns.yaml's hosts: api.stripe.com, other.example.net
POD_CIDR=10.246.0.0/24 POD_GW=10.246.0.1 CLUSTER_CIDR=10.246.0.0/16
CGROUP=tgrn                       # cgroup subtree of everything the node runs
RUN=/run/tollgate-realnode        # sockets, certificates, kubeconfig, logs, pids
STATE=/var/lib/tollgate-realnode  # images, containers, kubelet: a tmpfs inside the node
CACHE=${TOLLGATE_CACHE:-/var/cache/tollgate}
IMAGES=$CACHE/realnode            # rootfs tarballs and image archives
MNT=$RUN/mnt                      # the node's mount namespace, kept by a bind mount
SOCK=$RUN/containerd/containerd.sock
KUBECONFIG_PATH=$RUN/control/kubeconfig
CNI=${TOLLGATE_CNI:-ptp}
PAUSE_IMAGE=localhost/tollgate-pause:v1.20.2
TOOLBOX_IMAGE=localhost/tollgate-toolbox:latest
AGENT_IMAGE=localhost/tollgate:dev
# Host paths the node's software insists on (kubelet's pod logs, libcni's
# cache, deploy/'s state hostPath): inside the node they are bind mounts of
# the node's own directories, so nothing lands in the machine's copies.
CONTAINED=(/var/log/pods /var/log/containers /var/lib/cni /var/lib/tollgate)
# The values kubelet 1.20 insists on (setupKernelTunables): it would write
# them machine-wide; inside the node it reads them from these files instead.
SYSCTLS=(vm/overcommit_memory=1 vm/panic_on_oom=0 kernel/panic=10 kernel/panic_on_oops=1
         kernel/keys/root_maxkeys=1000000 kernel/keys/root_maxbytes=25000000)

log() { echo "[$(date +%T)] realnode: $*" >&2; }
die() { log "$*"; exit 1; }
since() { echo "$(($(date +%s) - T0)) s"; }
kc() { kubectl --kubeconfig "$KUBECONFIG_PATH" "$@"; }
ctr_() { ctr --address "$SOCK" -n k8s.io "$@"; }
# A command inside the node: its mount and network namespaces, its cgroup.
# (An array, not a function: `"${NODE[@]}" cmd &` forks nsenter itself, with
# no shell left waiting outside the node.)
NODE=(nsenter --mount="$MNT" --net="/run/netns/$NS" --wd="$REPO" --
      sh -c 'echo $$ > /sys/fs/cgroup/pids/'"$CGROUP"'/node/cgroup.procs && exec "$@"' node)
in_node() { "${NODE[@]}" "$@"; }
# Starts a long-running component inside the node; its log is $RUN/logs/NAME.log.
start() {
  local name=$1
  shift
  # 8<&-: the component must not hold this script's lock (below), or
  # the next `up` or `down` would wait for it forever.
  "${NODE[@]}" "$@" >"$RUN/logs/$name.log" 2>&1 8<&- &
  echo "$! $name" >>"$RUN/pids"
}
wait_for() { # wait_for SECONDS WHAT COMMAND...
  local deadline=$(($(date +%s) + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { log "timed out waiting for $what"; return 1; }
    sleep 0.5
  done
}

# --- what is already there -------------------------------------------------

node_pids() { find "/sys/fs/cgroup/pids/$CGROUP" -name cgroup.procs -exec cat {} + 2>/dev/null || true; }
anything_there() {
  [ -e "$RUN" ] || [ -e "/run/netns/$NS" ] || [ -e "/run/netns/$EXT_NS" ] || [ -e "$STATE" ] ||
    [ -d "/sys/fs/cgroup/pids/$CGROUP" ] ||
    ip link show "$HOST_IF" >/dev/null 2>&1
}
healthy() {
  [ -f "$RUN/up" ] && [ "$(cat "$RUN/layout" 2>/dev/null)" = "$CNI" ] && [ -e "/run/netns/$EXT_NS" ] &&
    kc get --raw /readyz >/dev/null 2>&1 &&
    kc get node "$NS" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null | grep -q True
}

# --- build: binaries and images (cached, rebuilt only when missing) --------

binaries() {
  ./scripts/setup.sh realnode >&2
  local c
  for c in $(./scripts/build-kube.sh kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy pause); do
    BIN[$(basename "$c")]=$c
  done
}

# A Debian bookworm root file system as a tarball (mmdebstrap, no chroot
# left behind), trimmed like the slim Docker images.
rootfs() { # rootfs NAME PACKAGES
  local out="$IMAGES/$1-rootfs.tar"
  [ -s "$out" ] && return 0
  log "building the $1 root file system (Debian bookworm: $2)"
  mmdebstrap --quiet --variant=minbase --format=tar --include="$2" \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    bookworm "$IMAGES/.$1-rootfs.partial.tar" http://deb.debian.org/debian </dev/null >&2
  mv "$IMAGES/.$1-rootfs.partial.tar" "$out"
}

# A single-file layer: FILE at PATH in the image.
file_layer() { # file_layer FILE PATH OUT
  local dir
  dir=$(mktemp -d "$IMAGES/.layer.XXXXXX")
  mkdir -p "$dir/$(dirname "$2")"
  cp "$1" "$dir/$2"
  tar --numeric-owner --owner=0 --group=0 -cf "$3" -C "$dir" .
  rm -rf "$dir"
}

images() {
  mkdir -p "$IMAGES"
  local mk=scripts/realnode/mkimage.sh
  # pause: the pod sandbox's PID 1, built from the same Kubernetes tree.
  if [ ! -s "$IMAGES/pause.tar" ] || [ "${BIN[pause]}" -nt "$IMAGES/pause.tar" ]; then
    file_layer "${BIN[pause]}" /pause "$IMAGES/pause-layer.tar"
    $mk "$PAUSE_IMAGE" "$IMAGES/pause.tar" '["/pause"]' null "$IMAGES/pause-layer.tar"
  fi
  # toolbox: what tests run in pods (bash, dig, curl, python3, nc, ip) and
  # the cluster DNS server (dnsmasq).
  rootfs toolbox bash,bind9-dnsutils,curl,python3,netcat-openbsd,iproute2,iputils-ping,procps,dnsmasq-base,ca-certificates
  [ -s "$IMAGES/toolbox.tar" ] ||
    $mk "$TOOLBOX_IMAGE" "$IMAGES/toolbox.tar" null '["bash"]' "$IMAGES/toolbox-rootfs.tar"
  # The agent: the Dockerfile's final stage (bookworm-slim + nftables,
  # iproute2, ca-certificates) with the binary as a layer of its own, so a
  # new binary rebuilds only that layer.
  rootfs agent-base nftables,iproute2,ca-certificates
  local bin=${TOLLGATE_BIN:-}
  if [ -z "$bin" ]; then
    log "building tollgate (cargo build --release, as the Dockerfile)"
    # The caller's toolchain: under sudo, root's PATH may not have cargo.
    CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} cargo build --release --locked --bin tollgate >&2
    bin=$REPO/target/release/tollgate
  fi
  [ -x "$bin" ] || die "no tollgate binary at $bin"
  local sum
  sum=$(sha256sum "$bin" | cut -c1-64)
  if [ ! -s "$IMAGES/tollgate.tar" ] || [ "$(cat "$IMAGES/tollgate.sum" 2>/dev/null)" != "$sum" ]; then
    log "building $AGENT_IMAGE from $bin"
    strip -o "$IMAGES/tollgate.stripped" "$bin"
    file_layer "$IMAGES/tollgate.stripped" /usr/local/bin/tollgate "$IMAGES/tollgate-layer.tar"
    rm -f "$IMAGES/tollgate.stripped"
    $mk "$AGENT_IMAGE" "$IMAGES/tollgate.tar" '["/usr/local/bin/tollgate"]' '["agent","--kubernetes"]' \
      "$IMAGES/agent-base-rootfs.tar" "$IMAGES/tollgate-layer.tar"
    echo "$sum" >"$IMAGES/tollgate.sum"
  fi
}

import_images() {
  local i
  for i in pause toolbox tollgate; do
    ctr_ images import "$IMAGES/$i.tar" >/dev/null
  done
}

# --- the node ---------------------------------------------------------------

netns_up() {
  ip netns add "$NS"
  ip link add "$HOST_IF" type veth peer name eth0 netns "$NS"
  ip addr add "$HOST_IP/30" dev "$HOST_IF"
  ip link set "$HOST_IF" up
  ip netns exec "$NS" sh -ec "
    ip link set lo up
    ip addr add $NODE_IP/30 dev eth0
    ip link set eth0 up
    ip route add default via $HOST_IP
    sysctl -qw net.ipv4.ip_forward=1"
  # The outside host: reached from the node (and its pods) only.
  local a
  ip netns add "$EXT_NS"
  ip -n "$NS" link add tgrn-ext type veth peer name eth0 netns "$EXT_NS"
  ip -n "$NS" addr add "$EXT_LINK_NODE/30" dev tgrn-ext
  ip -n "$NS" link set tgrn-ext up
  ip -n "$EXT_NS" link set lo up
  ip -n "$EXT_NS" addr add "$EXT_LINK_EXT/30" dev eth0
  for a in $EXT_ADDRS; do
    ip -n "$EXT_NS" addr add "$a/32" dev eth0
    ip -n "$NS" route add "$a/32" via "$EXT_LINK_EXT"
  done
  ip -n "$EXT_NS" link set eth0 up
  ip -n "$EXT_NS" route add default via "$EXT_LINK_NODE"
}

cgroups_up() {
  local c
  for c in /sys/fs/cgroup/*/; do
    c=${c%/}
    [ "$(stat -f -c %T "$c")" = tmpfs ] && continue
    mkdir -p "$c/$CGROUP"
  done
  # cpuset needs its CPUs and memory nodes before a task may join.
  cat /sys/fs/cgroup/cpuset/cpuset.cpus >"/sys/fs/cgroup/cpuset/$CGROUP/cpuset.cpus"
  cat /sys/fs/cgroup/cpuset/cpuset.mems >"/sys/fs/cgroup/cpuset/$CGROUP/cpuset.mems"
  mkdir -p "/sys/fs/cgroup/pids/$CGROUP/node"
}

# The node's mount namespace: a private copy of this one, where
# - /sys/fs/bpf is a bpffs of its own, shared (so the DaemonSet's
#   `mountPropagation: HostToContainer` works, as on a systemd node) and gone
#   with the node: no pin outlives it, none touches the machine's bpffs;
# - kubelet's sysctls read as what it wants (it never writes the machine's);
# - the CONTAINED paths are the node's own directories.
mountns_up() {
  mkdir -p "$RUN"
  # The bind mount that keeps the namespace must sit on a private mount.
  mount --bind "$RUN" "$RUN"
  mount --make-private "$RUN"
  mkdir -p "$RUN/logs" "$RUN/sysctl" "$STATE"
  : >"$RUN/pids"
  : >"$RUN/created"
  local s p script=""
  for s in "${SYSCTLS[@]}"; do
    p=${s%%=*}
    echo "${s#*=}" >"$RUN/sysctl/${p//\//.}"
    script+="mount --bind $RUN/sysctl/${p//\//.} /proc/sys/$p; "
  done
  for p in "${CONTAINED[@]}"; do
    if [ ! -e "$p" ]; then
      mkdir -p "$p"
      echo "$p" >>"$RUN/created"
    fi
    script+="mkdir -p $STATE/contained/${p//\//_}; mount --bind $STATE/contained/${p//\//_} $p; "
  done
  touch "$MNT"
  # (The machine's bpffs is unmounted from the copy first: containerd looks
  # at the lowest mount on a path when it checks propagation.)
  # $STATE (images, container file systems, kubelet's volumes: ~0.7 GB) is
  # a tmpfs that exists only inside the node: it goes with the namespace,
  # instead of a slow delete of tens of thousands of files at down.
  unshare --mount="$MNT" --propagation private -- sh -ec "
    mount -t tmpfs -o mode=0755 tgrn-state $STATE
    umount /sys/fs/bpf 2>/dev/null || true
    mount -t bpf bpffs /sys/fs/bpf
    mount --make-shared /sys/fs/bpf
    $script"
}

containerd_up() {
  mkdir -p "$RUN/containerd" "$RUN/cni"
  sed -e "s|@RUN@|$RUN|g" -e "s|@POD_CIDR@|$POD_CIDR|g" -e "s|@POD_GW@|$POD_GW|g" \
    "scripts/realnode/cni-$CNI.conflist" >"$RUN/cni/10-tgrn.conflist"
  sed -e "s|@RUN@|$RUN|g" -e "s|@STATE@|$STATE|g" -e "s|@CNI_CONF@|$RUN/cni|g" -e "s|@PAUSE@|$PAUSE_IMAGE|g" \
    scripts/realnode/containerd.toml >"$RUN/containerd.toml"
  start containerd containerd --config "$RUN/containerd.toml"
  wait_for 30 containerd ctr --address "$SOCK" version
}

control_plane_up() {
  # etcd + kube-apiserver: the Kubernetes-mode tests' recipe, on the node's
  # address, with service accounts (the controller manager makes tokens).
  in_node env API_ADDRESS="$NODE_IP" ADVERTISE_ADDRESS="$NODE_IP" SERVICE_ACCOUNTS=1 \
    EXTRA_SANS="IP:10.96.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local" \
    APISERVER_ARGS="--allow-privileged=true --kubelet-preferred-address-types InternalIP" \
    ./scripts/kube-testenv.sh "$RUN/control" >/dev/null 8<&-
  sed 's/$/ kube-testenv/' "$RUN/control/pids" >>"$RUN/pids"
  local kcfg=(--kubeconfig "$KUBECONFIG_PATH" --authentication-kubeconfig "$KUBECONFIG_PATH"
              --authorization-kubeconfig "$KUBECONFIG_PATH" --bind-address 127.0.0.1 --port 0 --leader-elect=false)
  # No cloud, no node IPAM (the CNI config holds the pod range), no routes.
  start kube-controller-manager "${BIN[kube-controller-manager]}" "${kcfg[@]}" \
    --service-account-private-key-file "$RUN/control/sa.key" --root-ca-file "$RUN/control/ca.crt" \
    --use-service-account-credentials=false --controllers '*,-nodeipam,-cloud-node-lifecycle,-route,-service'
  start kube-scheduler "${BIN[kube-scheduler]}" "${kcfg[@]}"
}

kubelet_up() {
  sed -e "s|@NODE_IP@|$NODE_IP|g" -e "s|@CGROUP_ROOT@|$CGROUP|g" scripts/realnode/kubelet.yaml >"$RUN/kubelet.yaml"
  # --oom-score-adj 0: lowering it needs CAP_SYS_RESOURCE, which root lacks here.
  start kubelet "${BIN[kubelet]}" --config "$RUN/kubelet.yaml" --kubeconfig "$KUBECONFIG_PATH" \
    --root-dir "$STATE/kubelet" --cert-dir "$STATE/kubelet/pki" --oom-score-adj 0 \
    --container-runtime remote --container-runtime-endpoint "unix://$SOCK" \
    --pod-infra-container-image "$PAUSE_IMAGE" --hostname-override "$NS" --node-ip "$NODE_IP" --v 1
  # conntrack-* 0: kube-proxy leaves the machine-wide conntrack table alone.
  start kube-proxy "${BIN[kube-proxy]}" --kubeconfig "$KUBECONFIG_PATH" --proxy-mode iptables \
    --hostname-override "$NS" --cluster-cidr "$CLUSTER_CIDR" --bind-address "$NODE_IP" \
    --metrics-bind-address 127.0.0.1:10249 --healthz-bind-address 127.0.0.1:10256 --oom-score-adj 0 \
    --conntrack-max-per-core 0 --conntrack-min 0 \
    --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0
}

node_ready() {
  kc get node "$NS" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -q True
}
dns_answers() {
  in_node dig +short +time=1 +tries=1 @10.96.0.10 kubernetes.default.svc.cluster.local | grep -qx 10.96.0.1
}
daemonset_ready() {
  local s
  # generation observed, then desired = ready = updated: a rollout that has
  # not been seen yet does not count as done.
  s=$(kc -n tollgate get ds tollgate -o jsonpath='{.metadata.generation} {.status.observedGeneration} {.status.desiredNumberScheduled} {.status.numberReady} {.status.updatedNumberScheduled}')
  set -- $s
  [ $# -eq 5 ] && [ "$1" = "$2" ] && [ "$3" -gt 0 ] && [ "$3" = "$4" ] && [ "$4" = "$5" ]
}

# The workloads: cluster DNS and Tollgate (deploy/ with the dev image).
workloads() {
  kc apply -f scripts/realnode/kube-dns.yaml >/dev/null
  kc apply -k scripts/realnode/deploy >/dev/null
  # A new binary under the same tag: new pods, or they keep the old image.
  local id
  id=$(ctr_ images ls "name==$AGENT_IMAGE" | awk 'NR == 2 {print $3}')
  if [ -n "$id" ] && [ "$id" != "$(cat "$RUN/agent-image" 2>/dev/null)" ]; then
    [ -f "$RUN/agent-image" ] && kc -n tollgate rollout restart ds/tollgate >/dev/null
    echo "$id" >"$RUN/agent-image"
  fi
  wait_for 120 "the tollgate DaemonSet" daemonset_ready || {
    kc -n tollgate get pods -o wide >&2
    kc -n tollgate describe pods >&2 || true
    return 1
  }
  # A changed kube-dns spec rolls its pod: only the new one may remain.
  kc -n kube-system rollout status deploy/kube-dns --timeout=120s >/dev/null
  wait_for 60 "cluster DNS through 10.96.0.10" dns_answers
}

up() {
  T0=$(date +%s)
  [ "$(id -u)" -eq 0 ] || die "needs root (sudo $0 up)"
  case $CNI in ptp | bridge) ;; *) die "TOLLGATE_CNI must be ptp or bridge, not '$CNI'" ;; esac
  declare -gA BIN
  binaries
  images
  log "binaries and images ready ($(since))"
  if healthy; then
    log "already up ($CNI); updating the images and workloads"
    import_images
  else
    if anything_there; then
      log "a previous node is there (or its remains, or another CNI layout): taking it down first"
      down
    fi
    netns_up
    cgroups_up
    mountns_up
    containerd_up
    import_images &
    local importing=$!
    control_plane_up
    log "control plane up ($(since))"
    wait "$importing" || die "importing the images failed"
    kubelet_up
    wait_for 120 "the node to be Ready" node_ready || { tail -20 "$RUN/logs/kubelet.log" >&2; exit 1; }
    echo "$CNI" >"$RUN/layout"
    touch "$RUN/up"
    log "node Ready ($(since))"
  fi
  workloads
  log "up: the tollgate DaemonSet is Ready and cluster DNS answers ($(since))"
  echo "NODE_NETNS=$NS"
  echo "KUBECONFIG=$KUBECONFIG_PATH"
}

# --- down: everything up made, and nothing else ------------------------------

down() {
  local pids pid p c
  if [ -n "${TOLLGATE_REALNODE_LOGS:-}" ] && [ -d "$RUN/logs" ]; then
    mkdir -p "$TOLLGATE_REALNODE_LOGS"
    cp "$RUN"/logs/*.log "$RUN"/control/*.log "$TOLLGATE_REALNODE_LOGS"/ 2>/dev/null || true
  fi
  # Every process of the node is in its cgroup subtree (components,
  # containerd's shims, the containers): TERM, then KILL what is left after
  # 2 s (nothing of the node is kept, so nothing needs a clean shutdown).
  pids=$(node_pids)
  if [ -n "$pids" ]; then
    kill $pids 2>/dev/null || true
    for _ in $(seq 1 8); do
      [ -z "$(node_pids)" ] && break
      sleep 0.25
    done
    for _ in $(seq 1 40); do
      pids=$(node_pids)
      [ -z "$pids" ] && break
      kill -9 $pids 2>/dev/null || true
      sleep 0.25
    done
    [ -z "$(node_pids)" ] || log "processes still in /$CGROUP: $(node_pids)"
    log "down: processes stopped ($(since))"
  fi
  # With no process left in it, the mount namespace (its bpffs and pins,
  # container root file systems, pod network namespaces, bind mounts) goes
  # with its last reference.
  mountpoint -q "$MNT" 2>/dev/null && umount "$MNT"
  # The node's network namespace takes its iptables rules, pod veths, the
  # bridge and the agent's TC programs and nftables tables with it.
  [ -e "/run/netns/$NS" ] && ip netns del "$NS"
  [ -e "/run/netns/$EXT_NS" ] && ip netns del "$EXT_NS"
  ip link del "$HOST_IF" 2>/dev/null || true
  log "down: namespaces released ($(since))"
  for c in /sys/fs/cgroup/*/"$CGROUP"; do
    [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null
    [ -d "$c" ] && log "could not remove cgroup $c"
  done
  log "down: cgroups removed ($(since))"
  if [ -f "$RUN/created" ]; then
    while read -r p; do rmdir "$p" 2>/dev/null || true; done <"$RUN/created"
  fi
  mountpoint -q "$RUN" 2>/dev/null && umount "$RUN"
  rm -rf "$RUN" "$STATE"
  return 0
}

status() {
  if healthy; then
    kc get nodes -o wide
    kc get pods -A -o wide
    echo "NODE_NETNS=$NS"
    echo "KUBECONFIG=$KUBECONFIG_PATH"
  elif anything_there; then
    echo "realnode: partly there (run: $0 down)"
    exit 1
  else
    echo "realnode: down"
    exit 1
  fi
}

# One up or down at a time (tests may start together); the lock is on this
# script itself, so nothing is left behind for it.
if [ "${1:-}" = up ] || [ "${1:-}" = down ]; then
  exec 8<"$0"
  flock 8
fi
case ${1:-} in
  up) up ;;
  down)
    [ "$(id -u)" -eq 0 ] || die "needs root (sudo $0 down)"
    T0=$(date +%s)
    down
    log "down ($(since))"
    ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
