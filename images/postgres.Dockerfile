# PostgreSQL 15 for the compose stack, on the Debian base ops/build-compose-images.sh makes with
# debootstrap (pumphouse/debian:bookworm; no registry is reachable, so nothing is pulled).
# Build it with ops/build-compose-images.sh, which puts compose/postgres-entrypoint.sh in the
# build context.
#
# On first start (an empty $PGDATA) the entrypoint runs initdb as the postgres user, creates the
# role $POSTGRES_USER with $POSTGRES_PASSWORD and the database $POSTGRES_DB it owns (pumphouse /
# pumphouse / pumphouse by default), and allows password (scram-sha-256) logins from any
# address; then it runs postgres listening on 0.0.0.0. Reachable only from the compose network:
# the compose file publishes no port for it.
FROM pumphouse/debian:bookworm

# No main cluster from the package's postinst: the entrypoint makes its own in $PGDATA.
RUN mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/pumphouse.conf \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/lib/postgresql/data /run/postgresql \
    && chown postgres:postgres /var/lib/postgresql/data /run/postgresql \
    && chmod 700 /var/lib/postgresql/data

COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
RUN chmod 755 /usr/local/bin/postgres-entrypoint.sh

ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data \
    POSTGRES_USER=pumphouse \
    POSTGRES_PASSWORD=pumphouse \
    POSTGRES_DB=pumphouse

VOLUME /var/lib/postgresql/data
EXPOSE 5432
# SIGINT is PostgreSQL's "fast" shutdown: sessions are ended and it stops at once, cleanly.
STOPSIGNAL SIGINT

ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
CMD ["postgres"]
