#!/usr/bin/env bash
# Checks the objects the Kubernetes backend builds for a pump (its Deployment and Secret)
# against Kubernetes' schemas: a unit test writes them out as YAML, kubernetes-validate checks
# them. The same test checks, every run, that they read back as k8s-openapi types unchanged.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="$repo/target/kubernetes-manifests/pump"
rm -rf "$out"
mkdir -p "$out"
PUMPHOUSE_MANIFEST_DIR="$out" cargo test --quiet --locked -p pumphouse --features kubernetes --lib \
    backend::kubernetes::tests::built_objects_are_valid_kubernetes_objects -- --exact >/dev/null
files=("$out"/*.yaml)
[[ ${#files[@]} == 3 ]] || { echo "check-pump-manifests.sh: expected 3 manifests in $out, found ${#files[@]}" >&2; exit 1; }
ops/kubernetes-validate.sh "${files[@]}"
echo "check-pump-manifests.sh: ${#files[@]} pump manifests valid"
