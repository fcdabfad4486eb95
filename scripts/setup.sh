#!/usr/bin/env bash
# Installs what Tollgate's tests and demo need on a fresh Debian machine.
# Idempotent: a package already present is not installed again. Needs root
# (or sudo) only when something is missing.
set -euo pipefail

# Debian packages: binary -> package. Grows as the datapath, DNS proxy and
# end-to-end suite land (clang libbpf-dev nftables nsd bind9-dnsutils ...).
# The policy engine's tests need nothing beyond cargo yet.
declare -A NEEDED=()

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
