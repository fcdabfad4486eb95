#!/usr/bin/env bash
# Cluster-scale benchmark (needs root): one agent against a real etcd +
# kube-apiserver loaded with a generated cluster (default 2,000 nodes,
# 50,000 pods, 5,000 CiliumNetworkPolicies, 50 pods local to the agent),
# then churn (100 pod label changes and one policy edit a second) and a
# 30 s API server outage. Prints initial sync, RSS, CPU per change, and the
# write -> datapath latencies read from the pinned tg_ipcache map; then
# checks, after the churn and at the end, that no update was missed (the
# maps equal a compile from scratch of the cluster as listed then; exit 1
# if not).
#
# Usage: sudo ./scripts/bench-scale.sh [NODES PODS POLICIES CHURN_SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -q --bin tollgate --example scale_bench
exec ./target/release/examples/scale_bench "${1:-2000}" "${2:-50000}" "${3:-5000}" "${4:-60}"
