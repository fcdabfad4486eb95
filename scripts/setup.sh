#!/usr/bin/env bash
# Installs what Tollgate's tests and demo need on a fresh Debian machine.
# Idempotent: a package already present is not installed again. Needs root
# (or sudo) only when something is missing.
set -euo pipefail

# Debian packages, by a binary (or header) each provides.
declare -A NEEDED=(
  [clang]=clang                 # builds the eBPF programs (egress-bpf/build.rs)
  [ip]=iproute2                 # network namespaces, veths, policy routing
  [nft]=nftables                # TPROXY redirect to the proxies
  [dig]=bind9-dnsutils          # DNS queries from test pods
  [curl]=curl                   # HTTP from test pods
  [ping]=iputils-ping
  [python3]=python3             # test HTTP servers (python3 -m http.server), the TLS site
  [openssl]=openssl             # serverNames tests: certificate at test time, s_client
  [nsd]=nsd                     # the real upstream DNS server in tests
  [kubectl]=kubernetes-client   # Kubernetes-mode tests against a real API server
)
# Benchmarks only: `setup.sh bench`.
if [ "${1:-}" = "bench" ]; then
  NEEDED[iperf3]=iperf3
  NEEDED[dnsperf]=dnsperf
  NEEDED[unbound]=unbound
  NEEDED[dnsmasq]=dnsmasq-base
  NEEDED[wrk]=wrk
  NEEDED[nginx]=nginx-light
  NEEDED[haproxy]=haproxy
  NEEDED[callgrind_control]=valgrind  # CALLGRIND=1: instructions per request
fi
# The real node (`setup.sh realnode`, run by scripts/realnode.sh): the
# container runtime, CNI plugins and image tooling, all from Debian.
if [ "${1:-}" = "realnode" ]; then
  NEEDED[containerd]=containerd
  NEEDED[runc]=runc
  NEEDED[mmdebstrap]=mmdebstrap     # image root file systems from Debian packages
  NEEDED[iptables]=iptables         # kube-proxy and kubelet
  NEEDED[conntrack]=conntrack       # kube-proxy clears stale UDP flows with it
  NEEDED[strip]=binutils
  [ -x /usr/lib/cni/ptp ] || NEEDED[__cni]=containernetworking-plugins
fi
# Headers without a binary to look for.
[ -f /usr/include/bpf/bpf_helpers.h ] || NEEDED[__libbpf]=libbpf-dev

missing=()
for bin in "${!NEEDED[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("${NEEDED[$bin]}")
done
if ((${#missing[@]})); then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

command -v cargo >/dev/null 2>&1 || {
  echo "setup: cargo is not installed; install Rust 1.95 (rustup) first" >&2
  exit 1
}

# A real kube-apiserver for the Kubernetes-mode tests: built offline from
# Debian's source package, cached outside the repo, only when missing.
if [ "${1:-}" != "bench" ] && [ "$(id -u)" -eq 0 ]; then
  ./scripts/build-kube-apiserver.sh >/dev/null
fi
