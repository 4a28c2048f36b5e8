#!/usr/bin/env bash
# Checks charts/pumphouse with real helm (v4, built from its module by
# ops/kubernetes/build-control-plane.sh): `helm lint --strict` and `helm template` for each value
# set in ops/check_chart.py, which cross-checks the objects (references, selectors, RBAC verbs
# against the backend's, no secret in a ConfigMap); then kubernetes-validate checks every object
# against Kubernetes' schemas (strict). Installing, upgrading, rolling back and uninstalling on a
# real API server is in the suite (tests/e2e/kubernetes.rs).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bin="$(ops/kubernetes/build-control-plane.sh | tail -1)"
out="$repo/target/chart-rendered"
rm -rf "$out"
# The venv's Python: PyYAML at the pinned version comes with it.
ops/kubernetes-validate.sh --version >/dev/null
python="$repo/target/kubernetes-validate-venv/bin/python"
"$python" ops/check_chart.py "$bin/helm" charts/pumphouse "$out"
mapfile -t files < <(find "$out" -name '*.yaml' | sort)
ops/kubernetes-validate.sh "${files[@]}"
echo "check-chart.sh: ${#files[@]} rendered manifests valid"
