#!/usr/bin/env bash
# Builds the Kubernetes components the test suite's real control plane needs, from their official
# Go modules at pinned versions, through the Go module proxy (no release tarballs, no images):
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet  (k8s.io/kubernetes)
#   etcd                                                               (go.etcd.io/etcd/server/v3)
#   helm                                                               (helm.sh/helm/v4)
# into target/kubernetes/<key>/bin/, building only what is missing. The Go module and build caches
# live in target/go, so whatever caches target/ caches them too.
#
# Usage: ops/kubernetes/build-control-plane.sh
# Progress goes to stderr; the last line on stdout is the bin directory, so a harness can do
#   bin="$(ops/kubernetes/build-control-plane.sh)"
# Cold (empty target/go, 2 cores, nice 19): about 20 minutes (measured: apiserver 325 s, controller-manager
# 184 s, helm 634 s, the rest under a minute, with cargo building beside it); all present: instant.
#
# k8s.io/kubernetes cannot be `go install`ed: its go.mod replaces the k8s.io staging modules with
# ./staging paths. So each program is built from a small generated module that requires
# k8s.io/kubernetes and replaces every staging module with its published v0.<minor>.<patch>.
set -euo pipefail

K8S_VERSION=v1.37.2     # k8s.io/kubernetes; staging modules at v0.37.2
ETCD_VERSION=v3.7.3     # go.etcd.io/etcd/server/v3
HELM_VERSION=v4.3.2     # helm.sh/helm/v4
GO_MIN_MINOR=26         # k8s.io/kubernetes v1.37 says `go 1.26.0`

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
say() { echo "build-control-plane: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

key="${K8S_VERSION}-etcd${ETCD_VERSION#v}-helm${HELM_VERSION#v}"
base="$repo/target/kubernetes/$key"
bin="$base/bin"
src="$base/src"

# --- Go -----------------------------------------------------------------------------------------
go_fix="Go 1.${GO_MIN_MINOR} or newer is needed and comes with the project's machine kind: have the CEO run \`project machine polyglot\` (Debian's golang-go is too old)"
command -v go >/dev/null || { [[ -x /usr/local/go/bin/go ]] && export PATH="/usr/local/go/bin:$PATH"; }
command -v go >/dev/null || die "no \`go\` on PATH (also tried /usr/local/go/bin). $go_fix"
go_v="$(go env GOVERSION)"                         # e.g. go1.26.8
go_minor="$(echo "$go_v" | sed -E 's/^go1\.([0-9]+).*/\1/')"
[[ "$go_v" == go1.* && "$go_minor" -ge "$GO_MIN_MINOR" ]] || die "found $go_v. $go_fix"

export GOMODCACHE="$repo/target/go/mod"
export GOCACHE="$repo/target/go/cache"
export GOFLAGS="-modcacherw -buildvcs=false"     # writable mod cache: `rm -rf target` just works
export GOTOOLCHAIN=local CGO_ENABLED=0
mkdir -p "$bin" "$src" "$GOMODCACHE" "$GOCACHE"

built=()
total_start=$(date +%s)

# build NAME DIR PKG LDFLAGS: builds PKG (in module DIR) into $bin/NAME unless it is there.
build() {
    local name="$1" dir="$2" pkg="$3" ldflags="$4" t0
    if [[ -x "$bin/$name" ]]; then
        say "$name: present"
        return
    fi
    say "$name: building $pkg (nice -n 19)"
    t0=$(date +%s)
    (cd "$dir" && nice -n 19 go build -trimpath -ldflags="-s -w $ldflags" -o "$bin/.$name.tmp" "$pkg") \
        || die "building $name failed: (cd $dir && go build -o $bin/$name $pkg)"
    mv "$bin/.$name.tmp" "$bin/$name"
    local secs=$(( $(date +%s) - t0 ))
    built+=("$name ${secs}s")
    say "$name: built in ${secs}s ($(du -h "$bin/$name" | cut -f1))"
}

# tidy DIR: resolves the generated module's requirements (go.sum) unless done already.
tidy() {
    local dir="$1"
    [[ -s "$dir/go.sum" && "$dir/go.sum" -nt "$dir/go.mod" ]] && return
    (cd "$dir" && nice -n 19 go mod tidy) || die "go mod tidy failed in $dir (is the Go module proxy reachable? GOPROXY=$(go env GOPROXY))"
}

# --- Kubernetes ---------------------------------------------------------------------------------
k8s_components=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
need_k8s=0
for c in "${k8s_components[@]}"; do [[ -x "$bin/$c" ]] || need_k8s=1; done
if ((need_k8s)); then
    staging="v0.${K8S_VERSION#v1.}"
    d="$src/kubernetes"
    mkdir -p "$d"
    new_mod="$(cat <<EOF
module pumphouse.local/kubernetes-build

go 1.26.0

godebug default=go1.26

tool (
	k8s.io/kubernetes/cmd/kube-apiserver
	k8s.io/kubernetes/cmd/kube-controller-manager
	k8s.io/kubernetes/cmd/kube-scheduler
	k8s.io/kubernetes/cmd/kubelet
)

require k8s.io/kubernetes $K8S_VERSION

// k8s.io/kubernetes's own go.mod points these at ./staging; use the published modules instead.
replace (
	k8s.io/api => k8s.io/api $staging
	k8s.io/apiextensions-apiserver => k8s.io/apiextensions-apiserver $staging
	k8s.io/apimachinery => k8s.io/apimachinery $staging
	k8s.io/apiserver => k8s.io/apiserver $staging
	k8s.io/cli-runtime => k8s.io/cli-runtime $staging
	k8s.io/client-go => k8s.io/client-go $staging
	k8s.io/cloud-provider => k8s.io/cloud-provider $staging
	k8s.io/cluster-bootstrap => k8s.io/cluster-bootstrap $staging
	k8s.io/code-generator => k8s.io/code-generator $staging
	k8s.io/component-base => k8s.io/component-base $staging
	k8s.io/component-helpers => k8s.io/component-helpers $staging
	k8s.io/controller-manager => k8s.io/controller-manager $staging
	k8s.io/cri-api => k8s.io/cri-api $staging
	k8s.io/cri-client => k8s.io/cri-client $staging
	k8s.io/cri-streaming => k8s.io/cri-streaming $staging
	k8s.io/csi-translation-lib => k8s.io/csi-translation-lib $staging
	k8s.io/dynamic-resource-allocation => k8s.io/dynamic-resource-allocation $staging
	k8s.io/endpointslice => k8s.io/endpointslice $staging
	k8s.io/externaljwt => k8s.io/externaljwt $staging
	k8s.io/kms => k8s.io/kms $staging
	k8s.io/kube-aggregator => k8s.io/kube-aggregator $staging
	k8s.io/kube-controller-manager => k8s.io/kube-controller-manager $staging
	k8s.io/kube-proxy => k8s.io/kube-proxy $staging
	k8s.io/kube-scheduler => k8s.io/kube-scheduler $staging
	k8s.io/kubectl => k8s.io/kubectl $staging
	k8s.io/kubelet => k8s.io/kubelet $staging
	k8s.io/metrics => k8s.io/metrics $staging
	k8s.io/mount-utils => k8s.io/mount-utils $staging
	k8s.io/pod-security-admission => k8s.io/pod-security-admission $staging
	k8s.io/sample-apiserver => k8s.io/sample-apiserver $staging
	k8s.io/sample-cli-plugin => k8s.io/sample-cli-plugin $staging
	k8s.io/sample-controller => k8s.io/sample-controller $staging
	k8s.io/streaming => k8s.io/streaming $staging
)
EOF
)"
    # A new Kubernetes release may add a staging module: compare with upstream's replace block.
    upstream_mod="$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')"
    [[ -f "$upstream_mod" ]] || die "could not fetch k8s.io/kubernetes@$K8S_VERSION's go.mod: go mod download -json k8s.io/kubernetes@$K8S_VERSION"
    want="$(sed -n '/^replace (/,/^)/p' "$upstream_mod" | awk '/=>/ {print $1}' | sort)"
    have="$(echo "$new_mod" | awk '/=>/ {print $1}' | sort)"
    [[ "$want" == "$have" ]] || die "the staging list in this script differs from k8s.io/kubernetes@$K8S_VERSION's replace block; update the heredoc:
$(diff <(echo "$have") <(echo "$want") || true)"
    if [[ "$(cat "$d/go.mod" 2>/dev/null)" != "$new_mod" ]]; then
        echo "$new_mod" > "$d/go.mod"
        rm -f "$d/go.sum"
    fi
    tidy "$d"
    minor="${K8S_VERSION#v1.}"; minor="${minor%%.*}"
    k8s_ldflags=""
    for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
        k8s_ldflags+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
    done
    for c in "${k8s_components[@]}"; do
        build "$c" "$d" "k8s.io/kubernetes/cmd/$c" "$k8s_ldflags"
    done
fi

# --- etcd ---------------------------------------------------------------------------------------
# etcd's `etcd` program lives in the go.etcd.io/etcd/v3 root module, which the proxy does not
# serve; go.etcd.io/etcd/server/v3/etcdmain is that program's body, so a two-line main suffices.
if [[ ! -x "$bin/etcd" ]]; then
    d="$src/etcd"
    mkdir -p "$d"
    new_mod="$(cat <<EOF
module pumphouse.local/etcd-build

go 1.26.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
EOF
)"
    if [[ "$(cat "$d/go.mod" 2>/dev/null)" != "$new_mod" ]]; then
        echo "$new_mod" > "$d/go.mod"
        rm -f "$d/go.sum"
    fi
    cat > "$d/main.go" <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
    tidy "$d"
    build etcd "$d" . ""
fi

# --- helm ---------------------------------------------------------------------------------------
if [[ ! -x "$bin/helm" ]]; then
    d="$src/helm"
    mkdir -p "$d"
    new_mod="$(cat <<EOF
module pumphouse.local/helm-build

go 1.26.0

tool helm.sh/helm/v4/cmd/helm

require helm.sh/helm/v4 $HELM_VERSION
EOF
)"
    if [[ "$(cat "$d/go.mod" 2>/dev/null)" != "$new_mod" ]]; then
        echo "$new_mod" > "$d/go.mod"
        rm -f "$d/go.sum"
    fi
    tidy "$d"
    build helm "$d" helm.sh/helm/v4/cmd/helm \
        "-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
fi

# --- summary ------------------------------------------------------------------------------------
if ((${#built[@]})); then
    say "built: ${built[*]}; total $(( $(date +%s) - total_start ))s"
else
    say "all present in $bin"
fi
echo "$bin"
