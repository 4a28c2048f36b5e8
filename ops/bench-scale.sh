#!/usr/bin/env bash
# pumphouse at scale on one machine, each figure printed beside a baseline from the same run:
#   fleet       1,000 flows and 200 pumps on Docker: orchestrator and pump RSS, start-all time,
#               an orchestrator restart (adoption, nothing restarted), then a mass wake of 100
#               flows at zero (benches/src/bin/scale.rs)
#   reaper      orchestrator CPU with 10,000 idle flows against none (scale.rs)
#   throughput  accepted webhooks/s with warm pumps on SQLite and PostgreSQL under wrk, against
#               an axum + Redis PUBLISH server (throughput.rs, webhook_baseline.rs)
#
# Usage: ops/bench-scale.sh [fleet|reaper|throughput]...   (none: all three, about 15 minutes)
# Sizes: BENCH_FLOWS, BENCH_PUMPS, BENCH_WAKE, BENCH_IDLE_FLOWS, BENCH_WINDOW_SECS,
#        BENCH_LOAD_SECS, BENCH_LOADED_PUMPS, BENCH_HOT_FLOWS, BENCH_WRK_SECS,
#        BENCH_WRK_CONNECTIONS, BENCH_WRK_THREADS (see each binary's usage).
# Needs dockerd running, redis-server and postgresql (ops/test.sh installs them); installs wrk
# when missing. Release build, release pump image tagged pumphouse/pump:bench. Loopback only.
# Everything it starts (containers, Redis, PostgreSQL, temp dirs) is removed on exit, also
# when interrupted.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

parts=("$@")
[[ ${#parts[@]} -gt 0 ]] || parts=(fleet reaper throughput)
for p in "${parts[@]}"; do
    case "$p" in
        fleet|reaper|throughput) ;;
        *) echo "bench-scale: unknown part '$p'; usage: ops/bench-scale.sh [fleet|reaper|throughput]..." >&2; exit 2 ;;
    esac
done

if [[ " ${parts[*]} " == *" throughput "* ]] && ! command -v wrk >/dev/null; then
    echo "bench-scale: installing wrk" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

cargo build --release -p pumphouse -p pumphouse-pump -p pumphouse-bench --bins
PUMP_IMAGE=pumphouse/pump:bench ops/build-images.sh --release >/dev/null
bin="${CARGO_TARGET_DIR:-$repo/target}/release"

# The bench binaries clean up after themselves; this catches what an interrupted one leaves:
# its pumps and bare containers, its Redis, PostgreSQL and temp dirs (named after its pid).
bench_pid=
cleanup() {
    local status=$?
    # Every step is tried: one failing (a Docker engine gone away) must not skip the rest.
    set +e
    if [[ -n "$bench_pid" ]]; then
        # Its children first (orchestrator, Redis, baseline server, wrk): once it is gone they
        # would belong to init and no longer be found by their parent's id.
        pkill -TERM -P "$bench_pid" 2>/dev/null || true
        kill -TERM "$bench_pid" 2>/dev/null || true
        wait "$bench_pid" 2>/dev/null || true
        docker ps -aq --filter "label=pumphouse-bench-pid=$bench_pid" | xargs -r docker rm -f >/dev/null 2>&1
        docker ps -a --filter label=app.kubernetes.io/managed-by=pumphouse \
            --format '{{.ID}} {{.Label "pumphouse.dev/cluster"}}' |
            awk -v p="bench-$bench_pid-" 'index($2, p) == 1 { print $1 }' | xargs -r docker rm -f >/dev/null 2>&1
        for f in /tmp/pumphouse-bench-redis-"$bench_pid"-*/redis.pid; do
            [[ -f "$f" ]] && kill -TERM "$(cat "$f")" 2>/dev/null
        done
        for d in /tmp/pumphouse-bench-pg-"$bench_pid"-*; do
            [[ -d "$d/data" ]] && runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$d/data" -m immediate stop >/dev/null 2>&1
        done
        rm -rf /tmp/pumphouse-bench-*-"$bench_pid"-* 2>/dev/null || true
    fi
    exit "$status"
}
trap cleanup EXIT INT TERM

echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)'), $(nproc) cores, $(free -g | awk '/^Mem:/ { print $2 }') GiB, $(date -u +%Y-%m-%dT%H:%MZ)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "reproduce: ops/bench-scale.sh ${parts[*]}"
run() {
    "$@" &
    bench_pid=$!
    wait "$bench_pid"
    bench_pid=
}
for p in "${parts[@]}"; do
    case "$p" in
        fleet) run "$bin/scale" fleet ;;
        reaper) run "$bin/scale" reaper ;;
        throughput) run "$bin/throughput" ;;
    esac
done
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
