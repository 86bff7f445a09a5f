"""Lineage audit on a real run: the chain teacher -> pr (prune, fine-tune) -> pr_q8
(static int8), hash verification and tampering, reverse queries, and reproduction through
the executor: bit-identical on this machine, explained on another CPU kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shrinkflow.audit import query, render, reproduce, resolve, verify
from shrinkflow.plan.params import load_params
from tests.conftest import fast_overrides, make_workspace, write_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(prefect_harness, tmp_path_factory):
    from shrinkflow.flows.pipeline import run_pipeline

    root = tmp_path_factory.mktemp("audit")
    ws = make_workspace(root / "ws", root / "remote")
    # Two worker processes computing side by side: reproduce must still be bit-identical.
    write_params(ws, [*fast_overrides(epochs=2), "base.parallel_steps=2"])
    result = run_pipeline(load_params(ws / "params.yaml"), ws)
    return ws, f"sqlite:///{ws / 'mlflow.db'}", result


def _statuses(checks):
    return {c.item: c.status for c in checks}


def test_audit_shows_every_link(run):
    ws, uri, result = run
    report = resolve.audit(uri, result.models["pr_q8"]["run_id"])
    models = report.models
    assert [m.model.name for m in models] == ["pr_q8", "pr", "teacher"]
    assert models[0].parent.name == "pr"
    assert models[0].parent.run_id == result.models["pr"]["run_id"]
    assert models[1].parent.run_id == result.models["teacher"]["run_id"]
    assert [s.step for s in models[0].chain] == ["train", "prune", "finetune", "convert",
                                                 "quantize"]
    assert all(len(s.config_hash) == 16 and s.key and s.worker for s in models[0].chain)
    assert models[0].model.calibration_fingerprint and models[0].model.weight_bits in (7, 8)
    assert models[-1].data.dvc.path == "data/prepared"
    assert models[-1].data.dvc.md5.endswith(".dir")
    assert len(models[0].code.git_commit) == 40
    assert "torch" in models[0].environment and models[0].environment["lock_hash"]
    machine = models[0].machine["steps"][0]
    assert machine["isa_kind"] and machine["onnxruntime"] and machine["onednn"]

    champion = resolve.audit(uri, "models:/shrinkflow-digits@champion")
    assert "champion" in champion.registered["aliases"]
    assert champion.registered["events"][-1]["action"] == "champion"
    assert "graph TD" in render.mermaid(report)
    render.graph_png(report, ws / "chain.png")
    assert (ws / "chain.png").stat().st_size > 1000


def test_verify_passes_then_catches_one_changed_byte(run):
    ws, uri, result = run
    report = resolve.audit(uri, result.models["pr_q8"]["run_id"])
    checks = verify.verify(report, ws)
    assert all(c.status == "OK" for c in checks), [c for c in checks if c.status != "OK"]
    assert "pr_q8: calibration subset" in _statuses(checks)

    # One byte of the stored ONNX model.
    onnx_file = Path(report.models[0].model.onnx.mlflow_location.removeprefix("file://"))
    original = onnx_file.read_bytes()
    onnx_file.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    try:
        assert _statuses(verify.verify(report, ws))["pr_q8: ONNX model"] == "MISMATCH"
    finally:
        onnx_file.write_bytes(original)

    # One byte of the prepared data, in the DVC cache and in the workspace.
    from shrinkflow.ops.versioning import find_object, object_stores

    dir_md5 = report.models[-1].data.dvc.md5
    listing = json.loads(find_object(object_stores(ws), dir_md5)[1].read_text())
    md5 = next(e["md5"] for e in listing if e["relpath"] == "x_test.npy")
    cached = ws / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    backup = cached.read_bytes()
    cached.chmod(0o644)
    cached.write_bytes(backup[:-1] + bytes([backup[-1] ^ 1]))
    workspace_copy = ws / "data" / "prepared" / "x_test.npy"
    ws_backup = workspace_copy.read_bytes()
    workspace_copy.write_bytes(ws_backup[:-1] + bytes([ws_backup[-1] ^ 1]))
    try:
        statuses = _statuses(verify.verify(report, ws))
        assert statuses["data (DVC)"] == "MISMATCH"
        assert statuses["data (workspace)"] == "MISMATCH"
    finally:
        cached.write_bytes(backup)
        workspace_copy.write_bytes(ws_backup)


def test_reverse_queries_find_exactly_the_right_versions(run):
    ws, uri, result = run
    report = resolve.audit(uri, "models:/shrinkflow-digits@champion")
    data = report.models[-1].data
    commit = report.models[0].code.git_commit
    version = report.registered["version"]
    for q in (data.fingerprint, data.fingerprint[:12], data.dvc.md5, str(ws / "data" / "prepared")):
        assert [r["version"] for r in query.find_versions(uri, data=q)] == [version], q
    assert query.find_versions(uri, data="0" * 12) == []
    assert [r["version"] for r in query.find_versions(uri, commit=commit[:10])] == [version]
    assert query.find_versions(uri, commit="deadbeef") == []


def test_reproduce_is_bit_identical_on_this_machine(run):
    ws, uri, _ = run
    ok, rows, summary = reproduce.reproduce(uri, "models:/shrinkflow-digits@champion", ws)
    assert summary["same_kernels"]
    assert ok, [r for r in rows if not r["within"]]
    assert {r["metric"] for r in rows} >= {"onnx_test_accuracy", "size_bytes"}
    byte_rows = [r for r in rows if r.get("bytes")]
    assert byte_rows and all(r["identical"] for r in byte_rows), byte_rows


def test_reproduce_on_another_cpu_kind_compares_metrics_not_bytes(run, monkeypatch):
    ws, uri, _ = run
    from shrinkflow.core import machine

    monkeypatch.setattr(machine, "same_kernels", lambda a, b: False)
    # Pretend the bytes came out different, as they may with other float kernels.
    real = reproduce.execute

    def other_bytes(*args, **kwargs):
        out = real(*args, **kwargs)
        return {k: r.model_copy(update={"record": {**r.record, "sha256": "0" * 64}})
                if r.record_type in ("ExportArtifact", "ModelArtifact") else r
                for k, r in out.items()}

    monkeypatch.setattr(reproduce, "execute", other_bytes)
    ok, rows, summary = reproduce.reproduce(uri, "models:/shrinkflow-digits@champion", ws)
    assert not summary["same_kernels"]
    assert ok  # metrics agree; different bytes are expected across ISAs
    assert any(r.get("bytes") and not r["identical"] for r in rows)


def test_reproduce_reports_differences_past_tolerance(run):
    ws, uri, _ = run
    from shrinkflow.ops.tracking import client

    c = client(uri)
    champion = c.get_model_version_by_alias("shrinkflow-digits", "champion")
    run_id = champion.tags["shrinkflow.model_run_id"]
    original = c.get_run(run_id).data.metrics["onnx_test_accuracy"]
    c.log_metric(run_id, "onnx_test_accuracy", 0.5)  # a recorded number that is now wrong
    try:
        ok, rows, _ = reproduce.reproduce(uri, "models:/shrinkflow-digits@champion", ws)
        assert not ok
        bad = [r for r in rows if not r["within"]]
        assert bad and bad[0]["metric"] == "onnx_test_accuracy"
    finally:
        c.log_metric(run_id, "onnx_test_accuracy", original)


def test_verify_fetches_the_data_through_dvc_from_any_remote(run, tmp_path):
    """The data is neither in the local cache nor on the default remote, only on a second
    remote: DVC itself fetches it, and verification passes."""
    import shutil
    import subprocess
    import sys

    from tests.conftest import venv_env

    ws, uri, _ = run

    def dvc(*args):
        out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=ws, capture_output=True,
                             text=True, env=venv_env(), timeout=300)
        assert out.returncode == 0, out.stderr
        return out.stdout

    dvc("remote", "add", "--local", "-f", "second", str(tmp_path / "second"))
    dvc("push", "-r", "second")
    dvc("remote", "add", "--local", "-f", "-d", "empty", str(tmp_path / "empty"))
    cache = ws / ".dvc" / "cache"
    first = Path(dvc("config", "remote.test.url").strip())
    shutil.move(cache, tmp_path / "cache-away")
    shutil.move(first, tmp_path / "first-away")  # the usual remote has nothing now
    try:
        report = resolve.audit(uri, "models:/shrinkflow-digits@champion")
        checks = {c.item: c for c in verify.verify(report, ws)}
        assert checks["data (DVC)"].status == "OK", checks["data (DVC)"].detail
        assert "second" in checks["data (DVC)"].detail
    finally:
        shutil.rmtree(cache, ignore_errors=True)
        shutil.move(tmp_path / "cache-away", cache)
        shutil.move(tmp_path / "first-away", first)
        dvc("remote", "default", "--local", "test")
