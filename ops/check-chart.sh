#!/usr/bin/env bash
# Checks charts/pumphouse without helm (none can be installed here): ops/helm_render.py renders
# it for the default values and a few other value sets (the template subset the chart uses,
# nothing more), ops/check_chart.py cross-checks the objects (references, selectors, RBAC verbs
# against the backend's, no secret in a ConfigMap), and kubernetes-validate checks every object
# against Kubernetes' schemas (strict). Not checked: what helm itself would add (hooks, lookup,
# install order) and anything only a cluster shows (admission, the pods actually running).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
out="$repo/target/chart-rendered"
rm -rf "$out"
# The venv's Python: PyYAML at the pinned version comes with it.
ops/kubernetes-validate.sh --version >/dev/null
python="$repo/target/kubernetes-validate-venv/bin/python"
"$python" ops/check_chart.py charts/pumphouse "$out"
mapfile -t files < <(find "$out" -name '*.yaml' | sort)
ops/kubernetes-validate.sh "${files[@]}"
echo "check-chart.sh: ${#files[@]} rendered manifests valid"
