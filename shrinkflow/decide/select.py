"""Gates, the Pareto frontier and the selection objective: which model may be deployed.

Pure functions of validated results: changing only gates or the objective re-decides
without touching a model. Latency enters only through side-by-side comparisons with
intervals, so a difference inside the noise never decides anything.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from shrinkflow.core import stats
from shrinkflow.core.config import Section
from shrinkflow.decide import speed
from shrinkflow.decide.gates import GatesParams, accuracy_drop_pp, gate_reasons, parity_reasons

OBJECTIVES = ("smallest", "fastest", "most_accurate", "cheapest", "weighted")


class SelectParams(Section):
    """Which passing model becomes the challenger (from the Pareto frontier)."""

    objective: Literal["smallest", "fastest", "most_accurate", "cheapest", "weighted"] = "smallest"
    # weighted: minimise w_size * size/teacher + w_latency * latency/teacher
    #           + w_accuracy * accuracy drop in pp + w_macs * MACs/teacher.
    weights: dict[Literal["size", "latency", "accuracy", "macs"], float] = Field(
        default_factory=lambda: {"size": 1.0, "latency": 1.0, "accuracy": 1.0})


class ModelResult(BaseModel):
    """What a decision sees of one model on one target."""

    model_config = ConfigDict(frozen=True)

    name: str
    parent: str | None
    quantized: bool = False
    values: dict[str, float]
    failure: str = ""  # the target could not convert or run this model


class Verdict(BaseModel):
    """One model's gate result: ``reasons`` is empty when it passes."""

    model_config = ConfigDict(frozen=True)

    name: str
    parent: str | None
    reasons: tuple[str, ...] = ()
    on_frontier: bool = False
    score: float | None = None  # selection objective, lower is better
    speed_vs_parent: dict | None = None  # the comparison the speed gate judged

    @property
    def passed(self) -> bool:
        return not self.reasons


class Decision(BaseModel):
    """Every model's verdict, the frontier among passing models, and the choice."""

    model_config = ConfigDict(frozen=True)

    objective: str
    target: str = "onnxruntime"
    verdicts: dict[str, Verdict]
    selected: str | None = None
    why: str = ""
    frontier: list[str] = Field(default_factory=list)


def relative_metrics(values: dict[str, float], teacher: dict[str, float], accuracy_key: str
                     ) -> dict[str, float]:
    """How a model compares with the teacher: accuracy drop in percentage points, and
    how many times smaller / faster / cheaper it is."""
    out = {"accuracy_drop_pp": accuracy_drop_pp(values, teacher, accuracy_key),
           "size_ratio_vs_teacher": teacher["size_bytes"] / values["size_bytes"],
           "size_gzip_ratio_vs_teacher": teacher["size_gzip_bytes"] / values["size_gzip_bytes"]}
    for b in (1, 256):
        key = f"latency_p50_ms_b{b}"
        if key in values and key in teacher:
            out[f"latency_ratio_vs_teacher_b{b}"] = teacher[key] / values[key]
    if values.get("macs") and teacher.get("macs"):
        out["macs_ratio_vs_teacher"] = teacher["macs"] / values["macs"]
    return out


def objective_score(values: dict[str, float], reference: dict[str, float], select: SelectParams,
                    latency_key: str, accuracy_key: str) -> float:
    """The selection objective for one model; lower is better. ``reference`` (the
    teacher, or the champion) normalises the weighted objective."""
    if select.objective == "smallest":
        return values["size_bytes"]
    if select.objective == "fastest":
        return values[latency_key]
    if select.objective == "cheapest":
        return values.get("macs", 0.0)
    if select.objective == "most_accurate":
        return -values[accuracy_key]
    w = select.weights
    score = (w.get("size", 0) * values["size_bytes"] / reference["size_bytes"]
             + w.get("latency", 0) * values[latency_key] / reference[latency_key]
             + w.get("accuracy", 0) * (reference[accuracy_key] - values[accuracy_key]) * 100)
    if w.get("macs") and reference.get("macs"):
        score += w["macs"] * values.get("macs", 0.0) / reference["macs"]
    return score


def _not_slower(samples: dict | None, a: str, b: str, batch: int, confidence: float,
                resolution: float = 0.0) -> tuple[bool, bool]:
    """(a is not decisively slower than b, a is decisively faster than b)."""
    if samples is None or a not in samples or b not in samples:
        return True, False
    c = speed.compare(samples, a, b, batch, confidence, resolution)
    return c.verdict != stats.SLOWER, c.verdict == stats.FASTER


def pareto_front(results: dict[str, dict[str, float]], accuracy_key: str, samples: dict | None,
                 batch: int, confidence: float = 0.95, resolution: float = 0.0) -> list[str]:
    """Names not dominated on (accuracy: higher; size, MACs, latency: lower). Latency
    counts only where the side-by-side interval is decisive."""
    def dominates(a: str, b: str) -> bool:
        va, vb = results[a], results[b]
        not_slower, faster = _not_slower(samples, a, b, batch, confidence, resolution)
        ma, mb = va.get("macs", 0.0), vb.get("macs", 0.0)
        geq = va[accuracy_key] >= vb[accuracy_key] and va["size_bytes"] <= vb["size_bytes"] \
            and ma <= mb and not_slower
        strictly = va[accuracy_key] > vb[accuracy_key] or va["size_bytes"] < vb["size_bytes"] \
            or ma < mb or faster
        return geq and strictly

    return [n for n in results if not any(dominates(m, n) for m in results if m != n)]


def _fastest(frontier: list[str], results: dict[str, dict[str, float]], samples: dict | None,
             batch: int, confidence: float, resolution: float, latency_key: str
             ) -> tuple[str, str]:
    """The fastest model; models not distinguishable from it are tied, and the tie goes to
    the fewest MACs, then the smallest file (machine-independent), then the name."""
    best = min(frontier, key=lambda n: results[n][latency_key])
    tied = [n for n in frontier if n == best
            or _not_slower(samples, n, best, batch, confidence, resolution)[0]]
    pick = min(tied, key=lambda n: (results[n].get("macs", 0.0), results[n]["size_bytes"], n))
    note = "" if len(tied) == 1 else (f"; {len(tied)} models not distinguishable in speed, "
                                      "tie broken by MACs, then size")
    return pick, note


def decide(models: list[ModelResult], gates: GatesParams, select: SelectParams,
           parity: dict[str, tuple[float, float]], samples: dict | None = None,
           confidence: float = 0.95, target: str = "onnxruntime",
           accuracy_key: str = "onnx_test_accuracy", resolution: float = 0.0,
           previous: dict[str, bool] | None = None, hysteresis: float = 0.0) -> Decision:
    """Gate every model, find the Pareto frontier of the passing ones, pick by objective.

    ``parity`` maps "float" / "quantized" to (max_abs_diff, min_top1_agreement) limits.
    ``samples`` is the latency document's samples (side-by-side rounds). The teacher
    (the first model) is a candidate too: a run whose variants all fail still offers a
    deployable model. ``previous`` maps a model to its speed gate's earlier outcome on
    the same artifacts and machine (see speed.settle); each verdict's
    ``speed_vs_parent`` carries the new outcome (``gate_passed``, ``kept``).
    """
    latency_key = f"latency_p50_ms_b{gates.latency_batch}"
    verdicts: dict[str, Verdict] = {}
    if models[0].failure:  # no reference on this target: nothing can be judged
        why = f"the teacher is not available on {target}: {models[0].failure}"
        return Decision(objective=select.objective, target=target, why=why,
                        verdicts={m.name: Verdict(name=m.name, parent=m.parent,
                                                  reasons=(m.failure or why,)) for m in models})
    failed = {m.name: Verdict(name=m.name, parent=m.parent, reasons=(m.failure,))
              for m in models if m.failure}
    models = [m for m in models if not m.failure]
    results = {m.name: m.values for m in models}
    teacher = models[0].values
    for m in models:
        section = "validate.quantized_gates" if m.quantized else "validate.gates"
        limits = parity["quantized" if m.quantized else "float"]
        reasons = parity_reasons(m.values, *limits, section)
        comparison, outcome = None, None
        if m.parent is not None and samples is not None and m.parent in samples \
                and m.name in samples:
            comparison = speed.compare(samples, m.name, m.parent, gates.latency_batch,
                                       confidence, resolution)
            outcome = speed.settle(comparison, gates.min_speedup_vs_parent, hysteresis,
                                   (previous or {}).get(m.name))
        elif m.parent is not None and samples is not None:
            reasons.append(f"its parent {m.parent} has no latency on {target} to compare with")
        reasons += gate_reasons(m.values, teacher, accuracy_key, gates, comparison, outcome)
        verdicts[m.name] = Verdict(
            name=m.name, parent=m.parent, reasons=tuple(reasons),
            score=objective_score(m.values, teacher, select, latency_key, accuracy_key),
            speed_vs_parent={**comparison.as_dict(), "gate_passed": outcome.passed,
                             "kept": outcome.kept} if outcome else None)
    verdicts.update(failed)
    passing = {n: results[n] for n, v in verdicts.items() if v.passed}
    frontier = pareto_front(passing, accuracy_key, samples, gates.latency_batch, confidence,
                            resolution)
    for n in frontier:
        verdicts[n] = verdicts[n].model_copy(update={"on_frontier": True})
    if not frontier:
        return Decision(objective=select.objective, target=target, verdicts=verdicts,
                        why="no model passes the gates")
    note = ""
    if select.objective == "fastest":
        best, note = _fastest(frontier, results, samples, gates.latency_batch, confidence,
                              resolution, latency_key)
    else:
        best = min(frontier, key=lambda n: (verdicts[n].score, -results[n][accuracy_key], n))
    return Decision(objective=select.objective, target=target, verdicts=verdicts, selected=best,
                    frontier=frontier,
                    why=f"{select.objective} of the {len(frontier)} model(s) on the Pareto "
                        f"frontier of {len(passing)} passing{note}")
