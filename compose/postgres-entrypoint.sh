#!/bin/bash
# Entrypoint of pumphouse/postgres:15 (images/postgres.Dockerfile).
#
# First start (no $PGDATA/PG_VERSION): initdb as the postgres user, then, on a server that
# listens on its Unix socket only, create the role $POSTGRES_USER (password $POSTGRES_PASSWORD)
# and the database $POSTGRES_DB it owns, and allow scram-sha-256 password logins from any
# address (the container is reachable from its compose network only). Every start: run
# postgres as the postgres user, listening on 0.0.0.0.
set -euo pipefail

: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=pumphouse}"
: "${POSTGRES_PASSWORD:=pumphouse}"
: "${POSTGRES_DB:=pumphouse}"
export PGDATA

log() { echo "postgres-entrypoint: $*" >&2; }

# Anything but `postgres ...` (a shell, psql) runs as asked.
if [[ "${1:-}" != postgres ]]; then
    exec "$@"
fi

as_postgres() {
    if [[ $EUID -eq 0 ]]; then
        setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
    else
        "$@"
    fi
}

if [[ $EUID -eq 0 ]]; then
    mkdir -p "$PGDATA" /run/postgresql
    chown postgres:postgres "$PGDATA" /run/postgresql
    chmod 700 "$PGDATA"
fi

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
    if [[ -z "$POSTGRES_PASSWORD" ]]; then
        log "POSTGRES_PASSWORD is empty; set one (the role logs in with it over the network)"
        exit 1
    fi
    log "initialising $PGDATA (role $POSTGRES_USER, database $POSTGRES_DB)"
    as_postgres initdb --pgdata="$PGDATA" --username=postgres --encoding=UTF8 \
        --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null

    # Unix socket only while the database is being set up: nobody can connect half-way.
    as_postgres pg_ctl --pgdata="$PGDATA" --wait --silent \
        --options="-c listen_addresses='' -c unix_socket_directories=/run/postgresql" start
    psql=(psql --host=/run/postgresql --username=postgres --dbname=postgres --no-psqlrc
        --quiet --set=ON_ERROR_STOP=1
        --set=user="$POSTGRES_USER" --set=password="$POSTGRES_PASSWORD" --set=db="$POSTGRES_DB")
    if [[ "$POSTGRES_USER" == postgres ]]; then
        as_postgres "${psql[@]}" <<<"ALTER ROLE postgres PASSWORD :'password';"
    else
        as_postgres "${psql[@]}" <<<"CREATE ROLE :\"user\" LOGIN PASSWORD :'password';"
    fi
    if [[ "$POSTGRES_DB" != postgres ]]; then
        as_postgres "${psql[@]}" <<<"CREATE DATABASE :\"db\" OWNER :\"user\";"
    fi
    as_postgres pg_ctl --pgdata="$PGDATA" --wait --silent --mode=fast stop

    cat >>"$PGDATA/pg_hba.conf" <<'HBA'

# Added by postgres-entrypoint.sh: password logins from the compose network.
host    all             all             0.0.0.0/0               scram-sha-256
host    all             all             ::/0                    scram-sha-256
HBA
    log "initialised"
fi

shift
if [[ $EUID -eq 0 ]]; then
    exec setpriv --reuid=postgres --regid=postgres --init-groups -- \
        postgres -D "$PGDATA" -c listen_addresses=0.0.0.0 -c unix_socket_directories=/run/postgresql "$@"
fi
exec postgres -D "$PGDATA" -c listen_addresses=0.0.0.0 -c unix_socket_directories=/run/postgresql "$@"
