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


@dataclass(frozen=True)
class GateOutcome:
    """A minimum speed-up gate's outcome. ``kept``: this measurement alone would have
    decided the other way, but not by more than the margin, so the earlier outcome on
    the same models and machine stands."""

    passed: bool
    kept: bool = False


def settle(c: SpeedComparison, threshold: float, margin: float,
           previous: bool | None = None) -> GateOutcome:
    """The gate's outcome with hysteresis.

    Alone, the gate passes when the interval's lower bound clears ``threshold``. A true
    speed-up that sits on the threshold puts the lower bound now just above it, now just
    below, and no bounded number of rounds separates them. So when the same pair (the
    same artifacts, on the same machine and runtime) was judged before (``previous``), a
    new measurement overturns that outcome only when it is decisive by ``margin``
    (``validate.hysteresis``): a pass falls only when the whole interval lies below
    ``threshold - margin``, a failure rises only when the lower bound clears
    ``threshold + margin``. Anything in between keeps the earlier outcome.
    """
    fresh = c.speedup.low >= threshold
    if previous is None or previous == fresh:
        return GateOutcome(fresh)
    if previous and c.speedup.high >= threshold - margin:
        return GateOutcome(True, kept=True)
    if not previous and c.speedup.low < threshold + margin:
        return GateOutcome(False, kept=True)
    return GateOutcome(fresh)


def compare(samples: dict, model: str, baseline: str, batch: int,
            confidence: float = 0.95, resolution: float = 0.0) -> SpeedComparison:
    """Compare two models of one latency document (``samples[name][batch]`` = rounds);
    the interval is widened by the harness's ``resolution`` (see stats.widen)."""
    key = str(batch)
    ratio = stats.widen(stats.ratio_interval(samples[baseline][key], samples[model][key],
                                             confidence), resolution)
    speed = stats.speedup(ratio)
    return SpeedComparison(model, baseline, batch, speed, stats.compare(speed))


def gate_reason(c: SpeedComparison, threshold: float, key: str,
                outcome: GateOutcome | None = None) -> str | None:
    """Why ``c`` fails a minimum speed-up gate (None: it passes; without ``outcome``,
    when the interval's lower bound clears the threshold)."""
    outcome = outcome or GateOutcome(c.speedup.low >= threshold)
    if outcome.passed:
        return None
    need = f"{key} {threshold * 100:+.0f} %"
    if c.speedup.low >= threshold:  # failed before; clears now, by less than the margin
        return (f"faster than its parent {c.baseline} at batch {c.batch} by {c.describe()}: "
                f"clears {need} by less than validate.hysteresis, so the earlier failure on the "
                "same artifacts and machine stands")
    if c.verdict == stats.SAME:
        return (f"not distinguishable from its parent {c.baseline} at batch {c.batch}: "
                f"{c.describe()}; {need} needs the lower bound to clear it")
    if c.verdict == stats.SLOWER:
        return f"slower than its parent {c.baseline} at batch {c.batch}: {c.describe()} < {need}"
    return (f"faster than its parent {c.baseline} at batch {c.batch} by {c.describe()}, but "
            f"the lower bound is below {need}")
