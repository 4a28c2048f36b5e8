#!/usr/bin/env bash
# Joins one worker node to a control plane started by cluster.sh, so that real pods run: a
# private containerd (its own config, root, state and socket under DIR/node, not the system one
# dockerd uses), a bridge CNI network, a locally built pause image (images/pause) and a kubelet
# signing in with a node certificate from the cluster's CA. Nothing is pulled from a registry:
# pods must use imagePullPolicy: Never and images imported with `node.sh import`.
#
# Usage:
#   ops/kubernetes/node.sh up DIR            joins the node to the cluster in DIR (after
#                                            `cluster.sh up DIR`); returns when the Node is Ready
#   ops/kubernetes/node.sh import DIR IMAGE  copies IMAGE from the local Docker engine into the
#                                            node's containerd (e.g. pumphouse/pump:dev)
#   ops/kubernetes/node.sh down DIR          stops the node and removes what its pods left
#                                            behind (safe to call twice); run it before
#                                            `cluster.sh down DIR`
#
# The node is named after its IP (PUMPHOUSE_TEST_NODE_IP, default 10.255.255.1), an address on
# ph-node0, a bridge with no ports standing in for a dummy interface (this kernel has no dummy
# driver): the kubelet refuses a loopback node IP, and the API server dials a kubelet at its
# Hostname address, which must resolve without DNS. Pods get 10.244.0.0/24 on the bridge ph-cni0
# and reach the host at the node IP (the tests' Redis listens there); nothing is masqueraded and
# docker's FORWARD policy is DROP, so pods reach nothing beyond this machine. One node per machine
# (the interface names are fixed). DIR/env gains PUMPHOUSE_TEST_KUBE_NODE, _NODE_IP and
# _NODE_CONTAINERD (the socket, for `ctr`). Logs: DIR/logs/{containerd,kubelet}.log.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
say() { echo "node.sh: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

cmd="${1:-}"
dir="${2:-}"
image="${3:-}"
case "$cmd" in
    up | down) [[ -n "$dir" && -z "$image" ]] || die "usage: $0 up|down DIR | import DIR IMAGE" ;;
    import) [[ -n "$dir" && -n "$image" ]] || die "usage: $0 import DIR IMAGE" ;;
    *) die "usage: $0 up|down DIR | import DIR IMAGE" ;;
esac
[[ "$(id -u)" == 0 ]] || die "must run as root (it runs containerd, the kubelet and makes interfaces)"

node_ip="${PUMPHOUSE_TEST_NODE_IP:-10.255.255.1}"
node_name="$node_ip"
node_if=ph-node0
bridge=ph-cni0
pod_subnet=10.244.0.0/24
cni_net=pumphouse-node
cni_bin=/usr/lib/cni                 # Debian's containernetworking-plugins
pause_image=pumphouse/pause:dev

if [[ "$cmd" == down && ! -d "$dir" ]]; then
    say "no $dir; nothing to stop"
    exit 0
fi
[[ -d "$dir" ]] || die "no $dir; start the control plane first: ops/kubernetes/cluster.sh up $dir"
dir="$(cd "$dir" && pwd)"
n="$dir/node"
sock="$n/containerd.sock"
# The owner mark (alias) on ph-node0: which DIR's node holds the machine's fixed names.
owner="pumphouse-node:$dir"

ctr_() { ctr --address "$sock" --namespace k8s.io "$@"; }
alive() { [[ -f "$n/pids/$1" ]] && kill -0 "$(cat "$n/pids/$1")" 2>/dev/null; }

# --- import -------------------------------------------------------------------------------------
import_image() {
    local img="$1" log="$dir/logs/ctr-import.log"
    docker image inspect "$img" >/dev/null 2>&1 || die "$img is not in the local Docker engine (docker images)"
    # docker save writes a docker-archive; ctr names it docker.io/<repo>:<tag>, which is what
    # the kubelet asks for when a pod says <repo>:<tag>.
    docker save "$img" | ctr_ images import - >>"$log" 2>&1 \
        || die "importing $img into the node's containerd failed; see $log and $dir/logs/containerd.log"
}
if [[ "$cmd" == import ]]; then
    alive containerd || die "the node in $dir is not up (ops/kubernetes/node.sh up $dir)"
    import_image "$image"
    say "imported $image into the node's containerd (namespace k8s.io)"
    exit 0
fi

# --- down ---------------------------------------------------------------------------------------
# stop NAME SECS: TERM, then KILL after SECS.
stop() {
    local f="$n/pids/$1" pid
    [[ -f "$f" ]] || return 0
    pid="$(cat "$f")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 $(($2 * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$f"
}

# The containers' processes, by the kubelet's cgroups (the pids hierarchy has every one).
kill_pods() {
    local deadline=$((SECONDS + 15)) procs
    while :; do
        procs="$(cat /sys/fs/cgroup/pids/kubepods/cgroup.procs \
            $(find /sys/fs/cgroup/pids/kubepods -mindepth 1 -name cgroup.procs 2>/dev/null) 2>/dev/null || true)"
        [[ -n "$procs" ]] || return 0
        ((SECONDS < deadline)) || { say "WARNING: pod processes survived SIGKILL: $procs"; return 0; }
        kill -9 $procs 2>/dev/null || true
        sleep 0.2
    done
}

# Deleting the tasks through containerd stops their shims cleanly (each unmounts its rootfs and
# removes its socket in /run/containerd/s).
delete_tasks() {
    alive containerd || return 0
    local id
    for id in $(timeout 10 ctr_ tasks ls -q 2>/dev/null || true); do
        timeout 10 ctr_ tasks delete --force "$id" >/dev/null 2>&1 || true
    done
}

# Shims that outlived containerd anyway; they are ours when started with `-address <our
# socket>`. Their sockets' paths are in the tasks' state directories.
kill_shims() {
    local p args
    for p in "$n"/containerd/state/io.containerd.runtime.v2.task/*/*/address; do
        [[ -f "$p" ]] || continue
        args="$(cat "$p")"
        [[ "$args" == unix:///run/containerd/s/* ]] && rm -f "${args#unix://}"
    done
    for p in /proc/[0-9]*; do
        args="$(tr '\0' ' ' 2>/dev/null <"$p/cmdline")" || continue
        [[ "$args" == *containerd-shim*" -address $sock "* || "$args" == *containerd-shim*" -address $sock" ]] \
            && kill -9 "${p#/proc/}" 2>/dev/null || true
    done
}

# Everything mounted under DIR/node (containers' rootfs, sandboxes' shm and netns, the kubelet's
# volumes and its own bind mount of its root), deepest first.
unmount_all() {
    local m left
    for _ in 1 2 3; do
        left=""
        while read -r m; do
            [[ "$m" == "$n" || "$m" == "$n"/* ]] || continue
            umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || left+=" $m"
        done < <(findmnt -rn -o TARGET | awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2-)
        [[ -z "$left" ]] && return 0
    done
    say "WARNING: could not unmount:$left"
}

# The chains the kubelet makes on start (a canary, a hint for kube-proxy, and KUBE-FIREWALL's
# drop of non-loopback packets to 127/8), for IPv4 and IPv6. Only one node runs per machine.
remove_kubelet_chains() {
    local ipt t
    for ipt in iptables ip6tables; do
        command -v "$ipt" >/dev/null || continue
        for t in INPUT OUTPUT; do
            while "$ipt" -t filter -D "$t" -j KUBE-FIREWALL 2>/dev/null; do :; done
        done
        for t in filter:KUBE-FIREWALL filter:KUBE-KUBELET-CANARY nat:KUBE-KUBELET-CANARY \
            mangle:KUBE-KUBELET-CANARY mangle:KUBE-IPTABLES-HINT; do
            "$ipt" -t "${t%%:*}" -F "${t#*:}" 2>/dev/null && "$ipt" -t "${t%%:*}" -X "${t#*:}" 2>/dev/null || true
        done
    done
}

node_down() {
    [[ -d "$n" ]] || return 0
    # The pod sandboxes' ids, which name libcni's cache files in /var/lib/cni/results.
    local sandboxes
    sandboxes="$(ls "$n/containerd/root/io.containerd.grpc.v1.cri/sandboxes" 2>/dev/null || true)"
    # The interfaces, kubepods cgroups and the kubelet's iptables chains are the machine's, shared
    # by name: touch them only when this DIR's node holds them (the mark on ph-node0), or none does.
    local mark mine=1
    mark="$(ip -o link show "$node_if" 2>/dev/null | sed -n 's/.* alias \(.*\)$/\1/p')" || true
    [[ -z "$mark" || "$mark" == "$owner" ]] || mine=""
    stop kubelet 15
    if [[ -n "$mine" ]]; then kill_pods; fi
    delete_tasks
    stop containerd 10
    kill_shims
    unmount_all
    if [[ -n "$mine" ]]; then
        # The kubelet's QoS and pod cgroups, now empty.
        local c
        for c in /sys/fs/cgroup/*/kubepods; do
            [[ -d "$c" ]] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
        done
        ip link del "$bridge" 2>/dev/null || true
        ip link del "$node_if" 2>/dev/null || true
        remove_kubelet_chains
    fi
    while iptables -D FORWARD -i "$bridge" -o "$bridge" -m comment --comment "$owner" -j ACCEPT 2>/dev/null; do :; done
    # The kubelet sets these kernel tunables on start; put back what the machine had.
    if [[ -f "$n/sysctl.orig" ]]; then
        local k v
        while read -r k v; do sysctl -qw "$k=$v" >/dev/null 2>&1 || true; done <"$n/sysctl.orig"
        rm -f "$n/sysctl.orig"
    fi
    # Leftovers outside DIR at paths the kubelet and libcni hard-code: /var/log/containers
    # symlinks into DIR/node, and the CNI result cache of our sandboxes.
    local l
    for l in /var/log/containers/*.log; do
        [[ -L "$l" && "$(readlink "$l")" == "$n"/* ]] && rm -f "$l"
    done
    local id
    for id in $sandboxes; do rm -f /var/lib/cni/results/*-"$id"-* 2>/dev/null || true; done
    # The Node object keeps saying Ready for a minute after its kubelet is gone; remove it so
    # that nothing is scheduled there and the next `up` waits for a fresh Ready.
    if [[ -f "$dir/env" ]]; then
        local server
        server="$(sed -n 's/^PUMPHOUSE_TEST_KUBE_SERVER=//p' "$dir/env")"
        [[ -n "$server" && -f "$dir/pki/admin.key" ]] && curl -s -o /dev/null -m 5 -X DELETE \
            --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" \
            "$server/api/v1/nodes/$node_name" 2>/dev/null || true
        sed -i '/^PUMPHOUSE_TEST_KUBE_NODE/d' "$dir/env"
    fi
}

if [[ "$cmd" == down ]]; then
    node_down
    say "stopped the node in $dir"
    exit 0
fi

# --- up: checks ---------------------------------------------------------------------------------
[[ -f "$dir/env" && -f "$dir/pki/ca.key" ]] || die "no control plane in $dir: ops/kubernetes/cluster.sh up $dir"
bin="$(sed -n 's/^PUMPHOUSE_TEST_KUBE_BIN=//p' "$dir/env")"
server="$(sed -n 's/^PUMPHOUSE_TEST_KUBE_SERVER=//p' "$dir/env")"
[[ -x "$bin/kubelet" ]] || die "no kubelet in '$bin' (PUMPHOUSE_TEST_KUBE_BIN in $dir/env); ops/kubernetes/build-control-plane.sh builds it"
for t in containerd ctr runc containerd-shim-runc-v2; do
    command -v "$t" >/dev/null || die "no $t on PATH; apt-get install -y containerd runc"
done
for p in bridge host-local loopback; do
    [[ -x "$cni_bin/$p" ]] || die "no CNI plugin $cni_bin/$p; apt-get install -y containernetworking-plugins"
done
for t in docker gcc openssl ip iptables findmnt curl python3; do
    command -v "$t" >/dev/null || die "no $t on PATH"
done
docker version >/dev/null 2>&1 || die "cannot reach the Docker engine, which builds the pause image; start dockerd"
# A unix socket path has room for 107 bytes; containerd also makes <socket>.ttrpc.
((${#sock} <= 100)) || die "$sock is too long for a unix socket; use a shorter DIR"
pki="$dir/pki"
admin=(--cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key")
curl -sf "${admin[@]}" "$server/readyz" >/dev/null || die "the API server at $server does not answer; is the cluster in $dir up? (cluster.sh up $dir)"

mark="$(ip -o link show "$node_if" 2>/dev/null | sed -n 's/.* alias \(.*\)$/\1/p')" || true
if [[ -n "$mark" && "$mark" != "$owner" ]]; then
    other="${mark#pumphouse-node:}"
    if [[ -f "$other/node/pids/kubelet" ]] && kill -0 "$(cat "$other/node/pids/kubelet")" 2>/dev/null; then
        die "another node is up on this machine ($other); stop it first: $0 down $other"
    fi
    say "removing a stale node of $other"
    "$0" down "$other" || true
    ip link del "$bridge" 2>/dev/null || true
    ip link del "$node_if" 2>/dev/null || true
fi

t0=$(date +%s.%N)
node_down
rm -rf "$n"
# A failed `up` stops what it started; its logs stay in DIR/logs.
trap 'rc=$?; if ((rc)); then say "stopping what this up started"; node_down; fi' EXIT
mkdir -p "$n"/{pki,pids,cni/conf,cni/ipam,containerd/root,containerd/state,kubelet,pod-logs,pause} "$dir/logs"
chmod 700 "$n/pki"

# --- node IP ------------------------------------------------------------------------------------
# A bridge with no ports stands in for a dummy interface: this kernel has no `dummy` driver
# (and no modules to load), and an address on an up, portless bridge is local like any other.
ip link show "$node_if" >/dev/null 2>&1 || ip link add "$node_if" type bridge \
    || die "ip link add $node_if type bridge failed"
ip link set dev "$node_if" alias "$owner"
ip addr replace "$node_ip/32" dev "$node_if"
ip link set dev "$node_if" up

free_port() { python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"; }
kubelet_port="$(free_port "$node_ip")"
healthz_port="$(free_port 127.0.0.1)"

# --- certificates -------------------------------------------------------------------------------
ssl() { openssl "$@" 2>>"$dir/logs/openssl.log" || die "openssl $1 failed; see $dir/logs/openssl.log"; }
# cert NAME SUBJECT [SAN]: as in cluster.sh, signed by the cluster's CA.
cert() {
    local name="$1" subj="$2" san="${3:-}" ext="$n/pki/$1.ext"
    ssl ecparam -name prime256v1 -genkey -noout -out "$n/pki/$name.key"
    ssl req -new -key "$n/pki/$name.key" -subj "$subj" -out "$n/pki/$name.csr"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        [[ -n "$san" ]] && echo "extendedKeyUsage=serverAuth" || echo "extendedKeyUsage=clientAuth"
        [[ -n "$san" ]] && echo "subjectAltName=$san"
    } >"$ext"
    ssl x509 -req -in "$n/pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
        -days 2 -sha256 -extfile "$ext" -out "$n/pki/$name.crt"
    chmod 600 "$n/pki/$name.key"
}
# The Node authorizer and NodeRestriction know a kubelet by this subject.
cert kubelet-client "/O=system:nodes/CN=system:node:$node_name"
# The API server dials the kubelet at the node's name (= its IP) and checks it against the CA.
cert kubelet-serving "/CN=system:node:$node_name" "IP:$node_ip"
cat >"$n/kubelet.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: pumphouse-test
  cluster:
    server: $server
    certificate-authority: $pki/ca.crt
users:
- name: kubelet
  user:
    client-certificate: $n/pki/kubelet-client.crt
    client-key: $n/pki/kubelet-client.key
contexts:
- name: kubelet
  context:
    cluster: pumphouse-test
    user: kubelet
current-context: kubelet
EOF
chmod 600 "$n/kubelet.kubeconfig"

# The API server signs in to the kubelet (logs, exec) as kube-apiserver-kubelet-client, which the
# kubelet's Webhook authorization asks RBAC about; the built-in role for that has no binding.
code="$(curl -s -o "$dir/logs/rbac.json" -w '%{http_code}' "${admin[@]}" -X POST \
    -H 'Content-Type: application/json' "$server/apis/rbac.authorization.k8s.io/v1/clusterrolebindings" \
    -d '{"apiVersion":"rbac.authorization.k8s.io/v1","kind":"ClusterRoleBinding",
         "metadata":{"name":"pumphouse-test:kubelet-api-admin"},
         "roleRef":{"apiGroup":"rbac.authorization.k8s.io","kind":"ClusterRole","name":"system:kubelet-api-admin"},
         "subjects":[{"apiGroup":"rbac.authorization.k8s.io","kind":"User","name":"kube-apiserver-kubelet-client"}]}')"
[[ "$code" == 201 || "$code" == 409 ]] || die "could not bind system:kubelet-api-admin (HTTP $code); see $dir/logs/rbac.json"

# --- CNI ----------------------------------------------------------------------------------------
# No ipMasq: pods only talk to each other and to the host (their default route, the bridge's
# address, leads to the node IP), so nothing is NATed and the plugin makes no iptables chains.
cat >"$n/cni/conf/10-$cni_net.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$cni_net",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$n/cni/ipam",
        "ranges": [[{ "subnet": "$pod_subnet" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    }
  ]
}
EOF
# With br_netfilter loaded, bridged pod-to-pod traffic crosses FORWARD, whose policy docker sets
# to DROP: accept traffic that stays on the bridge (and only that).
iptables -I FORWARD -i "$bridge" -o "$bridge" -m comment --comment "$owner" -j ACCEPT \
    || die "iptables -I FORWARD failed"

# --- containerd ---------------------------------------------------------------------------------
# containerd 1.6 (Debian's) is enough for kubelet v1.37: it lacks the CRI RuntimeConfig call, and
# the kubelet then takes the cgroup driver from its own config (support ends in v1.38). The
# netns, runc state and /opt plugin dir are moved under DIR too; only the shims' sockets stay
# in /run/containerd/s (hard-coded, named by a hash of this socket's path).
cat >"$n/containerd/config.toml" <<EOF
version = 2
root = "$n/containerd/root"
state = "$n/containerd/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "$n/containerd/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/$pause_image"
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  disable_apparmor = true
  # This machine's root lacks CAP_SYS_RESOURCE, so runc cannot lower a container's
  # oom_score_adj (the kubelet asks -998 for sandboxes): clamp it at containerd's own (0).
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$n/containerd/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cni_bin"
    conf_dir = "$n/cni/conf"
    max_conf_num = 1
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$n/containerd/certs.d"
EOF
setsid containerd --config "$n/containerd/config.toml" >"$dir/logs/containerd.log" 2>&1 </dev/null &
echo $! >"$n/pids/containerd"
deadline=$((SECONDS + 30))
until ctr_ version >/dev/null 2>&1; do
    alive containerd || die "containerd exited at start; the end of $dir/logs/containerd.log:
$(tail -20 "$dir/logs/containerd.log")"
    ((SECONDS < deadline)) || die "containerd did not answer on $sock in 30 s; see $dir/logs/containerd.log"
    sleep 0.1
done

# --- pause image --------------------------------------------------------------------------------
# Built here, not pulled: a static C program in a FROM-scratch image (images/pause).
cp "$repo/images/pause/Dockerfile" "$n/pause/"
gcc -static -Os -s -Wall -Wextra -o "$n/pause/pause" "$repo/images/pause/pause.c" 2>"$dir/logs/pause-build.log" \
    || die "compiling images/pause/pause.c failed; see $dir/logs/pause-build.log"
DOCKER_BUILDKIT=0 docker build -q -t "$pause_image" "$n/pause" >>"$dir/logs/pause-build.log" 2>&1 \
    || die "docker build of $pause_image failed; see $dir/logs/pause-build.log"
import_image "$pause_image"

# --- kubelet ------------------------------------------------------------------------------------
# The kernel tunables the kubelet sets on start (overcommit, panic on oops...), restored by down.
for k in vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops \
    kernel.keys.root_maxkeys kernel.keys.root_maxbytes; do
    echo "$k $(sysctl -n "$k")"
done >"$n/sysctl.orig"

# failCgroupV1: false because this machine has cgroup v1, which v1.37 refuses by default.
# Eviction thresholds are low so a full-ish disk does not evict the tests' pods, and image GC is
# off (100%) because an image it deleted could not be pulled back.
cat >"$n/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $healthz_port
tlsCertFile: $n/pki/kubelet-serving.crt
tlsPrivateKeyFile: $n/pki/kubelet-serving.key
rotateCertificates: false
serverTLSBootstrap: false
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: $pki/ca.crt
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://$sock
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
podLogsDir: $n/pod-logs
resolvConf: /etc/resolv.conf
clusterDomain: cluster.local
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
  imagefs.inodesFree: 1%
serializeImagePulls: false
maxPods: 110
EOF
setsid "$bin/kubelet" --config "$n/kubelet/config.yaml" --kubeconfig "$n/kubelet.kubeconfig" \
    --root-dir "$n/kubelet" --hostname-override "$node_name" --node-ip "$node_ip" --v 2 \
    >"$dir/logs/kubelet.log" 2>&1 </dev/null &
echo $! >"$n/pids/kubelet"

# Ready once the kubelet has registered the Node and both the runtime and the CNI network are up:
# a Ready condition this kubelet posted (a Node left by an earlier one may still say Ready).
started="$(date -u +%s)"
node_ready() {
    curl -sf "${admin[@]}" "$server/api/v1/nodes/$node_name" 2>/dev/null | python3 -c '
import datetime, json, sys
conds = json.load(sys.stdin).get("status", {}).get("conditions", [])
def fresh(c):
    t = datetime.datetime.strptime(c["lastHeartbeatTime"], "%Y-%m-%dT%H:%M:%SZ")
    return t.replace(tzinfo=datetime.timezone.utc).timestamp() >= int(sys.argv[1])
sys.exit(0 if any(c["type"] == "Ready" and c["status"] == "True" and fresh(c) for c in conds) else 1)' "$started" 2>/dev/null
}
deadline=$((SECONDS + 120))
until node_ready; do
    alive kubelet || die "the kubelet exited at start; the end of $dir/logs/kubelet.log:
$(tail -20 "$dir/logs/kubelet.log")"
    ((SECONDS < deadline)) || die "Node $node_name was not Ready in 120 s; see $dir/logs/kubelet.log and $dir/logs/containerd.log"
    sleep 0.5
done

sed -i '/^PUMPHOUSE_TEST_KUBE_NODE/d' "$dir/env"
cat >>"$dir/env" <<EOF
PUMPHOUSE_TEST_KUBE_NODE=$node_name
PUMPHOUSE_TEST_KUBE_NODE_IP=$node_ip
PUMPHOUSE_TEST_KUBE_NODE_CONTAINERD=$sock
EOF
say "node $node_name Ready in $(python3 -c "print(round($(date +%s.%N) - $t0, 1))") s (pods: $pod_subnet on $bridge; import images: $0 import $dir IMAGE)"
