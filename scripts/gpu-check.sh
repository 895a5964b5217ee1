#!/usr/bin/env bash
# The CUDA backend on a real GPU, in two halves, because the GPU machine has no Rust:
#
#   scripts/gpu-check.sh build   here: builds the rnnlab binary and the CUDA test binary
#                                into target/gpu-check/ (stripped, to travel with the tree)
#   scripts/gpu-check.sh         on the GPU machine: GPU-vs-CPU parity of every cell with a
#                                CUDA kernel (outputs, every gradient, the gradient flow),
#                                rerun determinism, a short sweep on cuda (twice: the same
#                                bits), and `rnnlab bench --device cuda` beside PyTorch
#                                cuDNN, LSTM and GRU at B = 32, H = 128/256/512,
#                                T = 100/1,000, with each time loop (per step,
#                                persistent) as well, and where rnnlab's GPU step goes
#                                (kernels, host-device copies, the CPU's head, loss and
#                                optimiser: bench_ratios.py's second table)
#
# Output: results/bench/gpu/ (log, CSVs, ratios), copied to $OUT when set. About 4–7
# minutes of device time. CUDA's libraries are looked up in /usr/local/cuda/lib64.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/gpu-check

if [ "${1:-}" = build ]; then
    cargo build --release -p rnnlab
    test_exe=$(cargo test --release -p rnnlab-cells --test cuda --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])')
    mkdir -p "$bin"
    cp "${CARGO_TARGET_DIR:-target}/release/rnnlab" "$bin/rnnlab"
    cp "$test_exe" "$bin/cuda-tests"
    strip "$bin/rnnlab" "$bin/cuda-tests"
    du -h "$bin"/*
    exit 0
fi

out=results/bench/gpu
mkdir -p "$out"
log="$out/gpu-check.log"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export RUST_BACKTRACE=0
exec > >(tee "$log") 2>&1
echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
python3 -c 'import torch; print("torch", torch.__version__, "cuDNN", torch.backends.cudnn.version())' || true

echo "== parity and determinism on the GPU (the gpu_* tests of crates/cells/tests/cuda.rs)"
"$bin/cuda-tests" gpu_ --nocapture --test-threads 1

echo "== a short sweep on cuda, twice (--force): the same numbers"
work=$(mktemp -d)
cat > "$work/gpu-sweep.yaml" <<'EOF'
name: gpu-sweep
description: The LSTM on the adding task on a GPU (scripts/gpu-check.sh).
seeds: [0, 1, 2, 3]
base:
  task: { kind: adding, seq_len: 100 }
  model: { cell: lstm, hidden: 128 }
  train: { lr: 3.0e-3, steps: 300, eval_every: 100, eval_samples: 500, clip: { norm: 1.0 }, device: cuda }
EOF
summaries() { for f in "$work"/out/gpu-sweep/runs/*/summary.yaml; do grep -E '^(final_loss|best_loss):' "$f"; done; }
time "$bin/rnnlab" run "$work/gpu-sweep.yaml" --out "$work/out" --jobs 4 --no-report
summaries > "$work/first.txt"
time "$bin/rnnlab" run "$work/gpu-sweep.yaml" --out "$work/out" --jobs 4 --no-report --force
summaries > "$work/second.txt"
cat "$work/first.txt"
if cmp -s "$work/first.txt" "$work/second.txt"; then echo "rerun: identical"; else echo "rerun: DIFFERENT"; diff "$work/first.txt" "$work/second.txt" || true; fi
echo "the same runs on the CPU (16 threads, 2 jobs), for comparison:"
time "$bin/rnnlab" run "$work/gpu-sweep.yaml" --out "$work/cpu" --jobs 2 --no-report --set train.device=cpu
for f in "$work"/cpu/gpu-sweep/runs/*/summary.yaml; do grep -E '^final_loss:' "$f"; done

echo "== rnnlab bench --device cuda beside PyTorch cuDNN"
shapes=(--cells lstm,gru --hidden 128,256,512 --seq-len 100,1000 --batch 32 --max-seconds 10)
"$bin/rnnlab" bench "${shapes[@]}" --repeats 10 --impl rnnlab --device cuda --threads 4 --out "$out/rnnlab.csv"
python3 scripts/bench_torch.py --cells lstm,gru --hidden 128,256,512 --seq-len 100,1000 --batch 32 \
    --repeats 10 --max-seconds 10 --threads 4 --device cuda --out "$out/torch.csv"
python3 scripts/bench_ratios.py "$out/rnnlab.csv" "$out/torch.csv" | tee "$out/ratios.md"
# Both time loops (same numbers; `auto` above is persistent up to 128 units, per step
# above), to set PERSISTENT_MAX_HIDDEN in crates/cells/src/cuda/mod.rs from measurements.
for loop in per-step persistent; do
    echo "== the time loop: $loop"
    "$bin/rnnlab" bench "${shapes[@]}" --impl rnnlab --device cuda --threads 4 --cuda-loop "$loop" \
        --repeats 5 --out "$out/rnnlab-$loop.csv"
    python3 scripts/bench_ratios.py "$out/rnnlab-$loop.csv" "$out/torch.csv" | tee "$out/ratios-$loop.md"
done

if [ -n "${OUT:-}" ]; then cp -r "$out" "$OUT/"; fi
echo "== done"
