#!/usr/bin/env bash
# The test command: installs what is missing, starts dockerd when it is not running, checks
# formatting and lints, builds the pump image, and runs the whole suite.
#
# Usage: ops/test.sh [extra nextest arguments]
# Needs root (it installs Debian packages and starts dockerd) unless all of that is in place.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
say() { echo "test.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# 1. Debian packages: docker.io (engine), redis-server, postgresql (initdb/pg_ctl).
missing=()
command -v dockerd >/dev/null || missing+=(docker.io)
command -v redis-server >/dev/null || missing+=(redis-server)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
command -v docker-compose >/dev/null || missing+=(docker-compose)   # the compose smoke test
command -v debootstrap >/dev/null || missing+=(debootstrap)         # its Redis/PostgreSQL images
[[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)  # the test Kubernetes node's pod network
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3 python3-venv)  # kubernetes-validate's and schemathesis' venvs
if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || die "missing ${missing[*]}; run as root or: sudo apt-get install -y ${missing[*]}"
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The packages start their own services on the default ports; the tests start private ones.
# Chromium, for the status page test (headless, loopback only).
ops/install-chromium.sh

# 2. The Docker engine.
if ! docker info >/dev/null 2>&1; then
    [[ $(id -u) == 0 ]] || die "the Docker engine is not running; start it (sudo dockerd) and run again"
    say "starting dockerd (log: /var/log/pumphouse-dockerd.log)"
    nohup dockerd >/var/log/pumphouse-dockerd.log 2>&1 &
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || die "dockerd did not come up in 30 s; see /var/log/pumphouse-dockerd.log"
fi

# 3. cargo-nextest runs the suite.
if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

# 3b. Kubernetes' own components (kube-apiserver, controller-manager, scheduler, kubelet, etcd,
# helm) from their Go modules at pinned versions, cached in target/kubernetes and target/go:
# cold about 20 minutes on 2 cores (21 measured with cargo beside it), then instant.
ops/kubernetes/build-control-plane.sh >/dev/null

# 4. Formatting and lints, before anything slow.
cargo fmt --all -- --check || die "cargo fmt --all -- --check failed; run cargo fmt --all"
cargo clippy --workspace --all-targets --locked -- -D warnings

# 4b. The Kubernetes backend (cargo feature `kubernetes`, off by default). The workspace builds
# pumphouse with it on (tests/ needs it), so pumphouse alone is linted without it, and the one
# test of a build without it runs here. Then the pump objects against Kubernetes' schemas
# (kubernetes-validate, pinned, in a venv under target/), and the chart with real helm.
cargo clippy -p pumphouse --all-targets --locked -- -D warnings
cargo nextest run -p pumphouse --locked -E 'test(/^backend::tests::kubernetes_without_the_feature/)'
ops/check-pump-manifests.sh
ops/check-chart.sh

# 5. Alert rules: promtool checks them and runs their unit tests (installs prometheus).
ops/check-alerts.sh

# 6. Binaries (the process backend runs target/debug/pump), the pump image, and an
# orchestrator image from the same build for the chart's own pod on the test node.
cargo build --workspace --bins --locked
ops/build-images.sh --orchestrator

# 7. The suite, with a real Kubernetes cluster for tests/e2e/kubernetes.rs: a control plane on
# loopback and one node (kubelet, a private containerd, a bridge network) with the pump image
# imported; started in seconds from the cached binaries, stopped when this script ends.
kube_dir="$repo/target/kube-test"
trap 'ops/kubernetes/node.sh down "$kube_dir"; ops/kubernetes/cluster.sh down "$kube_dir"' EXIT
ops/kubernetes/cluster.sh up "$kube_dir" >/dev/null
ops/kubernetes/node.sh up "$kube_dir"
ops/kubernetes/node.sh import "$kube_dir" pumphouse/pump:dev
ops/kubernetes/node.sh import "$kube_dir" pumphouse/orchestrator:test
PUMPHOUSE_TEST_KUBE_DIR="$kube_dir" cargo nextest run --workspace --locked --no-fail-fast "$@"

# 8. Hostile input: each fuzz target for FUZZ_SECONDS (60), then schemathesis against the
# served OpenAPI document.
ops/fuzz.sh
ops/schemathesis.sh

# 9. The docker compose stack, built from local images, brought up, sent a webhook, torn down.
ops/compose-smoke.sh
