#!/usr/bin/env bash
# Builds the pump image (images/pump.Dockerfile) from the locally built reference pump; with
# --orchestrator, also an orchestrator image (images/orchestrator.Dockerfile) from the
# `pumphouse` binary already built (the workspace build has the kubernetes feature on), for
# the chart's own pod in the test cluster.
#
# Usage: ops/build-images.sh [--release] [--orchestrator]
#   PUMP_IMAGE          tag to build (default pumphouse/pump:dev)
#   ORCHESTRATOR_IMAGE  tag of the orchestrator image (default pumphouse/orchestrator:test)
#   CARGO_TARGET_DIR    cargo's target directory (default <repo>/target)
#
# No registry is reachable, so the image is FROM scratch: the pump binary plus the shared
# libraries `ldd` says it needs, copied under their own paths. The legacy builder is used
# (DOCKER_BUILDKIT=0) because there is no buildx plugin here.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
image="${PUMP_IMAGE:-pumphouse/pump:dev}"
orchestrator_image="${ORCHESTRATOR_IMAGE:-pumphouse/orchestrator:test}"
with_orchestrator=false

profile=debug
cargo_flags=()
for arg in "$@"; do
    case "$arg" in
        --release) profile=release; cargo_flags+=(--release) ;;
        --orchestrator) with_orchestrator=true ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-images: unknown argument '$arg'; usage: ops/build-images.sh [--release] [--orchestrator]" >&2; exit 2 ;;
    esac
done

die() { echo "build-images: $*" >&2; exit 1; }

# Check the engine first: a cargo build is wasted if the image cannot be built afterwards.
command -v docker >/dev/null || die "the docker CLI is not installed; apt-get install docker.io"
if ! docker_err="$(docker version --format '{{.Server.Version}}' 2>&1 >/dev/null)"; then
    die "cannot reach the Docker engine (${DOCKER_HOST:-unix:///var/run/docker.sock}): ${docker_err}
start dockerd first (ops/test.sh does it), or point DOCKER_HOST at a running engine"
fi

echo "build-images: building the pump ($profile)"
(cd "$repo" && cargo build -p pumphouse-pump --bin pump "${cargo_flags[@]}")

target_dir="${CARGO_TARGET_DIR:-$repo/target}"
case "$target_dir" in /*) ;; *) target_dir="$repo/$target_dir" ;; esac

# image_from IMAGE BINARY NAME DOCKERFILE: an image FROM scratch holding BINARY as /NAME, the
# shared libraries it needs, and an empty /tmp.
image_from() {
    local image="$1" binary="$2" name="$3" dockerfile="$4"
    [[ -x "$binary" ]] || die "$binary is not there; build it first (cargo build --workspace --bins), or check CARGO_TARGET_DIR"
    local context
    context="$(mktemp -d "${TMPDIR:-/tmp}/pumphouse-image.XXXXXX")"
    mkdir -p "$context/rootfs/tmp"
    chmod 1777 "$context/rootfs/tmp"
    cp "$binary" "$context/rootfs/$name"
    # A debug binary is mostly debug info; dropping it from the copy keeps the image small
    # while the symbols (for panic backtraces) stay. The cargo output itself is left alone.
    if [[ "$profile" == debug ]] && command -v strip >/dev/null; then
        strip --strip-debug "$context/rootfs/$name"
    fi
    # Every absolute path ldd prints: the libraries and the dynamic loader. `cp -L` copies the
    # file a symlink points at (e.g. /lib64/ld-linux-x86-64.so.2) under the path asked for.
    local ldd_out libs
    ldd_out="$(ldd "$binary" 2>&1)" || true
    if grep -q 'not found' <<<"$ldd_out"; then
        rm -rf "$context"
        die "$name needs libraries this machine does not have:
$ldd_out"
    fi
    libs="$(grep -o '/[^ ]*' <<<"$ldd_out" || true)"
    if [[ -z "$libs" ]] && ! grep -q 'not a dynamic executable\|statically linked' <<<"$ldd_out"; then
        rm -rf "$context"
        die "cannot tell which libraries $binary needs; ldd said:
$ldd_out"
    fi
    for lib in $libs; do
        mkdir -p "$context/rootfs$(dirname "$lib")"
        cp -L "$lib" "$context/rootfs$lib"
    done
    cp "$dockerfile" "$context/Dockerfile"
    echo "build-images: building $image from $(wc -w <<<"$libs") libraries and $binary"
    DOCKER_BUILDKIT=0 docker build --quiet -t "$image" "$context" >/dev/null
    rm -rf "$context"
    local id size
    read -r id size < <(docker image inspect --format '{{.Id}} {{.Size}}' "$image")
    if command -v numfmt >/dev/null; then
        size="$(numfmt --to=iec-i --suffix=B "$size")"
    fi
    echo "build-images: built $image"
    echo "  id:   $id"
    echo "  size: $size"
}

image_from "$image" "$target_dir/$profile/pump" pump "$repo/images/pump.Dockerfile"
if $with_orchestrator; then
    image_from "$orchestrator_image" "$target_dir/$profile/pumphouse" pumphouse "$repo/images/orchestrator.Dockerfile"
fi
