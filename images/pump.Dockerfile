# The reference pump, FROM scratch.
#
# Build it with ops/build-images.sh, not by hand: the build context is assembled there and holds
#   rootfs/pump                                   the pump binary (glibc, dynamically linked)
#   rootfs/lib/..., rootfs/lib64/...              the shared libraries `ldd` lists, at their
#                                                 own paths, loader /lib64/ld-linux-x86-64.so.2
#                                                 included
# No registry is reachable here, so there is no base image: the image is exactly those files.
# Name resolution still works: glibc 2.34+ has the `files` and `dns` NSS modules built in, and
# Docker mounts /etc/hosts and /etc/resolv.conf into every container.
FROM scratch

COPY rootfs/ /

# nobody:nogroup, numeric because the image has no /etc/passwd. The Docker backend sets the same
# user (and a read-only root filesystem, no capabilities); setting it here keeps a bare
# `docker run` of the image non-root too.
USER 65534:65534

ENTRYPOINT ["/pump"]
