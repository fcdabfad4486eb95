#!/usr/bin/env bash
# What the tests leave behind: processes, network namespaces, links, bpffs
# pins, nftables tables, policy-routing rules and routes, the sysctls the
# tests change, and their files (/etc/netns, $TMPDIR/tg*).
#
# Usage: sudo ./scripts/check-leftovers.sh snapshot FILE   # before the tests
#        sudo ./scripts/check-leftovers.sh check FILE      # after: lists what is
#                                                          # new and exits 1 if any
#
# Only what is new since the snapshot counts: whatever existed before the
# run (and a sysctl that already had its value) is never reported.
#
# A process is left over when it started after the snapshot, is still
# running, nothing that started during the run owns it any more (it is the
# top of an orphaned tree), and it came from the tests: it is one of their
# helpers (kube-apiserver, etcd, nsd, python3, tollgate, ...), or it was
# adopted by PID 1 and carries the CARGO_PKG_NAME=tollgate* that cargo
# gives test binaries and their children inherit (a leaked `sleep`). The
# session's own tools (cargo, rustc, the shell) are this script's
# ancestors, or gone, or still owned, and not helpers: never reported;
# nor are other users' jobs on a shared machine.
#
# TOLLGATE_LEFTOVER_IGNORE: an extended regex; processes ("comm cmdline")
# and objects ("KIND VALUE", e.g. "netns other-") matching it are never
# reported (what other users create meanwhile on a shared machine).
#
# `check` waits up to 10 s for things to go away (a killed process is reaped
# asynchronously) before it reports them.
set -euo pipefail

# The sysctls the suites set (testkit's Sandbox; demo.sh and the benchmark
# scripts set ip_forward too). The
# suites set them inside their own namespaces; a value changed here means a
# test escaped into the machine's namespace.
SYSCTLS=(
  net.ipv4.ip_forward
  net.ipv6.conf.all.forwarding
  net.ipv6.conf.all.accept_dad
  net.ipv6.conf.default.accept_dad
)
# Executables of the helpers the suites and benchmarks start.
HELPERS='^(kube-apiserver|etcd|nsd|python3?|tollgate|nginx|iperf3|unbound|dnsmasq|wrk|dnsperf)$'
IGNORE=${TOLLGATE_LEFTOVER_IGNORE:-}

# One line per kernel object or file, "KIND VALUE": everything but processes.
objects() {
  ip netns list 2>/dev/null | awk '{print "netns " $1}'
  ip -o link show 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print "link " $2}'
  if [ -d /sys/fs/bpf ]; then
    find /sys/fs/bpf -mindepth 1 -maxdepth 3 2>/dev/null | sed 's/^/pin /'
  fi
  nft list tables 2>/dev/null | sed 's/^/nft /'
  ip rule show 2>/dev/null | sed 's/^/rule /'
  ip -6 rule show 2>/dev/null | sed 's/^/rule6 /'
  # Routes of policy-routing tables (not main, not local): the proxies' table.
  ip route show table all 2>/dev/null | grep ' table ' | grep -v -e ' table local' -e ' table main' | sed 's/^/route /' || true
  ip -6 route show table all 2>/dev/null | grep ' table ' | grep -v -e ' table local' -e ' table main' | sed 's/^/route6 /' || true
  for s in "${SYSCTLS[@]}"; do
    echo "sysctl $s=$(sysctl -n "$s" 2>/dev/null || echo '?')"
  done
  for f in /etc/netns/* "${TMPDIR:-/tmp}"/tg*; do
    [ -e "$f" ] && echo "file $f"
  done
  return 0
}

# "PID PPID STARTTIME COMM" for every process (kernel threads excluded).
processes() {
  local stat rest p
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    read -r stat 2>/dev/null < "/proc/$p/stat" || continue
    rest=${stat##*) }
    # shellcheck disable=SC2086
    set -- $rest
    # $2 = ppid, $20 = starttime (fields 4 and 22 of stat). Kernel threads
    # are children of kthreadd (2), or kthreadd itself.
    [ "$p" = 2 ] || [ "$2" = 2 ] && continue
    local comm=${stat#*(}
    comm=${comm%) *}
    echo "$p $2 ${20} ${comm// /_}"
  done
}

cmdline() {
  { tr '\0' ' ' < "/proc/$1/cmdline"; } 2>/dev/null
}

snapshot() {
  local file=$1
  {
    objects | sed 's/^/obj /'
    processes | sed 's/^/proc /'
  } > "$file"
}

# Whether process $1 was started by a test: cargo runs test binaries with
# CARGO_PKG_NAME set, and every process they start inherits it.
from_tests() {
  { tr '\0' '\n' < "/proc/$1/environ"; } 2>/dev/null | grep -q '^CARGO_PKG_NAME=tollgate'
}

# Leftover processes, one "pid ppid comm: cmdline" line each.
leftover_processes() {
  local file=$1
  declare -A old=() start=() parent=() name=() mine=()
  local pid ppid st comm
  while read -r _ pid _ st _; do
    old["$pid:$st"]=1
  done < <(grep '^proc ' "$file")
  while read -r pid ppid st comm; do
    start[$pid]=$st
    parent[$pid]=$ppid
    name[$pid]=$comm
  done < <(processes)
  # This script and its ancestors.
  pid=$$
  while [ -n "$pid" ] && [ "$pid" != 0 ]; do
    mine[$pid]=1
    pid=${parent[$pid]:-}
  done
  for pid in "${!start[@]}"; do
    [ -z "${old["$pid:${start[$pid]}"]:-}" ] || continue # existed before
    [ -z "${mine[$pid]:-}" ] || continue
    # Only the top of an orphaned tree: a process above it that started
    # during the run and still runs owns it (or is this script, or is the
    # leftover that gets reported).
    local up=${parent[$pid]} owned='' line
    while [ -n "$up" ] && [ "$up" != 0 ] && [ "$up" != 1 ]; do
      if [ "$up" = $$ ] || { [ -n "${start[$up]:-}" ] && [ -z "${old["$up:${start[$up]}"]:-}" ] && [ -z "${mine[$up]:-}" ]; }; then
        owned=1
        break
      fi
      up=${parent[$up]:-}
    done
    [ -z "$owned" ] || continue
    [ -e "/proc/$pid" ] || continue # gone meanwhile
    line="${name[$pid]} $(cmdline "$pid")"
    if [ -n "$IGNORE" ] && [[ $line =~ $IGNORE ]]; then
      continue
    fi
    # Orphaned (adopted by init): anything from the tests. Under an older
    # process (a subreaper, or a build that was already running, whose
    # compilers carry CARGO_PKG_NAME too): only the helpers.
    if [[ ${name[$pid]} =~ $HELPERS ]] || { [ "${parent[$pid]}" = 1 ] && from_tests "$pid"; }; then
      echo "$pid ${parent[$pid]} ${name[$pid]}: ${line#* }" | cut -c1-240
    fi
  done | sort -n
}

leftover_objects() {
  local file=$1
  # New lines only; a changed sysctl shows as its new value.
  comm -13 <(grep '^obj ' "$file" | cut -c5- | sort -u) <(objects | sort -u) |
    while read -r kind value; do
      if [ -n "$IGNORE" ] && [[ "$kind $value" =~ $IGNORE ]]; then
        continue
      fi
      if [ "$kind" = sysctl ]; then
        local before
        before=$(grep "^obj sysctl ${value%%=*}=" "$file" | cut -d= -f2-)
        echo "sysctl ${value%%=*}: $before -> ${value#*=}"
      else
        echo "$kind $value"
      fi
    done
}

check() {
  local file=$1 procs objs
  [ -s "$file" ] || { echo "check-leftovers: no snapshot at $file" >&2; exit 2; }
  for _ in $(seq 1 20); do
    procs=$(leftover_processes "$file")
    objs=$(leftover_objects "$file")
    [ -z "$procs$objs" ] && break
    sleep 0.5
  done
  if [ -z "$procs$objs" ]; then
    echo "check-leftovers: nothing left over"
    return 0
  fi
  echo "check-leftovers: the tests left these behind:"
  [ -z "$procs" ] || { echo "  processes (pid ppid command):"; echo "$procs" | sed 's/^/    /'; }
  [ -z "$objs" ] || echo "$objs" | sed 's/^/  /'
  return 1
}

case "${1:-}" in
  snapshot) snapshot "${2:?usage: check-leftovers.sh snapshot FILE}" ;;
  check) check "${2:?usage: check-leftovers.sh check FILE}" ;;
  *) echo "usage: check-leftovers.sh snapshot|check FILE" >&2; exit 2 ;;
esac
