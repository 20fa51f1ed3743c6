"""Comparing two methods over seeds: paired differences, t-based intervals, and a verdict that says what they allow.

Runs with the same seed share their batches (and their evaluation sets), so method A's run with seed s and method
B's run with seed s differ only in the method. The fair comparison is therefore the *paired* one: the differences
d_s = A_s - B_s, their mean, and a 95 % interval from Student's t with n - 1 degrees of freedom. Pairing removes
the part of the spread that both methods share (a seed whose batches suit every method), so it is tighter than
comparing two means whenever the runs of a seed move together.

Three verdicts, from the interval alone: "better" when it lies above zero, "worse" when it lies below, and "can't
tell at this budget" when it contains zero. The last is an honest answer, not a tie: more seeds or a longer run
might separate the two. Separately, a test set of n examples measures accuracy with a sampling error of its own,
sqrt(p (1 - p) / n), which no number of seeds removes (`accuracy_standard_error`).

    >>> c = paired_comparison([0.52, 0.55, 0.50, 0.53, 0.56], [0.47, 0.49, 0.46, 0.50, 0.50])
    >>> c.verdict, round(c.mean, 3)
    ('better', 0.048)

Only the standard library: the t quantile is found by bisection on the t distribution's CDF, itself a numerical
integral of its density, refined by Newton's method (within 1e-6 of the printed tables).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["PairedComparison", "paired_comparison", "t_quantile", "accuracy_standard_error", "VERDICTS"]

VERDICTS = ("better", "worse", "can't tell at this budget")


def _t_density(x: float, df: int) -> float:
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1) / 2 * math.log1p(x * x / df))


def _t_cdf_above_zero(x: float, df: int) -> float:
    """P(0 <= T <= x) for x >= 0, by Simpson's rule on the density (an even number of pieces, one per 0.005)."""
    pieces = 2 * max(1000, math.ceil(x * 100))
    h = x / pieces
    total = _t_density(0.0, df) + _t_density(x, df)
    total += sum((4 if k % 2 else 2) * _t_density(k * h, df) for k in range(1, pieces))
    return total * h / 3


@lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """The p quantile of Student's t with `df` degrees of freedom (p in (0.5, 1)): t_quantile(0.975, 4) = 2.776."""
    if not 0.5 < p < 1:
        raise ValueError(f"p must lie between 0.5 and 1 (exclusive), got {p!r}")
    if not isinstance(df, int) or isinstance(df, bool) or df < 1:
        raise ValueError(f"df must be a whole number of at least 1, got {df!r}")
    target, lo, hi = p - 0.5, 0.0, 1.0
    while _t_cdf_above_zero(hi, df) < target:
        lo, hi = hi, 2 * hi
    x = (lo + hi) / 2
    for _ in range(100):  # Newton's method (the derivative of the CDF is the density), kept inside [lo, hi]
        gap = _t_cdf_above_zero(x, df) - target
        if abs(gap) < 1e-12:
            break
        lo, hi = (lo, x) if gap > 0 else (x, hi)
        step = x - gap / _t_density(x, df)
        x = step if lo < step < hi else (lo + hi) / 2
    return x


@dataclass(frozen=True)
class PairedComparison:
    """A minus B over paired seeds: the mean difference, its 95 % t interval and the verdict it allows."""

    mean: float
    low: float
    high: float
    n: int
    differences: tuple[float, ...]

    @property
    def verdict(self) -> str:
        if self.low > 0:
            return VERDICTS[0]
        if self.high < 0:
            return VERDICTS[1]
        return VERDICTS[2]

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}] over {self.n} seeds: {self.verdict}"


def paired_comparison(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> PairedComparison:
    """Compare method A with method B from runs paired by seed (a[i] and b[i] used the same seed).

    Higher is better for the figure compared (use accuracy, or minus a loss)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"a and b must hold one figure per seed each, paired by seed; got {len(a)} and {len(b)}")
    if len(a) < 2:
        raise ValueError(f"a paired comparison needs at least 2 seeds (5 or more to say much), got {len(a)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie between 0 and 1, got {confidence!r}")
    if not all(math.isfinite(x) for x in a + b):
        raise ValueError("every figure must be a finite number")
    d = [x - y for x, y in zip(a, b, strict=True)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = t_quantile(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    return PairedComparison(mean, mean - half, mean + half, n, tuple(d))


def accuracy_standard_error(accuracy: float, n_examples: int) -> float:
    """The sampling error of an accuracy measured on `n_examples` test examples: sqrt(p (1 - p) / n)."""
    if not 0 <= accuracy <= 1:
        raise ValueError(f"accuracy must lie between 0 and 1, got {accuracy!r}")
    if not isinstance(n_examples, int) or n_examples < 1:
        raise ValueError(f"n_examples must be a whole number of at least 1, got {n_examples!r}")
    return math.sqrt(accuracy * (1 - accuracy) / n_examples)
