"""Speed verdicts on synthetic samples: equal distributions are not distinguishable, a
20 % difference is, and the same samples always give the same verdict."""

import numpy as np
import pytest

from shrinkflow.core import stats


def rounds(ms: float, n_rounds: int, per_round: int, seed: int, burst: float = 0.2,
           drift: list[float] | None = None) -> list[list[float]]:
    """Latency samples as a shared machine makes them: the model's own time with a little
    jitter, plus, now and then, another job's interference (which only ever adds time);
    ``drift`` slows whole rounds (a busy neighbour for a while)."""
    rng = np.random.default_rng(seed)
    drift = drift or [1.0] * n_rounds
    out = []
    for d in drift:
        own = ms * d * (1 + 0.01 * np.abs(rng.standard_normal(per_round)))
        hit = rng.random(per_round) < burst
        out.append(list(own + hit * ms * rng.uniform(0.3, 1.5, per_round)))
    return out


def test_equal_distributions_are_not_distinguishable():
    verdicts = []
    for seed in range(100):
        a, b = rounds(2.0, 12, 5, seed), rounds(2.0, 12, 5, seed + 1000)
        verdicts.append(stats.compare(stats.speedup(stats.ratio_interval(a, b))))
    assert verdicts.count(stats.SAME) >= 90  # a 95 % interval: about 5 false alarms in 100


def test_twenty_percent_apart_is_faster():
    for seed in range(20):
        parent, child = rounds(2.0, 12, 5, seed), rounds(1.6, 12, 5, seed + 100)
        speed = stats.speedup(stats.ratio_interval(parent, child))
        assert stats.compare(speed) == stats.FASTER, stats.describe(speed)
        assert speed.low > 0.15 and speed.contains(0.25)
        slower = stats.speedup(stats.ratio_interval(child, parent))
        assert stats.compare(slower) == stats.SLOWER


def test_pairing_by_round_cancels_a_shared_drift():
    drift = [1.0, 1.6, 0.9, 2.0, 1.1, 1.4, 1.0, 1.3, 1.8, 1.0, 1.2, 0.9]
    parent = rounds(2.0, 12, 5, 1, drift=drift)
    child = rounds(1.6, 12, 5, 2, drift=drift)
    speed = stats.speedup(stats.ratio_interval(parent, child))
    assert stats.compare(speed) == stats.FASTER and speed.high - speed.low < 0.05


def test_same_samples_same_interval():
    a, b = rounds(2.0, 12, 5, 1), rounds(1.9, 12, 5, 2)
    assert stats.ratio_interval(a, b) == stats.ratio_interval(a, b)


def test_undecided_when_the_interval_straddles_the_threshold():
    i = stats.Interval(0.04, -0.01, 0.09, 0.95, 6)
    assert stats.undecided(i, 0.05) and not stats.undecided(i, 0.2)
    assert stats.describe(i) == "+4.0 % (95 % CI -1.0 % … +9.0 %)"


def test_quantile_interval_brackets_the_estimate_and_covers_the_truth():
    rng = np.random.default_rng(0)
    covered = 0
    for _ in range(200):
        x = rng.exponential(1.0, 200)
        i = stats.quantile_interval(x, 0.5)
        assert i.low <= i.estimate <= i.high
        covered += i.contains(np.log(2))  # the true median of Exp(1)
    assert covered / 200 == pytest.approx(0.95, abs=0.04)


def test_quantiles_match_scipy_stats():
    """The binomial and t quantiles come from scipy.special (scipy.stats costs ~1 s to
    import each run); they must be scipy.stats' own, or a verdict could move."""
    from scipy.stats import binom, t

    for n in [*range(2, 80), *range(80, 3000, 37)]:
        for q in (0.5, 0.9, 0.95, 0.99):
            for p in (0.005, 0.025, 0.05, 0.95, 0.975, 0.995):
                assert stats.binom_ppf(p, n, q) == int(binom.ppf(p, n, q)), (p, n, q)
        for p in (0.95, 0.975, 0.995):
            assert stats.t_ppf(p, n - 1) == float(t.ppf(p, n - 1))
