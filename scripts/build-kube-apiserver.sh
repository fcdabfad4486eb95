#!/usr/bin/env bash
# Builds (once, cached) the real kube-apiserver the Kubernetes-mode tests run
# against and prints its path. The recipe is scripts/build-kube.sh; see
# docs/kube-test-env.md.
#
# Usage: sudo ./scripts/build-kube-apiserver.sh   -> prints the binary's path
exec "$(dirname "$0")/build-kube.sh" kube-apiserver
