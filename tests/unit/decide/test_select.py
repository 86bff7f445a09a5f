"""Gates, the Pareto set and the objective (pure functions of results and samples)."""

import numpy as np
import pytest

from shrinkflow.decide.gates import GatesParams
from shrinkflow.decide.select import ModelResult, SelectParams, decide, pareto_front

PARITY = {"float": (1e-3, 0.999), "quantized": (3.0, 0.97)}


def rounds(ms: float, seed: int, n=6, per=15, noise=0.05):
    rng = np.random.default_rng(seed)
    return [list(ms * rng.lognormal(0, noise, per)) for _ in range(n)]


def m(name, parent, acc, size, lat, quantized=False, **extra):
    values = {"onnx_test_accuracy": acc, "size_bytes": size, "latency_p50_ms_b256": lat,
              "latency_p50_ms_b1": lat / 100, "parity_max_abs_diff": 1e-5,
              "parity_top1_agreement": 1.0, **extra}
    return ModelResult(name=name, parent=parent, quantized=quantized, values=values)


def results():
    return [m("teacher", None, 0.95, 1000, 10.0), m("small", "teacher", 0.945, 400, 5.0),
            m("slow", "teacher", 0.95, 900, 12.0),  # slower than its parent
            m("bad", "teacher", 0.90, 100, 1.0),  # too inaccurate
            m("child", "small", 0.944, 150, 4.9),  # 2 % faster than `small`: not enough
            m("broken", "teacher", 0.95, 300, 3.0, parity_top1_agreement=0.5),
            m("same", "teacher", 0.95, 950, 10.0)]  # no faster at all


def samples():
    return {r.name: {"256": rounds(r.values["latency_p50_ms_b256"], i),
                     "1": rounds(r.values["latency_p50_ms_b1"], i + 50)}
            for i, r in enumerate(results())}


def run(gates=None, select=None, res=None):
    return decide(res or results(), gates or GatesParams(), select or SelectParams(), PARITY,
                  samples())


def test_gates_explain_every_rejection():
    v = run().verdicts
    assert v["teacher"].passed and v["small"].passed
    assert v["slow"].reasons[0].startswith("slower than its parent teacher at batch 256")
    assert "accuracy drop 5.00 pp" in v["bad"].reasons[0]
    assert "parent small" in v["child"].reasons[0] and "lower bound" in v["child"].reasons[0]
    assert "parity_top1_agreement 0.5000 < validate.gates.min_top1_agreement" in \
        v["broken"].reasons[0]
    assert v["same"].reasons[0].startswith("not distinguishable from its parent teacher")
    assert "95 % CI" in v["same"].reasons[0]
    assert v["small"].speed_vs_parent["verdict"] == "faster"


def test_selection_and_frontier():
    d = run()
    assert d.selected == "small" and sorted(d.frontier) == ["small", "teacher"]


def test_looser_gates_and_other_objectives_change_the_choice():
    assert run(GatesParams(min_speedup_vs_parent=-1.0, max_accuracy_drop_pp=10)).selected == "bad"
    d = run(GatesParams(min_speedup_vs_parent=-1), SelectParams(objective="most_accurate"))
    assert d.selected in ("teacher", "slow", "same")
    assert run(select=SelectParams(objective="fastest")).selected == "small"
    d = run(GatesParams(max_size_bytes=500))
    assert "size 1000 B > gates.max_size_bytes 500" in d.verdicts["teacher"].reasons
    assert d.selected == "small"


def test_cost_gate_and_cheapest_objective():
    res = [m("teacher", None, 0.95, 1000, 10.0, macs=5e6),
           m("a", "teacher", 0.95, 500, 5.0, macs=1e6), m("b", "teacher", 0.95, 400, 5.0, macs=2e6)]
    s = {r.name: {"256": rounds(r.values["latency_p50_ms_b256"], i)} for i, r in enumerate(res)}
    d = decide(res, GatesParams(max_macs=3e6), SelectParams(objective="cheapest"), PARITY, s)
    assert "MACs > gates.max_macs" in d.verdicts["teacher"].reasons[0]
    assert d.selected == "a"
    assert decide(res, GatesParams(), SelectParams(), PARITY, s).selected == "b"


def test_fastest_ties_inside_the_noise_go_to_the_cheaper_model():
    res = [m("teacher", None, 0.95, 1000, 10.0, macs=5e6),
           m("a", "teacher", 0.95, 500, 5.0, macs=2e6), m("b", "teacher", 0.95, 600, 5.02, macs=1e6)]
    s = {r.name: {"256": rounds(r.values["latency_p50_ms_b256"], i, noise=0.1)}
         for i, r in enumerate(res)}
    d = decide(res, GatesParams(), SelectParams(objective="fastest"), PARITY, s)
    assert d.selected == "b" and "tie broken by MACs" in d.why


def test_no_passing_model_selects_nothing():
    d = run(GatesParams(max_size_bytes=50))
    assert d.selected is None and d.why == "no model passes the gates"


def test_pareto_front_counts_latency_only_where_decisive():
    vals = {"a": {"onnx_test_accuracy": 0.9, "size_bytes": 100},
            "b": {"onnx_test_accuracy": 0.95, "size_bytes": 200},
            "c": {"onnx_test_accuracy": 0.9, "size_bytes": 150},
            "d": {"onnx_test_accuracy": 0.95, "size_bytes": 200}}
    lat = {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.5}
    s = {n: {"256": rounds(v, i)} for i, (n, v) in enumerate(lat.items())}
    assert sorted(pareto_front(vals, "onnx_test_accuracy", s, 256)) == ["a", "d"]
    same = {n: {"256": rounds(1.0, i)} for i, n in enumerate(lat)}  # speed indistinguishable
    assert sorted(pareto_front(vals, "onnx_test_accuracy", same, 256)) == ["a", "b", "d"]


@pytest.mark.parametrize("gates", [GatesParams(), GatesParams(min_speedup_vs_parent=0.3)])
def test_the_same_samples_give_the_same_decision(gates):
    assert run(gates) == run(gates)
