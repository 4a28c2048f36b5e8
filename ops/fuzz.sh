#!/usr/bin/env bash
# Hostile input, part 1: runs each cargo-fuzz target in fuzz/ for a bounded time and fails on
# the first crash, failed invariant or hang, naming the input that caused it and the command
# that replays it.
#
# Usage: ops/fuzz.sh [target...]         (default: every target, 60 s each)
#   FUZZ_SECONDS      seconds per target (default 60)
#   FUZZ_SANITIZER    none (default) or address; our crates forbid unsafe code, so AddressSanitizer
#                     mostly costs speed
# Works with the stable toolchain alone: cargo-fuzz passes nightly-only -Z flags to rustc, and
# RUSTC_BOOTSTRAP=1 lets stable accept them.
# The growing corpus lives in target/fuzz/corpus/<target> (kept between runs, never committed);
# the small committed seeds are in fuzz/seeds/<target>.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
say() { echo "fuzz.sh: $*" >&2; }
die() { say "$*"; exit 1; }

seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-none}"
[[ "$seconds" =~ ^[1-9][0-9]*$ ]] || die "FUZZ_SECONDS=$seconds is not a whole number of seconds above 0"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
    cargo install cargo-fuzz --locked
fi

# cargo fuzz has no --locked: check fuzz/Cargo.lock is current the way --locked would.
cargo metadata --locked --format-version 1 --manifest-path fuzz/Cargo.toml >/dev/null ||
    die "fuzz/Cargo.lock is out of date; run: cargo update --manifest-path fuzz/Cargo.toml --workspace, and commit it"

# The fuzz crate is outside the workspace, so `cargo fmt --all` does not see it.
cargo fmt --manifest-path fuzz/Cargo.toml -- --check ||
    die "the fuzz targets are not formatted; run: cargo fmt --manifest-path fuzz/Cargo.toml"

out="$repo/target/fuzz"
targets=("$@")
((${#targets[@]})) || mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
((${#targets[@]})) || die "no fuzz targets found in fuzz/fuzz_targets"

say "building ${targets[*]} (sanitizer: $sanitizer; the first build takes minutes)"
mkdir -p "$out"
if ! cargo fuzz build --fuzz-dir fuzz --target-dir "$out" -s "$sanitizer" >"$out/build.log" 2>&1; then
    grep -v '^ *Compiling ' "$out/build.log" | tail -n 40 >&2
    die "the fuzz targets do not build; run: RUSTC_BOOTSTRAP=1 cargo fuzz build --fuzz-dir fuzz -s $sanitizer"
fi

failed=()
for t in "${targets[@]}"; do
    [[ -d "fuzz/seeds/$t" ]] || die "fuzz/seeds/$t is missing; every target needs a seed corpus"
    corpus="$out/corpus/$t"
    artifacts="$out/artifacts/$t"
    mkdir -p "$corpus" "$artifacts"
    rm -f "$artifacts"/*
    dict=()
    [[ -f "fuzz/$t.dict" ]] && dict=("-dict=fuzz/$t.dict")
    say "fuzzing $t for ${seconds}s"
    log="$out/$t.log"
    # -timeout: one input running over 10 s is a hang and fails like a crash.
    if ! cargo fuzz run --fuzz-dir fuzz --target-dir "$out" -s "$sanitizer" "$t" \
        "$corpus" "fuzz/seeds/$t" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        found=("$artifacts"/*)
        if [[ -e "${found[0]}" ]]; then
            for a in "${found[@]}"; do
                say "$t: reproducer $a"
                say "  replay: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz -s $sanitizer $t $a"
            done
        else
            say "$t failed without leaving a reproducer; see $log"
        fi
        failed+=("$t")
        continue
    fi
    runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')"
    say "$t: no failure in ${seconds}s, $runs inputs run, corpus $(find "$corpus" -type f | wc -l) files"
done
((${#failed[@]} == 0)) ||
    die "${failed[*]}: found a crash, a failed invariant or a hang (above); fix it, add a regression unit test, and add the input to fuzz/seeds/<target>"
