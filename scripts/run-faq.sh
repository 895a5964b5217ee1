#!/usr/bin/env bash
# Regenerates results/faq: trains every FAQ and article experiment (skipping runs that
# are already complete), then draws their figures and writes their reports.
#
#   scripts/run-faq.sh            the full suite (hours on 2 cores; resumable: run it again
#                                 after an interruption and it goes on where it stopped)
#   QUICK=1 scripts/run-faq.sh    every grid, tuning included, with 27 steps of batch 8, into
#                                 results/faq-quick
#   FORCE=1 scripts/run-faq.sh    retrain complete runs too (same numbers, bit for bit)
#   JOBS=4 OUT=elsewhere scripts/run-faq.sh
#   RNNLAB=/path/to/rnnlab scripts/run-faq.sh   use that binary instead of building one
#   ONLY="faq-units faq-exploding" scripts/run-faq.sh   just those experiments
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=${JOBS:-2}
quick=${QUICK:-0}
if [ "$quick" = 1 ]; then out=${OUT:-results/faq-quick}; else out=${OUT:-results/faq}; fi

if [ -z "${RNNLAB:-}" ]; then
    cargo build --release -p rnnlab
fi
rnnlab=${RNNLAB:-target/release/rnnlab}
# Cheapest first, so that an interrupted suite has as many complete experiments as it can.
all="faq-exploding article-keras-lstm article-keras-gru article-keras-budget faq-peephole faq-units faq-units-copy faq-long-sequences faq-lstm-vs-gru"

started=$(date +%s)
for name in ${ONLY:-$all}; do
    file=experiments/$name.yaml
    args=()
    if [ "${FORCE:-0}" = 1 ]; then args+=(--force); fi
    if [ "$quick" = 1 ]; then
        case $name in
            article-*) args+=(--set train.epochs=1 --set train.samples=320 --set train.eval_samples=100) ;;
            *) args+=(--set train.steps=27 --set train.eval_every=9 --set train.eval_samples=100 --set train.batch_size=8) ;;
        esac
    fi
    echo "== $name" >&2
    t0=$(date +%s)
    status=0
    "$rnnlab" run "$file" --out "$out" --jobs "$jobs" "${args[@]}" || status=$?
    seconds=$(( $(date +%s) - t0 ))
    echo "$name: $seconds s" >&2
    # The suite resumes across sessions: each invocation's wall time is kept, so the
    # total is the sum of the lines (started, experiment, seconds, exit status).
    mkdir -p "$out"
    printf '%s\t%s\t%s\t%s\n' "$(date -u -d "@$t0" +%FT%TZ)" "$name" "$seconds" "$status" >> "$out/run-faq-times.tsv"
    if [ "$status" != 0 ]; then exit "$status"; fi
done
echo "all: $(( $(date +%s) - started )) s" >&2
