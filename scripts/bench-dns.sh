#!/usr/bin/env bash
# DNS benchmark (needs root): dnsperf direct to nsd vs through Tollgate (cache
# off / warm) vs unbound and dnsmasq as plain forwarders, same run, same
# upstream. Usage: sudo ./scripts/bench-dns.sh [ROUNDS] [SECONDS]  (default 3 5)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh bench
exec cargo run --release --locked -q --example dns_bench -- "${1:-3}" "${2:-5}"
