#!/usr/bin/env bash
# Starts (and stops) the test suite's real Kubernetes control plane on loopback: etcd,
# kube-apiserver (Node,RBAC authorization, PodSecurity admission, service-account tokens),
# kube-controller-manager and kube-scheduler, built by build-control-plane.sh. Certificates and
# the service-account signing key are made here with openssl, fresh for every cluster.
#
# Usage:
#   ops/kubernetes/cluster.sh up DIR     starts a cluster whose files live in DIR; prints
#                                        `export KUBECONFIG=DIR/admin.kubeconfig` when it is ready
#   ops/kubernetes/cluster.sh down DIR   stops what `up DIR` started (safe to call twice)
#
# DIR/admin.kubeconfig signs in as cluster admin (system:masters): the test harness uses it to
# make namespaces and the chart's RBAC, never to run the orchestrator, which signs in as the
# chart's ServiceAccount. DIR/env holds the addresses, for scripts. Logs: DIR/logs/*.log.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
say() { echo "cluster.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

cmd="${1:-}"
dir="${2:-}"
[[ "$cmd" == up || "$cmd" == down ]] && [[ -n "$dir" ]] || die "usage: $0 up|down DIR"

stop_all() {
    local d="$1" pid
    [[ -d "$d/pids" ]] || return 0
    for f in "$d"/pids/*; do
        [[ -f "$f" ]] || continue
        pid="$(cat "$f")"
        kill "$pid" 2>/dev/null || true
    done
    for f in "$d"/pids/*; do
        [[ -f "$f" ]] || continue
        pid="$(cat "$f")"
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$f"
    done
}

if [[ "$cmd" == down ]]; then
    stop_all "$dir"
    say "stopped the cluster in $dir"
    exit 0
fi

bin="$("$repo/ops/kubernetes/build-control-plane.sh" | tail -1)"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
stop_all "$dir"
rm -rf "$dir/pki" "$dir/etcd" "$dir/logs" "$dir/pids"
mkdir -p "$dir/pki" "$dir/etcd" "$dir/logs" "$dir/pids"
chmod 700 "$dir/pki" "$dir/etcd"

# A free loopback port: bound and released at once; the window before the server binds it is
# small, and a clash shows as that server failing to start, named below.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
etcd_port="$(free_port)"; etcd_peer="$(free_port)"; api_port="$(free_port)"
cm_port="$(free_port)"; sched_port="$(free_port)"

# --- certificates -------------------------------------------------------------------------------
pki="$dir/pki"
ssl() { openssl "$@" 2>>"$dir/logs/openssl.log" || die "openssl $1 failed; see $dir/logs/openssl.log"; }
ssl ecparam -name prime256v1 -genkey -noout -out "$pki/ca.key"
ssl req -x509 -new -key "$pki/ca.key" -sha256 -days 2 -subj "/CN=pumphouse-test-ca" -out "$pki/ca.crt"
# cert NAME SUBJECT [SAN]: a key and a certificate signed by the CA (client and server use).
cert() {
    local name="$1" subj="$2" san="${3:-}" ext="$pki/$1.ext"
    ssl ecparam -name prime256v1 -genkey -noout -out "$pki/$name.key"
    ssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=serverAuth,clientAuth"
        [[ -n "$san" ]] && echo "subjectAltName=$san"
    } >"$ext"
    ssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
        -days 2 -sha256 -extfile "$ext" -out "$pki/$name.crt"
}
# The node's address (node.sh's PUMPHOUSE_TEST_NODE_IP) too: with no kube-proxy, a pod that
# talks to the API server (the chart's orchestrator) goes through a relay the test listens
# with there.
cert apiserver "/CN=kube-apiserver" \
    "IP:127.0.0.1,IP:${PUMPHOUSE_TEST_NODE_IP:-10.255.255.1},IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert admin "/O=system:masters/CN=pumphouse-test-admin"
cert apiserver-kubelet-client "/O=kube-apiserver-kubelet-client/CN=kube-apiserver-kubelet-client"
cert controller-manager "/CN=system:kube-controller-manager"
cert scheduler "/CN=system:kube-scheduler"
ssl ecparam -name prime256v1 -genkey -noout -out "$pki/sa.key"
ssl ec -in "$pki/sa.key" -pubout -out "$pki/sa.pub"
chmod 600 "$pki"/*.key

server="https://127.0.0.1:$api_port"
# kubeconfig NAME: DIR/NAME.kubeconfig signing in with pki/NAME's certificate.
kubeconfig() {
    local name="$1" user="${2:-$1}"
    cat >"$dir/$user.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: pumphouse-test
  cluster:
    server: $server
    certificate-authority: $pki/ca.crt
users:
- name: $user
  user:
    client-certificate: $pki/$name.crt
    client-key: $pki/$name.key
contexts:
- name: $user
  context:
    cluster: pumphouse-test
    user: $user
current-context: $user
EOF
    chmod 600 "$dir/$user.kubeconfig"
}
kubeconfig admin
kubeconfig controller-manager
kubeconfig scheduler

# start NAME ARGS...: runs a component in its own process group, logging to logs/NAME.log.
start() {
    local name="$1"; shift
    setsid "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
    echo $! >"$dir/pids/$name"
}
# alive NAME: dies naming the component's log when it has exited.
alive() {
    kill -0 "$(cat "$dir/pids/$1")" 2>/dev/null \
        || die "$1 exited at start; the end of $dir/logs/$1.log:
$(tail -20 "$dir/logs/$1.log")"
}

t0=$(date +%s.%N)
# --- etcd ---------------------------------------------------------------------------------------
# fsync off: the cluster lives for one test run, and fsync is most of etcd's write latency.
start etcd "$bin/etcd" --name pumphouse-test --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "pumphouse-test=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync \
    --log-level warn
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$etcd_port/health" >/dev/null 2>&1 && break
    alive etcd; sleep 0.1
done
curl -sf "http://127.0.0.1:$etcd_port/health" >/dev/null || die "etcd did not become healthy in 10 s; see $dir/logs/etcd.log"

# --- kube-apiserver -----------------------------------------------------------------------------
# PodSecurity is on by default; namespaces opt in to `restricted` with their labels (the test
# harness labels the pumps' namespaces). The endpoint reconciler is off: the `kubernetes`
# Service cannot point at a loopback address, and nothing in the tests reaches the API server
# through it. Pods are watched from etcd itself, not the API server's watch cache: a watch
# resumed from a compacted revision then gets 410 Gone, as on a busy cluster, and a test makes
# one happen on purpose (the cache would serve the resume from its own window instead).
start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction,PodSecurity \
    --endpoint-reconciler-type none \
    --watch-cache-sizes pods#0 \
    --profiling=false --v 1
ready=""
for _ in $(seq 1 600); do
    if curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
        "$server/readyz" >/dev/null 2>&1; then ready=1; break; fi
    alive kube-apiserver; sleep 0.1
done
[[ -n "$ready" ]] || die "kube-apiserver was not ready in 60 s; see $dir/logs/kube-apiserver.log"

# --- controllers and scheduler ------------------------------------------------------------------
start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$cm_port" \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --use-service-account-credentials --leader-elect=false \
    --profiling=false --v 1
start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$dir/scheduler.kubeconfig" \
    --authentication-kubeconfig "$dir/scheduler.kubeconfig" \
    --authorization-kubeconfig "$dir/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" --leader-elect=false \
    --profiling=false --v 1
# Both are up when their health endpoints answer (anonymous /healthz is allowed by default).
for name in kube-controller-manager:$cm_port kube-scheduler:$sched_port; do
    c="${name%%:*}"; p="${name##*:}"; ok=""
    for _ in $(seq 1 300); do
        curl -sfk "https://127.0.0.1:$p/healthz" >/dev/null 2>&1 && { ok=1; break; }
        alive "$c"; sleep 0.1
    done
    [[ -n "$ok" ]] || die "$c was not healthy in 30 s; see $dir/logs/$c.log"
done

cat >"$dir/env" <<EOF
KUBECONFIG=$dir/admin.kubeconfig
PUMPHOUSE_TEST_KUBE_DIR=$dir
PUMPHOUSE_TEST_KUBE_SERVER=$server
PUMPHOUSE_TEST_KUBE_ETCD=http://127.0.0.1:$etcd_port
PUMPHOUSE_TEST_KUBE_BIN=$bin
EOF
say "control plane ready at $server in $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s (files: $dir)"
echo "export KUBECONFIG=$dir/admin.kubeconfig"
