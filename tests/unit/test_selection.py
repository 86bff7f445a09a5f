"""Gate logic, the Pareto set, the objective and the promotion rule (pure functions)."""

import pytest

from shrinkflow.artifacts import Metrics
from shrinkflow.config import load_params
from shrinkflow.registry import challenger_wins
from shrinkflow.selection import decide, pareto_front


def m(name, acc, size, lat, parity=()):
    return Metrics(name=name, values={"onnx_test_accuracy": acc, "size_bytes": size,
                                      "latency_p50_ms_b256": lat, "latency_p50_ms_b1": lat / 100},
                   gate_failures=tuple(parity))


V = ("variants={small: {from: teacher, steps: [{prune: {}}]},"
     " slow: {from: teacher, steps: [{prune: {}}]},"
     " bad: {from: teacher, steps: [{prune: {}}]},"
     " child: {from: small, steps: [{quantize: {method: static}}]},"
     " broken: {from: teacher, steps: [{quantize: {method: static}}]}}")


def params(*extra):
    return load_params(None, [V, *extra])


def results():
    return [m("teacher", 0.95, 1000, 10.0), m("small", 0.945, 400, 5.0),
            m("slow", 0.95, 900, 12.0),  # slower than its parent: "optimised" but worse
            m("bad", 0.90, 100, 1.0),  # too inaccurate
            m("child", 0.944, 150, 4.9),  # only 2 % faster than its parent `small`
            m("broken", 0.95, 300, 3.0, parity=["parity_top1_agreement 0.5 < 0.97"])]


def test_gates_explain_every_rejection():
    d = decide(results(), params())
    v = d.verdicts
    assert v["teacher"].passed and v["small"].passed
    assert "speed vs parent teacher" in v["slow"].reasons[0]
    assert "accuracy drop 5.00 pp" in v["bad"].reasons[0]
    assert "vs parent small" in v["child"].reasons[0]
    assert "parity_top1_agreement" in v["broken"].reasons[0]
    assert d.selected == "small" and sorted(d.frontier) == ["small", "teacher"]


def test_looser_gates_and_other_objectives_change_the_choice():
    p = params("gates.min_speedup_vs_parent=0.0", "gates.max_accuracy_drop_pp=10")
    assert decide(results(), p).selected == "bad"  # smallest
    p = params("select.objective=most_accurate", "gates.min_speedup_vs_parent=-1")
    assert decide(results(), p).selected in ("teacher", "slow")
    p = params("select.objective=fastest")
    assert decide(results(), p).selected == "small"
    p = params("gates.max_size_bytes=500")
    d = decide(results(), p)
    assert "size 1000 B > gates.max_size_bytes 500" in d.verdicts["teacher"].reasons
    assert d.selected == "small"


def test_no_passing_model_selects_nothing():
    p = params("gates.max_size_bytes=50")
    d = decide(results(), p)
    assert d.selected is None and d.why == "no model passes the gates"


def test_pareto_front():
    pts = {"a": (0.9, 100, 1), "b": (0.95, 200, 1), "c": (0.9, 150, 1), "d": (0.95, 200, 0.5),
           "e": (0.9, 100, 1)}
    assert sorted(pareto_front(pts)) == ["a", "d", "e"]  # ties don't dominate each other


@pytest.mark.parametrize("objective, ours, theirs, wins", [
    ("smallest", (0.95, 100, 5), (0.95, 200, 5), True),
    ("smallest", (0.95, 200, 5), (0.95, 200, 5), False),  # equal is not better
    ("smallest", (0.94, 100, 5), (0.95, 200, 5), False),  # 1 pp less accurate
    ("fastest", (0.95, 300, 4), (0.95, 200, 5), True),
    ("most_accurate", (0.96, 300, 9), (0.95, 200, 5), True),
])
def test_promotion_rule(objective, ours, theirs, wins):
    p = load_params(None, [f"select.objective={objective}"])
    def vals(t):
        return {"onnx_test_accuracy": t[0], "size_bytes": t[1], "latency_p50_ms_b256": t[2]}
    assert challenger_wins(vals(ours), vals(theirs), p)[0] is wins
