#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 60), starting from a copy of its
# seed corpus in a temporary directory, so a run never grows fuzz/corpus/.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Prints one line per target and exits non-zero if any target crashed, hung, ran out of memory
# or failed to build; the failing input is kept under fuzz/artifacts/<target>/ (ignored by
# git), ready for `cargo +nightly fuzz run <target> <file>`. Without a nightly toolchain it
# skips with a message and exits 0.
#
# Environment:
#   FUZZ_BUILD_FLAGS  flags for `cargo fuzz build/run` (default: --debug-assertions, which
#                     turns on overflow checks and debug_assert!s in the library; CI uses
#                     --dev, an unoptimised build that compiles in a third of the time)
#   FUZZ_ARGS         extra libFuzzer flags (default: -timeout=20 -rss_limit_mb=2048)
set -uo pipefail

seconds="${1:-60}"
shift $(( $# > 0 ? 1 : 0 ))
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: fuzz/run.sh [SECONDS] [TARGET...]   (SECONDS must be a positive integer)" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root" || exit 2

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz: skipped: no nightly toolchain ('cargo +nightly' is unavailable; install one with 'rustup toolchain install nightly')"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz is missing; installing it with 'cargo install cargo-fuzz --locked'"
    cargo install cargo-fuzz --locked || { echo "fuzz: FAILED to install cargo-fuzz" >&2; exit 1; }
fi

build_flags="${FUZZ_BUILD_FLAGS-"--debug-assertions"}"
fuzz_args="${FUZZ_ARGS-"-timeout=20 -rss_limit_mb=2048"}"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
if [ "${#targets[@]}" -eq 0 ]; then
    echo "fuzz: no targets found" >&2
    exit 1
fi

# shellcheck disable=SC2086 # flags are word lists
if ! cargo +nightly fuzz build $build_flags; then
    echo "fuzz: FAILED to build the fuzz targets" >&2
    exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/headstart-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

failed=0
summary=()
for target in "${targets[@]}"; do
    corpus="$work/corpus/$target"
    log="$work/$target.log"
    mkdir -p "$corpus" "fuzz/artifacts/$target"
    if [ -d "fuzz/corpus/$target" ]; then
        cp -R "fuzz/corpus/$target/." "$corpus/"
    fi
    seeds=$(find "$corpus" -type f | wc -l)
    echo "fuzz: running $target for ${seconds}s from $seeds seed(s)"
    start=$(date +%s)
    touch "$work/$target.stamp"
    # shellcheck disable=SC2086
    cargo +nightly fuzz run $build_flags "$target" "$corpus" -- \
        -max_total_time="$seconds" -print_final_stats=1 $fuzz_args >"$log" 2>&1
    status=$?
    elapsed=$(( $(date +%s) - start ))
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$')
    # libFuzzer's own time when it finished normally; else wall time (which includes any rebuild).
    fuzzed=$(grep -oE '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 | awk '{print $5}')
    elapsed="${fuzzed:-$elapsed}"
    cov=$(grep -oE '(cov|ft): [0-9]+' "$log" | tail -n 2 | tr '\n' ' ')
    units=$(find "$corpus" -type f | wc -l)
    # With -fork=N (e.g. via FUZZ_ARGS, with -ignore_crashes=1 to keep going after a crash)
    # libFuzzer prints progress lines "#RUNS: cov: … oom/timeout/crash: A/B/C …" instead.
    fork_line=$(grep -E '^#[0-9]+: cov:' "$log" | tail -n 1)
    if [ -n "$fork_line" ]; then
        runs="${fork_line%%:*}"
        runs="${runs#\#}"
        problems=$(grep -oE 'oom/timeout/crash: [0-9/]+' <<<"$fork_line" | awk '{print $2}')
        if [ "$status" -eq 0 ] && [ -n "$problems" ] && [ "$problems" != "0/0/0" ]; then
            status=1
            echo "fuzz: $target: fork mode reported oom/timeout/crash $problems; inputs in fuzz/artifacts/$target/"
        fi
    fi
    if [ "$status" -eq 0 ]; then
        line="ok     $target: ${runs:-?} runs in ${elapsed}s, ${cov}corpus $seeds -> $units"
    else
        failed=1
        artifact=$(find "fuzz/artifacts/$target" -type f ! -name '*.log' -newer "$work/$target.stamp" | sort | tr '\n' ' ')
        reason=$(grep -m 1 -A 1 'panicked at' "$log" | sed 's/^thread .* panicked at/panicked at/' | tr '\n' ' ')
        [ -n "$reason" ] || reason=$(grep -m 1 -oE 'ERROR: (libFuzzer|AddressSanitizer): [^(]+' "$log")
        cp "$log" "fuzz/artifacts/$target/last-failure.log"
        echo "---- $target: the failure (whole log: fuzz/artifacts/$target/last-failure.log) ----"
        first=$(grep -n -m 1 -E '^==[0-9]+==ERROR|ERROR: libFuzzer|panicked at' "$log" | cut -d: -f1)
        if [ -n "$first" ]; then
            tail -n "+$first" "$log" \
                | grep -vE '^ +(at |[0-9]+: )|^ +#[0-9]+ 0x[0-9a-f]+ in (std::|core::|alloc::|<alloc::|__rust|libfuzzer_sys|fuzzer::|rust_fuzzer_test_input|LLVMFuzzerTestOneInput|main |__libc|catch_unwind|\{closure)' \
                | head -n 60
        else
            tail -n 40 "$log"
        fi
        echo "----"
        line="FAILED $target (exit $status): ${reason:-see the log} after ${runs:-?} runs in ${elapsed}s; inputs: ${artifact:-none saved}"
    fi
    echo "fuzz: $line"
    summary+=("$line")
done

echo "== fuzz summary (${seconds}s per target) =="
printf '%s\n' "${summary[@]}"
exit "$failed"
