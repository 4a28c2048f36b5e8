#!/usr/bin/env bash
# Hostile input, part 2: schemathesis against the OpenAPI document a real server serves. Fails on
# any 5xx, any answer whose status code, content type or body the document does not describe.
#
# Starts its own Redis and `pumphouse serve` (process backend, SQLite in a temp dir, an admin token)
# on free loopback ports, creates a few flows (one running, one stopped, one to be deleted) so
# routes with ids hit real flows as well as unknown ones, runs schemathesis, and removes
# everything it started on exit.
#
# Usage: ops/schemathesis.sh
#   SCHEMATHESIS_EXAMPLES   test cases per operation and phase (default 50)
#   SCHEMATHESIS_SECONDS    hard bound on the schemathesis run (default 600)
#   SCHEMATHESIS_SEED       a seed, to replay a run (the run prints its own)
#   SCHEMATHESIS_PHASES     some of examples,coverage,fuzzing,stateful (default: all)
#   SCHEMATHESIS_KEEP=1     keep the temp dir (logs, config, report) after a run that passed
# Installs schemathesis (pinned) from PyPI into target/schemathesis-venv on first use.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
say() { echo "schemathesis.sh: $*" >&2; }
die() { say "$*"; exit 1; }

version=4.32.5
examples="${SCHEMATHESIS_EXAMPLES:-50}"
bound="${SCHEMATHESIS_SECONDS:-600}"
venv="$repo/target/schemathesis-venv"

command -v redis-server >/dev/null || die "redis-server is missing; run: sudo apt-get install -y redis-server"
command -v python3 >/dev/null || die "python3 is missing; run: sudo apt-get install -y python3 python3-venv"
if [[ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != *" $version" ]]; then
    say "installing schemathesis $version into $venv"
    python3 -m venv "$venv" ||
        die "python3 cannot make a venv; run: sudo apt-get install -y python3-venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi

cargo build --bins --locked --quiet
bin="${CARGO_TARGET_DIR:-$repo/target}/debug"

work="$(mktemp -d -t pumphouse-schemathesis.XXXXXX)"
pids=()
cleanup() {
    local code=$?
    trap - EXIT INT TERM
    # The orchestrator ends its process-backend pumps with it.
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    if ((code)) || [[ -n "${SCHEMATHESIS_KEEP:-}" ]]; then
        say "kept $work for a look (pumphouse.log, redis.log, schemathesis.toml, report/)"
    else
        rm -rf "$work"
    fi
    exit "$code"
}
trap cleanup EXIT INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
redis_port="$(free_port)"
api_port="$(free_port)"
api="http://127.0.0.1:$api_port"
token="$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"

redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
    >"$work/redis.log" 2>&1 &
pids+=($!)

PUMPHOUSE_ADMIN_TOKEN="$token" "$bin/pumphouse" serve --listen "127.0.0.1:$api_port" \
    --store "sqlite://$work/pumphouse.db" --redis "redis://127.0.0.1:$redis_port" \
    --backend process --pump-binary "$bin/pump" --cluster "schemathesis-$api_port" \
    --log-format json 2>"$work/pumphouse.log" &
server=$!
pids+=("$server")

ready=""
for _ in $(seq 1 150); do
    if curl -fsS "$api/readyz" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$server" 2>/dev/null || die "the orchestrator exited; see $work/pumphouse.log"
    sleep 0.2
done
[[ -n "$ready" ]] || die "the orchestrator was not ready within 30 s; see $work/pumphouse.log"

call() { curl -sS -H "Authorization: Bearer $token" "$@"; }
json_field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
create() {
    call -f -X POST -H 'content-type: application/yaml' --data-binary @- "$api/api/flows"
}

running_json="$(create <<'YAML'
name: st-running
keepAlive: true
config:
  steps:
    - log: "got {{payload}}"
    - respond: {echo: "{{payload}}"}
YAML
)" || die "could not create a flow; see $work/pumphouse.log"
running_id="$(json_field "['flow']['id']" <<<"$running_json")"
running_token="$(json_field "['webhook_token']" <<<"$running_json")"
create >/dev/null <<'YAML' || die "could not create a flow; see $work/pumphouse.log"
name: st-stopped
config: {steps: [{respond: ok}]}
YAML
doomed=()
for n in 1 2 3; do
    doomed+=("$(create <<YAML | json_field "['flow']['id']"
name: st-doomed-$n
config: {steps: [{respond: ok}]}
YAML
    )")
done
call -f -X POST "$api/api/flows/st-running/start" >/dev/null ||
    die "could not start st-running; see $work/pumphouse.log"
executed="$(call -f -X POST --data '{"n": 1}' "$api/api/triggers/$running_id/inject?wait=30s")" ||
    die "the running flow did not answer a trigger; see $work/pumphouse.log"
execution_id="$(json_field "['execution_id']" <<<"$executed")"

# Real ids and names part of the time, generated ones the rest.
cat >"$work/schemathesis.toml" <<TOML
[headers]
Authorization = "Bearer \${PUMPHOUSE_SCHEMATHESIS_TOKEN}"

[dictionaries.flows]
values = ["st-running", "$running_id", "st-stopped"]
[dictionaries.flow_ids]
values = ["$running_id"]
[dictionaries.webhook_tokens]
values = ["$running_token"]
[dictionaries.executions]
values = ["$execution_id"]
[dictionaries.doomed]
values = ["${doomed[0]}", "${doomed[1]}", "st-doomed-3"]

# Ids seen in earlier answers would send the destructive routes to the running flow before
# the trigger routes had their turn; the stateful phase (last) still chains real answers.
[phases.coverage]
extra-data-sources = { responses = false }
[phases.fuzzing]
extra-data-sources = { responses = false }

[parameters]
"path.flow_id" = { dictionary = "flow_ids", probability = 0.8 }
"path.token" = { dictionary = "webhook_tokens", probability = 0.8 }
"path.execution_id" = { dictionary = "executions", probability = 0.5 }
# A followed log is a stream that only ends when the client leaves.
"query.follow" = "false"

# Routes that leave a flow as it was get the real flows; deleting, stopping and rotating the
# webhook token get flows of their own, so the running flow and its token last the whole run.
[[operations]]
include-name = ["GET /api/flows/{id}", "PUT /api/flows/{id}", "GET /api/flows/{id}/status",
    "GET /api/flows/{id}/logs", "GET /api/flows/{id}/executions",
    "GET /api/flows/{id}/executions/{execution_id}", "POST /api/flows/{id}/start"]
parameters = { "path.id" = { dictionary = "flows", probability = 0.8 } }

[[operations]]
include-name = ["DELETE /api/flows/{id}", "POST /api/flows/{id}/stop",
    "POST /api/flows/{id}/webhook-token"]
parameters = { "path.id" = { dictionary = "doomed", probability = 0.8 } }
TOML

extra=()
[[ -n "${SCHEMATHESIS_SEED:-}" ]] && extra+=(--seed "$SCHEMATHESIS_SEED")
[[ -n "${SCHEMATHESIS_PHASES:-}" ]] && extra+=(--phases "$SCHEMATHESIS_PHASES")
say "running schemathesis $version against $api/openapi.json ($examples examples per operation)"
started=$SECONDS
status=0
# From the temp dir, so schemathesis's cache (.schemathesis/) lands there and not in the repo.
(cd "$work" && PUMPHOUSE_SCHEMATHESIS_TOKEN="$token" timeout --kill-after=10 "$bound" \
    "$venv/bin/schemathesis" --config-file "$work/schemathesis.toml" run "$api/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$examples" --workers 1 --request-timeout 20 \
    --report junit --report-dir "$work/report" --output-sanitize true --no-color "${extra[@]}") ||
    status=$?
((status != 124 && status != 137)) ||
    die "schemathesis did not finish within ${bound}s (SCHEMATHESIS_SECONDS); a request hung?"
# The server must still be there: a crash would show as connection errors above.
kill -0 "$server" 2>/dev/null || die "the orchestrator died during the run; see $work/pumphouse.log"
# What the run reached, by route and answer, so a run that only ever got 404s shows as such.
say "answers served, by route, method and status:"
call -f "$api/metrics" | grep '^pumphouse_api_requests_total{' |
    sed 's/^pumphouse_api_requests_total/  /' |
    sort >&2 || true
if grep -q '"level":"ERROR"' "$work/pumphouse.log"; then
    grep '"level":"ERROR"' "$work/pumphouse.log" | tail -n 5 >&2
fi
((status == 0)) || die "schemathesis found problems (above); fix the handler or the OpenAPI annotations, and add a test that catches it"
say "no problem found in $((SECONDS - started))s"
