#!/usr/bin/env bash
# Builds the four images compose/docker-compose.yml runs, under the tags it names:
#   pumphouse/orchestrator:dev  FROM scratch: the release `pumphouse` binary and its ldd libraries
#   pumphouse/pump:dev          FROM scratch: the release reference pump (ops/build-images.sh)
#   pumphouse/redis:7           Debian bookworm + redis-server
#   pumphouse/postgres:15       Debian bookworm + postgresql-15
#
# Usage: ops/build-compose-images.sh [--rebuild-base]
#   --rebuild-base    debootstrap pumphouse/debian:bookworm again even though it exists
#   DEBIAN_MIRROR     Debian mirror for debootstrap and the images' apt (default: the one this
#                     machine's /etc/apt/sources.list* uses, else http://deb.debian.org/debian)
#   CARGO_TARGET_DIR  cargo's target directory (default <repo>/target)
#
# No image registry is reachable, so nothing is pulled: the Redis and PostgreSQL images start
# from a Debian base made here with `debootstrap --variant=minbase` and `docker import`
# (pumphouse/debian:bookworm; made once, then reused). Run as root (debootstrap needs it).
# Running it again is safe: cargo and the Docker layer cache make an unchanged rebuild quick.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
base_image=pumphouse/debian:bookworm
orchestrator_image=pumphouse/orchestrator:dev
pump_image=pumphouse/pump:dev
redis_image=pumphouse/redis:7
postgres_image=pumphouse/postgres:15

rebuild_base=false
for arg in "$@"; do
    case "$arg" in
        --rebuild-base) rebuild_base=true ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-compose-images: unknown argument '$arg'; usage: ops/build-compose-images.sh [--rebuild-base]" >&2; exit 2 ;;
    esac
done

say() { echo "build-compose-images: $*"; }
die() { echo "build-compose-images: error: $*" >&2; exit 1; }

# --- preflight: fail before any slow step ------------------------------------------------
command -v docker >/dev/null || die "the docker CLI is not installed; apt-get install docker.io"
if ! docker_err="$(docker version --format '{{.Server.Version}}' 2>&1 >/dev/null)"; then
    die "cannot reach the Docker engine (${DOCKER_HOST:-unix:///var/run/docker.sock}): ${docker_err}
start dockerd first, or point DOCKER_HOST at a running engine"
fi
command -v cargo >/dev/null || die "cargo is not installed; the orchestrator and pump images need a Rust toolchain"
command -v ldd >/dev/null || die "ldd is not installed (it lists the libraries the scratch images need)"

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

need_base=false
if $rebuild_base || ! image_exists "$base_image"; then
    need_base=true
    [[ $EUID -eq 0 ]] || die "making $base_image needs root (debootstrap); run as root, or build it once as root"
    command -v debootstrap >/dev/null || die "debootstrap is not installed; apt-get install -y debootstrap"
fi

# The mirror this machine's apt uses (deb822 `URIs:` or one-line `deb URI suite`), so the
# images fetch from wherever this machine is allowed to.
detect_mirror() {
    local f line uri
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list; do
        [[ -r "$f" ]] || continue
        while IFS= read -r line; do
            uri=""
            case "$line" in
                URIs:*) uri="$(awk '{print $2}' <<<"$line")" ;;
                deb\ *) uri="$(awk '{for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) {print $i; exit}}' <<<"$line")" ;;
            esac
            # The main archive, not -security, -ports or some third-party repository.
            if [[ "$uri" =~ ^https?://[^[:space:]]+/debian/?$ ]]; then
                echo "${uri%/}"
                return
            fi
        done <"$f"
    done
    echo "http://deb.debian.org/debian"
}
mirror="${DEBIAN_MIRROR:-$(detect_mirror)}"
security_mirror="${DEBIAN_SECURITY_MIRROR:-${mirror}-security}"

built=()

# --- pumphouse/debian:bookworm -----------------------------------------------------------
if $need_base; then
    say "making $base_image with debootstrap --variant=minbase bookworm from $mirror (a few minutes)"
    rootfs="$(mktemp -d "${TMPDIR:-/tmp}/pumphouse-debian.XXXXXX")"
    # shellcheck disable=SC2064  # expand now: the path is fixed
    trap "rm -rf '$rootfs'" EXIT
    if ! debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1; then
        tail -n 30 "$rootfs.log" >&2
        die "debootstrap failed (full log: $rootfs.log); is $mirror reachable? set DEBIAN_MIRROR to another mirror"
    fi
    rm -f "$rootfs.log"
    # What the official Debian images do: no services started by package scripts (there is no
    # init in a container), no recommends, apt lists and caches not kept in layers.
    cat >"$rootfs/usr/sbin/policy-rc.d" <<'EOF'
#!/bin/sh
# Containers have no init system: package scripts must not start services.
exit 101
EOF
    chmod 755 "$rootfs/usr/sbin/policy-rc.d"
    cat >"$rootfs/etc/apt/apt.conf.d/90pumphouse" <<'EOF'
APT::Install-Recommends "false";
APT::Install-Suggests "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Acquire::Languages "none";
EOF
    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security_mirror bookworm-security main
EOF
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
    : >"$rootfs/etc/hostname"
    tar -C "$rootfs" --numeric-owner -c . | docker import \
        --change 'CMD ["/bin/bash"]' \
        --change 'ENV LANG=C.UTF-8' \
        - "$base_image" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    built+=("$base_image")
else
    say "$base_image exists; skipping debootstrap (--rebuild-base makes it again)"
fi

# --- the scratch images --------------------------------------------------------------------
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac

say "building the pumphouse binary (release${PUMPHOUSE_FEATURES:+, features $PUMPHOUSE_FEATURES})"
# PUMPHOUSE_FEATURES=kubernetes builds the orchestrator image for the Helm chart.
(cd "$repo" && cargo build --release -p pumphouse --bin pumphouse ${PUMPHOUSE_FEATURES:+--features "$PUMPHOUSE_FEATURES"})
binary="$target_dir/release/pumphouse"
[[ -x "$binary" ]] || die "cargo finished but $binary is not there; is CARGO_TARGET_DIR right?"

context="$(mktemp -d "${TMPDIR:-/tmp}/pumphouse-orchestrator-image.XXXXXX")"
# shellcheck disable=SC2064
trap "rm -rf '$context'" EXIT
mkdir -p "$context/rootfs"
cp "$binary" "$context/rootfs/pumphouse"
# Every absolute path ldd prints: the libraries and the loader, under the paths the binary asks
# for (`cp -L` copies what a symlink points at).
ldd_out="$(ldd "$binary" 2>&1)" || true
if grep -q 'not found' <<<"$ldd_out"; then
    die "pumphouse needs libraries this machine does not have:
$ldd_out"
fi
libs="$(grep -o '/[^ ]*' <<<"$ldd_out" || true)"
if [[ -z "$libs" ]] && ! grep -q 'not a dynamic executable\|statically linked' <<<"$ldd_out"; then
    die "cannot tell which libraries $binary needs; ldd said:
$ldd_out"
fi
for lib in $libs; do
    mkdir -p "$context/rootfs$(dirname "$lib")"
    cp -L "$lib" "$context/rootfs$lib"
done
# A /tmp for anything that wants one; the image has no other directories.
mkdir -m 1777 "$context/rootfs/tmp"
cp "$repo/images/orchestrator.Dockerfile" "$context/Dockerfile"
say "building $orchestrator_image from $binary and $(wc -w <<<"$libs") libraries"
if ! DOCKER_BUILDKIT=0 docker build -t "$orchestrator_image" "$context" >"$context.log" 2>&1; then
    tail -n 30 "$context.log" >&2
    die "docker build of $orchestrator_image failed (full log: $context.log)"
fi
rm -f "$context.log"
rm -rf "$context"
trap - EXIT
built+=("$orchestrator_image")

say "building $pump_image (ops/build-images.sh --release)"
PUMP_IMAGE="$pump_image" "$repo/ops/build-images.sh" --release
built+=("$pump_image")

# --- the Debian-based services -------------------------------------------------------------
build_debian_image() {
    local tag="$1" dockerfile="$2"
    shift 2
    local context
    context="$(mktemp -d "${TMPDIR:-/tmp}/pumphouse-image.XXXXXX")"
    cp "$repo/$dockerfile" "$context/Dockerfile"
    local f
    for f in "$@"; do cp "$repo/$f" "$context/"; done
    say "building $tag from $dockerfile"
    local log="$context.log"
    if ! DOCKER_BUILDKIT=0 docker build -t "$tag" "$context" >"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -rf "$context"
        die "docker build of $tag failed (full log: $log)"
    fi
    rm -rf "$context" "$log"
    built+=("$tag")
}
build_debian_image "$redis_image" images/redis.Dockerfile
build_debian_image "$postgres_image" images/postgres.Dockerfile compose/postgres-entrypoint.sh

# --- summary -------------------------------------------------------------------------------
human() { if command -v numfmt >/dev/null; then numfmt --to=iec-i --suffix=B "$1"; else echo "$1 bytes"; fi; }
say "built:"
for tag in "${built[@]}"; do
    read -r id size < <(docker image inspect --format '{{.Id}} {{.Size}}' "$tag")
    printf '  %-28s %-10s %s\n' "$tag" "$(human "$size")" "${id#sha256:}"
done | sed 's/\(sha256:\)\{0,1\}\([0-9a-f]\{12\}\)[0-9a-f]*$/\2/'
