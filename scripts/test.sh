#!/usr/bin/env bash
# Runs every test of every crate: unit, property (proptest), table (rstest),
# golden decision tables and CLI tests. This is the README's test command and
# what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo test --workspace --all-targets --locked
