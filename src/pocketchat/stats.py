"""Paired statistics for "is model B better than model A on the same held-out instances?".

Every quality claim of the report card compares two models on the same instances (and, when sampling, the same
seeds), so the tests here are paired: McNemar's exact test for right/wrong outcomes, and for scores the paired
t-test in its large-sample (normal) form, which weighs how much each instance moved, agrees with the 95%
confidence interval reported beside it (p < 0.05 exactly when the interval excludes 0), and is sound for the
hundreds of instances the report uses. Pure Python, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

Z95 = 1.959964  # two-sided 95% normal quantile


def binomial_two_sided(k: int, n: int) -> float:
    """Exact two-sided p-value of k successes in n fair coin flips (doubling the smaller tail, capped at 1)."""
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(k, n - k) + 1)) / 2**n
    return min(1.0, 2 * tail)


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean with a normal-approximation 95% interval (fine for n in the hundreds)."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_ci of no values")
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    half = Z95 * math.sqrt(var / n)
    return mean, mean - half, mean + half


@dataclass
class Paired:
    """B against A on the same n instances: means, the difference B - A with its 95% CI, how many instances B
    won and lost, and the two-sided p-value (McNemar for right/wrong, the paired t-test for scores)."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float
    ci_high: float
    wins: int
    losses: int
    p: float

    def as_dict(self) -> dict:
        return asdict(self)


def paired_test(a: Sequence[float], b: Sequence[float], tol: float = 1e-9) -> Paired:
    """Compare per-instance outcomes b against a (same instances, same order).

    Right/wrong outcomes (every value 0 or 1): McNemar's exact test. Instances where the two agree carry no
    evidence; under the null hypothesis each of the others is equally likely to favour A or B, so
    wins ~ Binomial(wins + losses, 1/2). Scores: the paired t-test on the differences, normal approximation."""
    if len(a) != len(b):
        raise ValueError(f"paired_test needs equal lengths, got {len(a)} and {len(b)}")
    diffs = [float(y) - float(x) for x, y in zip(a, b)]
    wins = sum(d > tol for d in diffs)
    losses = sum(d < -tol for d in diffs)
    diff, low, high = mean_ci(diffs)
    if all(float(v) in (0.0, 1.0) for v in (*a, *b)):
        p = binomial_two_sided(wins, wins + losses)
    else:
        se = (high - low) / (2 * Z95)
        p = math.erfc(abs(diff) / se / math.sqrt(2)) if se > 0 else float(diff == 0)
    return Paired(n=len(diffs), mean_a=sum(map(float, a)) / len(a), mean_b=sum(map(float, b)) / len(b), diff=diff,
                  ci_low=low, ci_high=high, wins=wins, losses=losses, p=p)
