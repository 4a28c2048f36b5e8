#!/usr/bin/env bash
# Wake and delivery latency beside their baselines (benches/src/bin/wake.rs), on a release
# build with a release pump image tagged pumphouse/pump:bench. Needs dockerd and redis-server
# (ops/test.sh installs and starts them). Loopback only.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
cargo build --release -p pumphouse-pump -p pumphouse-bench --bins
PUMP_IMAGE=pumphouse/pump:bench ops/build-images.sh --release >/dev/null
echo "commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (with uncommitted changes)'), $(nproc) cores, $(date -u +%Y-%m-%d)"
exec "${CARGO_TARGET_DIR:-$repo/target}/release/wake"
