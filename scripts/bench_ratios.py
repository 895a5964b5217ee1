#!/usr/bin/env python3
"""Print rnnlab/torch and rnnlab/candle-nn step-time ratios from benchmark CSVs.

    python3 scripts/bench_ratios.py results/bench/rnnlab.csv results/bench/torch.csv

A ratio below 1 means rnnlab's training step is faster. Standard library only.
"""

import csv
import sys


def main(paths):
    times = {}
    memory = {}
    for path in paths:
        with open(path) as f:
            for row in csv.DictReader(f):
                key = (row["cell"], int(row["hidden"]), int(row["seq_len"]), int(row["batch"]), int(row["threads"]))
                times[(row["impl"], key)] = float(row["ms_per_step"])
                memory[(row["impl"], key)] = row["peak_rss_mb"]
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
            f"| {fmt(candle)} | {speedup} | {memory[('rnnlab', key)]} |"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
