#!/usr/bin/env bash
# Regenerates results/faq: trains every FAQ and article experiment (skipping runs that
# are already complete), then draws their figures and writes their reports.
#
#   scripts/run-faq.sh            the full suite (about an hour on 2 cores)
#   QUICK=1 scripts/run-faq.sh    every grid with 100 steps (minutes), into results/faq-quick
#   FORCE=1 scripts/run-faq.sh    retrain complete runs too (same numbers, bit for bit)
#   JOBS=4 OUT=elsewhere scripts/run-faq.sh
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=${JOBS:-2}
quick=${QUICK:-0}
if [ "$quick" = 1 ]; then out=${OUT:-results/faq-quick}; else out=${OUT:-results/faq}; fi

cargo build --release -p rnnlab
rnnlab=target/release/rnnlab

started=$(date +%s)
for name in faq-lstm-vs-gru faq-peephole faq-long-sequences faq-units article-keras-lstm article-keras-gru; do
    file=experiments/$name.yaml
    args=()
    if [ "${FORCE:-0}" = 1 ]; then args+=(--force); fi
    if [ "$quick" = 1 ]; then
        case $name in
            article-*) args+=(--set train.epochs=1 --set train.samples=320 --set train.eval_samples=200) ;;
            *) args+=(--set train.steps=100 --set train.eval_every=50 --set train.eval_samples=200) ;;
        esac
    fi
    echo "== $name" >&2
    t0=$(date +%s)
    "$rnnlab" run "$file" --out "$out" --jobs "$jobs" "${args[@]}"
    echo "$name: $(( $(date +%s) - t0 )) s" >&2
done
echo "all: $(( $(date +%s) - started )) s" >&2
