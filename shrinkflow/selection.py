"""Gates, the Pareto frontier and the selection objective: which model may be deployed.

Pure functions of validated metrics and params: changing only gates or the objective
re-decides without touching a model.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from shrinkflow.artifacts import Metrics
from shrinkflow.config import GatesParams, Params, SelectParams


class Verdict(BaseModel):
    """One model's gate result: ``reasons`` is empty when it passes."""

    model_config = ConfigDict(frozen=True)

    name: str
    parent: str | None
    reasons: tuple[str, ...] = ()
    on_frontier: bool = False
    score: float | None = None  # selection objective, lower is better

    @property
    def passed(self) -> bool:
        return not self.reasons


class Decision(BaseModel):
    """Every model's verdict, the frontier among passing models, and the choice."""

    model_config = ConfigDict(frozen=True)

    objective: str
    verdicts: dict[str, Verdict]
    selected: str | None = None
    why: str = ""
    frontier: list[str] = Field(default_factory=list)


def _latency_key(gates: GatesParams) -> str:
    return f"latency_p50_ms_b{gates.latency_batch}"


def gate_reasons(name: str, values: dict[str, float], parent: str | None,
                 metrics: dict[str, dict[str, float]], teacher: dict[str, float],
                 gates: GatesParams, parity_failures: tuple[str, ...] = ()) -> list[str]:
    """Why ``name`` fails the gates (empty list: it passes)."""
    reasons = list(parity_failures)
    drop = (teacher["onnx_test_accuracy"] - values["onnx_test_accuracy"]) * 100
    if drop > gates.max_accuracy_drop_pp:
        reasons.append(f"accuracy drop {drop:.2f} pp > gates.max_accuracy_drop_pp "
                       f"{gates.max_accuracy_drop_pp:g}")
    if parent is not None:
        key = _latency_key(gates)
        speedup = metrics[parent][key] / values[key] - 1
        if speedup < gates.min_speedup_vs_parent:
            reasons.append(f"{speedup * 100:+.1f} % speed vs parent {parent} at batch "
                           f"{gates.latency_batch} < gates.min_speedup_vs_parent "
                           f"{gates.min_speedup_vs_parent * 100:+.0f} %")
    if gates.max_size_bytes is not None and values["size_bytes"] > gates.max_size_bytes:
        reasons.append(f"size {values['size_bytes']:.0f} B > gates.max_size_bytes "
                       f"{gates.max_size_bytes}")
    return reasons


def pareto_front(points: dict[str, tuple[float, float, float]]) -> list[str]:
    """Names not dominated on (accuracy: higher, size: lower, latency: lower)."""
    def dominates(a, b) -> bool:
        better_or_equal = a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2]
        return better_or_equal and (a[0] > b[0] or a[1] < b[1] or a[2] < b[2])

    return [n for n, p in points.items()
            if not any(dominates(q, p) for m, q in points.items() if m != n)]


def objective_score(values: dict[str, float], teacher: dict[str, float], select: SelectParams,
                    latency_key: str) -> float:
    """The selection objective for one model; lower is better."""
    if select.objective == "smallest":
        return values["size_bytes"]
    if select.objective == "fastest":
        return values[latency_key]
    if select.objective == "most_accurate":
        return -values["onnx_test_accuracy"]
    w = select.weights
    return (w.get("size", 0) * values["size_bytes"] / teacher["size_bytes"]
            + w.get("latency", 0) * values[latency_key] / teacher[latency_key]
            + w.get("accuracy", 0)
            * (teacher["onnx_test_accuracy"] - values["onnx_test_accuracy"]) * 100)


def decide(results: list[Metrics], params: Params) -> Decision:
    """Gate every model, find the Pareto frontier of the passing ones, pick by objective.

    The teacher is a candidate too (it has no parent to be faster than), so a run
    whose variants all fail still offers a deployable model.
    """
    metrics = {m.name: m.values for m in results}
    teacher = metrics["teacher"]
    key = _latency_key(params.gates)
    parents = {"teacher": None, **{n: v.from_ for n, v in params.variants.items()}}
    verdicts: dict[str, Verdict] = {}
    for m in results:
        reasons = gate_reasons(m.name, m.values, parents.get(m.name), metrics, teacher,
                               params.gates, tuple(m.gate_failures))
        verdicts[m.name] = Verdict(name=m.name, parent=parents.get(m.name),
                                   reasons=tuple(reasons),
                                   score=objective_score(m.values, teacher, params.select, key))
    passing = {n: metrics[n] for n, v in verdicts.items() if v.passed}
    frontier = pareto_front({n: (v["onnx_test_accuracy"], v["size_bytes"], v[key])
                             for n, v in passing.items()})
    for n in frontier:
        verdicts[n] = verdicts[n].model_copy(update={"on_frontier": True})
    if not frontier:
        return Decision(objective=params.select.objective, verdicts=verdicts,
                        why="no model passes the gates")
    best = min(frontier, key=lambda n: (verdicts[n].score, -metrics[n]["onnx_test_accuracy"]))
    return Decision(objective=params.select.objective, verdicts=verdicts, selected=best,
                    frontier=frontier,
                    why=f"{params.select.objective} of the {len(frontier)} model(s) on the "
                        f"Pareto frontier of {len(passing)} passing")
