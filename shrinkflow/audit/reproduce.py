"""Reproduce a registered model: re-derive its chain from the lineage (recorded params,
data by DVC hash) through the same plan and executor as a run, in a fresh workspace with
an empty step store, then compare.

On a machine with the same kernels (ISA features and library versions) every artifact
must be bit-identical. On another CPU kind float kernels differ, so bytes may differ:
that is reported as expected, and the metrics must agree within tolerance.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from shrinkflow.audit.resolve import audit
from shrinkflow.core import machine
from shrinkflow.core.config import read_yaml
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.workspace import Workspace
from shrinkflow.data.prepare import data_record, prepare
from shrinkflow.ops import versioning
from shrinkflow.ops.tracking import client
from shrinkflow.plan.executor import execute
from shrinkflow.plan.params import parse_params
from shrinkflow.plan.plan import TARGET, build_plan
from shrinkflow.plan.store import StepRecord

COMPARED = ("test_accuracy", "onnx_test_accuracy", "parity_top1_agreement", "params",
            "sparsity", "size_bytes")


def _recorded_machine(lineage) -> dict[str, Any] | None:
    steps = lineage.machine.get("steps") or []
    return steps[0] if steps else None


def reproduce(uri: str, target: str, root: str | Path, tolerance: float = 0.005,
              keep: Path | None = None) -> tuple[bool, list[dict[str, Any]], dict[str, Any]]:
    """Re-derive ``target`` and compare: (ok, rows, summary). ``ok`` needs metrics within
    ``tolerance`` (accuracies, absolute), sizes within 1 %, counts exact, and, on a
    machine with the same kernels as the recording one, identical sha256 for every
    checkpoint and ONNX file."""
    import mlflow

    report = audit(uri, target)
    records = report.models
    client(uri)
    pipeline_run = records[0].pipeline_run_id
    try:
        text = mlflow.artifacts.load_text(f"runs:/{pipeline_run}/params.yaml")
    except Exception:
        raise ShrinkflowError(f"pipeline run {pipeline_run}: no params.yaml artifact; "
                              "cannot reproduce") from None
    names = [r.model.name for r in reversed(records)]
    tmp_root = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="shrinkflow-reproduce-"))
    recorded_m = _recorded_machine(records[0])
    here = {**machine.fingerprint()}
    same = recorded_m is not None and machine.same_kernels(recorded_m, here)
    try:
        tmp_root.mkdir(parents=True, exist_ok=True)
        (tmp_root / "params.yaml").write_text(text)
        raw = read_yaml(tmp_root / "params.yaml")
        raw["variants"] = {n: v for n, v in (raw.get("variants") or {}).items() if n in names}
        params = parse_params(raw, source=f"run {pipeline_run} params.yaml")
        ws = Workspace.at(tmp_root)
        d = records[-1].data
        if d.dvc:
            _, problems = versioning.restore(d.dvc.model_dump(), Path(root), ws.data_dir)
            if problems:
                raise ShrinkflowError("data from DVC: " + "; ".join(problems))
        else:
            prepare(params.prepare.resolved(root), ws.data_dir)
        data = data_record(ws.data_dir)
        if data.fingerprint != d.fingerprint:
            raise ShrinkflowError(f"data fingerprint {data.fingerprint[:16]}… differs from the "
                                  f"recorded {d.fingerprint[:16]}…; cannot reproduce")
        plan = build_plan(params, ws.root, source=d.source_fingerprint if d.dvc else None)
        known = {"prepare": StepRecord(step_id="prepare", kind="prepare", key="",
                                       record_type="DataArtifact",
                                       record=data.model_dump(mode="json"))}
        wanted = [v for n in names for v in plan.models[n].validation.values()]
        results = execute(plan, ws, wanted, known=known)
    finally:
        if keep is None:
            shutil.rmtree(tmp_root, ignore_errors=True)
    rows, ok = [], True
    for rec in records:
        name = rec.model.name
        mp = plan.models[name]
        values = results[mp.validation[TARGET]].output().values
        for key in COMPARED:
            if key not in rec.metrics:
                continue
            old, new = rec.metrics[key], values[key]
            within = old == new if key == "params" else (
                abs(new - old) <= 0.01 * old if key == "size_bytes" else abs(new - old) <= tolerance)
            ok &= within
            rows.append({"model": name, "metric": key, "recorded": old, "reproduced": new,
                         "diff": new - old, "within": within})
        pairs = [("checkpoint sha256", results[mp.checkpoint].sha256, rec.model.checkpoint.sha256),
                 ("onnx sha256", results[mp.exports[TARGET]].sha256, rec.model.onnx.sha256)]
        pairs += [(f"{e.target} sha256", results[mp.exports[e.target]].sha256, e.sha256)
                  for e in rec.model.exports
                  if e.target != TARGET and e.target in mp.exports]
        for label, got, want in pairs:
            identical = got == want
            if same:
                ok &= identical
            rows.append({"model": name, "metric": f"{label} identical", "recorded": want[:16],
                         "reproduced": got[:16], "diff": None, "within": identical or not same,
                         "bytes": True, "identical": identical})
    summary = {"same_kernels": same, "recorded_machine": machine.describe(recorded_m or {}),
               "this_machine": machine.describe(here)}
    return ok, rows, summary

