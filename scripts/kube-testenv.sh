#!/usr/bin/env bash
# Starts a real etcd + kube-apiserver on loopback for Kubernetes-mode tests
# (see docs/kube-test-env.md) and writes a kubeconfig (admin)
# and agent.kubeconfig (user tollgate-agent, no rights until bound).
#
# Usage: sudo ./scripts/kube-testenv.sh DIR   # prints DIR/kubeconfig; PIDs in DIR/pids
# Stop:  kill $(cat DIR/pids)
#
#        sudo ./scripts/kube-testenv.sh --prepare DIR
# only writes the certificates, the kubeconfigs and DIR/run-etcd.sh and
# DIR/run-apiserver.sh, each of which execs its server in the foreground.
# The tests run those as their own child processes (testkit's ApiServer), so
# the servers stop with the test, and a test can kill and restart the API
# server (same certificates, same etcd) to check that clients reconnect.
#
# The real node (scripts/realnode.sh) starts its control plane with this
# script too, with: API_ADDRESS (listen, certificate and kubeconfig address;
# default 127.0.0.1), ADVERTISE_ADDRESS (the `kubernetes` Service's endpoint),
# EXTRA_SANS (more subjectAltNames, e.g. the Service IP), SERVICE_ACCOUNTS=1
# (keep the ServiceAccount admission plugin: a controller manager runs) and
# APISERVER_ARGS (more flags).
set -euo pipefail
PREPARE=
if [ "${1:-}" = --prepare ]; then
  PREPARE=1
  shift
fi
DIR=${1:?usage: kube-testenv.sh [--prepare] DIR}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
cd "$(dirname "$0")/.."
APISERVER=$(./scripts/build-kube-apiserver.sh)
command -v kubectl >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >&2
ETCD_PORT=${ETCD_PORT:-2379}
API_PORT=${API_PORT:-6443}
API_ADDRESS=${API_ADDRESS:-127.0.0.1}
ADVERTISE_ADDRESS=${ADVERTISE_ADDRESS:-10.255.255.1}
SANS="IP:$API_ADDRESS,DNS:localhost${EXTRA_SANS:+,$EXTRA_SANS}"
ADMISSION="--disable-admission-plugins ServiceAccount"
[ "${SERVICE_ACCOUNTS:-0}" = 1 ] && ADMISSION=""

# CA and serving certificate for API_ADDRESS (and EXTRA_SANS); a service-account key pair.
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=tollgate-test-ca" \
  -keyout "$DIR/ca.key" -out "$DIR/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout "$DIR/apiserver.key" -out "$DIR/apiserver.csr" 2>/dev/null
printf 'subjectAltName=%s\n' "$SANS" > "$DIR/san.ext"
openssl x509 -req -in "$DIR/apiserver.csr" -CA "$DIR/ca.crt" -CAkey "$DIR/ca.key" -CAcreateserial -days 2 \
  -extfile "$DIR/san.ext" -out "$DIR/apiserver.crt" 2>/dev/null
openssl genrsa -out "$DIR/sa.key" 2048 2>/dev/null
openssl rsa -in "$DIR/sa.key" -pubout -out "$DIR/sa.pub" 2>/dev/null
TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
AGENT_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
# admin for the test; tollgate-agent has no rights until bound (tests bind it
# to deploy/'s ClusterRole to prove the agent needs nothing more).
echo "$TOKEN,admin,admin,system:masters" > "$DIR/tokens.csv"
echo "$AGENT_TOKEN,tollgate-agent,tollgate-agent" >> "$DIR/tokens.csv"

cat > "$DIR/run-etcd.sh" <<EOF
#!/bin/sh
exec etcd --data-dir "$DIR/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \\
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls http://127.0.0.1:0
EOF
cat > "$DIR/run-apiserver.sh" <<EOF
#!/bin/sh
exec "$APISERVER" --etcd-servers "http://127.0.0.1:$ETCD_PORT" --bind-address "$API_ADDRESS" --secure-port "$API_PORT" \\
  --advertise-address "$ADVERTISE_ADDRESS" --tls-cert-file "$DIR/apiserver.crt" --tls-private-key-file "$DIR/apiserver.key" \\
  --client-ca-file "$DIR/ca.crt" --token-auth-file "$DIR/tokens.csv" --authorization-mode RBAC \\
  --service-account-key-file "$DIR/sa.pub" --service-account-signing-key-file "$DIR/sa.key" \\
  --service-account-issuer https://kubernetes.default.svc --service-cluster-ip-range 10.96.0.0/16 \\
  $ADMISSION ${APISERVER_ARGS:-}
EOF
chmod +x "$DIR/run-etcd.sh" "$DIR/run-apiserver.sh"

cat > "$DIR/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "https://$API_ADDRESS:$API_PORT", certificate-authority: "$DIR/ca.crt"}}]
users: [{name: admin, user: {token: "$TOKEN"}}]
contexts: [{name: test, context: {cluster: test, user: admin}}]
current-context: test
EOF
sed -e "s/$TOKEN/$AGENT_TOKEN/" -e "s/name: admin/name: agent/g; s/user: admin/user: agent/" \
  "$DIR/kubeconfig" > "$DIR/agent.kubeconfig"
[ -z "$PREPARE" ] || exit 0

"$DIR/run-etcd.sh" > "$DIR/etcd.log" 2>&1 &
echo $! > "$DIR/pids"
"$DIR/run-apiserver.sh" >> "$DIR/apiserver.log" 2>&1 &
echo $! >> "$DIR/pids"
for _ in $(seq 1 100); do
  if kubectl --kubeconfig "$DIR/kubeconfig" get --raw /readyz >/dev/null 2>&1; then
    echo "$DIR/kubeconfig"
    exit 0
  fi
  sleep 0.2
done
echo "kube-apiserver did not become ready; see $DIR/apiserver.log" >&2
tail -20 "$DIR/apiserver.log" >&2
exit 1
