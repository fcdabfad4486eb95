#!/usr/bin/env bash
# Datapath benchmark (needs root): iperf3 throughput and TCP connection rate
# through the enforced veth vs the bare veth, interleaved rounds in one run,
# plus the cost of writing an 8-IP DNS answer into the FQDN map.
# Usage: sudo ./scripts/bench-datapath.sh [ROUNDS]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh bench
exec cargo run --release --locked -q -p tollgate-egress-bpf --example datapath_bench -- "${1:-5}"
