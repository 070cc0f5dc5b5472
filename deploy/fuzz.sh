#!/usr/bin/env bash
# Runs every fuzz target (proptest properties in each crate's `mod fuzz`, on
# the stable toolchain) in an optimised build until at least ORCH_FUZZ_TOTAL
# inputs (default 1,000,000) have been decoded; prints the inputs per target
# and the total; exits non-zero on any failure — a panic, a wrong result, or
# a crash such as a stack overflow.
#
#   deploy/fuzz.sh                          # >= 1,000,000 inputs, fresh seed
#   ORCH_FUZZ_TOTAL=5000000 deploy/fuzz.sh  # a longer run
#   ORCH_FUZZ_SEED=1764000000 deploy/fuzz.sh  # replay a run (the seed is printed)
#
# The `fuzz` profile is `release` with overflow checks and debug assertions
# on, so arithmetic bugs fail loudly instead of wrapping.
set -euo pipefail
cd "$(dirname "$0")/.."

total=${ORCH_FUZZ_TOTAL:-1000000}
seed=${ORCH_FUZZ_SEED:-$(date +%s)}
profile=${ORCH_FUZZ_PROFILE:-fuzz}
packages=(orch-shared orch-worker orch-providers orch-coordinator orch-web)
log="${CARGO_TARGET_DIR:-target}/fuzz-$seed.log"

args=(--profile "$profile" --lib --no-fail-fast)
for p in "${packages[@]}"; do
    args+=(-p "$p")
done

started=$(date +%s)
echo "== building the fuzz targets (profile $profile)"
cargo test "${args[@]}" --no-run

targets=$(cargo test "${args[@]}" -- --list fuzz:: 2>/dev/null | grep -c ': test$' || true)
if [ "$targets" -eq 0 ]; then
    echo "no fuzz targets found" >&2
    exit 1
fi
per_target=$(( (total + targets - 1) / targets ))
built=$(date +%s)

echo "== $targets targets x $per_target inputs, ORCH_FUZZ_SEED=$seed (log: $log)"
mkdir -p "$(dirname "$log")"
status=0
ORCH_FUZZ_CASES=$per_target ORCH_FUZZ_SEED=$seed \
    cargo test "${args[@]}" -- fuzz:: --nocapture >"$log" 2>&1 || status=$?
finished=$(date +%s)

# One line per target: `orch-fuzz target=<name> inputs=<n> ms=<t>[ FAILED]`.
grep '^orch-fuzz target=' "$log" | sort | awk -v want="$targets" '
    {
        split($2, t, "="); split($3, n, "="); split($4, m, "=");
        printf "  %-34s %10d inputs %8.1f s%s\n", t[2], n[2], m[2] / 1000, ($5 == "FAILED" ? "  FAILED" : "");
        sum += n[2]; seen++
    }
    END {
        printf "  %-34s %10d inputs in %d targets (of %d)\n", "total", sum, seen, want
    }'

reported=$(grep -c '^orch-fuzz target=' "$log" || true)
inputs=$(grep '^orch-fuzz target=' "$log" | awk '{ split($3, n, "="); sum += n[2] } END { print sum + 0 }')
echo "== build $(( built - started )) s, run $(( finished - built )) s"

if [ "$status" -ne 0 ] || [ "$reported" -ne "$targets" ] || grep -q 'FAILED' <(grep '^orch-fuzz' "$log"); then
    echo "== FAILED (exit $status); failures and crashes:" >&2
    grep -E "panicked|fuzz target|minimal input|reproduce with|signal:|error: test failed|FAILED" "$log" | head -40 >&2 || true
    echo "full log: $log" >&2
    exit 1
fi
if [ "${inputs:-0}" -lt "$total" ]; then
    echo "== FAILED: only $inputs inputs of $total" >&2
    exit 1
fi
echo "== OK: $inputs inputs, 0 failures (ORCH_FUZZ_SEED=$seed)"
