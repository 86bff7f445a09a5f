"""The promotion rule: exact on accuracy and size; on speed only through an interval
measured side by side."""

import pytest

from shrinkflow.core.stats import Interval
from shrinkflow.decide.promotion import RegistryParams, challenger_wins, objective_gain
from shrinkflow.decide.select import SelectParams

RULE = RegistryParams()
ACC = "onnx_test_accuracy"


def vals(acc, size, lat=5.0):
    return {ACC: acc, "size_bytes": size, "latency_p50_ms_b256": lat}


@pytest.mark.parametrize("objective, ours, theirs, wins", [
    ("smallest", vals(0.95, 100), vals(0.95, 200), True),
    ("smallest", vals(0.95, 200), vals(0.95, 200), False),  # equal is not better
    ("smallest", vals(0.94, 100), vals(0.95, 200), False),  # 1 pp less accurate
    ("most_accurate", vals(0.96, 300), vals(0.95, 200), True),
])
def test_exact_objectives(objective, ours, theirs, wins):
    assert challenger_wins(ours, theirs, SelectParams(objective=objective), RULE, ACC)[0] is wins


def test_speed_wins_only_when_the_lower_bound_clears_the_gain():
    fastest = SelectParams(objective="fastest")
    sure = Interval(0.30, 0.20, 0.40, 0.95, 8)  # 30 % faster, surely
    noisy = Interval(0.018, -0.05, 0.09, 0.95, 8)  # the "1.80 %" that promoted on noise
    ok, why = challenger_wins(vals(0.95, 300), vals(0.95, 200), fastest, RULE, ACC, sure)
    assert ok and "measured side by side" in why
    ok, why = challenger_wins(vals(0.95, 300), vals(0.95, 200), fastest, RULE, ACC, noisy)
    assert not ok and "lower bound" in why
    with pytest.raises(ValueError):
        objective_gain(vals(0.95, 300), vals(0.95, 200), fastest, ACC)  # no measurement


def test_weighted_gain_interval_moves_with_speed():
    w = SelectParams(objective="weighted", weights={"size": 1.0, "latency": 1.0})
    g = objective_gain(vals(0.95, 100), vals(0.95, 200), w, ACC, Interval(0.0, -0.1, 0.1, 0.95, 8))
    assert g.low < g.estimate < g.high and g.estimate == pytest.approx(0.25)


def test_encoders_on_different_sentences_are_not_reevaluated():
    from shrinkflow.core.errors import ShrinkflowError
    from shrinkflow.ops.registry import refuse_reevaluating_encoders

    refuse_reevaluating_encoders("m", "2", "1", {"onnx_test_accuracy": 0.9},
                                 {"onnx_test_accuracy": 0.8})  # classifiers: re-evaluated
    with pytest.raises(ShrinkflowError, match="cosines cannot be compared"):
        refuse_reevaluating_encoders("m", "2", "1", {"onnx_test_cosine": 0.99}, {})
