#!/usr/bin/env bash
# Builds Kubernetes 1.20.2 components offline from Debian bookworm's source
# package (every Go dependency vendored) and caches them outside the
# repository. Rebuilds only what is missing. Why and how:
# docs/kube-test-env.md (the API server) and docs/realnode.md (the node).
# Needs root for apt; the first build takes ~10 min, each further component
# a minute or two (the Go build cache is shared).
#
# Usage: sudo ./scripts/build-kube.sh [COMPONENT...]   -> prints each binary's path
#   COMPONENT: kube-apiserver (default), kube-controller-manager,
#   kube-scheduler, kubelet, kube-proxy, kubectl, or pause (the pod sandbox's
#   PID 1, build/pause/linux/pause.c from the same tree, static C).
set -euo pipefail
CACHE=${TOLLGATE_KUBE_CACHE:-/var/cache/tollgate/kube-1.20.2}
COMPONENTS=("$@")
((${#COMPONENTS[@]})) || COMPONENTS=(kube-apiserver)
log() { echo "build-kube: $*" >&2; }

for c in "${COMPONENTS[@]}"; do
  case $c in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubelet|kube-proxy|kubectl|pause) ;;
    *) log "unknown component '$c'"; exit 2 ;;
  esac
done

# A cached Go binary counts only if it says it is v1.20.2.
built() {
  local bin="$CACHE/bin/$1"
  case $1 in
    pause) [ -x "$bin" ] && "$bin" -v 2>/dev/null | grep -q v1.20.2 ;;
    kubectl) [ -x "$bin" ] && "$bin" version --client 2>/dev/null | grep -q v1.20.2 ;;
    *) [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q v1.20.2 ;;
  esac
}
missing=()
for c in "${COMPONENTS[@]}"; do built "$c" || missing+=("$c"); done
if ((${#missing[@]} == 0)); then
  for c in "${COMPONENTS[@]}"; do echo "$CACHE/bin/$c"; done
  exit 0
fi

mkdir -p "$CACHE/bin" "$CACHE/src" "$CACHE/apt/lists/partial" "$CACHE/apt/archives/partial" "$CACHE/apt/sources.list.d"
# One build at a time per cache (tests and realnode.sh may start together).
exec 9>"$CACHE/.build.lock"
flock 9

if [ ! -x /usr/lib/go-1.19/bin/go ] || ! command -v etcd >/dev/null 2>&1; then
  log "installing golang-1.19-go etcd-server"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-1.19-go etcd-server >&2
fi

# The source package, through apt's own client with a private config so the
# system's sources stay untouched.
if [ ! -d "$CACHE/src/kubernetes-1.20.2" ] && ! ls "$CACHE"/src/kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
  cat > "$CACHE/apt/sources.list.d/src.sources" <<'SOURCES'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  APT=(-o "Dir::Etc::SourceParts=$CACHE/apt/sources.list.d" -o "Dir::Etc::SourceList=/dev/null"
       -o "Dir::State::Lists=$CACHE/apt/lists" -o "Dir::Cache=$CACHE/apt")
  log "fetching the kubernetes source package"
  apt-get "${APT[@]}" update -qq >&2
  (cd "$CACHE/src" && apt-get "${APT[@]}" source --download-only kubernetes >&2)
fi
if [ ! -d "$CACHE/src/kubernetes-1.20.2" ]; then
  # Debian names it 1.20.5+really1.20.2; the code is 1.20.2.
  orig=$(ls "$CACHE"/src/kubernetes_*.orig.tar.gz | head -1)
  top=$(set +o pipefail; tar -tzf "$orig" | head -1 | cut -d/ -f1)
  tar -C "$CACHE/src" -xzf "$orig"
  [ "$top" = kubernetes-1.20.2 ] || mv "$CACHE/src/$top" "$CACHE/src/kubernetes-1.20.2"
fi
SRC="$CACHE/src/kubernetes-1.20.2"
[ -d "$SRC/vendor" ] || { log "no vendored source under $SRC"; ls "$CACHE/src" >&2; exit 1; }

# reflect2 1.0.1 segfaults under Go 1.19 on the first CRD request: use Debian's.
if [ ! -f "$CACHE/reflect2.replaced" ]; then
  log "replacing vendored modern-go/reflect2"
  (cd "$CACHE" && apt-get download golang-github-modern-go-reflect2-dev >&2 && dpkg -x golang-github-modern-go-reflect2-dev_*.deb "$CACHE/reflect2")
  rm -rf "$SRC/vendor/github.com/modern-go/reflect2"
  cp -r "$CACHE"/reflect2/usr/share/gocode/src/github.com/modern-go/reflect2 "$SRC/vendor/github.com/modern-go/reflect2"
  rm -f "$SRC/vendor/github.com/modern-go/reflect2/go.mod"
  touch "$CACHE/reflect2.replaced"
fi

# GOFLAGS=-p=1 by default: the machines this runs on are small and shared.
export GO111MODULE=off CGO_ENABLED=0 GOPATH="$CACHE/gopath" GOCACHE="$CACHE/gocache" PATH="/usr/lib/go-1.19/bin:$PATH"
export GOFLAGS=${GOFLAGS:--p=1}
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$SRC" "$GOPATH/src/k8s.io/kubernetes"
cd "$GOPATH/src/k8s.io/kubernetes"

# Vendored packages keep their k8s.io/kubernetes/vendor/ path here (GOPATH
# mode); the generator strips that prefix from the names it emits. Most of
# vendor/k8s.io/* are symlinks into staging/: grep -R follows them.
if ! grep -q 'apiextensions/v1.CustomResourceDefinition"' pkg/generated/openapi/zz_generated.openapi.go 2>/dev/null; then
  log "generating OpenAPI definitions"
  go build -o "$CACHE/bin/openapi-gen" k8s.io/kubernetes/vendor/k8s.io/kube-openapi/cmd/openapi-gen
  pkgs=$(grep -Rl --include='*.go' '+k8s:openapi-gen=' pkg cmd plugin vendor 2>/dev/null \
    | grep -v -e '^vendor/k8s.io/code-generator' -e 'sample-apiserver' -e '/testdata/' \
    | xargs -n1 dirname | sort -u | sed 's|^|k8s.io/kubernetes/|' \
    | paste -sd, -)
  "$CACHE/bin/openapi-gen" --input-dirs "$pkgs" \
    --output-package k8s.io/kubernetes/pkg/generated/openapi --output-base "$GOPATH/src" \
    --go-header-file vendor/k8s.io/code-generator/hack/boilerplate.go.txt -O zz_generated.openapi \
    --report-filename /dev/null >&2
fi

# The version stamp: without it binaries report v0.0.0-master.
V=k8s.io/kubernetes/vendor/k8s.io/component-base/version
LDFLAGS="-X $V.gitVersion=v1.20.2 -X $V.gitMajor=1 -X $V.gitMinor=20 -X $V.gitTreeState=clean"
for c in "${missing[@]}"; do
  # Another build may have made it while this one waited for the lock.
  built "$c" && continue
  start=$(date +%s)
  log "building $c"
  rm -f "$CACHE/bin/$c"
  if [ "$c" = pause ]; then
    cc -Os -static -Wall -DVERSION=v1.20.2 -o "$CACHE/bin/pause" build/pause/linux/pause.c
  else
    go build -o "$CACHE/bin/$c" -ldflags "$LDFLAGS" "k8s.io/kubernetes/cmd/$c"
  fi
  log "built $c in $(($(date +%s) - start)) s"
done
for c in "${COMPONENTS[@]}"; do echo "$CACHE/bin/$c"; done
