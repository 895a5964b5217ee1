#!/usr/bin/env bash
# Time every registered cell's training step on the same shapes, against the LSTM: the
# table of the long-memory issue (results/bench/cells.csv, results/bench/cells.md).
# Each shape runs in its own process; cells are interleaved shape by shape and the grid
# is repeated ROUNDS times (the table takes the median per shape).
#
#   scripts/bench-cells.sh
#   CELLS=lstm,mingru HIDDEN=64 SEQ_LENS=100 THREADS=1 ROUNDS=1 scripts/bench-cells.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CELLS=${CELLS:-lstm,gru,rnn,indrnn,mingru,minlstm,lru,exprnn}
HIDDEN=${HIDDEN:-64,128,256}
SEQ_LENS=${SEQ_LENS:-100,1000}
BATCH=${BATCH:-32}
THREADS=${THREADS:-1,2}
ROUNDS=${ROUNDS:-2}
REPEATS=${REPEATS:-10}
OUT=${OUT:-results/bench}
RNNLAB=${RNNLAB:-target/release/rnnlab}
mkdir -p "$OUT"
if [ "$RNNLAB" = target/release/rnnlab ]; then cargo build --release --bin rnnlab; fi
grep -m1 'model name' /proc/cpuinfo || true

echo impl,cell,hidden,seq_len,batch,threads,ms_per_step,seq_steps_per_s,peak_rss_mb,gflop_per_s > "$OUT/cells.csv"
for round in $(seq "$ROUNDS"); do
  for threads in ${THREADS//,/ }; do
    for seq_len in ${SEQ_LENS//,/ }; do
      for hidden in ${HIDDEN//,/ }; do
        for cell in ${CELLS//,/ }; do
          "$RNNLAB" bench --child --impl rnnlab --cells "$cell" --hidden "$hidden" --seq-len "$seq_len" \
            --batch "$BATCH" --threads "$threads" --repeats "$REPEATS" | tee -a "$OUT/cells.csv"
        done
      done
    done
  done
done
python3 scripts/bench_ratios.py --versus lstm "$OUT/cells.csv" | tee "$OUT/cells.md"
