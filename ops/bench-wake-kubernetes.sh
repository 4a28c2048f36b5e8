#!/usr/bin/env bash
# Wake on Kubernetes beside its baseline (benches/src/bin/wake_kubernetes.rs): webhook at zero ->
# pump ack, against a plain Deployment scaled 0 -> 1 to its pod's first log line, on the suite's
# real control plane and node. Uses the cluster in PUMPHOUSE_TEST_KUBE_DIR when one is up there;
# otherwise starts one in target/kube-bench and stops it at the end. Needs root, dockerd and the
# pump image (ops/test.sh provides all three). Loopback and the node's local address only.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
cargo build --release -p pumphouse -p pumphouse-pump -p pumphouse-bench --features pumphouse/kubernetes --bins
ops/build-images.sh >/dev/null
if [[ -z "${PUMPHOUSE_TEST_KUBE_DIR:-}" ]]; then
    export PUMPHOUSE_TEST_KUBE_DIR="$repo/target/kube-bench"
    trap 'ops/kubernetes/node.sh down "$PUMPHOUSE_TEST_KUBE_DIR"; ops/kubernetes/cluster.sh down "$PUMPHOUSE_TEST_KUBE_DIR"' EXIT
    ops/kubernetes/cluster.sh up "$PUMPHOUSE_TEST_KUBE_DIR" >/dev/null
    ops/kubernetes/node.sh up "$PUMPHOUSE_TEST_KUBE_DIR"
fi
ops/kubernetes/node.sh import "$PUMPHOUSE_TEST_KUBE_DIR" pumphouse/pump:dev
echo "commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)'), $(nproc) cores, $(date -u +%Y-%m-%d)"
"${CARGO_TARGET_DIR:-$repo/target}/release/wake_kubernetes"
