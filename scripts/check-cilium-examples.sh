#!/bin/sh
# How much of Cilium's own policy YAML does `tollgate policy check` accept?
#
#   scripts/check-cilium-examples.sh DIR [TOLLGATE]
#
# DIR: a checkout (or any copy) of Cilium's repository, or any directory of
# YAML files. Every *.yaml / *.yml under DIR/examples, DIR/Documentation and
# the connectivity-check manifests (or under DIR itself if none of those
# exist) is split into documents; each document whose kind is
# CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy or
# CiliumCIDRGroup is checked on its own (Helm templates and files that are
# not YAML are skipped). Prints one line per rejected document and a summary:
# how many were accepted, how many rejected, grouped by the first reason.
# Nothing is written outside a temporary directory; Cilium's files are
# never copied into this repository.
set -eu
dir=${1:?usage: $0 CILIUM_DIR [TOLLGATE]}
tollgate=${2:-$(dirname "$0")/../target/debug/tollgate}
[ -x "$tollgate" ] || { echo "no tollgate binary at $tollgate (cargo build first, or pass it)" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

roots=""
for r in examples Documentation test/k8s/manifests/connectivity-check \
         examples/kubernetes/connectivity-check \
         cilium-cli/connectivity/builder/manifests; do
    [ -d "$dir/$r" ] && roots="$roots $dir/$r"
done
[ -n "$roots" ] || roots=$dir

# shellcheck disable=SC2086
find $roots -type f \( -name '*.yaml' -o -name '*.yml' \) | sort -u > "$work/files"

python3 - "$work" <<'EOF'
import os, re, sys
work = sys.argv[1]
kinds = re.compile(r'^kind:\s*"?(CiliumNetworkPolicy|CiliumClusterwideNetworkPolicy|NetworkPolicy|CiliumCIDRGroup)"?\s*$', re.M)
n = 0
with open(os.path.join(work, "files")) as files:
    for path in (l.strip() for l in files):
        try:
            text = open(path, encoding="utf-8").read()
        except (OSError, UnicodeDecodeError):
            continue
        if "{{" in text:  # Helm or Jinja templates are not policies yet
            continue
        for i, doc in enumerate(re.split(r'^---[^\n]*\n', text, flags=re.M)):
            if not kinds.search(doc):
                continue
            n += 1
            out = os.path.join(work, "doc-%04d.yaml" % n)
            with open(out, "w") as f:
                f.write(doc)
            with open(os.path.join(work, "index"), "a") as idx:
                idx.write("%s\t%s#%d\n" % (out, path, i + 1))
EOF

[ -f "$work/index" ] || { echo "no policy documents under $dir"; exit 0; }
accepted=0
rejected=0
: > "$work/reasons"
while IFS="$(printf '\t')" read -r doc origin; do
    if "$tollgate" policy check "$doc" > /dev/null 2> "$work/err"; then
        accepted=$((accepted + 1))
    else
        rejected=$((rejected + 1))
        first=$(grep '^error: ' "$work/err" | head -1 | sed "s|$doc: ||")
        echo "REJECTED ${origin#"$dir"/}: $first"
        # Group by what is wrong, not where: drop the file, policy and
        # field path, and quoted values.
        echo "$first" | sed -E 's/^error: (policy [^:]*: )?//; s/^[][A-Za-z0-9_.]+: //; s/"[^"]*"/"…"/g; s/[0-9]+(\.[0-9]+)+(\/[0-9]+)?/N/g' >> "$work/reasons"
    fi
done < "$work/index"
total=$((accepted + rejected))
echo
echo "policy documents: $total, accepted: $accepted, rejected: $rejected"
if [ "$rejected" -gt 0 ]; then
    echo "rejections by reason:"
    sort "$work/reasons" | uniq -c | sort -rn
fi
