#!/usr/bin/env bash
# Trains scripts/bitcheck.yaml with two rnnlab binaries, on 2 threads and on 1, and
# compares every run's weights, metrics and gradient flow byte for byte: the check that
# a kernel change kept every number. Exit status 1 if anything differs.
#
#   scripts/bitcheck.sh OLD_BINARY NEW_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# = 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for side in old new; do
    binary=$1; shift
    for jobs in 1 2; do
        "$binary" run scripts/bitcheck.yaml --out "$work/$side-$jobs" --jobs "$jobs" --no-report >&2
    done
done
differ=0 compared=0
for jobs in 1 2; do
    while IFS= read -r file; do
        compared=$((compared + 1))
        if ! cmp -s "$work/old-1/bitcheck/$file" "$work/new-$jobs/bitcheck/$file"; then
            echo "differs (new binary, --jobs $jobs): $file"
            differ=$((differ + 1))
        fi
    done < <(cd "$work/old-1/bitcheck" && find runs \( -name weights.safetensors -o -name metrics.parquet -o -name gradflow.parquet \) | sort)
done
# The old binary against itself on 1 and 2 threads: the thread count must not matter.
while IFS= read -r file; do
    compared=$((compared + 1))
    cmp -s "$work/old-1/bitcheck/$file" "$work/old-2/bitcheck/$file" || { echo "differs (old binary, 1 vs 2 jobs): $file"; differ=$((differ + 1)); }
done < <(cd "$work/old-1/bitcheck" && find runs \( -name weights.safetensors -o -name metrics.parquet -o -name gradflow.parquet \) | sort)
echo "bitcheck: $compared files compared, $differ differ"
[ "$differ" = 0 ]
