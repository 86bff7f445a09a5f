"""Latency is a sample, not a number: percentiles with distribution-free confidence
intervals, and speed ratios between two models measured side by side.

A comparison pairs the two models round by round (rounds are short and interleaved, so
a slow phase of a shared machine hits both), takes each round's fastest call (the
interference of other work only ever adds time), and puts a paired t-interval on the log
of the ratio. Everything here is a pure function of the samples: the same samples
always give the same verdict.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    confidence: float
    n: int

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high,
                "confidence": self.confidence, "n": self.n}


def binom_ppf(p: float, n: int, q: float) -> int:
    """The smallest k with P(Binomial(n, q) <= k) >= p: ``scipy.stats.binom.ppf``,
    computed from ``scipy.special.bdtr`` (importing scipy.stats costs ~1 s a run, more
    than everything else that decides the gates)."""
    from scipy.special import bdtr

    cdf = bdtr(np.arange(n + 1), n, q)
    return int(min(np.searchsorted(cdf, p, side="left"), n))


def t_ppf(p: float, df: int) -> float:
    """Student's t quantile (``scipy.stats.t.ppf``, which is this function)."""
    from scipy.special import stdtrit

    return float(stdtrit(df, p))


def quantile_interval(samples: np.ndarray | list[float], q: float, confidence: float = 0.95
                      ) -> Interval:
    """The ``q`` quantile of ``samples`` with a distribution-free (order-statistic,
    binomial) confidence interval."""
    x = np.sort(np.asarray(samples, dtype=np.float64))
    n = len(x)
    est = float(np.quantile(x, q))
    if n < 2:
        return Interval(est, est, est, confidence, n)
    alpha = 1 - confidence
    lo_rank = binom_ppf(alpha / 2, n, q)  # 0-based index of the lower order statistic
    hi_rank = binom_ppf(1 - alpha / 2, n, q)
    lo = float(x[max(0, min(n - 1, lo_rank - 1 if lo_rank > 0 else 0))])
    hi = float(x[max(0, min(n - 1, hi_rank))])
    return Interval(est, min(lo, est), max(hi, est), confidence, n)


def round_minima(rounds: list[list[float]]) -> np.ndarray:
    """The fastest call of each round."""
    return np.array([float(np.min(r)) for r in rounds if len(r)], dtype=np.float64)


def ratio_interval(numerator: list[list[float]], denominator: list[list[float]],
                   confidence: float = 0.95) -> Interval:
    """numerator / denominator of two models' latencies (e.g. parent / child: above 1
    means the child is faster), paired by round: a t-interval on the mean of the per-round
    log ratios of each round's fastest call, returned as ratios. Rounds missing on either
    side are dropped."""
    n = min(len(numerator), len(denominator))
    a, b = round_minima(numerator[:n]), round_minima(denominator[:n])
    n = min(len(a), len(b))
    d = np.log(a[:n]) - np.log(b[:n])
    mean = float(d.mean()) if n else 0.0
    if n < 2:
        return Interval(math.exp(mean), 0.0, math.inf, confidence, n)
    half = t_ppf(0.5 + confidence / 2, n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    return Interval(math.exp(mean), math.exp(mean - half), math.exp(mean + half), confidence, n)


def widen(interval: Interval, resolution: float) -> Interval:
    """The interval widened by ``resolution`` on each side (in log-ratio terms): the
    run-to-run variation on one machine that one run's samples cannot show (process
    placement, memory layout, frequency states). Differences inside it are never called."""
    if resolution <= 0:
        return interval
    f = math.exp(resolution)
    return Interval(interval.estimate, interval.low / f, interval.high * f,
                    interval.confidence, interval.n)


def speedup(interval: Interval) -> Interval:
    """A parent/child latency ratio as a speed-up fraction (0.05 = 5 % faster)."""
    return Interval(interval.estimate - 1, interval.low - 1, interval.high - 1,
                    interval.confidence, interval.n)


FASTER, SLOWER, SAME = "faster", "slower", "not distinguishable"


def compare(speed: Interval) -> str:
    """faster / slower / not distinguishable: does the interval exclude no change?"""
    if speed.low > 0:
        return FASTER
    if speed.high < 0:
        return SLOWER
    return SAME


def undecided(speed: Interval, threshold: float) -> bool:
    """The interval straddles ``threshold``: more rounds may decide it."""
    return speed.low < threshold <= speed.high


def pct(x: float) -> str:
    return f"{x * 100:+.1f} %"


def describe(speed: Interval) -> str:
    """'+2.1 % (95 % CI −4.0 … +8.3 %)'."""
    conf = f"{speed.confidence * 100:.0f} %"
    return f"{pct(speed.estimate)} ({conf} CI {pct(speed.low)} … {pct(speed.high)})"
