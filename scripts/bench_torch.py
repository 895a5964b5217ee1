#!/usr/bin/env python3
"""The PyTorch side of `rnnlab bench`: the same training step on the same shapes.

One step = forward of torch.nn.LSTM/GRU/RNN (batch_first, input 2) over an adding-task
shaped batch, a Linear head on the last step, MSE, backward, Adam (lr 1e-3). Warm-up,
then the median of repeated steps. Denormals are flushed to zero, as rnnlab's kernels
do. Each shape runs in a fresh process, so its peak RSS
(ru_maxrss) is its own. Writes the CSV columns of `rnnlab bench` with impl=torch.
With --device cuda the step runs on the GPU (cuDNN's fused RNN kernels), each timed
step ending with a device synchronisation, as rnnlab's does with its copies back.

    .venv/bin/python scripts/bench_torch.py --threads 2 --out results/bench/torch.csv
    python3 scripts/bench_torch.py --device cuda --hidden 128,256,512 --out gpu-torch.csv
"""

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

# rnnlab bench's header; the last four columns (where a GPU step's time goes inside
# rnnlab) stay empty here.
HEADER = "impl,cell,hidden,seq_len,batch,threads,ms_per_step,seq_steps_per_s,peak_rss_mb,gflop_per_s,device,counted_ms,gpu_ms,copy_ms,copy_bytes"


def measure(cell, hidden, seq_len, batch, threads, warmup, repeats, max_seconds, device):
    import torch

    torch.set_num_threads(threads)
    # rnnlab's kernels flush denormal floats to zero in their time loops; PyTorch does not
    # by default, and on long sequences its backward then crawls through denormals
    # (measured here on the Intel Xeon: LSTM H = 256, T = 1000 took 5.5 s a step). Flush
    # them here too, so that the comparison is of the kernels, not of that setting.
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    layer = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](
        2, hidden, batch_first=True
    )
    head = torch.nn.Linear(hidden, 1)
    params = list(layer.parameters()) + list(head.parameters())
    optimizer = torch.optim.Adam(params, lr=1e-3)
    values = torch.rand(batch, seq_len)
    markers = torch.zeros(batch, seq_len)
    half = seq_len // 2
    first = torch.randint(0, half, (batch,))
    second = torch.randint(half, seq_len, (batch,))
    rows = torch.arange(batch)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    xs = torch.stack([values, markers], dim=2)
    ys = (values[rows, first] + values[rows, second]).unsqueeze(1)
    if device != "cpu":
        layer, head = layer.to(device), head.to(device)
        xs, ys = xs.to(device), ys.to(device)
        params = list(layer.parameters()) + list(head.parameters())
        optimizer = torch.optim.Adam(params, lr=1e-3)

    def step():
        optimizer.zero_grad(set_to_none=True)
        out, _ = layer(xs)
        loss = torch.nn.functional.mse_loss(head(out[:, -1]), ys)
        loss.backward()
        optimizer.step()
        if device != "cpu":
            torch.cuda.synchronize()

    started = time.perf_counter()
    for _ in range(warmup):
        step()
        if time.perf_counter() - started > max_seconds:
            break
    times = []
    timing = time.perf_counter()
    while len(times) < repeats:
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1e3)
        if time.perf_counter() - timing > max_seconds:
            break
    ms = statistics.median(times)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    rate = batch * seq_len / (ms / 1e3)
    # rnnlab bench's count: 6 flops (3 multiply-adds) per matrix weight, step and sequence.
    matrix_weights = sum(p.numel() for p in layer.parameters() if p.dim() == 2)
    gflops = 6 * batch * seq_len * matrix_weights / (ms / 1e3) / 1e9
    return f"torch,{cell},{hidden},{seq_len},{batch},{threads},{ms:.3f},{rate:.0f},{peak_mb:.1f},{gflops:.2f},{device},,,,"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="lstm,gru,rnn")
    parser.add_argument("--hidden", default="64,128,256,512")
    parser.add_argument("--seq-len", default="100,1000")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuDNN)")
    parser.add_argument("--out")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(measure(**json.loads(args.child)))
        return
    import torch

    print(f"# torch {torch.__version__}", file=sys.stderr)
    rows = [HEADER]
    print(HEADER)
    for cell in args.cells.split(","):
        for seq_len in map(int, args.seq_len.split(",")):
            for hidden in map(int, args.hidden.split(",")):
                shape = dict(
                    cell=cell, hidden=hidden, seq_len=seq_len, batch=args.batch,
                    threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                    max_seconds=args.max_seconds, device=args.device,
                )
                row = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(shape)],
                    check=True, capture_output=True, text=True,
                ).stdout.strip()
                print(row, flush=True)
                rows.append(row)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(rows) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
