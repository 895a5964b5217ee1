#!/usr/bin/env python3
"""Reference values for crates/runner/src/stats.rs, computed with SciPy (nobody here wrote
it): Welch's t-test and its confidence interval, Student's t quantile, the exact binomial
(sign) test, Fisher's exact test, and Holm's adjustment (by hand from its definition,
checked against SciPy's Bonferroni bound). Prints the Rust test constants.

    python3 -m venv .venv && .venv/bin/pip install scipy
    .venv/bin/python scripts/stats_reference.py
"""
import numpy as np
import scipy
from scipy import stats

print(f"// scipy {scipy.__version__}")

WELCH = [
    ([1.0, 2.5, 3.1, 4.7], [2.2, 5.1, 6.3]),
    ([-3.1, -2.9, -3.4, -3.0, -2.7], [-2.1, -2.6, -1.9, -2.4, -2.2]),
]
for a, b in WELCH:
    r = stats.ttest_ind(a, b, equal_var=False)
    lo, hi = r.confidence_interval(0.95)
    print(f"// welch {a} vs {b}")
    print(f"({float(r.statistic)!r}, {float(r.df)!r}, {float(r.pvalue)!r}, {float(lo)!r}, {float(hi)!r}),")

for alpha, df in [(0.05, 3.7), (0.01, 12.0), (0.05, 1.5)]:
    print(f"// t quantile two-sided alpha {alpha}, df {df}")
    print(f"({alpha!r}, {df!r}, {float(stats.t.ppf(1 - alpha / 2, df))!r}),")

for k, n in [(7, 9), (2, 10), (5, 10), (0, 3), (9, 9)]:
    print(f"// binomtest({k}, {n})")
    print(f"({k}, {n}, {float(stats.binomtest(k, n, 0.5).pvalue)!r}),")

for table in [[[3, 0], [0, 3]], [[5, 1], [2, 4]], [[1, 4], [3, 2]], [[5, 0], [1, 4]]]:
    r = stats.fisher_exact(table)
    print(f"// fisher_exact({table})")
    print(f"({table[0][0]}, {table[0][1]}, {table[1][0]}, {table[1][1]}, {float(r.statistic)!r}, {float(r.pvalue)!r}),")

p = np.array([0.01, 0.04, 0.03, 0.005, 0.2])
order = np.argsort(p)
m = len(p)
adjusted = np.empty(m)
running = 0.0
for rank, k in enumerate(order):
    running = max(running, min(1.0, (m - rank) * p[k]))
    adjusted[k] = running
assert np.all(adjusted <= np.minimum(1, m * p) + 1e-15)  # never above Bonferroni
print(f"// holm({[float(x) for x in p]})")
print(f"{[float(x) for x in adjusted]!r}")
