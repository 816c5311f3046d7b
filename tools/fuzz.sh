#!/usr/bin/env bash
# Run every fuzz target (tests/fuzz/) for N cases each (default 1,000,000),
# with the same seeded inputs as `cargo test` runs for its smaller default
# counts; extra arguments go to the test harness (a target's name runs that
# one only, e.g. `tools/fuzz.sh 100000 fuzz_photos`). Each target prints
# `fuzz <name>: N cases, A accepted, R refused, peak heap, failures`; a
# failure's input is kept in target/fuzz-failures/.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-1000000}"
shift || true
C2G_FUZZ_CASES="$n" cargo test --release --locked --test fuzz -- \
    --nocapture --test-threads="${FUZZ_THREADS:-2}" "$@" 2>&1 | grep -E '^fuzz |test result|panicked|failures'
