"""Speed verdicts from side-by-side latency samples: faster, slower, or not
distinguishable, with the interval that says so."""

from __future__ import annotations

from dataclasses import dataclass

from shrinkflow.core import stats
from shrinkflow.core.stats import Interval


@dataclass(frozen=True)
class SpeedComparison:
    """How much faster ``model`` is than ``baseline`` (a fraction: 0.05 = 5 % faster)."""

    model: str
    baseline: str
    batch: int
    speedup: Interval
    verdict: str  # faster | slower | not distinguishable

    def describe(self) -> str:
        return stats.describe(self.speedup)

    def as_dict(self) -> dict:
        return {"model": self.model, "baseline": self.baseline, "batch": self.batch,
                "verdict": self.verdict, **{f"speedup_{k}": v
                                            for k, v in self.speedup.as_dict().items()}}


def compare(samples: dict, model: str, baseline: str, batch: int,
            confidence: float = 0.95, resolution: float = 0.0) -> SpeedComparison:
    """Compare two models of one latency document (``samples[name][batch]`` = rounds);
    the interval is widened by the harness's ``resolution`` (see stats.widen)."""
    key = str(batch)
    ratio = stats.widen(stats.ratio_interval(samples[baseline][key], samples[model][key],
                                             confidence), resolution)
    speed = stats.speedup(ratio)
    return SpeedComparison(model, baseline, batch, speed, stats.compare(speed))


def gate_reason(c: SpeedComparison, threshold: float, key: str) -> str | None:
    """Why ``c`` fails a minimum speed-up gate (None: the interval's lower bound clears it)."""
    if c.speedup.low >= threshold:
        return None
    need = f"{key} {threshold * 100:+.0f} %"
    if c.verdict == stats.SAME:
        return (f"not distinguishable from its parent {c.baseline} at batch {c.batch}: "
                f"{c.describe()}; {need} needs the lower bound to clear it")
    if c.verdict == stats.SLOWER:
        return f"slower than its parent {c.baseline} at batch {c.batch}: {c.describe()} < {need}"
    return (f"faster than its parent {c.baseline} at batch {c.batch} by {c.describe()}, but "
            f"the lower bound is below {need}")
