"""Promotion, refusal, forced promotion, rollback, the concurrent-promotion race and
predict, against a real MLflow registry on SQLite."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.decide.promotion import RegistryParams
from shrinkflow.decide.select import SelectParams
from shrinkflow.ops import registry

pytestmark = pytest.mark.slow
NAME = "shrinkflow-test"
FP = "f" * 64


def tiny_onnx(weight_scale: float, pad: int = 0):
    """A 2x2-image, 3-class linear model; ``pad`` extra bytes of metadata vary its size."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5) * weight_scale
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["f"]),
         helper.make_node("Gemm", ["f", "W"], ["logits"])], "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    for k, v in {"shrinkflow.norm": json.dumps({"scale": 1.0, "mean": 0.0, "std": 1.0}),
                 "shrinkflow.classes": json.dumps(["a", "b", "c"]), "pad": "x" * pad}.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(model)
    return model


def add_version(uri, acc, size, pad=0, fp=FP, gate="pass"):
    import mlflow

    from shrinkflow.ops.tracking import client

    client(uri)
    mlflow.set_experiment("registry-test")
    with mlflow.start_run() as run:
        info = mlflow.onnx.log_model(tiny_onnx(1.0, pad), name="m", pip_requirements=["onnx"])
    # A version carries each target's accuracy under that target's key.
    values = {"onnx_test_accuracy": acc, "openvino_test_accuracy": acc, "size_bytes": size,
              "latency_p50_ms_b256": 1.0}
    tags = {"shrinkflow.data_fingerprint": fp, "shrinkflow.gate": gate}
    return registry.register(uri, NAME, info.model_uri, run.info.run_id, values, tags, "test")


@pytest.fixture
def uri(tmp_path):
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def champion(uri):
    from shrinkflow.ops.tracking import client

    mv = registry.get_alias(client(uri), NAME, "champion")
    return str(mv.version) if mv else None


SMALLEST, RULE = SelectParams(), RegistryParams()


def promote(uri, version, command="test", select=SMALLEST, **kwargs):
    return registry.promote(uri, NAME, version, select, RULE, command, **kwargs)


def test_promotion_refusal_force_and_rollback(uri):
    v1 = add_version(uri, 0.95, 1000)
    first = promote(uri, None)  # the challenger, no champion yet
    assert first.promoted and champion(uri) == v1 and "no champion yet" in first.reason

    v2 = add_version(uri, 0.90, 500)  # smaller but 5 pp less accurate
    refused = promote(uri, None)
    assert not refused.promoted and champion(uri) == v1
    assert "5.00 pp less accurate" in refused.reason

    v3 = add_version(uri, 0.95, 800)  # as accurate and smaller: wins
    won = promote(uri, v3)
    assert won.promoted and champion(uri) == v3 and won.champion_before == v1

    with pytest.raises(ShrinkflowError, match="needs --reason"):
        promote(uri, v2, force=True)
    forced = promote(uri, v2, "test --force", force=True, reason="hotfix")
    assert forced.promoted and champion(uri) == v2

    back = registry.rollback(uri, NAME, "test rollback", "v2 broke prod")
    assert champion(uri) == v3 and back.champion_before == v2
    rows = {r["version"]: r for r in registry.list_versions(uri, NAME)}
    assert rows[v3]["aliases"] == ["challenger", "champion"] and rows[v2]["aliases"] == ["previous"]
    assert rows[v2]["last_event"]["action"] == "rolled back"
    from shrinkflow.ops.tracking import client

    history = registry.history(client(uri), NAME, v2)
    assert [e["action"] for e in history] == ["challenger", "not promoted", "champion",
                                              "rolled back"]
    assert "forced: hotfix" in history[2]["reason"] and history[2]["by"] == "test --force"


def test_the_whole_history_is_kept(uri):
    from shrinkflow.ops.tracking import client

    v1 = add_version(uri, 0.95, 1000)
    v2 = add_version(uri, 0.95, 900)
    promote(uri, v1)
    for i in range(40):  # far more than one tag's 5000 characters of events
        promote(uri, v2 if i % 2 == 0 else v1, force=True, reason=f"flip {i} " + "x" * 100)
    log = registry.history(client(uri), NAME)
    assert len(log) == 2 + 1 + 40 * 2  # challenger x2, first champion, each flip + previous
    assert any(e["reason"].startswith("forced: flip 0 ") for e in log)


def test_targets_have_their_own_aliases(uri):
    v1 = add_version(uri, 0.95, 1000)
    v2 = add_version(uri, 0.95, 500)
    promote(uri, v1, target="openvino")
    promote(uri, v2, target="openvino")
    rows = {r["version"]: r for r in registry.list_versions(uri, NAME)}
    assert "champion-openvino" in rows[v2]["aliases"] and "previous-openvino" in rows[v1]["aliases"]
    assert champion(uri) is None  # the default target's champion is untouched
    registry.rollback(uri, NAME, "test", "back", target="openvino")
    rows = {r["version"]: r for r in registry.list_versions(uri, NAME)}
    assert "champion-openvino" in rows[v1]["aliases"]


def test_a_latency_objective_promotes_only_on_a_gain_measured_side_by_side(uri):
    v1 = add_version(uri, 0.95, 1000)
    promote(uri, v1)
    v2 = add_version(uri, 0.95, 1000, pad=30)  # the same network: not faster
    x = np.random.default_rng(0).standard_normal((300, 1, 2, 2)).astype(np.float32)
    data = (x, np.zeros(300, np.int64), FP)
    result = promote(uri, v2, select=SelectParams(objective="fastest"), test_data=data)
    assert not result.promoted and "measured side by side" in result.reason
    assert result.measurement["machine"] and result.measurement["rounds"] >= 2
    from shrinkflow.ops.tracking import client

    event = registry.history(client(uri), NAME, v2)[-1]
    assert event["measurement"]["speedup"]["low"] <= 0 <= event["measurement"]["speedup"]["high"]


def test_gate_failures_are_never_promoted_and_other_data_is_re_evaluated(uri):
    add_version(uri, 0.95, 1000)
    promote(uri, None)
    failing = add_version(uri, 0.99, 10, gate="fail")
    assert not promote(uri, failing).promoted

    # Champion measured on other data: without test data there is no fair comparison ...
    other = add_version(uri, 0.99, 100, fp="0" * 64)
    with pytest.raises(ShrinkflowError, match="needs the test data"):
        promote(uri, other)
    # ... with it, both are re-evaluated now (same weights, so same accuracy; smaller wins).
    x = np.random.default_rng(0).standard_normal((50, 1, 2, 2)).astype(np.float32)
    y = np.zeros(50, np.int64)
    result = promote(uri, other, test_data=(x, y, "0" * 64))
    assert "re-evaluated on the current test data" in result.reason


def _promote_in_process(uri, version, queue):
    from shrinkflow.core.env import setup

    setup()
    result = promote(uri, version, f"race {version}")
    queue.put((version, result.promoted, result.reason))


def test_concurrent_promotions_compare_and_set(uri):
    add_version(uri, 0.95, 1000)
    promote(uri, None)
    v_small = add_version(uri, 0.95, 500, pad=10)
    v_mid = add_version(uri, 0.95, 600, pad=20)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_promote_in_process, args=(uri, v, queue))
             for v in (v_mid, v_small)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=300)
        assert proc.exitcode == 0
    outcomes = {v: (ok, why) for v, ok, why in (queue.get() for _ in procs)}
    # Whatever the order, the smaller one ends as champion, and the other compared
    # against the champion it actually found.
    assert champion(uri) == v_small
    assert outcomes[v_small][0]
    ok_mid, why_mid = outcomes[v_mid]
    if not ok_mid:
        assert f"vs champion v{v_small}" in why_mid  # lost against the racer, not v1


def test_predict_on_the_champion(uri, tmp_path):
    from shrinkflow.app.predict import predict
    from shrinkflow.ops.tracking import client

    add_version(uri, 0.95, 1000)
    promote(uri, None)
    client(uri)
    x = np.random.default_rng(1).standard_normal((7, 2, 2)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    out = predict(f"models:/{NAME}@champion", tmp_path / "in.npz", tmp_path / "out.npz")
    w = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5)
    np.testing.assert_array_equal(out["pred"], (x.reshape(7, 4) @ w).argmax(1))
    assert set(out["labels"]) <= {"a", "b", "c"}
    assert np.load(tmp_path / "out.npz")["probs"].shape == (7, 3)
    np.savez(tmp_path / "bad.npz", x=np.zeros((2, 3, 3)))
    with pytest.raises(ShrinkflowError, match="shape"):
        predict(f"models:/{NAME}@champion", tmp_path / "bad.npz")

    # A registered version is served only while the stored file is the registered one.
    import mlflow

    from shrinkflow.core.files import file_sha256

    c = client(uri)
    mv = c.get_model_version_by_alias(NAME, "champion")
    stored = mlflow.artifacts.download_artifacts(f"models:/{NAME}@champion",
                                                 dst_path=str(tmp_path / "dl"))
    onnx_file = next(Path(stored).rglob("*.onnx"))
    c.set_model_version_tag(NAME, mv.version, "shrinkflow.mlflow_sha256", file_sha256(onnx_file))
    predict(f"models:/{NAME}@champion", tmp_path / "in.npz")  # intact: served
    logged = mlflow.get_logged_model(mv.source.removeprefix("models:/"))
    location = logged.artifact_location.removeprefix("file://")
    swapped = tiny_onnx(-1.0)  # another valid ONNX model in the store
    import onnx

    onnx.save(swapped, next(Path(location).rglob("*.onnx")))
    with pytest.raises(ShrinkflowError, match="not the one registered"):
        predict(f"models:/{NAME}@champion", tmp_path / "in.npz")
