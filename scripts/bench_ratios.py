#!/usr/bin/env python3
"""Print rnnlab/torch and rnnlab/candle-nn step-time ratios from benchmark CSVs.

    python3 scripts/bench_ratios.py results/bench/rnnlab.csv results/bench/torch.csv
    python3 scripts/bench_ratios.py --versus lstm results/bench/cells.csv
    python3 scripts/bench_ratios.py --peak 170.2 results/bench/rnnlab.csv results/bench/torch.csv

A ratio below 1 means rnnlab's training step is faster. With `--versus CELL`, every
cell's step time against CELL's at the same shape instead (below 1: faster than CELL).
With `--peak GFLOPS` (what `rnnlab bench --peak 2048` measured at the same thread count),
the table adds rnnlab's achieved GFLOP/s (the `gflop_per_s` column: 6 flops per matrix
weight, step and sequence) and its share of that peak. Where a shape was measured in
several rounds, its median step time (and largest peak RSS) is used. Rows of
`rnnlab bench --device cuda` (with `gpu_ms`) add a table of where the GPU step's time
goes, over a few extra steps counted after the timed ones: their mean step, inside the
fused kernels' calls (copies included), the host-device copies alone, and the rest on the
CPU (head, loss, Adam, candle's tensors). Standard library only.
"""

import csv
import statistics
import sys


def rows(paths):
    """Every row of the CSVs with its shape key (cell, hidden, seq_len, batch, threads)."""
    for path in paths:
        with open(path) as f:
            for row in csv.DictReader(f):
                key = (row["cell"], int(row["hidden"]), int(row["seq_len"]), int(row["batch"]), int(row["threads"]))
                yield row, key


def read(paths):
    samples = {}
    memory = {}
    rates = {}
    for row, key in rows(paths):
        samples.setdefault((row["impl"], key), []).append(float(row["ms_per_step"]))
        if row.get("gflop_per_s"):
            rates.setdefault((row["impl"], key), []).append(float(row["gflop_per_s"]))
        if row["peak_rss_mb"]:
            peak = max(float(row["peak_rss_mb"]), memory.get((row["impl"], key), 0.0))
            memory[(row["impl"], key)] = peak
    times = {k: statistics.median(v) for k, v in samples.items()}
    return times, memory, {k: statistics.median(v) for k, v in rates.items()}


def gpu_split(paths):
    """Median counted_ms, gpu_ms, copy_ms, copy_bytes per rnnlab shape measured on a GPU."""
    splits = {}
    for row, key in rows(paths):
        if row["impl"] == "rnnlab" and row.get("gpu_ms"):
            splits.setdefault(key, []).append([float(row[c]) for c in ("counted_ms", "gpu_ms", "copy_ms", "copy_bytes")])
    return {k: [statistics.median(column) for column in zip(*v)] for k, v in splits.items()}


def versus(reference, paths):
    times, memory, _ = read(paths)
    keys = sorted(key for (impl, key) in times if impl == "rnnlab")
    keys.sort(key=lambda k: (k[4], k[2], k[1], k[0]))
    print(f"| threads | T | H | cell | ms per step | vs {reference} | peak MiB |")
    print("|---|---|---|---|---|---|---|")
    for key in keys:
        cell, hidden, seq_len, batch, threads = key
        ours = times[("rnnlab", key)]
        base = times.get(("rnnlab", (reference, hidden, seq_len, batch, threads)))
        ratio = "-" if base is None else f"{ours / base:.2f}"
        ms = f"{ours:.2f}" if ours < 10 else f"{ours:.1f}"
        print(f"| {threads} | {seq_len} | {hidden} | {cell} | {ms} | {ratio} | {memory.get(('rnnlab', key), 0.0):.0f} |")


def main(paths, peak=None):
    times, memory, rates = read(paths)
    keys = sorted({key for (impl, key) in times if impl == "rnnlab"})
    extra = " rnnlab GFLOP/s | of peak |" if peak else ""
    print(f"| cell | H | T | B | threads | rnnlab ms | torch ms | rnnlab/torch | candle-nn ms | candle-nn/rnnlab | rnnlab peak MiB |{extra}")
    print("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if peak else ""))
    for key in keys:
        ours = times[("rnnlab", key)]
        torch = times.get(("torch", key))
        candle = times.get(("candle-nn", key))
        cell, hidden, seq_len, batch, threads = key
        fmt = lambda v: "-" if v is None else f"{v:.1f}"
        ratio_torch = "-" if torch is None else f"{ours / torch:.2f}"
        speedup = "-" if candle is None else f"{candle / ours:.0f}x"
        line = (
            f"| {cell} | {hidden} | {seq_len} | {batch} | {threads} | {ours:.1f} | {fmt(torch)} | {ratio_torch} "
            f"| {fmt(candle)} | {speedup} | {memory.get(('rnnlab', key), 0.0):.0f} |"
        )
        if peak:
            rate = rates.get(("rnnlab", key))
            line += " - | - |" if rate is None else f" {rate:.1f} | {100 * rate / peak:.0f} % |"
        print(line)
    splits = gpu_split(paths)
    if splits:
        print()
        print("Where rnnlab's GPU step goes (ms per step, over the extra steps that counted it):")
        print()
        print("| cell | H | T | B | step | in the fused kernels' calls | of which copies | MB copied | rest on the CPU |")
        print("|---|---|---|---|---|---|---|---|---|")
        for key in sorted(splits):
            step, busy, copies, copied = splits[key]
            mb = copied / 1e6
            cell, hidden, seq_len, batch, _ = key
            print(f"| {cell} | {hidden} | {seq_len} | {batch} | {step:.2f} | {busy:.2f} | {copies:.2f} | {mb:.1f} | {step - busy:.2f} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--versus"]:
        versus(sys.argv[2], sys.argv[3:])
    elif sys.argv[1:2] == ["--peak"]:
        main(sys.argv[3:], float(sys.argv[2]))
    else:
        main(sys.argv[1:])
