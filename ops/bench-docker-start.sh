#!/usr/bin/env bash
# Measures the two ways the Docker backend could bring a pump up, through the Engine API
# (curl on the unix socket, so no docker CLI start-up is in the figures):
#   A  create + start of a new container, until the pump prints "subscribed to trigger:..."
#   B  start of a kept, stopped container with the same config, until the same line
#   C  remove (force, with volumes) of a stopped container, as the backend does before A
# A and B alternate (A B A B ...) after one warm-up of each; C is the removal of each A
# container once it has been stopped. Stops are not timed. Containers are hardened like the
# backend's (orchestrator/src/backend/docker.rs) and use host networking; a private Redis on
# a free loopback port serves the pump.
#
# Usage: ops/bench-docker-start.sh [RUNS]      (RUNS per path, default 25)
#   BENCH_IMAGE   image to run (default pumphouse/pump:bench, built with
#                 PUMP_IMAGE=pumphouse/pump:bench ops/build-images.sh --release)
#   DOCKER_SOCK   engine socket (default /var/run/docker.sock)
set -euo pipefail

runs="${1:-25}"
image="${BENCH_IMAGE:-pumphouse/pump:bench}"
sock="${DOCKER_SOCK:-/var/run/docker.sock}"
prefix=pumphouse-bench
api=http://localhost/v1.41

die() { echo "bench-docker-start: $*" >&2; exit 1; }
# api METHOD PATH [JSON]: one Engine API call; fails on an HTTP error.
api() { curl -sS --fail-with-body --unix-socket "$sock" -X "$1" -H 'Content-Type: application/json' \
    ${3:+--data "$3"} "$api$2"; }
# elapsed T0: sets $us to the microseconds since T0 (an earlier $EPOCHREALTIME), without a fork.
elapsed() { local t1="${EPOCHREALTIME/[.,]/}"; us=$((t1 - ${1/[.,]/})); }

command -v redis-server >/dev/null || die "redis-server is not installed"
api GET /_ping >/dev/null || die "no Docker engine answers on $sock"
api GET "/images/$image/json" >/dev/null || die "no image $image; build it with
  PUMP_IMAGE=$image ops/build-images.sh --release"

cleanup() {
    local ids
    ids="$(api GET "/containers/json?all=1&filters=$(jq -rn --arg p "^/$prefix-" '{name: [$p]} | @uri')" |
        jq -r '.[].Id')" || true
    for id in $ids; do api DELETE "/containers/$id?force=1&v=1" >/dev/null || true; done
    [[ -n "${redis_pid:-}" ]] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
    return 0
}
trap cleanup EXIT
cleanup # leftovers of an earlier run

port=6411
while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --loglevel warning \
    >/dev/null &
redis_pid=$!
for _ in {1..50}; do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

body="$(jq -n --arg image "$image" --arg redis "redis://127.0.0.1:$port" \
    --arg organism "$(printf 'steps:\n  - log: hi\n' | base64 -w0)" '{
  Image: $image, User: "65534:65534", StopTimeout: 10,
  Env: ["FLOW_ID=f1", "INSTANCE_ID=i1", "TENANT_PREFIX=tenant:t:flow:f1:",
        "ORGANISM_YAML=\($organism)", "REDIS_URL=\($redis)"],
  HostConfig: {NetworkMode: "host", ReadonlyRootfs: true, CapDrop: ["ALL"],
               SecurityOpt: ["no-new-privileges"], PidsLimit: 256, Init: false,
               Memory: 67108864, MemorySwap: 67108864}}')"

create() { api POST "/containers/create?name=$1" "$body" >/dev/null; }
start() { api POST "/containers/$1/start" >/dev/null; }
stop() { api POST "/containers/$1/stop?t=10" >/dev/null; api POST "/containers/$1/wait" >/dev/null; }
# wait_ready ID SINCE: follows the logs written after SINCE (seconds.nanos) until the pump has
# subscribed. The stream's curl ends by itself when the container is stopped (its complaint
# about the closed pipe once grep has its line is dropped).
wait_ready() {
    grep -a -q -m1 'pump: subscribed to trigger:f1' < <(timeout 30 curl -sS -N --unix-socket \
        "$sock" "$api/containers/$1/logs?follow=1&stdout=1&stderr=1&since=$2" 2>/dev/null) ||
        die "container $1 did not report 'subscribed' within 30 s"
}

# path_a N: create + start + ready of a new container, then stop it and time its removal (C).
path_a() {
    local name="$prefix-a$1" t0="$EPOCHREALTIME"
    create "$name"; start "$name"; wait_ready "$name" "${t0/,/.}"
    elapsed "$t0"; a+=("$us")
    stop "$name"
    t0="$EPOCHREALTIME"; api DELETE "/containers/$name?force=1&v=1" >/dev/null
    elapsed "$t0"; c+=("$us")
}
# path_b: start + ready of the kept container, then stop it again.
path_b() {
    local t0="$EPOCHREALTIME"
    start "$kept"; wait_ready "$kept" "${t0/,/.}"
    elapsed "$t0"; b+=("$us")
    stop "$kept"
}

echo "reproduce: PUMP_IMAGE=$image ops/build-images.sh --release && ops/bench-docker-start.sh $runs"
echo "engine $(api GET /version | jq -r '.Version'), image $image, redis 127.0.0.1:$port, $runs runs per path, A B interleaved"

kept="$prefix-kept"
create "$kept"
a=() b=() c=()
path_a warm; path_b # warm-up, not counted
a=() b=() c=()
for i in $(seq 1 "$runs"); do path_a "$i"; path_b; done

# stats NAME US...: p50 p95 min max in ms (nearest rank).
stats() {
    local name="$1"; shift
    printf '%s\n' "$@" | sort -n | awk -v name="$name" '{ v[NR] = $1 } END {
        r50 = int((NR * 50 + 99) / 100); r95 = int((NR * 95 + 99) / 100)
        printf "%-34s %8.1f %8.1f %8.1f %8.1f\n", name, v[r50]/1000, v[r95]/1000, v[1]/1000, v[NR]/1000 }'
}
p50() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR * 50 + 99) / 100)] }'; }

echo
printf '%-34s %8s %8s %8s %8s\n' "path (ms, n=$runs)" p50 p95 min max
stats "A create+start -> subscribed" "${a[@]}"
stats "B start kept -> subscribed" "${b[@]}"
stats "C rm -f stopped" "${c[@]}"
ab="$(awk -v a="$(p50 "${a[@]}")" -v b="$(p50 "${b[@]}")" -v c="$(p50 "${c[@]}")" \
    'BEGIN { printf "B/A at p50: %.2f   B/(A+C) at p50: %.2f", b / a, b / (a + c) }')"
echo "$ab"
