"""Record a finished execution: assemble each model's results, decide (gates, Pareto,
selection), write the metrics files, record the outputs in DVC, log the models and their
lineage to MLflow, register and promote, and write the report.

The Prefect flow calls these as tasks, in this order; nothing here computes a model.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from shrinkflow.core import machine
from shrinkflow.core.config import stable_hash
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import atomic_path, write_text_atomic
from shrinkflow.core.records import ExportArtifact, ModelArtifact
from shrinkflow.core.workspace import Workspace
from shrinkflow.decide.select import Decision, ModelResult, decide, relative_metrics
from shrinkflow.ops import lineage as lin
from shrinkflow.ops import registry, tracking, verdicts, versioning
from shrinkflow.ops.provenance import environment
from shrinkflow.ops.tracking import TAG, RunRef
from shrinkflow.plan.params import Params
from shrinkflow.plan.plan import TARGET, Plan, PlanStep
from shrinkflow.plan.store import StepRecord
from shrinkflow.steps.validate import accuracy_key, latency_values, read_latency

log = logging.getLogger("shrinkflow")


class Outcome(BaseModel):
    """What one pipeline execution decided and recorded."""

    run: RunRef | None = None
    metrics: dict[str, dict[str, float]] = Field(default_factory=dict)
    models: dict[str, dict[str, Any]] = Field(default_factory=dict)
    reused: list[str] = Field(default_factory=list)
    computed: list[str] = Field(default_factory=list)
    dvc: dict[str, Any] = Field(default_factory=dict)
    selected: str | None = None
    selection: str = ""
    rejected: dict[str, list[str]] = Field(default_factory=dict)
    registered_version: str | None = None
    promotion: dict[str, Any] = Field(default_factory=dict)
    report: str | None = None
    machine: str = ""
    removed: list[str] = Field(default_factory=list)
    nothing_changed: bool = False
    message: str = ""
    # Where the wall time went (seconds): compute (the executor), each record-keeping
    # part, and the sum of the steps' own times.
    timing: dict[str, float] = Field(default_factory=dict)
    # Models whose speed gate kept its remembered outcome (see ops.verdicts).
    speed_kept: list[str] = Field(default_factory=list)
    # The other targets: selected, rejected, registered version and promotion of each.
    targets: dict[str, dict[str, Any]] = Field(default_factory=dict)


# --- results and the decision ------------------------------------------------------------


def latency_doc(plan: Plan, records: dict[str, StepRecord], target: str = TARGET) -> dict:
    return read_latency(records[plan.latency[target]].record["path"])


def model_results(plan: Plan, records: dict[str, StepRecord], target: str = TARGET,
                  doc: dict | None = None) -> list[ModelResult]:
    """Each model's values on ``target``: validation, latency (p50/p95 with interval
    bounds), how its last training went, and ratios against the teacher. A model the
    target could not convert carries the failure instead. ``doc``: the target's latency
    document, when the caller has read it."""
    doc = doc or latency_doc(plan, records, target)
    key = accuracy_key(target)
    out: list[ModelResult] = []
    teacher: dict[str, float] | None = None
    for name, mp in plan.models.items():
        metrics = records[mp.validation[target]].output()
        if metrics.gate_failures and not metrics.values:
            out.append(ModelResult(name=name, parent=mp.parent, quantized=mp.quantized,
                                   values={}, failure=metrics.gate_failures[0]))
            continue
        values = dict(metrics.values)
        if "macs" not in values:  # counted from the ONNX graph of the same model
            values.update({k: v for k, v in records[mp.validation[TARGET]].output()
                           .values.items() if k in ("macs", "onnx_params")})
        values.update(latency_values(doc, name, plan.params.validate_.confidence))
        ckpt: ModelArtifact = records[mp.checkpoint].output()
        values.update({k: float(v) for k, v in ckpt.summary.items()})
        teacher = teacher or values
        values.update(relative_metrics(values, teacher, key))
        out.append(ModelResult(name=name, parent=mp.parent, quantized=mp.quantized,
                               values=values))
    return out


def speed_keys(plan: Plan, records: dict[str, StepRecord], target: str, machine_id: str
               ) -> dict[str, str]:
    """model -> the key of its speed gate's (model, parent) pair on ``target`` (see
    ops.verdicts): both artifacts, the gate and the machine that measured them."""
    v, gates = plan.params.validate_, plan.params.gates
    out = {}
    for name, mp in plan.models.items():
        if mp.parent is None:
            continue
        mine = records[mp.exports[target]].output()
        theirs = records[plan.models[mp.parent].exports[target]].output()
        out[name] = verdicts.pair_key(target, gates.latency_batch, gates.min_speedup_vs_parent,
                                      v.resolution, getattr(mine, "sha256", ""),
                                      getattr(theirs, "sha256", ""), machine_id)
    return out


def decide_all(plan: Plan, records: dict[str, StepRecord], state_dir: str | Path | None = None
               ) -> dict[str, tuple[list[ModelResult], Decision]]:
    """Results and decision of every target (the default first). With ``state_dir``, the
    speed gates remember their outcomes there (ops.verdicts): re-measuring unchanged
    artifacts on the same machine does not flip a verdict on noise."""
    p = plan.params
    v = p.validate_
    parity = {"float": (v.gates.max_abs_diff, v.gates.min_top1_agreement),
              "quantized": (v.quantized_gates.max_abs_diff, v.quantized_gates.min_top1_agreement)}
    entries = verdicts.load(state_dir) if state_dir is not None else {}
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    changed, out = False, {}
    for t in p.target_names:
        doc = latency_doc(plan, records, t)
        results = model_results(plan, records, t, doc)
        keys = speed_keys(plan, records, t, doc.get("machine", {}).get("id", ""))
        decision = decide(results, p.gates, p.select, parity, doc["samples"], v.confidence, t,
                          accuracy_key(t), v.resolution, verdicts.previous(entries, keys),
                          v.hysteresis)
        changed |= verdicts.remember(entries, keys, decision, when)
        out[t] = (results, decision)
    if state_dir is not None and changed:
        verdicts.save(state_dir, entries)
    return out


def target_values(decisions: dict[str, tuple[list[ModelResult], Decision]]
                  ) -> dict[str, dict[str, float]]:
    """Every model's values across targets: the default target's as they are, the
    others' prefixed with the target name (``openvino.latency_p50_ms_b256``)."""
    out: dict[str, dict[str, float]] = {}
    for t, (results, decision) in decisions.items():
        for m in results:
            prefix = "" if t == TARGET else f"{t}."
            row = out.setdefault(m.name, {})
            row.update({f"{prefix}{k}": v for k, v in m.values.items()})
            row[f"{prefix}gate_passed"] = float(decision.verdicts[m.name].passed)
    return out


# --- workspace files ----------------------------------------------------------------------


def metrics_document(decisions: dict[str, tuple[list[ModelResult], Decision]]
                     ) -> dict[str, dict]:
    """``metrics/validate.json``: one entry per model; the default target's metrics and
    gate verdict as they are, other targets' prefixed with their name."""
    doc = {}
    for name, values in target_values(decisions).items():
        doc[name] = {k: (bool(v) if k.endswith("gate_passed") else round(v, 8))
                     for k, v in values.items()}
    return doc


def curves(plan: Plan, records: dict[str, StepRecord]) -> dict[str, list[dict[str, Any]]]:
    """Per-epoch training curves of every model's whole chain (for ``dvc plots``): model ->
    rows {epoch (running over the chain), step, step_epoch, train_loss, val_accuracy}."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, mp in plan.models.items():
        history = records[mp.checkpoint].output().history
        out[name] = [{**h, "step_epoch": h["epoch"], "epoch": i + 1}
                     for i, h in enumerate(history)]
    return out


def write_metrics(ws: Workspace, plan: Plan, records: dict[str, StepRecord],
                  decisions: dict[str, tuple[list[ModelResult], Decision]]) -> list[Path]:
    """metrics/validate.json, metrics/pareto.json (every target) and
    metrics/curves/<model>.json."""
    from shrinkflow.ops.report import pareto_points

    pareto = [{**row, "target": t} for t, (results, decision) in decisions.items()
              for row in pareto_points(results, decision)]
    files: dict[Path, Any] = {ws.validate_metrics: metrics_document(decisions),
                              ws.root / "metrics" / "pareto.json": pareto}
    curve_dir = ws.root / "metrics" / "curves"
    curve_dir.mkdir(parents=True, exist_ok=True)
    for name, rows in curves(plan, records).items():
        if rows:
            files[curve_dir / f"{name}.json"] = rows
    for stale in curve_dir.glob("*.json") if curve_dir.is_dir() else []:
        if stale not in files:
            stale.unlink()
    for path, doc in files.items():
        write_text_atomic(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return list(files)


# --- DVC ----------------------------------------------------------------------------------


def dvc_recordable(params: Params, ws: Workspace) -> str | None:
    """Why this run must not be recorded in dvc.lock (None: it may)."""
    if not params.base.dvc_commit:
        return "base.dvc_commit is off"
    if not versioning.is_dvc_workspace(ws.root):
        return "not a DVC workspace"
    if not versioning.params_match_file(params, ws.root):
        return "params differ from params.yaml (--set/--params); dvc.lock would not match them"
    return None


def record_dvc(params: Params, ws: Workspace, failures: list[str]) -> dict[str, Any]:
    """Record the outputs in dvc.lock, when that tells the truth; :func:`start_dvc_push`
    pushes them."""
    if failures:
        return {"skipped": "a gate failed; failed outputs are not recorded"}
    why = dvc_recordable(params, ws)
    if why:
        return {"skipped": why}
    result = versioning.record_outputs(ws.root, push=False)
    return {**result, "data": versioning.locked_out(ws.root, "data/prepared")}


def start_dvc_push(params: Params, ws: Workspace, recorded: dict[str, Any]
                   ) -> concurrent.futures.Future | None:
    """``dvc push`` in a background thread (its own process: the thread only waits), so
    it overlaps the MLflow logging; None when nothing was recorded or pushing is off.
    :func:`finish_dvc_push` collects it."""
    if "dvc_lock_sha256" not in recorded or not params.base.dvc_push:
        return None
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dvc-push")
    future = pool.submit(versioning.push_outputs, ws.root)
    pool.shutdown(wait=False)  # the thread ends with the push; nothing waits here
    return future


def finish_dvc_push(future: concurrent.futures.Future | None, ws: Workspace
                    ) -> dict[str, Any]:
    """The push's result ({} without one); a failed push is tried once more."""
    if future is None:
        return {}
    try:
        return future.result()
    except ShrinkflowError as exc:
        log.warning("%s; retrying once", exc)
        return versioning.push_outputs(ws.root)


# --- MLflow -------------------------------------------------------------------------------


def model_key(plan: Plan, records: dict[str, StepRecord], name: str) -> str:
    """What identifies a logged model run: its files and its (deterministic) validation."""
    mp = plan.models[name]
    return stable_hash({"checkpoint": records[mp.checkpoint].sha256,
                        "exports": {t: records[s].sha256 for t, s in mp.exports.items()},
                        "validate": {t: records[s].key for t, s in mp.validation.items()},
                        "teacher": records[plan.models["teacher"].exports[TARGET]].sha256})


def chain_entries(plan: Plan, records: dict[str, StepRecord], name: str) -> list[lin.ChainStep]:
    """Every step from the teacher's training to this model's artifact."""
    mp = plan.models[name]
    ids = [*mp.chain]
    export_id = mp.exports[TARGET]
    convert_id = plan.step(export_id).inputs.get("export", export_id)
    ids += [convert_id] if convert_id == export_id else [convert_id, export_id]
    out = []
    for sid in ids:
        step, rec = plan.step(sid), records[sid]
        o = rec.output()
        hashes: dict[str, Any] = {}
        if isinstance(o, ModelArtifact):
            hashes["checkpoint_sha256"] = o.sha256
        elif isinstance(o, ExportArtifact):
            hashes.update(onnx_sha256=o.sha256, opset=o.opset)
            if o.calibration_fingerprint:
                hashes["calibration_fingerprint"] = o.calibration_fingerprint
        out.append(lin.ChainStep(step=step.kind, config=step.config.model_dump(mode="json"),
                                 config_hash=step.config.config_hash(), key=rec.key,
                                 seconds=rec.seconds, worker=rec.worker,
                                 machine_id=rec.machine.get("id", ""), threads=rec.threads,
                                 **hashes, **_model_sources(step)))
    return out


def _model_sources(step: PlanStep) -> dict[str, Any]:
    """Where a step's model came from beyond its config: a factory's source sha256, the
    registered version (and checkpoint sha256) a transferred teacher started from."""
    return {k: step.extra[k] for k in ("factory_sha256", "init_from") if k in step.extra}


def build_lineage(plan: Plan, records: dict[str, StepRecord], name: str, parent_run: str | None,
                  info: dict[str, Any]) -> lin.Lineage:
    mp = plan.models[name]
    ckpt: ModelArtifact = records[mp.checkpoint].output()
    export: ExportArtifact = records[mp.exports[TARGET]].output()
    data = records["prepare"].output()
    machines = {r.machine.get("id"): r.machine for r in records.values() if r.machine}
    return lin.Lineage(
        model=lin.ModelInfo(
            name=name, quantization=export.quantization, weight_bits=export.weight_bits,
            calibration_fingerprint=export.calibration_fingerprint or None,
            onnx=lin.OnnxRef(sha256=export.sha256, artifact=f"{name}/model.onnx"),
            checkpoint=lin.FileRef(sha256=ckpt.sha256, artifact=f"checkpoint/{name}.pt"),
            exports=_export_refs(plan, records, name)),
        chain=chain_entries(plan, records, name),
        parent=lin.ParentRef(name=mp.parent, run_id=parent_run) if mp.parent else None,
        data=lin.DataInfo(dataset=data.dataset, fingerprint=data.fingerprint,
                          source_fingerprint=info["state"].source_fingerprint,
                          split_seed=data.split_seed,
                          counts={"train": data.n_train, "val": data.n_val, "test": data.n_test},
                          dvc=lin.DvcEntry(**info["dvc_data"]) if info.get("dvc_data") else None),
        code=lin.CodeInfo(git_commit=info["git"]["commit"], git_dirty=info["git"]["dirty"],
                          code_hash=info["state"].code_hash),
        environment=info["environment"], machine={"steps": list(machines.values())},
        params_hash=plan.params.config_hash(), pipeline_run_id=info["run_id"],
        created=info["created"])


def _verdict_tags(decisions: dict[str, tuple[list[ModelResult], Decision]], name: str
                  ) -> dict[str, str]:
    """Gate verdicts of one model on every target (``shrinkflow.gate`` for the default
    target, ``shrinkflow.gate.<target>`` for the others)."""
    tags = {}
    for t, (_, decision) in decisions.items():
        verdict, suffix = decision.verdicts[name], "" if t == TARGET else f".{t}"
        tags.update({f"{TAG}gate{suffix}": "pass" if verdict.passed else "fail",
                     f"{TAG}gate_reasons{suffix}": "; ".join(verdict.reasons)[:4000],
                     f"{TAG}pareto{suffix}": str(verdict.on_frontier).lower(),
                     f"{TAG}selected{suffix}": str(name == decision.selected).lower()})
    return tags


def _export_refs(plan: Plan, records: dict[str, StepRecord], name: str) -> list[lin.ExportRef]:
    """Every target's artifact of one model: format, hash, where the run keeps it, runtime
    versions (failed conversions are not artifacts: their reasons are in the verdicts)."""
    from shrinkflow.targets import base as targets

    out = []
    for t, sid in plan.models[name].exports.items():
        e: ExportArtifact = records[sid].output()
        if e.format == "failed":
            continue
        out.append(lin.ExportRef(target=t, format=e.format, sha256=e.sha256,
                                 artifact=f"{name}/model.onnx" if t == TARGET else f"exports/{t}",
                                 runtime=targets.get(t).versions()))
    return out


def log_models(run: RunRef, plan: Plan, records: dict[str, StepRecord],
               decisions: dict[str, tuple[list[ModelResult], Decision]], info: dict[str, Any]
               ) -> dict[str, dict[str, Any]]:
    """One nested MLflow run per model, parents first, holding every target: the default
    target's metrics as they are, the others' prefixed with the target name (one row per
    model in MLflow's comparison view), the ONNX model, the other targets' artifacts under
    ``exports/<target>``. A model whose content is unchanged keeps its earlier run (its
    verdict tags and latency are updated). A new model's run stays RUNNING until
    :func:`log_lineages` adds its lineage."""
    import numpy as np

    from shrinkflow.data.prepare import raw_test_split

    c = tracking.client(run.tracking_uri)
    values = target_values(decisions)
    logged: dict[str, dict[str, Any]] = {}
    data = records["prepare"].output()
    dataset = None
    example = None
    for name, mp in plan.models.items():
        export: ExportArtifact = records[mp.exports[TARGET]].output()
        ckpt: ModelArtifact = records[mp.checkpoint].output()
        key = model_key(plan, records, name)
        verdict_tags = {**_verdict_tags(decisions, name),
                        f"{TAG}last_pipeline_run_id": run.run_id, f"{TAG}machine": info["machine"]}
        latency = {k: v for k, v in values[name].items() if "latency_" in k}
        existing = tracking.find_model_run(run.tracking_uri, run.experiment_id, key)
        if existing:
            tracking.set_tags(RunRef(tracking_uri=run.tracking_uri,
                                     experiment_id=run.experiment_id, run_id=existing),
                              verdict_tags)
            tracking.log_metrics(c, existing, latency, step=1)
            run_tags = c.get_run(existing).data.tags
            logged[name] = {"run_id": existing, "model_uri": run_tags.get(f"{TAG}model_uri", ""),
                            "mlflow_sha256": run_tags.get(f"{TAG}mlflow_sha256", ""),
                            "onnx_sha256": export.sha256, "reused": True}
            continue
        if dataset is None:
            dataset = tracking.test_dataset(data.path, data.dataset, data.fingerprint)
            x, _, _ = raw_test_split(data.path)
            example = np.ascontiguousarray(x[:2])  # float32 pixels, or int64 tokens
        parent_run = logged[mp.parent]["run_id"] if mp.parent else None
        step_kind = plan.step(mp.exports[TARGET]).kind if plan.step(mp.exports[TARGET]).kind \
            == "quantize" else ckpt.step
        tags = {"mlflow.parentRunId": run.run_id, f"{TAG}step": step_kind,
                f"{TAG}variant": name, f"{TAG}parent_variant": mp.parent or "",
                f"{TAG}parent_run_id": parent_run or "", f"{TAG}model_key": key,
                f"{TAG}pipeline_run_id": run.run_id, f"{TAG}config_hash": ckpt.config_hash,
                f"{TAG}data_fingerprint": data.fingerprint,
                f"{TAG}checkpoint_sha256": ckpt.sha256, f"{TAG}onnx_sha256": export.sha256,
                f"{TAG}opset": str(export.opset), f"{TAG}quantization": export.quantization,
                f"{TAG}weight_bits": str(export.weight_bits),
                f"{TAG}calibration_fingerprint": export.calibration_fingerprint,
                f"{TAG}targets": ",".join(plan.params.target_names),
                f"{TAG}workspace": str(info["workspace"]),
                f"{TAG}workers": ",".join(sorted({records[s].worker for s in mp.chain
                                                  if records[s].worker})),
                f"{TAG}git_commit": info["git"]["commit"], f"{TAG}git_dirty": info["git"]["dirty"],
                **verdict_tags}
        mrun = tracking.call(run.tracking_uri, "create a run", c.create_run, run.experiment_id,
                             run_name=name, tags=tags)
        run_id = mrun.info.run_id
        config = ({"train": plan.params.train.model_dump(mode="json")} if name == "teacher"
                  else {"variant": plan.params.variants[name].model_dump(mode="json",
                                                                        by_alias=True)})
        config["convert"] = plan.params.convert.model_dump(mode="json")
        tracking.log_params(c, run_id, config)
        stored = tracking.log_onnx_model(run_id, name, export.path, example, export.sha256,
                                         dataset)
        c.set_tag(run_id, f"{TAG}model_uri", stored["model_uri"])
        c.set_tag(run_id, f"{TAG}mlflow_sha256", stored["stored_sha256"])
        tracking.log_metrics(c, run_id, values[name], model_id=stored["model_id"])
        _log_curves(c, run_id, plan, records, name)
        with tempfile.TemporaryDirectory() as d:  # stored under the model's own name
            named = Path(d) / f"{name}.pt"
            shutil.copyfile(ckpt.path, named)
            c.log_artifact(run_id, str(named), artifact_path="checkpoint")
        for t, sid in mp.exports.items():
            other: ExportArtifact = records[sid].output()
            if t != TARGET and other.format != "failed":
                c.log_artifacts(run_id, other.path, artifact_path=f"exports/{t}")
        logged[name] = {"run_id": run_id, "model_uri": stored["model_uri"],
                        "model_id": stored["model_id"], "onnx_sha256": export.sha256,
                        "mlflow_sha256": stored["stored_sha256"], "reused": False,
                        "location": stored["location"], "parent_run": parent_run}
    return logged


def fail_model_runs(run: RunRef, logged: dict[str, dict[str, Any]]) -> None:
    """The runs :func:`log_models` left RUNNING become FAILED (the run failed before
    their lineage was logged)."""
    c = tracking.client(run.tracking_uri)
    for entry in logged.values():
        if not entry["reused"]:
            c.set_terminated(entry["run_id"], "FAILED")


def log_lineages(run: RunRef, plan: Plan, records: dict[str, StepRecord],
                 logged: dict[str, dict[str, Any]], info: dict[str, Any]) -> None:
    """Each newly logged model's lineage (which names the data's DVC hash: it is logged
    once DVC has recorded the data), then its run is FINISHED."""
    c = tracking.client(run.tracking_uri)
    for name, entry in logged.items():
        if entry["reused"]:
            continue
        lineage = build_lineage(plan, records, name, entry["parent_run"], info)
        lineage.model.onnx.mlflow_uri = entry["model_uri"]
        lineage.model.onnx.mlflow_location = entry["location"]
        lineage.model.onnx.mlflow_sha256 = entry["mlflow_sha256"]
        lineage.run_id = entry["run_id"]
        c.log_text(entry["run_id"], lineage.to_json(), lin.ARTIFACT)
        c.set_terminated(entry["run_id"], "FINISHED")


def _log_curves(c, run_id: str, plan: Plan, records: dict[str, StepRecord], name: str) -> None:
    """Per-epoch curves (``<step>/train_loss``, ``<step>/val_accuracy``) and system
    metrics (``system/<step>/cpu_percent``, ``rss_mb``) of the steps this model added."""
    from mlflow.entities import Metric

    items, now, seen = [], int(time.time() * 1000), 0
    for sid in plan.models[name].chain:
        rec = records[sid]
        rows = rec.output().history if rec.record_type == "ModelArtifact" else []
        own, seen = rows[seen:], len(rows)  # a checkpoint holds its parents' rows first
        if plan.step(sid).model != name:
            continue
        for h in own:
            for k in ("train_loss", "val_accuracy"):
                if k in h:
                    items.append(Metric(f"{rec.kind}/{k}", float(h[k]), now, int(h["epoch"])))
        for i, s in enumerate(rec.system):
            for k in ("cpu_percent", "rss_mb"):
                items.append(Metric(f"system/{rec.kind}/{k}", float(s[k]), now, i))
    for i in range(0, len(items), 500):
        c.log_batch(run_id, metrics=items[i:i + 500])


# --- registry -----------------------------------------------------------------------------


def describe_version(plan: Plan, name: str, decision: Decision) -> str:
    verdict = decision.verdicts[name]
    chain = " > ".join(plan.params.lineage_chain(name))
    steps = ", ".join(s.kind for s in plan.params.variants[name].steps) \
        if name in plan.params.variants else "train"
    status = "passed its gates" if verdict.passed else "failed: " + "; ".join(verdict.reasons)
    return (f"{name} ({steps}) from {chain}, for {decision.target}. Selected as "
            f"{decision.objective} on the Pareto frontier: {decision.why}. Gates: {status}.")


def register_and_promote(run: RunRef, plan: Plan, target: str, results: list[ModelResult],
                         decision: Decision, records: dict[str, StepRecord],
                         logged: dict[str, dict[str, Any]], info: dict[str, Any]
                         ) -> tuple[str, registry.Promotion]:
    """Register the model selected for ``target`` as that target's challenger, then try
    to promote it (aliases ``champion`` for the default target, ``champion-<target>``)."""
    from shrinkflow.data.prepare import raw_test_split

    p = plan.params
    name = decision.selected
    values = next(m.values for m in results if m.name == name)
    verdict = decision.verdicts[name]
    data = info["data"]
    export: ExportArtifact = records[plan.models[name].exports[target]].output()
    tags = {f"{TAG}variant": name, f"{TAG}target": target,
            f"{TAG}lineage": " > ".join(p.lineage_chain(name)),
            f"{TAG}data_fingerprint": data.fingerprint, f"{TAG}dataset": data.dataset,
            f"{TAG}pipeline_run_id": run.run_id, f"{TAG}model_run_id": logged[name]["run_id"],
            f"{TAG}gate": "pass" if verdict.passed else "fail",
            f"{TAG}gate_reasons": "; ".join(verdict.reasons)[:4000],
            f"{TAG}selection": decision.why, f"{TAG}params_hash": p.config_hash(),
            f"{TAG}artifact_sha256": export.sha256, f"{TAG}format": export.format,
            f"{TAG}machine": info["machine"],
            f"{TAG}lineage_uri": f"runs:/{logged[name]['run_id']}/{lin.ARTIFACT}",
            f"{TAG}git_commit": info["git"]["commit"], f"{TAG}git_dirty": info["git"]["dirty"],
            **info["state"].tags()}
    if target == TARGET:
        tags.update({f"{TAG}onnx_sha256": logged[name]["onnx_sha256"],
                     f"{TAG}mlflow_sha256": logged[name].get("mlflow_sha256", "")})
        source = logged[name]["model_uri"]
    else:  # the artifact directory logged in the model's run
        source = f"runs:/{logged[name]['run_id']}/exports/{target}"
    version = registry.register(run.tracking_uri, p.registered_model_name(), source,
                                logged[name]["run_id"], values, tags, "shrinkflow run",
                                describe_version(plan, name, decision), target)
    x, y, _ = raw_test_split(data.path)
    promotion = registry.promote(run.tracking_uri, p.registered_model_name(), version, p.select,
                                 p.registry, "shrinkflow run", (x, y, data.fingerprint),
                                 target=target, latency_batch=p.gates.latency_batch,
                                 threads=p.target_threads(target),
                                 resolution=p.validate_.resolution)
    return version, promotion


def write_report(ws: Workspace, run_id: str,
                 decisions: dict[str, tuple[list[ModelResult], Decision]],
                 moves: dict[str, str], machine_line: str) -> tuple[Path, Path]:
    from shrinkflow.ops.report import write_report as write

    return write(decisions, ws.root / "reports", run_id, f"shrinkflow run {run_id}", moves,
                 machine_line)


def latency_artifacts(plan: Plan, records: dict[str, StepRecord], ws: Workspace) -> list[Path]:
    """Copies of every target's latency samples, for the run's artifacts."""
    out = []
    for target, sid in plan.latency.items():
        dest = ws.state_dir / "latency" / f"latency-{target}.json"
        with atomic_path(dest) as tmp:
            tmp.write_bytes(Path(records[sid].record["path"]).read_bytes())
        out.append(dest)
    return out


def machine_line(plan: Plan, records: dict[str, StepRecord]) -> str:
    lat = records[plan.latency[TARGET]].output()
    return machine.describe(lat.machine)


def environment_info() -> dict[str, str]:
    return environment()


def kept_outcomes(decision: Decision) -> list[str]:
    """Models whose speed gate kept its remembered outcome (this measurement alone would
    have decided the other way, by less than validate.hysteresis)."""
    return sorted(n for n, v in decision.verdicts.items()
                  if (v.speed_vs_parent or {}).get("kept"))


def target_summary(target: str, decision: Decision, version: str | None,
                   promotion: registry.Promotion | None) -> dict[str, Any]:
    return {"selected": decision.selected, "selection": decision.why,
            "rejected": {n: list(v.reasons) for n, v in decision.verdicts.items()
                         if not v.passed},
            "speed_kept": kept_outcomes(decision),
            "registered_version": version,
            "promotion": promotion.model_dump() if promotion else {}}


def run_info(plan: Plan, ws: Workspace, records: dict[str, StepRecord] | None = None
             ) -> dict[str, Any]:
    """What every record of this run names: code, inputs state, environment, workspace."""
    from datetime import UTC, datetime

    from shrinkflow.ops.changes import current_state
    from shrinkflow.ops.provenance import git_info

    return {"git": git_info(ws.root), "state": current_state(plan.params, ws.root),
            "environment": environment(), "workspace": str(ws.root),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine.describe(plan.machine)}


def plan_key(plan: Plan, records: dict[str, StepRecord]) -> str:
    """One hash of everything a run decides from: every step's content key and the
    params (gates, selection and registry rules included)."""
    return stable_hash({"steps": sorted(r.key for r in records.values()),
                        "params": plan.params.config_hash()})


def pipeline_tags(plan: Plan, ws: Workspace, info: dict[str, Any]) -> dict[str, str]:
    return {f"{TAG}git_commit": info["git"]["commit"], f"{TAG}git_dirty": info["git"]["dirty"],
            "mlflow.source.git.commit": info["git"]["commit"],
            f"{TAG}params_hash": plan.params.config_hash(), f"{TAG}workspace": str(ws.root),
            f"{TAG}machine": info["machine"], **info["state"].tags()}


def nothing_changed(plan: Plan, ws: Workspace, uri: str) -> Outcome | None:
    """When every step's result is in the store, every published file is intact and a
    finished run already recorded exactly this plan, say so instead of running: nothing
    is computed, logged or registered again. None when anything changed."""
    from shrinkflow.plan.executor import published_intact, resolve_cached
    from shrinkflow.plan.store import Store

    records = resolve_cached(plan, Store(ws.store_dir), plan.steps)
    if len(records) < len(plan.steps) or not published_intact(plan, records, ws):
        return None
    key = plan_key(plan, records)
    c = tracking.client(uri)
    exp = tracking.call(uri, "read the experiment", c.get_experiment_by_name,
                        plan.params.base.experiment)
    if exp is None:
        return None
    runs = c.search_runs([exp.experiment_id],
                         f"tags.`{TAG}plan_key` = '{key}' and attributes.status = 'FINISHED'",
                         order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    run = runs[0]
    name = plan.params.registered_model_name()
    champion = None
    with contextlib.suppress(Exception):
        champion = registry.get_alias(c, name, "champion")
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000))
    kept = f"champion v{champion.version} kept" if champion else "no champion"
    tags = run.data.tags
    return Outcome(run=RunRef(tracking_uri=uri, experiment_id=exp.experiment_id,
                              run_id=run.info.run_id),
                   reused=sorted(records), selected=tags.get(f"{TAG}selected") or None,
                   selection=tags.get(f"{TAG}selection", ""), nothing_changed=True,
                   message=f"nothing changed since run {run.info.run_id} ({when}): {kept}",
                   report=str(ws.root / "reports" / f"{run.info.run_id}.md"))
