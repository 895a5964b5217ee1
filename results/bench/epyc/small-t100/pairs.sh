cd /work/main
for r in 1 2 3 4 5 6 7 8; do
 for th in 2 1; do
  for h in 64 128; do
   ./target/release/rnnlab bench --child --impl rnnlab --cells lstm --hidden $h --seq-len 100 --batch 32 --threads $th --repeats 50 | tail -1
   .venv/bin/python scripts/bench_torch.py --child "{\"cell\": \"lstm\", \"hidden\": $h, \"seq_len\": 100, \"batch\": 32, \"threads\": $th, \"warmup\": 2, \"repeats\": 50, \"max_seconds\": 30, \"device\": \"cpu\"}" 2>/dev/null | tail -1
  done
 done
done
