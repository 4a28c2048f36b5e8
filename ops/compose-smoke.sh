#!/usr/bin/env bash
# End-to-end smoke test of the compose stack (compose/docker-compose.yml):
#   builds the images (ops/build-compose-images.sh; quick when nothing changed), brings the stack up as
#   project pumphouse-smoke, waits for /readyz, creates the flow examples/hello.yaml, starts it,
#   waits until it runs, sends its webhook with ?wait=20s and checks the answer says "hello".
#   Whatever happens, it tears the stack down again (volumes and pump containers included).
#
# Usage: ops/compose-smoke.sh
#   PUMPHOUSE_COMPOSE_PORT  loopback port for the API (default 8080; when 8080 is taken and this
#                           is unset, a free port is picked)
#   SMOKE_REUSE=1           use the images as they are when all exist (a stale image tests
#                           old code: only for re-running a smoke by hand)
#   SMOKE_TIMEOUT           seconds allowed for each wait (default 120)
#
# Needs: docker (engine running), docker-compose 1.29+ or the `docker compose` plugin, curl, jq.
# Everything listens on 127.0.0.1 only.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

project=pumphouse-smoke
compose_file=compose/docker-compose.yml
network=pumphouse            # networks.pumphouse.name in the compose file
cluster=compose              # PUMPHOUSE_CLUSTER in the compose file
timeout="${SMOKE_TIMEOUT:-120}"
images=(pumphouse/orchestrator:dev pumphouse/pump:dev pumphouse/redis:7 pumphouse/postgres:15)

say() { echo "compose-smoke: $*"; }
fail() { echo "compose-smoke: FAILED: $*" >&2; exit 1; }

# --- preflight -----------------------------------------------------------------------------
for tool in docker curl jq; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (apt-get install -y ${tool/docker/docker.io})"
done
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 \
    || fail "cannot reach the Docker engine (${DOCKER_HOST:-unix:///var/run/docker.sock}); start dockerd"
if command -v docker-compose >/dev/null; then
    compose_cmd=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
else
    fail "neither docker-compose nor the docker compose plugin is installed (apt-get install -y docker-compose)"
fi
compose() { "${compose_cmd[@]}" -f "$compose_file" -p "$project" "$@"; }

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
if [[ -z "${PUMPHOUSE_COMPOSE_PORT:-}" ]]; then
    PUMPHOUSE_COMPOSE_PORT=8080
    if port_taken 8080; then
        PUMPHOUSE_COMPOSE_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null)" \
            || fail "127.0.0.1:8080 is in use; set PUMPHOUSE_COMPOSE_PORT to a free port"
        say "127.0.0.1:8080 is in use; using port $PUMPHOUSE_COMPOSE_PORT instead"
    fi
elif port_taken "$PUMPHOUSE_COMPOSE_PORT"; then
    fail "127.0.0.1:$PUMPHOUSE_COMPOSE_PORT (PUMPHOUSE_COMPOSE_PORT) is in use; pick a free port"
fi
export PUMPHOUSE_COMPOSE_PORT
api="http://127.0.0.1:$PUMPHOUSE_COMPOSE_PORT"

# The network name and the pump label are fixed, not per project: another stack from the same
# compose file would share them, and tearing down would take its pumps. Refuse instead.
if docker network inspect "$network" >/dev/null 2>&1; then
    others=""
    for c in $(docker network inspect "$network" --format '{{range $id, $c := .Containers}}{{$id}} {{end}}'); do
        p="$(docker inspect --format '{{index .Config.Labels "com.docker.compose.project"}}' "$c" 2>/dev/null || true)"
        if [[ -n "$p" && "$p" != "$project" ]]; then
            others+="$(docker inspect --format '{{.Name}}' "$c" | tr -d /) "
        fi
    done
    [[ -z "$others" ]] || fail "network '$network' is in use by another pumphouse compose stack (${others% }); take that down first (docker-compose -f $compose_file -p <its project> down)"
fi

# --- teardown, always ----------------------------------------------------------------------
diagnostics() {
    say "--- diagnostics ---"
    compose ps 2>&1 || true
    say "--- orchestrator log (last 40 lines) ---"
    compose logs --no-color --tail 40 orchestrator 2>&1 || true
    local pump
    for pump in $(docker ps -aq --filter "label=pumphouse.dev/cluster=$cluster"); do
        say "--- pump $(docker inspect --format '{{.Name}} {{.State.Status}}' "$pump") (last 20 lines) ---"
        docker logs --tail 20 "$pump" 2>&1 || true
    done
}
teardown() {
    local rc=$?
    trap - EXIT INT TERM
    rm -f "/tmp/compose-smoke-readyz.$$"
    set +e
    if [[ $rc -ne 0 ]]; then diagnostics; fi
    say "tearing down"
    # The orchestrator first, so it does not restart the pumps removed next; then the pumps
    # (started through the socket, unknown to compose, and attached to the network); then the
    # rest with its volumes.
    compose stop orchestrator >/dev/null 2>&1
    local pumps
    pumps="$(docker ps -aq --filter "label=pumphouse.dev/cluster=$cluster")"
    if [[ -n "$pumps" ]]; then
        # shellcheck disable=SC2086
        docker rm -f $pumps >/dev/null
    fi
    compose down -v --remove-orphans >/dev/null 2>&1 \
        || say "warning: '${compose_cmd[*]} -p $project down -v' failed; check 'docker ps -a'"
    if docker network inspect "$network" >/dev/null 2>&1; then
        docker network rm "$network" >/dev/null 2>&1 || say "warning: network $network is left over"
    fi
    if [[ $rc -eq 0 ]]; then say "PASSED"; else echo "compose-smoke: FAILED (exit $rc)" >&2; fi
    exit "$rc"
}

# --- images --------------------------------------------------------------------------------
missing=()
for image in "${images[@]}"; do
    docker image inspect "$image" >/dev/null 2>&1 || missing+=("$image")
done
# Always built unless asked otherwise: an image left by an earlier run holds older code.
if [[ ${#missing[@]} -gt 0 || "${SMOKE_REUSE:-}" != 1 ]]; then
    ops/build-compose-images.sh || fail "ops/build-compose-images.sh failed"
else
    say "reusing images: ${images[*]} (SMOKE_REUSE=1)"
fi

# --- up ------------------------------------------------------------------------------------
trap teardown EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A previous run killed before its teardown may have left the project behind.
compose down -v --remove-orphans >/dev/null 2>&1 || true

say "starting the stack (${compose_cmd[*]} -p $project up -d; API on $api)"
compose up -d || fail "'${compose_cmd[*]} -f $compose_file -p $project up -d' failed"

# Polls "$@" every second until it succeeds or $timeout seconds have passed.
wait_for() {
    local what="$1"
    shift
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            fail "$what: not within ${timeout}s"
        fi
        sleep 1
    done
}

ready() { curl -fsS --max-time 5 "$api/readyz" -o /tmp/compose-smoke-readyz.$$ 2>/dev/null; }
say "waiting for $api/readyz"
wait_for "the orchestrator to be ready" ready
say "ready: $(jq -c . /tmp/compose-smoke-readyz.$$)"
rm -f /tmp/compose-smoke-readyz.$$

# Sends a request and splits the answer into $body and $code.
request() {
    local out
    out="$(curl -sS --max-time 60 -w '\n%{http_code}' "$@")" || fail "curl $* failed"
    code="${out##*$'\n'}"
    body="${out%$'\n'*}"
}

say "creating the flow from examples/hello.yaml"
request -X POST -H 'content-type: application/yaml' --data-binary @examples/hello.yaml "$api/api/flows"
[[ "$code" == 201 ]] || fail "POST /api/flows answered $code: $body"
flow_id="$(jq -r '.flow.id' <<<"$body")"
webhook_url="$(jq -r '.webhook_url' <<<"$body")"
[[ -n "$flow_id" && "$flow_id" != null && "$webhook_url" == http* ]] \
    || fail "POST /api/flows answered without a flow id or webhook URL: $body"
say "created flow $flow_id"

say "starting it"
request -X POST "$api/api/flows/$flow_id/start"
[[ "$code" == 202 || "$code" == 200 ]] || fail "POST /api/flows/$flow_id/start answered $code: $body"

running() {
    request "$api/api/flows/$flow_id/status"
    [[ "$code" == 200 ]] || fail "GET /api/flows/$flow_id/status answered $code: $body"
    local status
    status="$(jq -r '.status' <<<"$body")"
    case "$status" in
        running) return 0 ;;
        error) fail "the flow went to error: $(jq -r '.reason' <<<"$body")" ;;
        *) return 1 ;;
    esac
}
say "waiting for the flow to be running"
wait_for "the flow to be running" running
pump="$(jq -r '.pump.pump_ref // empty' <<<"$body")"
say "running; pump container $(docker inspect --format '{{.Name}} on {{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$pump" 2>/dev/null || echo "${pump:-?}")"

say "sending the webhook (?wait=20s)"
request -X POST -H 'content-type: application/json' --data '{"name": "compose"}' "$webhook_url?wait=20s"
say "webhook answered $code: $body"
[[ "$code" == 200 ]] || fail "the webhook answered $code, not 200: $body"
output="$(jq -c '.output' <<<"$body")"
grep -q hello <<<"$output" || fail "the webhook's output does not say hello: $output"
say "output: $output"
