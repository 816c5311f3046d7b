#!/usr/bin/env bash
# Run the timing-sensitive test binaries (bot end-to-end, engine queue,
# pipeline, training) N times in a row on an idle machine, then M more times
# while two CPU hogs keep both cores busy, and report every test that failed
# with the run it failed in. A test that fails here even once is flaky: fix
# it at its cause (a fixed seed, an event to wait on), not with a timeout.
#
#   tools/stress-tests.sh [N=10] [M=1] [TEST_BINARY ...]
#
# Logs go to target/stress/; the exit status is 1 if anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."

runs=${1:-10}
loaded=${2:-1}
shift $(($# > 2 ? 2 : $#))
binaries=("$@")
[ ${#binaries[@]} -gt 0 ] || binaries=(bot_e2e engine_queue pipeline train train_cli)

log_dir=target/stress
mkdir -p "$log_dir"
args=()
for b in "${binaries[@]}"; do args+=(--test "$b"); done
# Build once, outside the timed loop.
cargo test --release --locked "${args[@]}" --no-run -q || exit 1

failures=()
run_once() { # label
    local label=$1 out="$log_dir/$1.log"
    if cargo test --release --locked "${args[@]}" >"$out" 2>&1; then
        echo "$label: pass"
    else
        local failed
        failed=$(grep -E '^test .* FAILED$' "$out" | sed -E 's/^test (.*) \.\.\. FAILED$/\1/')
        [ -n "$failed" ] || failed="(no test named: see $out)"
        echo "$label: FAILED: $(echo "$failed" | tr '\n' ' ')"
        while read -r t; do failures+=("$label: $t"); done <<<"$failed"
    fi
}

for i in $(seq 1 "$runs"); do run_once "idle-$i"; done

if [ "$loaded" -gt 0 ]; then
    hogs=()
    for _ in 1 2; do
        (while :; do :; done) &
        hogs+=($!)
    done
    trap 'kill "${hogs[@]}" 2>/dev/null' EXIT
    for i in $(seq 1 "$loaded"); do run_once "loaded-$i"; done
    kill "${hogs[@]}" 2>/dev/null
    trap - EXIT
fi

echo
if [ ${#failures[@]} -eq 0 ]; then
    echo "no failures in $runs idle and $loaded loaded runs of: ${binaries[*]}"
    exit 0
fi
echo "${#failures[@]} failure(s):"
printf '  %s\n' "${failures[@]}"
exit 1
