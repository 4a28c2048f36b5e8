# The orchestrator (`pumphouse serve`), FROM scratch.
#
# Build it with ops/build-compose-images.sh, not by hand: the build context is assembled there
# and holds
#   rootfs/pumphouse                              the release binary (glibc, dynamically linked)
#   rootfs/lib/..., rootfs/lib64/...              the shared libraries `ldd` lists, at their own
#                                                 paths, loader /lib64/ld-linux-x86-64.so.2
#                                                 included
#   rootfs/tmp                                    an empty, world-writable /tmp
# No registry is reachable here, so there is no base image: the image is exactly those files.
# Name resolution (redis, postgres on the compose network) works without /etc/nsswitch.conf:
# glibc 2.34+ has the `files` and `dns` NSS modules built in, and Docker mounts /etc/hosts,
# /etc/hostname and /etc/resolv.conf into every container.
#
# Running it: with the Docker backend the orchestrator starts the pumps itself, so it needs the
# engine's socket bind-mounted (-v /var/run/docker.sock:/var/run/docker.sock) and runs as root
# to open it (hence no USER line). Whoever holds that socket controls the host's Docker engine:
# treat this container as privileged. compose/docker-compose.yml sets all of this up.
FROM scratch

COPY rootfs/ /

EXPOSE 8080
ENTRYPOINT ["/pumphouse"]
CMD ["serve"]
