"""The promotion rule: when does a challenger replace the champion?

Accuracy and size compare exactly. Speed compares only through a side-by-side
measurement made now, on this machine: the challenger wins on a latency objective only
when the lower bound of its gain's interval clears ``registry.min_objective_gain``.
"""

from __future__ import annotations

from pydantic import Field

from shrinkflow.core import stats
from shrinkflow.core.config import Section
from shrinkflow.core.stats import Interval
from shrinkflow.decide.select import SelectParams

LATENCY_OBJECTIVES = ("fastest", "weighted")
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$"


class RegistryParams(Section):
    # Registered model name (letters, digits, _ . -); None: shrinkflow-<dataset>.
    model_name: str | None = Field(None, pattern=MODEL_NAME_PATTERN)
    # After each run, register the selected model as `challenger` and try to promote it.
    auto_promote: bool = True
    # The challenger wins if it is at most this many points less accurate than the
    # champion (measured on the same test data) ...
    max_accuracy_loss_pp: float = Field(0.2, ge=0, allow_inf_nan=False)
    # ... and better on the selection objective by at least this fraction (for latency
    # objectives: the lower bound of the gain's interval, measured side by side).
    min_objective_gain: float = Field(0.0, ge=0, lt=1)


def needs_latency(select: SelectParams) -> bool:
    return select.objective in LATENCY_OBJECTIVES


def _weighted(values: dict[str, float], champion: dict[str, float], select: SelectParams,
              relative_latency: float, accuracy_key: str) -> float:
    """The weighted objective normalised by the champion (whose own score is the sum of
    the size, latency and MACs weights)."""
    w = select.weights
    score = (w.get("size", 0) * values["size_bytes"] / champion["size_bytes"]
             + w.get("latency", 0) * relative_latency
             + w.get("accuracy", 0) * (champion[accuracy_key] - values[accuracy_key]) * 100)
    if w.get("macs") and champion.get("macs"):
        score += w["macs"] * values.get("macs", 0.0) / champion["macs"]
    return score


def objective_gain(challenger: dict[str, float], champion: dict[str, float],
                   select: SelectParams, accuracy_key: str,
                   speed: Interval | None = None) -> Interval:
    """The challenger's relative gain on the objective (0.1 = 10 % better), as an interval.

    Exact objectives give a zero-width interval; latency objectives take ``speed`` (the
    challenger's speed-up over the champion, measured side by side).
    """
    objective = select.objective
    if objective == "smallest":
        g = 1 - challenger["size_bytes"] / champion["size_bytes"]
        return Interval(g, g, g, 1.0, 1)
    if objective == "cheapest":
        g = 1 - challenger.get("macs", 0.0) / max(champion.get("macs", 0.0), 1e-12)
        return Interval(g, g, g, 1.0, 1)
    if objective == "most_accurate":
        g = (challenger[accuracy_key] - champion[accuracy_key]) / max(champion[accuracy_key], 1e-12)
        return Interval(g, g, g, 1.0, 1)
    if speed is None:
        raise ValueError(f"objective {objective!r} needs a side-by-side speed measurement")
    if objective == "fastest":  # speed-up s: challenger takes 1/(1+s) of the champion's time
        return Interval(*(1 - 1 / (1 + s) for s in (speed.estimate, speed.low, speed.high)),
                        speed.confidence, speed.n)
    base = _weighted(champion, champion, select, 1.0, accuracy_key)
    gains = [(base - _weighted(challenger, champion, select, 1 / (1 + s), accuracy_key)) / base
             for s in (speed.estimate, speed.low, speed.high)]
    return Interval(gains[0], gains[1], gains[2], speed.confidence, speed.n)


def challenger_wins(challenger: dict[str, float], champion: dict[str, float],
                    select: SelectParams, rule: RegistryParams, accuracy_key: str,
                    speed: Interval | None = None) -> tuple[bool, str]:
    """The promotion rule: accurate enough against the champion, and better on the
    selection objective by more than ``rule.min_objective_gain`` (interval lower bound)."""
    loss = (champion[accuracy_key] - challenger[accuracy_key]) * 100
    if loss > rule.max_accuracy_loss_pp:
        return False, (f"{loss:.2f} pp less accurate than the champion (allowed "
                       f"{rule.max_accuracy_loss_pp:g})")
    gain = objective_gain(challenger, champion, select, accuracy_key, speed)
    objective = select.objective
    shown = (f"{stats.pct(gain.estimate)}" if gain.low == gain.high else
             f"{stats.pct(gain.estimate)} ({gain.confidence * 100:.0f} % CI "
             f"{stats.pct(gain.low)} … {stats.pct(gain.high)}, measured side by side now)")
    if not gain.low > rule.min_objective_gain:
        need = f"lower bound > {rule.min_objective_gain * 100:g} %" if gain.low != gain.high \
            else f"> {rule.min_objective_gain * 100:g} %"
        return False, (f"not better on '{objective}': {shown}, need {need}; at "
                       f"{-loss:+.2f} pp accuracy")
    return True, f"better on '{objective}' by {shown} at {-loss:+.2f} pp accuracy"
