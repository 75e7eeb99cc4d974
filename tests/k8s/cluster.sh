#!/usr/bin/env bash
# Starts a real Kubernetes control plane on loopback for the tests: etcd, kube-apiserver (token
# authentication, RBAC, service-account token signing), a kube-controller-manager with the Job,
# Deployment, ReplicaSet, disruption (PodDisruptionBudget), TTL-after-finished, garbage-collector,
# namespace, pod-GC, node-lifecycle and service-account
# controllers, and kube-scheduler. No kubelet: tests/node-agent plays the nodes.
#
#   eval "$(tests/k8s/cluster.sh start)"   # exports KUBECONFIG, PROOFJOBS_K8S_DIR, PATH (kubectl)
#   tests/k8s/cluster.sh stop
#
# The binaries come from tests/k8s/build-control-plane.sh (built once, cached outside the repo).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
DIR=${PROOFJOBS_K8S_DIR:-/tmp/proofjobs-k8s}
ETCD_PORT=${PROOFJOBS_ETCD_PORT:-52379}
API_PORT=${PROOFJOBS_APISERVER_PORT:-56443}

ready() {
  [ -f "$DIR/admin.token" ] || return 1
  curl -fsk --max-time 2 -H "Authorization: Bearer $(cat "$DIR/admin.token")" "https://127.0.0.1:$API_PORT/readyz" >/dev/null 2>&1
}

pki() {
  mkdir -p "$DIR/pki"
  cd "$DIR/pki"
  [ -f ca.crt ] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=proofjobs-test-ca" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc\n' > san.ext
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt -days 3650 -extfile san.ext 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  cd - >/dev/null
}

token() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

kubeconfig() { # file token
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: proofjobs-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority: $DIR/pki/ca.crt
users:
- name: user
  user:
    token: $2
contexts:
- name: proofjobs-test
  context: {cluster: proofjobs-test, user: user, namespace: default}
current-context: proofjobs-test
EOF
}

start() {
  local bin
  bin=$("$here/build-control-plane.sh")
  mkdir -p "$DIR/etcd"
  if ! ready; then
    stop_processes
    pki
    if ! [ -f "$DIR/tokens.csv" ]; then
      local admin kcm sched
      admin=$(token); kcm=$(token); sched=$(token)
      {
        echo "$admin,admin,admin,system:masters"
        echo "$kcm,system:kube-controller-manager,kcm"
        echo "$sched,system:kube-scheduler,scheduler"
      } > "$DIR/tokens.csv"
      echo "$admin" > "$DIR/admin.token"
      kubeconfig "$DIR/admin.kubeconfig" "$admin"
      kubeconfig "$DIR/kcm.kubeconfig" "$kcm"
      kubeconfig "$DIR/scheduler.kubeconfig" "$sched"
    fi
    "$bin/etcd" --data-dir "$DIR/etcd" --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
      --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
      --unsafe-no-fsync --quota-backend-bytes 2147483648 >"$DIR/etcd.log" 2>&1 &
    echo $! > "$DIR/etcd.pid"
    "$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" --bind-address 127.0.0.1 \
      --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
      --tls-cert-file "$DIR/pki/apiserver.crt" --tls-private-key-file "$DIR/pki/apiserver.key" \
      --client-ca-file "$DIR/pki/ca.crt" --token-auth-file "$DIR/tokens.csv" --authorization-mode RBAC \
      --service-account-issuer https://kubernetes.default.svc --service-account-key-file "$DIR/pki/sa.pub" \
      --service-account-signing-key-file "$DIR/pki/sa.key" --service-cluster-ip-range 10.96.0.0/16 \
      --kubelet-preferred-address-types Hostname,InternalIP --profiling=false \
      --enable-priority-and-fairness=false >"$DIR/apiserver.log" 2>&1 &
    echo $! > "$DIR/apiserver.pid"
    for _ in $(seq 120); do ready && break; sleep 0.5; done
    ready || { echo "kube-apiserver did not become ready; see $DIR/apiserver.log" >&2; tail -20 "$DIR/apiserver.log" >&2; exit 1; }
    "$bin/kube-controller-manager" --kubeconfig "$DIR/kcm.kubeconfig" --leader-elect=false \
      --controllers job-controller,deployment-controller,replicaset-controller,disruption-controller,ttl-after-finished-controller,garbage-collector-controller,namespace-controller,pod-garbage-collector-controller,node-lifecycle-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller \
      --service-account-private-key-file "$DIR/pki/sa.key" --root-ca-file "$DIR/pki/ca.crt" --use-service-account-credentials \
      --secure-port 0 --concurrent-job-syncs 10 --terminated-pod-gc-threshold 500 >"$DIR/kcm.log" 2>&1 &
    echo $! > "$DIR/kcm.pid"
    "$bin/kube-scheduler" --kubeconfig "$DIR/scheduler.kubeconfig" --leader-elect=false \
      --secure-port 0 >"$DIR/scheduler.log" 2>&1 &
    echo $! > "$DIR/scheduler.pid"
    # The default ServiceAccount appears once the controller-manager runs: pods need it.
    for _ in $(seq 120); do
      KUBECONFIG="$DIR/admin.kubeconfig" "$bin/kubectl" get serviceaccount default >/dev/null 2>&1 && break
      sleep 0.5
    done
    KUBECONFIG="$DIR/admin.kubeconfig" "$bin/kubectl" get serviceaccount default >/dev/null \
      || { echo "kube-controller-manager did not come up; see $DIR/kcm.log" >&2; tail -20 "$DIR/kcm.log" >&2; exit 1; }
  fi
  echo "export KUBECONFIG=$DIR/admin.kubeconfig"
  echo "export PROOFJOBS_K8S_DIR=$DIR"
  echo "export PROOFJOBS_K8S_BIN=$bin"
  echo "export PATH=$bin:\$PATH"
}

stop_processes() {
  for p in scheduler kcm apiserver etcd; do
    if [ -f "$DIR/$p.pid" ]; then
      kill "$(cat "$DIR/$p.pid")" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$(cat "$DIR/$p.pid")" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$(cat "$DIR/$p.pid")" 2>/dev/null || true
      rm -f "$DIR/$p.pid"
    fi
  done
}

case "${1:-start}" in
  start) start ;;
  stop) stop_processes ;;
  # A fresh cluster: state and credentials removed.
  reset) stop_processes; rm -rf "$DIR" ;;
  *) echo "usage: $0 start|stop|reset" >&2; exit 64 ;;
esac
