#!/usr/bin/env python3
"""Print rnnlab/torch and rnnlab/candle-nn step-time ratios from benchmark CSVs.

    python3 scripts/bench_ratios.py results/bench/rnnlab.csv results/bench/torch.csv
    python3 scripts/bench_ratios.py --versus lstm results/bench/cells.csv

A ratio below 1 means rnnlab's training step is faster. With `--versus CELL`, every
cell's step time against CELL's at the same shape instead (below 1: faster than CELL). Where a shape was measured in
several rounds, its median step time (and largest peak RSS) is used. Standard library only.
"""

import csv
import statistics
import sys


def read(paths):
    samples = {}
    memory = {}
    for path in paths:
        with open(path) as f:
            for row in csv.DictReader(f):
                key = (row["cell"], int(row["hidden"]), int(row["seq_len"]), int(row["batch"]), int(row["threads"]))
                samples.setdefault((row["impl"], key), []).append(float(row["ms_per_step"]))
                if row["peak_rss_mb"]:
                    peak = max(float(row["peak_rss_mb"]), memory.get((row["impl"], key), 0.0))
                    memory[(row["impl"], key)] = peak
    times = {k: statistics.median(v) for k, v in samples.items()}
    return times, memory


def versus(reference, paths):
    times, memory = read(paths)
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


def main(paths):
    times, memory = read(paths)
    keys = sorted({key for (impl, key) in times if impl == "rnnlab"})
    print("| cell | H | T | B | threads | rnnlab ms | torch ms | rnnlab/torch | candle-nn ms | candle-nn/rnnlab | rnnlab peak MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for key in keys:
        ours = times[("rnnlab", key)]
        torch = times.get(("torch", key))
        candle = times.get(("candle-nn", key))
        cell, hidden, seq_len, batch, threads = key
        fmt = lambda v: "-" if v is None else f"{v:.1f}"
        ratio_torch = "-" if torch is None else f"{ours / torch:.2f}"
        speedup = "-" if candle is None else f"{candle / ours:.0f}x"
        print(
            f"| {cell} | {hidden} | {seq_len} | {batch} | {threads} | {ours:.1f} | {fmt(torch)} | {ratio_torch} "
            f"| {fmt(candle)} | {speedup} | {memory.get(('rnnlab', key), 0.0):.0f} |"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--versus"]:
        versus(sys.argv[2], sys.argv[3:])
    else:
        main(sys.argv[1:])
