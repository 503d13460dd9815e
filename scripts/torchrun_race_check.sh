#!/usr/bin/env bash
# Run every multi-process (torchrun) test N times (default 20) while a CPU-bound loop keeps
# another core busy, the condition under which a teardown race once killed rank 1 with
# SIGABRT. Prints one line per run; exits non-zero if any run did not pass.
#   bash scripts/torchrun_race_check.sh [N]
set -uo pipefail
cd "$(dirname "$0")/.."
N=${1:-20}
( while true; do :; done ) &
HOG=$!
failed=0
log=$(mktemp)
trap 'kill $HOG 2>/dev/null; rm -f "$log"' EXIT
for i in $(seq 1 "$N"); do
    timeout 600 .venv/bin/python -m pytest -q tests/test_hierarchical.py tests/test_hypernet.py tests/test_heal.py \
        -k torchrun >"$log" 2>&1
    line=$(tail -1 "$log")
    echo "$(date -u +%T) run $i: $line"
    case "$line" in
        *" 3 passed"*|"3 passed"*) ;;
        *) failed=$((failed + 1))
           grep -E "^FAILED|terminate called|exitcode" "$log" | sed 's/^/    /' ;;  # which test, and how it died
    esac
done
echo "$failed of $N runs did not pass"
[ "$failed" -eq 0 ]
