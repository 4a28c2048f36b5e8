#!/usr/bin/env bash
# Validates Kubernetes manifests against the API's OpenAPI schemas (strict: unknown fields are
# errors) with kubernetes-validate from PyPI, installed at the versions pinned in
# ops/kubernetes-validate.txt into a venv under target/ on first use.
#
# Usage: ops/kubernetes-validate.sh FILE...
# KUBERNETES_VERSION picks the schema version (1.32 by default, the oldest Kubernetes the
# backend's k8s-openapi types are built for).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "kubernetes-validate.sh: $*" >&2; }
die() { say "$*"; exit 1; }
venv="$repo/target/kubernetes-validate-venv"
pins="$repo/ops/kubernetes-validate.txt"

if ! cmp -s "$pins" "$venv/.pins" 2>/dev/null; then
    command -v python3 >/dev/null || die "python3 is missing: apt-get install -y python3 python3-venv"
    python3 -m venv --clear "$venv" >/dev/null \
        || die "cannot create a Python venv in $venv: apt-get install -y python3-venv"
    say "installing kubernetes-validate into $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$pins" \
        || die "pip could not install ops/kubernetes-validate.txt (is PyPI reachable?)"
    cp "$pins" "$venv/.pins"
fi
exec "$venv/bin/kubernetes-validate" --strict --quiet -k "${KUBERNETES_VERSION:-1.32}" "$@"
