#!/usr/bin/env bash
# Runs every test of every crate: unit, property (proptest), table (rstest),
# golden decision tables, CLI tests, and the privileged datapath tests (real
# eBPF programs on veths in network namespaces). This is the README's test
# command and what CI runs.
#
# Privileged tests need root. Without root they FAIL (they never skip
# silently) unless you opt out explicitly with TOLLGATE_SKIP_PRIVILEGED=1.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ "$(id -u)" -ne 0 ] && [ "${TOLLGATE_SKIP_PRIVILEGED:-}" != "1" ]; then
  echo "test.sh: not root: the privileged tests will fail. Run as root (sudo ./scripts/test.sh)," >&2
  echo "         or set TOLLGATE_SKIP_PRIVILEGED=1 to skip them explicitly." >&2
fi
cargo test --workspace --all-targets --locked
