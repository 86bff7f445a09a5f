"""Verify every hash of a model's chain: ONNX files and checkpoints in the MLflow stores,
the prepared data in DVC and in the workspace, the calibration subsets, the commit."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from pydantic import BaseModel

from shrinkflow.audit.resolve import Report
from shrinkflow.data.prepare import fingerprint_of, read_meta
from shrinkflow.ops import versioning
from shrinkflow.ops.tracking import client


class Check(BaseModel):
    item: str
    status: str  # OK | MISMATCH | MISSING | INFO
    detail: str


def _download(uri: str, artifact_uri: str, dst: Path) -> Path | None:
    import mlflow

    client(uri)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri, dst_path=str(dst)))
    except Exception:
        return None


def _stored_onnx(uri: str, m, dst: Path) -> Path | None:
    """The ONNX file MLflow stores for a model: through its logged-model URI (which
    follows a moved workspace), else the location recorded at logging time."""
    if m.onnx.mlflow_uri:
        local = _download(uri, m.onnx.mlflow_uri, dst)
        if local is not None:
            found = [local] if local.is_file() else sorted(local.rglob("model.onnx"))
            return found[0] if found else None
    return _download(uri, m.onnx.mlflow_location, dst) if m.onnx.mlflow_location else None


def _check_hash(item: str, path: Path | None, expected: str, where: str) -> Check:
    """A file's (or an artifact directory's) sha256 against the recorded one."""
    from shrinkflow.core.files import path_sha256

    if path is None or not path.exists():
        return Check(item=item, status="MISSING", detail=f"not found in {where}")
    got = path_sha256(path)
    if got != expected:
        return Check(item=item, status="MISMATCH",
                     detail=f"sha256 {got[:16]}… != recorded {expected[:16]}… ({where})")
    return Check(item=item, status="OK", detail=f"sha256 {got[:16]}… ({where})")


def _verify_data(report: Report, root: Path, restored: Path) -> list[Check]:
    d = report.models[-1].data
    checks = []
    if d.dvc:
        where, problems = versioning.restore(d.dvc.model_dump(), root, restored)
        if not where:
            checks.append(Check(item="data (DVC)", status="MISSING", detail=problems[0]))
        elif problems:
            checks.append(Check(item="data (DVC)", status="MISMATCH", detail="; ".join(problems)))
        else:
            fp = fingerprint_of(restored)
            checks.append(Check(item="data (DVC)", status="OK" if fp == d.fingerprint else
                                "MISMATCH", detail=f"{d.dvc.md5} from {where}; fingerprint "
                                                   f"{fp[:16]}…"))
    ws_data = root / "data" / "prepared"
    if (ws_data / "meta.json").is_file():
        fp = fingerprint_of(ws_data)
        if fp == d.fingerprint:
            # A run not recorded in DVC is verified by the content fingerprint alone.
            checks.append(Check(item="data (workspace)", status="OK",
                                detail=f"{ws_data} fingerprint {fp[:16]}…"))
        else:
            claims = read_meta(ws_data).get("fingerprint") == d.fingerprint
            checks.append(Check(item="data (workspace)", status="MISMATCH" if claims else "INFO",
                                detail=f"{ws_data} holds other data (fingerprint {fp[:16]}…)"))
    if not d.dvc and not any(c.status == "OK" for c in checks):
        checks.append(Check(item="data", status="MISSING",
                            detail="not recorded in DVC, and the workspace holds other data"))
    return checks


def verify(report: Report, root: str | Path) -> list[Check]:
    """Recompute every hash in the chain (see the module docstring)."""
    uri, root = report.tracking_uri, Path(root)
    checks: list[Check] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i, r in enumerate(report.models):
            m, name = r.model, r.model.name
            onnx_path = _stored_onnx(uri, m, tmp / f"o{i}")
            checks.append(_check_hash(f"{name}: ONNX model", onnx_path,
                                      m.onnx.mlflow_sha256 or m.onnx.sha256, "MLflow model store"))
            ckpt = _download(uri, f"runs:/{r.run_id}/{m.checkpoint.artifact}", tmp / f"c{i}")
            checks.append(_check_hash(f"{name}: checkpoint", ckpt, m.checkpoint.sha256,
                                      "MLflow run artifacts"))
            for e in m.exports:
                if e.target == "onnxruntime":
                    continue  # the ONNX model above
                local = _download(uri, f"runs:/{r.run_id}/{e.artifact}", tmp / f"e{i}{e.target}")
                checks.append(_check_hash(f"{name}: {e.target} artifact", local, e.sha256,
                                          "MLflow run artifacts"))
        restored = tmp / "prepared"
        checks += _verify_data(report, root, restored)
        data_dir = restored if (restored / "meta.json").is_file() else root / "data" / "prepared"
        checks += _verify_calibration(report, data_dir)
        commit = report.models[0].code.git_commit
        ok = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=root,
                            capture_output=True).returncode == 0
        checks.append(Check(item="code", status="OK" if ok else "MISSING",
                            detail=f"git commit {commit} {'exists' if ok else 'not found'} in "
                                   f"{root}"))
    return checks


def _verify_calibration(report: Report, data_dir: Path) -> list[Check]:
    from shrinkflow.data.prepare import data_record
    from shrinkflow.steps.quantize import calibration_data

    checks = []
    for r in report.models:
        fp = r.model.calibration_fingerprint
        if not fp:
            continue
        size = next((s.config["calibration_size"] for s in r.chain
                     if s.step == "quantize" and "calibration_size" in s.config), None)
        item = f"{r.model.name}: calibration subset"
        if size is None or not (data_dir / "meta.json").is_file():
            checks.append(Check(item=item, status="MISSING", detail="data or config unavailable"))
            continue
        _, got = calibration_data(data_record(data_dir), size)
        checks.append(Check(item=item, status="OK" if got == fp else "MISMATCH",
                            detail=f"sha256 {got[:16]}… (recomputed from the data)"))
    return checks
