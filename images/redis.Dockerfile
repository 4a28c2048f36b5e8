# Redis 7 for the compose stack, on the Debian base ops/build-compose-images.sh makes with
# debootstrap (pumphouse/debian:bookworm; no registry is reachable, so nothing is pulled).
# Build it with ops/build-compose-images.sh.
#
# It listens on every interface of its container with protected mode off: reachable only from
# the compose network (the compose file publishes no port for it). Append-only persistence is
# on, under /data (a volume), so the pump events stream survives a restart.
FROM pumphouse/debian:bookworm

RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /data \
    && chown redis:redis /data

VOLUME /data
WORKDIR /data
USER redis
EXPOSE 6379

CMD ["redis-server", "--bind", "0.0.0.0", "--protected-mode", "no", "--appendonly", "yes", "--dir", "/data"]
