#!/usr/bin/env bash
# Run rnnlab's, candle-nn's and PyTorch's training step on the same shapes, side by side
# on this machine, and print the ratios. Installs PyTorch into .venv if it is missing.
#
#   scripts/bench-compare.sh                      # the full grid of the benchmark issue
#   CELLS=lstm HIDDEN=64,128 SEQ_LENS=100 THREADS=2 CANDLE_SEQ_LENS=100 scripts/bench-compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CELLS=${CELLS:-lstm,gru,rnn}
HIDDEN=${HIDDEN:-64,128,256,512}
SEQ_LENS=${SEQ_LENS:-100,1000}
# candle-nn's backward is quadratic in T; by default it is timed on the short sequences.
CANDLE_SEQ_LENS=${CANDLE_SEQ_LENS:-100}
BATCH=${BATCH:-32}
THREADS=${THREADS:-2}
OUT=${OUT:-results/bench}
mkdir -p "$OUT"

if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  echo "installing PyTorch into .venv (once)" >&2
  python3 -m venv .venv
  .venv/bin/pip install --quiet torch
fi

cargo build --release --bin rnnlab
common=(--hidden "$HIDDEN" --batch "$BATCH" --threads "$THREADS")
./target/release/rnnlab bench --impl rnnlab --cells "$CELLS" --seq-len "$SEQ_LENS" "${common[@]}" --out "$OUT/rnnlab.csv"
./target/release/rnnlab bench --impl candle-nn --cells "$CELLS" --seq-len "$CANDLE_SEQ_LENS" "${common[@]}" --repeats 3 --out "$OUT/candle-nn.csv"
.venv/bin/python scripts/bench_torch.py --cells "$CELLS" --seq-len "$SEQ_LENS" --hidden "$HIDDEN" --batch "$BATCH" --threads "$THREADS" --out "$OUT/torch.csv"
python3 scripts/bench_ratios.py "$OUT/rnnlab.csv" "$OUT/candle-nn.csv" "$OUT/torch.csv" | tee "$OUT/ratios.md"
