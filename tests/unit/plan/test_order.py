"""The order ready steps start in: the head of the longest chain first."""

from shrinkflow.plan.order import priorities, typical_seconds, upward_ranks
from shrinkflow.plan.params import load_params
from shrinkflow.plan.plan import build_plan

VARIANTS = ("variants={short: {from: teacher, steps: [{prune: {amount: 0.5}}]}, "
            "long: {from: teacher, steps: [{prune: {amount: 0.6}}, "
            "{finetune: {fit: {epochs: 1}}}]}, "
            "long_q8: {from: long, steps: [{quantize: {method: static}}]}}")


def _plan(tmp_path, *overrides):
    return build_plan(load_params(None, [VARIANTS, *overrides]), tmp_path)


def test_a_step_outranks_every_step_that_uses_it(tmp_path):
    plan = _plan(tmp_path, "targets=[onnxruntime, openvino, litert]")
    ranks = upward_ranks(plan)
    for step in plan.steps:
        for dep in step.input_ids():
            assert ranks[dep] > ranks[step.id], (dep, step.id)
    assert max(ranks, key=ranks.get) == "prepare"


def test_the_longer_chain_starts_first(tmp_path):
    prio = priorities(_plan(tmp_path))
    # `long` has a fine-tune and a quantized child after its prune; `short` has neither.
    assert prio["long:prune"] > prio["short:prune"]
    # A validation (nothing after it but the latency step) comes after any conversion.
    assert prio["teacher:convert"] > prio["teacher:validate"]


def test_litert_conversion_counts_as_the_long_one(tmp_path):
    plan = _plan(tmp_path, "targets=[onnxruntime, openvino, litert]")
    by_id = {s.id: s for s in plan.steps}
    assert typical_seconds(by_id["short:convert@litert"]) > \
        typical_seconds(by_id["short:convert@openvino"])
