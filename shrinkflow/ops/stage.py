"""A ``dvc.yaml`` stage: ``python -m shrinkflow.tasks STAGE [VARIANT]``.

DVC runs each stage in the workspace after the stages it depends on have published
their outputs. A stage builds the plan of ``params.yaml``, takes its inputs from those
published files (as DVC's deps say), runs its own steps through the executor (in this
process; the step store serves any step whose content key is already there), and
publishes its outputs.
"""

from __future__ import annotations

import logging
import sys

from shrinkflow.core import env
from shrinkflow.core.errors import GateFailure, ShrinkflowError
from shrinkflow.core.workspace import Workspace
from shrinkflow.data.prepare import data_record
from shrinkflow.models.checkpoint import model_record
from shrinkflow.ops.locks import workspace_lock
from shrinkflow.plan.executor import execute, publish
from shrinkflow.plan.params import load_params
from shrinkflow.plan.plan import TARGET, Plan, build_plan
from shrinkflow.plan.store import StepRecord
from shrinkflow.targets.onnxruntime import onnx_record

STAGES = ("prepare", "train", "compress", "convert", "validate")


def _external(step_id: str, kind: str, record) -> StepRecord:
    """A record for an input DVC gave us as a file (not made by this process)."""
    return StepRecord(step_id=step_id, kind=kind, key="", record_type=type(record).__name__,
                      record=record.model_dump(mode="json"))


def _published_data(ws: Workspace) -> dict[str, StepRecord]:
    return {"prepare": _external("prepare", "prepare", data_record(ws.data_dir))}


def _published_checkpoints(plan: Plan, ws: Workspace, names) -> dict[str, StepRecord]:
    out = {}
    for name in names:
        sid = plan.models[name].checkpoint
        out[sid] = _external(sid, plan.step(sid).kind, model_record(ws.checkpoint(name)))
    return out


def stage_steps(plan: Plan, ws: Workspace, stage: str, variant: str | None
                ) -> tuple[list[str], dict[str, StepRecord], list[str]]:
    """(step ids to run, inputs taken from published files, paths to publish)."""
    names = list(plan.models)
    if stage == "prepare":
        return ["prepare"], {}, ["data/prepared"]
    known = _published_data(ws)
    if stage == "train":
        return [plan.models["teacher"].checkpoint], known, ["models/teacher.pt"]
    if stage == "compress":
        if variant not in plan.params.variants:
            raise ShrinkflowError(f"compress: give a variant name from params.yaml "
                                  f"({', '.join(plan.params.variants) or 'none defined'}), "
                                  f"got {variant!r}")
        mp = plan.models[variant]
        parent = plan.models[mp.parent]
        known.update(_published_checkpoints(plan, ws, [mp.parent]))
        own = mp.chain[len(parent.chain):]
        return own or [mp.checkpoint], known, [f"models/{variant}.pt"]
    known.update(_published_checkpoints(plan, ws, names))
    targets = plan.params.target_names
    if stage == "convert":
        return [plan.models[n].exports[t] for n in names for t in targets], known, \
            [p for p in plan.outputs if p.startswith(("onnx/", "exports/"))]
    if stage == "validate":
        manifest = _manifest(ws)
        for n in names:
            sid = plan.models[n].exports[TARGET]
            known[sid] = _external(sid, plan.step(sid).kind, onnx_record(ws.onnx(n), n))
            for t in targets[1:]:
                sid = plan.models[n].exports[t]
                known[sid] = _external(sid, "convert", _export_record(ws, plan, n, t, manifest))
        return [*(plan.models[n].validation[t] for n in names for t in targets),
                *plan.latency.values()], known, []
    raise ShrinkflowError(f"unknown stage {stage!r} (one of {', '.join(STAGES)})")


def _manifest(ws: Workspace) -> dict:
    import json

    from shrinkflow.plan.executor import MANIFEST

    path = ws.root / MANIFEST
    return json.loads(path.read_text()) if path.is_file() else {}


def _export_record(ws: Workspace, plan: Plan, name: str, target: str, manifest: dict):
    """A published target artifact's record (its sidecar says how it was made), or the
    failure the manifest records for it."""
    import json

    from shrinkflow.core.files import path_sha256
    from shrinkflow.core.records import ExportArtifact
    from shrinkflow.targets.base import SIDECAR

    rel = f"exports/{target}/{name}"
    entry = manifest.get(rel, {})
    if entry.get("format") == "failed":
        return ExportArtifact(path="", sha256="", name=name, target=target, format="failed",
                              source_sha256="", exporter=target, config_hash="",
                              failure=entry.get("failure", ""))
    path = ws.root / rel
    if not (path / SIDECAR).is_file():
        raise ShrinkflowError(f"{path}: no published {target} artifact; run the convert stage "
                              "first (dvc repro convert)")
    meta = json.loads((path / SIDECAR).read_text())
    return ExportArtifact(path=str(path), sha256=path_sha256(path), name=name, target=target,
                          format=meta["format"], source_sha256=meta.get("source_sha256", ""),
                          exporter=target, config_hash="",
                          quantization=meta.get("quantization", "none"),
                          calibration_fingerprint=meta.get("calibration_fingerprint", ""))


def run_stage(ws: Workspace, stage: str, variant: str | None = None) -> list[str]:
    """Run one stage in ``ws``; returns what it wrote."""
    from shrinkflow.ops import record

    params = load_params(ws.params_file)
    plan = build_plan(params, ws.root)
    wanted, known, outputs = stage_steps(plan, ws, stage, variant)
    with workspace_lock(ws.state_dir, f"dvc stage {stage}", wait=3600):
        records = execute(plan, ws, wanted, known=known)
        written = publish(plan, records, ws, outputs) if outputs else []
        if stage == "validate":
            decisions = record.decide_all(plan, records, ws.state_dir)
            written += [ws.relative(p) for p in record.write_metrics(ws, plan, records, decisions)]
            teacher = decisions[TARGET][1].verdicts["teacher"]
            if not teacher.passed:
                raise GateFailure([f"teacher: {r}" for r in teacher.reasons])
    return written


def main(argv: list[str]) -> int:
    env.setup()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not argv:
        print(f"usage: python -m shrinkflow.tasks STAGE [VARIANT] ({', '.join(STAGES)})",
              file=sys.stderr)
        return 2
    try:
        written = run_stage(Workspace.at("."), argv[0], argv[1] if len(argv) > 1 else None)
    except ShrinkflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0
