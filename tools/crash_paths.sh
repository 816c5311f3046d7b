#!/usr/bin/env bash
# The crash-path figures of tests/crash_paths.rs, many rounds over (issue 29):
#   - SIGKILL during the results store's first creation, KILLS times at each
#     of its two steps (the test hook C2G_TEST_STORE_PAUSE stops the bot
#     there), each followed by a start that must open the store with no
#     corruption warning and leave no .corrupt file;
#   - SIGTERM with the Discord gateway unreachable, TERMS runs with the fake
#     Discord refusing gateway connections, and TERMS runs as in the issue:
#     discord.api_base at a closed port, so that serenity falls back to the
#     public gateway host (which must not be reachable from here: skip with
#     CLOSED_API=0 where it is). Each must exit 0 within
#     bot.shutdown_grace_s (2 s in the test) + 2 s.
# Usage: tools/crash_paths.sh [KILLS per step, default 10] [TERMS, default 10]
# The full output goes to target/crash_paths.log; the figures are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
kills=${1:-10}
terms=${2:-10}
log=target/crash_paths.log
: >"$log"

run() {
    # One test of tests/crash_paths.rs with its output kept; fails loudly.
    if ! cargo test --release --locked --test crash_paths "$1" -- --exact --nocapture >>"$log" 2>&1; then
        echo "FAILED: $1 (see $log)" >&2
        tail -40 "$log" >&2
        exit 1
    fi
}

C2G_KILL_ROUNDS=$kills run a_kill_while_the_store_is_first_created_is_not_corruption
C2G_SIGTERM_ROUNDS=$terms run sigterm_stops_a_bot_that_never_reached_the_gateway
if [ "${CLOSED_API:-1}" != 0 ]; then
    C2G_SIGTERM_ROUNDS=$terms C2G_SIGTERM_API=closed run sigterm_stops_a_bot_that_never_reached_the_gateway
fi
grep -E '^(kill [0-9]+ at|[0-9]+ of [0-9]+ kills|run [0-9]+, gateway never reached|SIGTERM, gateway never reached)' "$log"
