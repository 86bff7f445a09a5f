"""The plan: every step a params file asks for, in order, with its config, inputs,
output and content key.

A step's cache key is content-addressed: ``hash(kind, config, code, input contents)``,
where *code* is the import closure of the step's module and *input contents* are the
sha256 of the records it reads. The plan fixes the first three (``config_key``); the
executor adds the inputs' hashes as they become known. So the flow, a DVC stage fed by
``dvc pull``-ed files, and ``reproduce`` all find the same cache entries, and a changed
input recomputes exactly what depends on it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny

from shrinkflow.core import machine
from shrinkflow.core.codehash import code_hash
from shrinkflow.core.config import Section, stable_hash
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import file_sha256
from shrinkflow.data.sources import source_fingerprint
from shrinkflow.models.spec import FactorySpec, add_import_root, factory_sha256
from shrinkflow.plan.params import Params
from shrinkflow.steps import base as steps
from shrinkflow.steps.convert import ConvertStep
from shrinkflow.steps.quantize import QuantizeStep, resolve_weight_bits
from shrinkflow.steps.validate import LatencyStep, ValidateStep
from shrinkflow.targets import base as targets

TARGET = "onnxruntime"  # the default target: its ONNX file is every model's reference


class PlanStep(BaseModel):
    """One step of the plan."""

    model_config = ConfigDict(frozen=True)

    id: str  # "prepare", "teacher:train", "p80_ft:finetune", "p80_ft:convert", ...
    kind: str  # the registered step kind
    model: str  # the model it serves ("" for prepare; the target for latency)
    config: SerializeAsAny[Section]
    inputs: dict[str, str | list[str]] = Field(default_factory=dict)  # role -> step id(s)
    config_key: str  # hash(kind, config, code, extra): the static part of the cache key
    stage: str  # the dvc.yaml stage that runs it ("compress@p80_ft", ...)
    extra: dict[str, Any] = Field(default_factory=dict)  # e.g. the data source fingerprint

    def input_ids(self) -> list[str]:
        out: list[str] = []
        for ref in self.inputs.values():
            out.extend(ref if isinstance(ref, list) else [ref])
        return out

    def cache_key(self, input_hashes: dict[str, str | list[str]]) -> str:
        """The full content key, given the sha256 of each input (same roles as inputs)."""
        return stable_hash({"step": self.config_key, "inputs": input_hashes})


class ModelPlan(BaseModel):
    """Where one model's pieces are in the plan."""

    model_config = ConfigDict(frozen=True)

    name: str
    parent: str | None
    chain: list[str]  # torch step ids from the teacher's train to this model's checkpoint
    checkpoint: str  # step id whose output is models/<name>.pt
    exports: dict[str, str]  # target -> step id of its deployable artifact
    validation: dict[str, str]  # target -> validate step id
    quantized: bool  # int8 (ORT-quantized or QAT)


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    params: Params
    steps: list[PlanStep]
    models: dict[str, ModelPlan]
    latency: dict[str, str]  # target -> latency step id
    outputs: dict[str, str]  # published workspace path -> step id
    machine: dict[str, Any]

    def step(self, step_id: str) -> PlanStep:
        return self._index()[step_id]

    def _index(self) -> dict[str, PlanStep]:
        return {s.id: s for s in self.steps}

    def upstream(self, step_ids: list[str]) -> list[PlanStep]:
        """``step_ids`` and everything they depend on, in plan order."""
        index, need, todo = self._index(), set(), list(step_ids)
        while todo:
            sid = todo.pop()
            if sid not in need:
                need.add(sid)
                todo.extend(index[sid].input_ids())
        return [s for s in self.steps if s.id in need]

    def for_stage(self, stage: str) -> list[PlanStep]:
        return [s for s in self.steps if s.stage == stage]


def step_code(kind: str, target: str | None = None) -> str:
    """Hash of the code a step kind runs: its module's import closure, and the target's
    module for steps that convert, validate or time on a target (loaded by name)."""
    modules = [steps.kind(kind).module]
    if target:
        modules.append(f"shrinkflow.targets.{target}")
    return code_hash(tuple(modules))


def _config_key(kind: str, config: Section, extra: dict[str, Any]) -> str:
    target = getattr(config, "target", None)
    return stable_hash({"kind": kind, "config": config.model_dump(mode="json"),
                        "code": step_code(kind, target), **extra})


class _Builder:
    def __init__(self) -> None:
        self.steps: list[PlanStep] = []
        self.by_key: dict[str, PlanStep] = {}  # config_key + input ids -> step (dedupe)

    def add(self, step_id: str, kind: str, model: str, config: Section, inputs: dict,
            stage: str, extra: dict[str, Any] | None = None) -> str:
        """Add a step (or return the id of an identical one: shared prefixes run once)."""
        extra = extra or {}
        key = _config_key(kind, config, extra)
        ident = stable_hash({"key": key, "inputs": inputs})
        if ident in self.by_key:
            return self.by_key[ident].id
        step = PlanStep(id=step_id, kind=kind, model=model, config=config, inputs=inputs,
                        config_key=key, stage=stage, extra=extra)
        self.steps.append(step)
        self.by_key[ident] = step
        return step.id


def build_plan(params: Params, root: str | Path, source: str | None = None) -> Plan:
    """The plan of ``params`` for the workspace at ``root`` (relative data paths resolve
    against it). Reads the data source's files to fingerprint them (unless ``source``,
    their fingerprint, is given: e.g. when the prepared data comes from DVC); runs
    nothing."""
    from shrinkflow.core.machine import has_int8_dot_product

    b = _Builder()
    fingerprint = machine.fingerprint()
    prepare = params.prepare.resolved(root)
    # The key covers the source's content, not where it lives.
    data = b.add("prepare", "prepare", "", prepare, {}, "prepare",
                 {"source": source or source_fingerprint(prepare),
                  "config": params.prepare.model_copy(update={"path": None}).config_hash()})
    add_import_root(root)  # model factories are imported from the workspace
    train, init = resolve_init(params, root)
    teacher = b.add("teacher:train", "train", "teacher", train, {"data": data}, "train",
                    init or _model_code(params.train.model))
    chains: dict[str, list[str]] = {"teacher": [teacher]}
    checkpoints: dict[str, str] = {"teacher": teacher}
    models: dict[str, ModelPlan] = {}
    outputs: dict[str, str] = {"data/prepared": data, "models/teacher.pt": teacher}
    exports: dict[str, str] = {}
    quantized: dict[str, bool] = {"teacher": False}
    int8_dot = has_int8_dot_product()
    for name in params.variant_order():
        variant = params.variants[name]
        current, chain = checkpoints[variant.from_], list(chains[variant.from_])
        is_q = quantized[variant.from_]
        for step in variant.torch_steps:
            if isinstance(step, QuantizeStep):
                step = resolve_weight_bits(step, int8_dot)
                is_q = True
            current = b.add(f"{name}:{step.kind}", step.kind, name, step,
                            {"data": data, "model": current}, f"compress@{name}",
                            _model_code(getattr(step, "student", None)))
            chain.append(current)
        chains[name], checkpoints[name] = chain, current
        quantized[name] = is_q or variant.onnx_quantize is not None
        outputs[f"models/{name}.pt"] = current
    convert = params.convert
    for name in params.model_names:
        step_id = b.add(f"{name}:convert", "convert", name,
                        ConvertStep(**convert.model_dump(), target=TARGET),
                        {"data": data, "model": checkpoints[name]}, "convert")
        quant = params.variants[name].onnx_quantize if name in params.variants else None
        if quant is not None:
            # ONNX Runtime quantization starts from the float ONNX file of the same model.
            step_id = b.add(f"{name}:quantize", "quantize", name,
                            resolve_weight_bits(quant, int8_dot),
                            {"data": data, "model": checkpoints[name], "export": step_id},
                            "convert")
        exports[name] = step_id
        outputs[f"onnx/{name}.onnx"] = step_id
    other_exports: dict[str, dict[str, str]] = {}
    for spec in params.targets[1:]:
        target = targets.get(spec.runtime)
        options = spec.model_dump(mode="json", exclude={"runtime", "threads"})
        per_model = other_exports.setdefault(spec.runtime, {})
        for name in params.model_names:
            config = ConvertStep(**convert.model_dump(), target=spec.runtime,
                                 int8=quantized[name], options=options,
                                 calibration_size=_calibration_size(params, name))
            inputs = {"data": data, "model": checkpoints[name]}
            if target.source == "onnx":
                inputs["export"] = exports[name]
            per_model[name] = b.add(f"{name}:convert@{spec.runtime}", "convert", name, config,
                                    inputs, "convert")
            outputs[f"exports/{spec.runtime}/{name}"] = per_model[name]
    v = params.validate_
    validate_ids: dict[str, dict[str, str]] = {n: {} for n in params.model_names}
    latency_ids: dict[str, str] = {}
    pairs = [(n, params.variants[n].from_) for n in params.variant_order()]
    for spec in params.targets:
        t = spec.runtime
        threads = params.target_threads(t)
        target_exports = exports if t == TARGET else other_exports[t]
        suffix = "" if t == TARGET else f"@{t}"
        for name in params.model_names:
            validate_ids[name][t] = b.add(
                f"{name}:validate{suffix}", "validate", name,
                ValidateStep(target=t, threads=threads),
                {"data": data, "model": checkpoints[name], "export": target_exports[name]},
                "validate")
        latency_cfg = LatencyStep(
            target=t, threads=threads, warmup=v.warmup, repeats_b1=v.repeats_b1,
            repeats_b256=v.repeats_b256, rounds=v.rounds, max_rounds=v.max_rounds,
            confidence=v.confidence, resolution=v.resolution, pairs=pairs,
            threshold=params.gates.min_speedup_vs_parent, gate_batch=params.gates.latency_batch,
            machine=fingerprint["id"], models=list(params.model_names))
        latency_ids[t] = b.add(f"latency:{t}", "latency", t, latency_cfg,
                               {"data": data,
                                "exports": [target_exports[n] for n in params.model_names]},
                               "validate")
    for name in params.model_names:
        models[name] = ModelPlan(
            name=name, parent=params.parent_of(name), chain=chains[name],
            checkpoint=checkpoints[name],
            exports={TARGET: exports[name],
                     **{t: e[name] for t, e in other_exports.items()}},
            validation=validate_ids[name], quantized=quantized[name])
    return Plan(params=params, steps=b.steps, models=models, latency=latency_ids,
                outputs=outputs, machine=fingerprint)


# Resolves ``models:/NAME@ALIAS`` to {path, sha256, name, version, run_id}: registered by
# the ops layer (MLflow lives there), see shrinkflow.ops.transfer.
ModelResolver = Callable[[str, Path, Params], dict[str, Any]]
_MODEL_RESOLVER: list[ModelResolver] = []


def register_model_resolver(fn: ModelResolver) -> None:
    _MODEL_RESOLVER[:] = [fn]


def resolve_init(params: Params, root: str | Path) -> tuple[Section, dict[str, Any]]:
    """``train`` with ``init_from`` resolved to a local checkpoint, and what the teacher's
    cache key and lineage record about the source (its sha256; for a registered model
    also its name, version and run)."""
    uri = params.train.init_from
    if not uri:
        return params.train, {}
    if uri.startswith("models:/"):
        if not _MODEL_RESOLVER:
            raise ShrinkflowError(f"train.init_from {uri}: registered models are resolved "
                                  "through the tracking store (import shrinkflow.ops)")
        info = _MODEL_RESOLVER[0](uri, Path(root), params)
    else:
        path = Path(uri).expanduser()
        path = path if path.is_absolute() else Path(root) / path
        if not path.is_file():
            raise ShrinkflowError(f"train.init_from: {path} not found; give models:/NAME@ALIAS "
                                  "or a shrinkflow checkpoint (.pt)")
        info = {"path": str(path.resolve()), "sha256": file_sha256(path)}
    train = params.train.model_copy(update={"init_checkpoint": info["path"]})
    return train, {"init_from": {"uri": uri, **{k: v for k, v in info.items() if k != "path"}}}


def _model_code(spec) -> dict[str, str]:
    """A factory model's source file sha256, for the cache key of the step that builds it
    (later steps see it through the checkpoint, which stores it)."""
    return {"factory_sha256": factory_sha256(spec)} if isinstance(spec, FactorySpec) else {}


def _calibration_size(params: Params, name: str) -> int:
    """The calibration subset of a variant's own int8 step (else the default)."""
    variant = params.variants.get(name)
    while variant is not None:
        for s in reversed(variant.steps):
            if isinstance(s, QuantizeStep):
                return s.calibration_size
        variant = params.variants.get(variant.from_)
    return QuantizeStep().calibration_size
