"""The pipeline flow: prepare -> train -> compress (variant chains) -> convert -> validate,
tracked in MLflow and recorded in DVC.

Wiring only: every step is a task around a library function. Variant chains are
submitted as futures, so independent variants run concurrently on the task runner;
identical chain prefixes are submitted once. ``dvc.yaml`` runs the same steps as
stages; ``STAGES`` is what a test checks it against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from shrinkflow.artifacts import Metrics
from shrinkflow.config import Params, tracking_uri, yaml_dump
from shrinkflow.data import resolve_source
from shrinkflow.errors import GateFailure
from shrinkflow.provenance import git_info
from shrinkflow.tracking import TAG, RunRef, resolve_tracking_uri
from shrinkflow.variants import derivation_keys, stale_outputs, torch_steps
from shrinkflow.versioning import is_dvc_workspace, locked_out, params_match_file
from shrinkflow.workspace import Workspace
from tasks import distill, finetune, prune, quantize, record, registry, tracking
from tasks._common import set_parallel_steps
from tasks.changes import inputs_state
from tasks.compress import publish
from tasks.convert import convert
from tasks.prepare import prepare
from tasks.train import train
from tasks.validate import validate, write_metrics

# dvc.yaml's stages, in order; `compress` runs a variant's chain of STEP_TASKS.
STAGES = ("prepare", "train", "compress", "convert", "validate")
STEP_TASKS = {"prune": prune.prune, "finetune": finetune.finetune,
              "quantize": quantize.quantize, "distill": distill.distill}


class PipelineResult(BaseModel):
    run: RunRef
    metrics: dict[str, dict[str, float]]
    gate_failures: list[str] = Field(default_factory=list)
    models: dict[str, dict[str, str]] = Field(default_factory=dict)
    reused: list[str] = Field(default_factory=list)
    computed: list[str] = Field(default_factory=list)
    dvc: dict[str, Any] = Field(default_factory=dict)
    selected: str | None = None
    selection: str = ""
    rejected: dict[str, list[str]] = Field(default_factory=dict)
    registered_version: str | None = None
    promotion: dict[str, Any] = Field(default_factory=dict)
    report: str | None = None


class _Steps:
    """Submits step tasks and remembers which ones the cache served.

    A step whose output file is missing is submitted with ``refresh_cache``: a cached
    record must never point at a file that is gone.
    """

    def __init__(self) -> None:
        self.futures: list[tuple[str, PrefectFuture]] = []
        self._by_out: dict[str, PrefectFuture] = {}

    def submit(self, label: str, task, out_path: str | Path | None, *args: Any) -> PrefectFuture:
        """Submit ``task(*args)``; ``out_path`` is the file it writes (None: no file)."""
        key = str(out_path)
        if out_path is not None and key in self._by_out:  # shared prefixes run once
            return self._by_out[key]
        if out_path is not None and not Path(out_path).exists():
            task = task.with_options(refresh_cache=True)
        future = task.submit(*args)
        self.futures.append((label, future))
        if out_path is not None:
            self._by_out[key] = future
        return future

    def report(self) -> tuple[list[str], list[str]]:
        reused, computed = [], []
        for label, future in self.futures:
            (reused if future.state.name == "Cached" else computed).append(label)
        return reused, computed


@flow(name="shrinkflow", log_prints=False, task_runner=ThreadPoolTaskRunner(max_workers=16))
def pipeline(params: Params, workspace: str = ".") -> PipelineResult:
    """Prepare the data, train the teacher, derive every variant, convert and validate all."""
    logger = get_run_logger()
    ws = Workspace.at(workspace)
    git = git_info(ws.root)
    uri = resolve_tracking_uri(tracking_uri(params), ws.root)
    code_tags = {f"{TAG}git_commit": git["commit"], f"{TAG}git_dirty": git["dirty"]}
    state = inputs_state(params, str(ws.root))  # data/code/params identity a rerun compares
    run = tracking.start_run(
        uri, params.base.experiment, ws.resolve(params.base.artifact_location).as_uri(),
        params.dump(), {**code_tags, "mlflow.source.git.commit": git["commit"],
                        f"{TAG}params_hash": params.config_hash(), **state.tags()})
    steps = _Steps()
    threads = params.base.torch_threads
    set_parallel_steps(params.base.parallel_steps)
    try:
        source = resolve_source(params.prepare, ws.root)  # relative paths mean the workspace
        data_f = steps.submit("prepare", prepare, ws.data_dir, source, str(ws.data_dir))
        data = data_f.result()
        tracking.tag_run(run, {f"{TAG}data_fingerprint": data.fingerprint,
                               f"{TAG}dataset": data.dataset})
        models = {"teacher": steps.submit("train", train, ws.checkpoint("teacher"), params.train,
                                          data, str(ws.checkpoint("teacher")), threads)}
        keys = derivation_keys(params)
        chains: dict[str, list] = {"teacher": [("train", params.train, models["teacher"])]}
        for name in params.variant_order():
            variant = params.variants[name]
            model, chains[name] = models[variant.from_], list(chains[variant.from_])
            for step, key in zip(torch_steps(variant), keys[name], strict=False):
                out = ws.step_checkpoint(key)
                model = steps.submit(f"{name}:{step.kind}", STEP_TASKS[step.kind], out,
                                     model, step, data, str(out), threads)
                chains[name].append((step.kind, step, model))
            models[name] = publish.submit(model, name, variant.from_, str(ws.checkpoint(name)))
        onnx = {}
        for name, model in models.items():
            quant = params.variants[name].onnx_quantize if name in params.variants else None
            onnx[name] = steps.submit(f"{name}:convert", convert, ws.onnx(name), model,
                                      params.convert, str(ws.onnx(name)), data, quant)
        # Latency is measured one model at a time, after all compute has finished:
        # validation never runs concurrently with anything.
        for future in onnx.values():
            future.result()  # raises the step's own error if a chain failed
        results: list[Metrics] = []
        for name in models:
            teacher_values = results[0].values if results else None
            future = steps.submit(f"{name}:validate", validate, None,
                                  models[name], onnx[name], data, params.validate_,
                                  teacher_values)
            results.append(future.result())
        for path in stale_outputs(params, ws):
            logger.info("removing %s: no longer a model in params", path)
            path.unlink()
        write_metrics(results, str(ws.validate_metrics))
        decision = registry.decide(results, params)
        # A variant failing a gate is rejected (kept, logged with its reasons); a teacher
        # failing its conversion gates leaves nothing trustworthy: the run fails.
        gate_failures = [f"{m.name}: {f}" for m in results for f in m.gate_failures]
        failures = [f for f in gate_failures if f.startswith("teacher:")]
        # DVC first, so each model's lineage can name the data's DVC hash.
        dvc = _record(params, ws, failures)
        if dvc.get("skipped"):
            logger.warning("DVC: outputs not recorded in dvc.lock: %s", dvc["skipped"])
        lineage_info = {"state": state, "git": git, "dvc_data": dvc.get("data")}
        tracking.tag_run(run, {}, text={"params.yaml": yaml_dump(params.dump())})
        logged = _log_models(run, params, models, onnx, results, data, code_tags, decision,
                             chains, lineage_info)
        version, promotion = None, None
        if decision.selected and params.registry.auto_promote and not failures:
            version, promotion = _register_and_promote(run, params, decision, results, logged,
                                                       data, {**code_tags, **state.tags()})
        moved = None
        if promotion is not None:
            verb = "promoted to champion" if promotion.promoted else "not promoted"
            moved = f"v{version} {verb}: {promotion.reason}"
        md, png = registry.write_report(results, decision, str(ws.root / "reports"),
                                        run.run_id, f"shrinkflow run {run.run_id}", moved)
        tracking.tag_run(run, {f"{TAG}selected": decision.selected or "",
                               f"{TAG}selection": decision.why}, artifact=md)
        tracking.tag_run(run, {}, artifact=png)
        reused, computed = steps.report()
        tracking.tag_run(run, {f"{TAG}reused": ",".join(reused)[:5000],
                               f"{TAG}computed": ",".join(computed)[:5000],
                               f"{TAG}dvc_lock_sha256": dvc.get("dvc_lock_sha256", ""),
                               f"{TAG}dvc_data_md5": (dvc.get("data") or {}).get("md5", "")},
                         artifact=str(ws.validate_metrics))
        if failures:
            raise GateFailure(failures)
    except BaseException as exc:
        tracking.end_run(run, "FAILED", f"{type(exc).__name__}: {exc}")
        raise
    tracking.end_run(run, "FINISHED")
    return PipelineResult(
        run=run, metrics={m.name: m.values for m in results}, models=logged,
        gate_failures=gate_failures, reused=reused, computed=computed, dvc=dvc,
        selected=decision.selected, selection=decision.why,
        rejected={n: list(v.reasons) for n, v in decision.verdicts.items() if not v.passed},
        registered_version=version, promotion=promotion.model_dump() if promotion else {},
        report=md)


def _register_and_promote(run, params: Params, decision, results, logged, data, code_tags):
    """Register the selected model as challenger, then try to promote it."""
    from shrinkflow.registry import lineage_chain

    name = decision.selected
    values = next(m.values for m in results if m.name == name)
    verdict = decision.verdicts[name]
    uri, reg_name = run.tracking_uri, params.registered_model_name()
    tags = {**code_tags, f"{TAG}variant": name,
            f"{TAG}lineage": " > ".join(lineage_chain(params, name)),
            f"{TAG}data_fingerprint": data.fingerprint, f"{TAG}dataset": data.dataset,
            f"{TAG}pipeline_run_id": run.run_id, f"{TAG}model_run_id": logged[name]["run_id"],
            f"{TAG}gate": "pass" if verdict.passed else "fail",
            f"{TAG}gate_reasons": "; ".join(verdict.reasons),
            f"{TAG}selection": decision.why, f"{TAG}params_hash": params.config_hash(),
            f"{TAG}onnx_sha256": logged[name]["onnx_sha256"],
            f"{TAG}lineage_uri": f"runs:/{logged[name]['run_id']}/lineage.json"}
    version = registry.register(uri, reg_name, logged[name]["model_uri"], logged[name]["run_id"],
                                values, tags, "shrinkflow run")
    promotion = registry.promote(uri, reg_name, version, params, "shrinkflow run", data)
    return version, promotion


def _log_models(run, params: Params, models, onnx, results: list[Metrics], data,
                code_tags: dict[str, str], decision, chains,
                lineage_info: dict[str, Any]) -> dict[str, dict[str, str]]:
    """One nested MLflow run per model, parents first (children tag their parent's run),
    each with its lineage.json."""
    from shrinkflow import lineage
    from shrinkflow.data import load_prepared
    from shrinkflow.provenance import environment

    env, meta = environment(), load_prepared(data.path).meta
    logged: dict[str, dict[str, str]] = {}
    for metrics in results:
        name = metrics.name
        model, onnx_art = models[name].result(), onnx[name].result()
        chain = [lineage.model_entry(f.result(), kind, cfg.model_dump(mode="json"),
                                     cfg.config_hash()) for kind, cfg, f in chains[name]]
        quant = params.variants[name].onnx_quantize if name in params.variants else None
        if quant is not None:
            chain.append(lineage.step_entry("quantize", quant.model_dump(mode="json"),
                                            quant.config_hash(), None,
                                            calibration_fingerprint=onnx_art.calibration_fingerprint))
        chain.append(lineage.step_entry("convert", params.convert.model_dump(mode="json"),
                                        params.convert.config_hash(), None,
                                        onnx_sha256=onnx_art.sha256, opset=onnx_art.opset))
        parent_name = params.variants[name].from_ if name in params.variants else None
        state, git = lineage_info["state"], lineage_info["git"]
        record = lineage.build(
            name, chain, model, onnx_art, data, meta,
            {"name": parent_name, "run_id": logged[parent_name]["run_id"]} if parent_name
            else None, lineage_info["dvc_data"],
            {"git_commit": git["commit"], "git_dirty": git["dirty"],
             "code_hash": state.code_hash}, env, params.config_hash(), run.run_id,
            state.source_fingerprint)
        if name == "teacher":
            config = {"train": params.train.model_dump(mode="json")}
            parent_run = ""
        else:
            variant = params.variants[name]
            config = {"variant": variant.model_dump(mode="json", by_alias=True)}
            parent_run = logged[variant.from_]["run_id"]
        config["convert"] = params.convert.model_dump(mode="json")
        logged[name] = tracking.log_model(
            run, model, onnx_art, metrics, data, config,
            {**code_tags, f"{TAG}pipeline_run_id": run.run_id,
             f"{TAG}parent_run_id": parent_run,
             f"{TAG}variant_config_hash": params.variants[name].config_hash()
             if name in params.variants else params.train.config_hash(),
             # An ORT-quantized variant's last step is quantize (its checkpoint is the float
             # parent's).
             **({f"{TAG}step": "quantize"} if quant is not None else {}),
             f"{TAG}quantization": onnx_art.quantization,
             f"{TAG}calibration_fingerprint": onnx_art.calibration_fingerprint,
             f"{TAG}gate": "pass" if decision.verdicts[name].passed else "fail",
             f"{TAG}gate_reasons": "; ".join(decision.verdicts[name].reasons)[:4000],
             f"{TAG}pareto": str(decision.verdicts[name].on_frontier).lower(),
             f"{TAG}selected": str(name == decision.selected).lower()}, record)
    return logged


def _record(params: Params, ws: Workspace, failures: list[str]) -> dict[str, Any]:
    """Record the outputs in dvc.lock and push them, when that tells the truth."""
    if failures:
        return {"skipped": "a gate failed; failed outputs are not recorded"}
    if not params.base.dvc_commit:
        return {"skipped": "base.dvc_commit is off"}
    if not is_dvc_workspace(ws.root):
        return {"skipped": "not a DVC workspace"}
    if not params_match_file(params, ws.root):
        return {"skipped": "params differ from params.yaml (--set/--params); dvc.lock would "
                           "not match them"}
    result = record.record(str(ws.root), params.base.dvc_push)
    return {**result, "data": locked_out(ws.root, "data/prepared")}


def run_pipeline(params: Params, workspace: str | Path = ".") -> PipelineResult:
    """Run the flow in-process with its step results (the cache) kept in the workspace,
    so deleting ``.shrinkflow/`` resets the cache and workspaces never share it."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    ws = Workspace.at(workspace)
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: ws.state_dir / "results"}):
        return pipeline(params=params, workspace=str(ws.root))
