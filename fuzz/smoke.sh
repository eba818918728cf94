#!/usr/bin/env bash
# CI's smoke run of the fuzz targets: builds them and runs each for a few seconds from its seed
# corpus and its regression inputs (the inputs of the bugs fuzzing found), failing on any crash.
# Needs only the stable toolchain: cargo-fuzz is installed if missing. The long runs are in README.md.
set -euo pipefail
cd "$(dirname "$0")"

secs=${FUZZ_SMOKE_SECONDS:-10}
targets=(frame_decoder request_parser config_parser stored_value)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install --locked cargo-fuzz@0.13.2
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT

./seed.sh
cargo fuzz build --sanitizer none

for t in "${targets[@]}"; do
    dirs=("corpus/$t")
    if [ -d "regressions/$t" ]; then dirs+=("regressions/$t"); fi
    echo "== $t: ${secs} s"
    # The first directory takes what the run adds; the regression inputs are only read.
    if ! cargo fuzz run --sanitizer none "$t" "${dirs[@]}" -- \
        -dict="dict/$t.dict" -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz target $t failed (a crash's input is in fuzz/artifacts/$t/)" >&2
        exit 1
    fi
    grep -E '^#[0-9]+[[:space:]]+DONE|^stat::number_of_executed_units' "$log"
done
echo "fuzz smoke: ${#targets[@]} targets ran ${secs} s each without a crash"
