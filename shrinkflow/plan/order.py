"""In which order ready steps start: longest remaining chain first.

A task runner starts whichever ready step it likes best. Left to submission order, a
step that heads a long chain (prune, finetune, convert, three targets' conversions) can
wait behind a row of short validations, and its chain then runs alone at the end while
the other workers idle. Ranking every step by the typical seconds of the longest chain
that starts at it (its "upward rank", as list schedulers such as HEFT use it) lets the
long chains start first.

Only the order depends on these figures, never a result: a wrong estimate costs time,
not correctness.
"""

from __future__ import annotations

from shrinkflow.plan.plan import Plan, PlanStep

# Typical seconds of one step on the default digits pipeline (2 cores; bench/gantt.py,
# "by kind"), by kind and, for conversions, by target.
TYPICAL_SECONDS: dict[str, float] = {
    "prepare": 1.3, "train": 3.0, "distill": 1.5, "prune": 0.5, "finetune": 2.2,
    "quantize": 0.5, "convert": 1.5, "validate": 0.1, "latency": 4.0,
}
TYPICAL_CONVERT: dict[str, float] = {"onnxruntime": 1.5, "openvino": 0.1, "litert": 4.5}
UNKNOWN_KIND = 1.0  # a step kind registered by a user


def typical_seconds(step: PlanStep) -> float:
    if step.kind == "convert":
        target = getattr(step.config, "target", "onnxruntime")
        return TYPICAL_CONVERT.get(target, TYPICAL_SECONDS["convert"])
    return TYPICAL_SECONDS.get(step.kind, UNKNOWN_KIND)


def upward_ranks(plan: Plan) -> dict[str, float]:
    """Each step's typical seconds plus the longest rank among the steps that use it."""
    users: dict[str, list[str]] = {s.id: [] for s in plan.steps}
    for step in plan.steps:
        for dep in step.input_ids():
            users[dep].append(step.id)
    ranks: dict[str, float] = {}
    for step in reversed(plan.steps):  # plan order is topological: users are ranked first
        after = max((ranks[u] for u in users[step.id]), default=0.0)
        ranks[step.id] = round(typical_seconds(step) + after, 3)
    return ranks


def priorities(plan: Plan) -> dict[str, int]:
    """Integer priorities for a task runner where higher starts first (Dask's), in
    hundredths of a second of upward rank."""
    return {sid: int(round(rank * 100)) for sid, rank in upward_ranks(plan).items()}
