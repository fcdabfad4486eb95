#!/usr/bin/env bash
# Mutation testing of the security-critical code with cargo-mutants: each
# mutant changes one operator or return value; a mutant no test notices is
# behaviour no test pins. Prints caught / missed / score per file and lists
# the missed ones. Equivalent mutants are excluded in .cargo/mutants.toml,
# each with its reason. Not part of CI (about an hour on 2 cores); run it
# before resolving an issue that touches these files, and record the scores
# in TESTING.md.
#
# Usage: ./scripts/mutants.sh [OUT_DIR]          # default target/mutants
#        FILES='policy/src/fqdn.rs' ./scripts/mutants.sh   # one file
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/mutants}
mkdir -p "$OUT"
command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants
# One build directory kept between runs and mutants: each baseline then
# rebuilds only the workspace's crates, not every dependency.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/mutants-build}

# package -> the files it owns that are mutated (its own tests judge them).
declare -A FILES_OF=(
  [tollgate-policy]="policy/src/*.rs"
  [tollgate-fqdn-cache]="fqdn-cache/src/*.rs"
  [tollgate-dns-proxy]="dns-proxy/src/handler.rs dns-proxy/src/answer.rs dns-proxy/src/check.rs dns-proxy/src/limits.rs"
  [tollgate-http-proxy]="http-proxy/src/check.rs http-proxy/src/normalize.rs"
  [tollgate-egress-bpf]="egress-bpf/src/desired/*.rs"
)
for pkg in "${!FILES_OF[@]}"; do
  args=()
  for f in ${FILES:-${FILES_OF[$pkg]}}; do
    case "$f" in "${FILES_OF[$pkg]%%/*}"/*) args+=(-f "$f") ;; esac
  done
  [ ${#args[@]} -gt 0 ] || continue
  echo "mutants: $pkg ${args[*]}" >&2
  # Exit status 2 means "some mutants missed": reported below, not fatal.
  # The mutated code is pure; privileged tests (egress-bpf's, root only) would
  # run per mutant and fail the baseline without root, so they are skipped.
  TOLLGATE_SKIP_PRIVILEGED=1 cargo mutants --package "$pkg" "${args[@]}" -o "$OUT/$pkg" --timeout 180 >"$OUT.$pkg.log" 2>&1 || true
done

python3 - "$OUT" <<'PY'
import json, pathlib, sys, collections
out = pathlib.Path(sys.argv[1])
per_file = collections.defaultdict(collections.Counter)
missed = []
for f in sorted(out.glob("*/mutants.out/outcomes.json")):
    for o in json.load(open(f))["outcomes"]:
        m = o["scenario"].get("Mutant") if isinstance(o["scenario"], dict) else None
        if not m:
            continue
        per_file[m["file"]][o["summary"]] += 1
        if o["summary"] == "MissedMutant":
            missed.append(m["name"])
print(f"{'file':45} {'caught':>6} {'missed':>6} {'timeout':>7} {'unviable':>8} {'score':>6}")
for file, c in sorted(per_file.items()):
    viable = c["CaughtMutant"] + c["MissedMutant"] + c["Timeout"]
    score = 100.0 * (c["CaughtMutant"] + c["Timeout"]) / viable if viable else 100.0
    print(f"{file:45} {c['CaughtMutant']:6} {c['MissedMutant']:6} {c['Timeout']:7} {c['Unviable']:8} {score:5.1f}%")
if missed:
    print("\nmissed:")
    for name in missed:
        print("  " + name)
PY
