#!/usr/bin/env bash
# The quick start: builds tollgate, validates the seed policies and explains
# an allowed and a denied flow for each, with the rule that decided it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo build --release --locked -q
tg=target/release/tollgate
policies=testdata/policies
endpoints=testdata/endpoints.yaml

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@" || true; }

step "$tg" policy check "$policies"
step "$tg" policy explain --policies "$policies" --endpoints "$endpoints" --from prod/payments --to api.stripe.com --port 443/TCP
step "$tg" policy explain --policies "$policies" --endpoints "$endpoints" --from prod/payments --to evil.example.com --port 443/TCP
step "$tg" policy explain --policies "$policies" --endpoints "$endpoints" --from prod/payments --to kube-system/coredns --port 53/UDP
step "$tg" policy explain --policies "$policies" --endpoints "$endpoints" --from prod/frontend --to prod/db --port 80/TCP
step "$tg" policy explain --policies "$policies" --endpoints "$endpoints" --from prod/intruder --to prod/db --port 80/TCP
step "$tg" fqdn match '**.stripe.com' api.eu.stripe.com
step "$tg" fqdn match '*.stripe.com' api.eu.stripe.com
