"""Migration: every model converted for, validated on and timed on ONNX Runtime,
OpenVINO and LiteRT; per-target verdicts, champions and predictions; raw inputs in."""

from __future__ import annotations

import numpy as np
import pytest

from shrinkflow.plan.params import load_params
from tests.conftest import fast_overrides, write_params

pytestmark = pytest.mark.slow

VARIANTS = ("variants={pr: {from: teacher, steps: [{prune: {amount: 0.5}}, "
            "{finetune: {fit: {epochs: 1}}}]},"
            "pr_q8: {from: pr, steps: [{quantize: {method: static, calibration_size: 64}}]}}")
TARGETS = "[onnxruntime, openvino, {runtime: litert, batch_sizes: [1, 256]}]"


@pytest.fixture(scope="module")
def run(prefect_harness, tmp_path_factory):
    from shrinkflow.flows.pipeline import run_pipeline

    from tests.conftest import make_workspace

    root = tmp_path_factory.mktemp("targets")
    ws = make_workspace(root / "ws", root / "remote")
    write_params(ws, fast_overrides(epochs=3, variants=VARIANTS, targets=TARGETS))
    return ws, run_pipeline(load_params(ws / "params.yaml"), ws)


def test_every_target_converts_validates_and_decides(run):
    ws, result = run
    assert set(result.targets) == {"openvino", "litert"}
    values = result.models
    assert (ws / "exports" / "openvino" / "teacher" / "model" / "model.xml").is_file() or \
        (ws / "exports" / "openvino" / "teacher" / "model.xml").is_file()
    from mlflow.tracking import MlflowClient

    c = MlflowClient(f"sqlite:///{ws / 'mlflow.db'}")
    teacher = c.get_run(values["teacher"]["run_id"]).data
    for target in ("openvino", "litert"):
        acc = teacher.metrics[f"{target}.{target}_test_accuracy"]
        assert acc == pytest.approx(teacher.metrics["onnx_test_accuracy"], abs=0.01)
        assert teacher.metrics[f"{target}.parity_max_abs_diff"] < 1e-3  # float: parity gate
        assert f"{target}.latency_p50_ms_b256" in teacher.metrics
        assert teacher.tags[f"shrinkflow.gate.{target}"] == "pass"
    q8 = c.get_run(values["pr_q8"]["run_id"]).data
    assert q8.metrics["litert.parity_top1_agreement"] >= 0.97  # PT2E int8
    artifacts = {a.path for a in c.list_artifacts(values["teacher"]["run_id"], "exports")}
    assert artifacts == {"exports/openvino", "exports/litert"}


def test_each_target_has_its_champion_and_predicts_raw_images(run, tmp_path):
    ws, result = run
    from shrinkflow.app.predict import predict
    from shrinkflow.data.prepare import raw_test_split
    from shrinkflow.ops.registry import list_versions
    from shrinkflow.ops.tracking import client

    uri = f"sqlite:///{ws / 'mlflow.db'}"
    client(uri)
    rows = list_versions(uri, "shrinkflow-digits")
    aliases = {a for r in rows for a in r["aliases"]}
    assert {"champion", "champion-openvino", "champion-litert"} <= aliases
    x, y, _ = raw_test_split(ws / "data" / "prepared")
    np.savez(tmp_path / "x.npz", x=x[:64, 0])  # raw pixels, (N, H, W)
    preds = {}
    for alias in ("champion", "champion-openvino", "champion-litert"):
        out = predict(f"models:/shrinkflow-digits@{alias}", tmp_path / "x.npz")
        preds[alias] = out["pred"]
        assert (out["pred"] == y[:64]).mean() > 0.8
    # The MLflow-loaded champion on raw images predicts what `shrinkflow predict` does.
    import mlflow

    model = mlflow.pyfunc.load_model("models:/shrinkflow-digits@champion")
    out = model.predict(x[:64])
    logits = np.asarray(out["logits"] if isinstance(out, dict) else out)
    np.testing.assert_array_equal(logits.argmax(1), preds["champion"])


def test_audit_verifies_every_target_artifact(run):
    ws, result = run
    from shrinkflow.audit import resolve, verify

    report = resolve.audit(f"sqlite:///{ws / 'mlflow.db'}", "models:/shrinkflow-digits@champion")
    exports = {e.target: e for e in report.models[0].model.exports}
    assert set(exports) == {"onnxruntime", "openvino", "litert"}
    assert exports["litert"].runtime["ai-edge-litert"]
    checks = {c.item: c.status for c in verify.verify(report, ws)}
    name = report.models[0].model.name
    assert checks[f"{name}: openvino artifact"] == "OK"
    assert checks[f"{name}: litert artifact"] == "OK"


def test_a_missing_extra_is_refused_before_anything_runs(monkeypatch):
    from shrinkflow.app.preflight import check_targets
    from shrinkflow.core.errors import ShrinkflowError
    from shrinkflow.targets.litert import LiteRt

    monkeypatch.setattr(LiteRt, "modules", ("no_such_module_xyz",))
    params = load_params(None, ["targets=[litert]"])
    with pytest.raises(ShrinkflowError, match=r"pip install 'shrinkflow\[litert\]'"):
        check_targets(params)
