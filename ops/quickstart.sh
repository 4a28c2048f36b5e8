#!/usr/bin/env bash
# The quick-start command: brings up Redis, the orchestrator with its embedded SQLite store and
# the example flow (examples/hello.yaml), then prints the curl line whose webhook runs it.
# Stays in the foreground; Ctrl-C stops the orchestrator and Redis (pumps are stopped first).
#
# Usage: ops/quickstart.sh        (API on 127.0.0.1:8080, Redis on 127.0.0.1:6390)
#   PUMPHOUSE_LISTEN, QUICKSTART_REDIS_PORT change the ports.
# State lives in .quickstart/ and is reset on every run, so the webhook token can be shown again.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
say() { echo "quickstart: $*" >&2; }
die() { say "$*"; exit 1; }

listen="${PUMPHOUSE_LISTEN:-127.0.0.1:8080}"
redis_port="${QUICKSTART_REDIS_PORT:-6390}"
state="$repo/.quickstart"

if ! command -v redis-server >/dev/null; then
    [[ $(id -u) == 0 ]] || die "redis-server is missing; run: sudo apt-get install -y redis-server"
    say "installing redis-server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi

say "building pumphouse and the reference pump (the first build takes a few minutes)"
cargo build --bins --quiet
bin="${CARGO_TARGET_DIR:-$repo/target}/debug"

# Docker when its engine answers (the pump image is built for it), else local processes.
backend=process
if docker info >/dev/null 2>&1; then
    ops/build-images.sh >/dev/null && backend=docker
fi

rm -rf "$state" && mkdir -p "$state"
pids=()
cleanup() {
    trap - EXIT INT TERM
    if [[ -n "${server_pid:-}" ]] && kill -0 "$server_pid" 2>/dev/null; then
        "$bin/pumphouse" --api "http://$listen" flow stop hello >/dev/null 2>&1 || true
    fi
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

# A password for Redis's default user: every pump signs in as its own Redis user, limited to
# its flow, which an open default user would make pointless. It goes in files readable by this
# user only, never on a command line, which every user of the machine can read with ps.
redis_password="$(head -c 24 /dev/urandom | base64 | tr -d '/+=')"
(
    umask 077
    printf 'requirepass %s\n' "$redis_password" >"$state/redis.conf"
    printf 'redis://default:%s@127.0.0.1:%s\n' "$redis_password" "$redis_port" >"$state/redis.url"
)
# Redis and the orchestrator get sessions of their own: a terminal's Ctrl-C reaches only this
# script, whose clean-up then stops the flow (its pump with it) before stopping them. Caught by
# them too, the orchestrator would be gone before the stop and leave the pump running.
setsid redis-server "$state/redis.conf" --port "$redis_port" --bind 127.0.0.1 --save "" \
    --appendonly no --dir "$state" >"$state/redis.log" 2>&1 &
pids+=($!)

# A fresh master key for flow secrets, readable by this user only; never committed anywhere.
(umask 077 && "$bin/pumphouse" secrets new-key >"$state/master.key")

# The Redis URL (with its password) from a file; a PostgreSQL store's URL would go in
# PUMPHOUSE_STORE or --store-file the same way. The SQLite file is made with mode 0600.
setsid "$bin/pumphouse" serve --listen "$listen" --store "sqlite://$state/pumphouse.db" \
    --redis-file "$state/redis.url" --backend "$backend" --log-format text \
    --master-key-file "$state/master.key" \
    2> >(setsid tee "$state/pumphouse.log" >&2) &
server_pid=$!
pids+=("$server_pid")

for _ in $(seq 1 100); do
    curl -fsS "http://$listen/readyz" >/dev/null 2>&1 && break
    kill -0 "$server_pid" 2>/dev/null || die "the orchestrator exited; see $state/pumphouse.log"
    sleep 0.2
done
curl -fsS "http://$listen/readyz" >/dev/null || die "the orchestrator is not ready; see $state/pumphouse.log"

export PUMPHOUSE_API="http://$listen"
applied="$("$bin/pumphouse" flow apply -f examples/hello.yaml)"
url="$(grep -o 'http://[^ ]*/webhook/[^ ]*' <<<"$applied")"
"$bin/pumphouse" flow start hello

cat <<MSG

pumphouse is up ($backend backend) with the flow "hello". Run it with its webhook:

  curl -s -X POST -H 'content-type: application/json' -d '{"name": "ada"}' $url

The flow scales to zero after 30 s without work (\`flow ls\` shows it idle); the same curl
line wakes it again. See what it did:

  $bin/pumphouse --api $PUMPHOUSE_API flow executions hello
  $bin/pumphouse --api $PUMPHOUSE_API flow logs hello

Give it a secret (encrypted with the key in $state/master.key; the pump sees it as
API_KEY from its next start):

  printf %s "\$VALUE" | $bin/pumphouse --api $PUMPHOUSE_API flow secret set hello API_KEY

Ctrl-C stops everything.
MSG
wait "$server_pid"
