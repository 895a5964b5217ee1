#!/usr/bin/env bash
# Run rnnlab's, candle-nn's and PyTorch's training step on the same shapes, side by side
# on this machine, and print the ratios. Installs PyTorch into .venv if it is missing.
#
# Shapes are interleaved (rnnlab, torch, candle-nn for one shape, then the next) so that
# a slow spell of a shared machine hits both sides alike; ROUNDS > 1 repeats the grid and
# the ratios use the median per shape.
#
#   scripts/bench-compare.sh                      # the full grid of the benchmark issue
#   CELLS=lstm HIDDEN=64,128 SEQ_LENS=100 ROUNDS=3 scripts/bench-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CELLS=${CELLS:-lstm,gru,rnn}
HIDDEN=${HIDDEN:-64,128,256,512}
SEQ_LENS=${SEQ_LENS:-100,1000}
# candle-nn's backward is quadratic in T; by default it is timed on the short sequences.
CANDLE_SEQ_LENS=${CANDLE_SEQ_LENS:-100}
BATCH=${BATCH:-32}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-1}
REPEATS=${REPEATS:-10}
# Untimed steps first, on every side: PyTorch's step keeps getting faster over its first
# tens of steps at small shapes (LSTM H = 128, T = 100: 7–8 ms timed after 2, 6.3 after 50).
WARMUP=${WARMUP:-10}
OUT=${OUT:-results/bench}
mkdir -p "$OUT"

if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  echo "installing PyTorch into .venv (once)" >&2
  python3 -m venv .venv
  .venv/bin/pip install --quiet torch
fi
cargo build --release --bin rnnlab
.venv/bin/python -c 'import torch; print("# torch", torch.__version__)'
grep -m1 'model name' /proc/cpuinfo || true

header=impl,cell,hidden,seq_len,batch,threads,ms_per_step,seq_steps_per_s,peak_rss_mb,gflop_per_s,device
for impl in rnnlab torch candle-nn; do echo "$header" > "$OUT/$impl.csv"; done
for round in $(seq "$ROUNDS"); do
  for cell in ${CELLS//,/ }; do
    for seq_len in ${SEQ_LENS//,/ }; do
      for hidden in ${HIDDEN//,/ }; do
        shape=(--cells "$cell" --hidden "$hidden" --seq-len "$seq_len" --batch "$BATCH" --threads "$THREADS")
        ./target/release/rnnlab bench --child --impl rnnlab "${shape[@]}" --warmup "$WARMUP" --repeats "$REPEATS" | tee -a "$OUT/rnnlab.csv"
        .venv/bin/python scripts/bench_torch.py --child "{\"cell\": \"$cell\", \"hidden\": $hidden, \"seq_len\": $seq_len, \"batch\": $BATCH, \"threads\": $THREADS, \"warmup\": $WARMUP, \"repeats\": $REPEATS, \"max_seconds\": 30, \"device\": \"cpu\"}" | tee -a "$OUT/torch.csv"
        if [[ ",$CANDLE_SEQ_LENS," == *",$seq_len,"* && "$cell" != rnn ]]; then
          ./target/release/rnnlab bench --child --impl candle-nn "${shape[@]}" --repeats 3 | tee -a "$OUT/candle-nn.csv"
        fi
      done
    done
  done
done
# The machine's GEMM peak at the same thread count, for the table's share-of-peak column.
peak=$(./target/release/rnnlab bench --peak 2048 --threads "$THREADS" --repeats 5 | tee "$OUT/peak.txt" | grep '^peak,' | sed -E 's/.*,([0-9.]+) GFLOP\/s/\1/')
python3 scripts/bench_ratios.py --peak "$peak" "$OUT/rnnlab.csv" "$OUT/candle-nn.csv" "$OUT/torch.csv" | tee "$OUT/ratios.md"
