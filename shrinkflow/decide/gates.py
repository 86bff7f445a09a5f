"""Hard gates every model must pass to be selected: accuracy drop against the teacher,
conversion parity, a demonstrated speed-up over its parent, size and cost limits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shrinkflow.core.config import Int, Section
from shrinkflow.decide import speed


class GatesParams(Section):
    """Hard gates every model must pass to be selected (conversion parity is checked by
    ``validate.gates`` / ``validate.quantized_gates`` and counts here too)."""

    # Accuracy (on the runtime, test split) may be at most this many points below the teacher's.
    max_accuracy_drop_pp: float = Field(1.0, ge=0, allow_inf_nan=False)
    # A variant must be faster than its parent by at least this fraction (0.05 = 5 %):
    # the lower bound of the speed-up's confidence interval must clear it ...
    min_speedup_vs_parent: float = Field(0.05, ge=-1, lt=1)
    # ... at this batch size (validate.threads threads).
    latency_batch: Literal[1, 256] = 256
    # Largest artifact allowed, in bytes (None: no limit).
    max_size_bytes: Int | None = Field(None, ge=1)
    # Most multiply-accumulates per sample allowed, counted from the graph (None: no limit).
    max_macs: float | None = Field(None, gt=0, allow_inf_nan=False)


def parity_reasons(values: dict[str, float], max_abs_diff: float, min_top1: float,
                   section: str) -> list[str]:
    """Why a conversion's parity fails (``section`` names the params that set the limits)."""
    out = []
    diff = values.get("parity_max_abs_diff")
    if diff is not None and not diff <= max_abs_diff:
        out.append(f"parity_max_abs_diff {diff:.3g} > {section}.max_abs_diff {max_abs_diff:g}")
    agree = values.get("parity_top1_agreement")
    if agree is not None and not agree >= min_top1:
        out.append(f"parity_top1_agreement {agree:.4f} < {section}.min_top1_agreement "
                   f"{min_top1:g}")
    return out


def gate_reasons(values: dict[str, float], teacher: dict[str, float], accuracy_key: str,
                 gates: GatesParams, speed_vs_parent: speed.SpeedComparison | None,
                 speed_outcome: speed.GateOutcome | None = None) -> list[str]:
    """Why a model fails the accuracy, speed, size and cost gates (empty: it passes)."""
    reasons = []
    drop = (teacher[accuracy_key] - values[accuracy_key]) * 100
    if drop > gates.max_accuracy_drop_pp:
        reasons.append(f"accuracy drop {drop:.2f} pp > gates.max_accuracy_drop_pp "
                       f"{gates.max_accuracy_drop_pp:g}")
    if speed_vs_parent is not None:
        why = speed.gate_reason(speed_vs_parent, gates.min_speedup_vs_parent,
                                "gates.min_speedup_vs_parent", speed_outcome)
        if why:
            reasons.append(why)
    if gates.max_size_bytes is not None and values["size_bytes"] > gates.max_size_bytes:
        reasons.append(f"size {values['size_bytes']:.0f} B > gates.max_size_bytes "
                       f"{gates.max_size_bytes}")
    if gates.max_macs is not None and values.get("macs", 0) > gates.max_macs:
        reasons.append(f"{values['macs']:.3g} MACs > gates.max_macs {gates.max_macs:g}")
    return reasons


def accuracy_drop_pp(values: dict[str, float], teacher: dict[str, float], key: str) -> float:
    """Points of accuracy lost against the teacher (negative: gained)."""
    return (teacher[key] - values[key]) * 100
