"""Variants: chains of compression steps, their derivation keys, and publishing.

A derivation key names what a checkpoint *is* (the teacher's config, then each step's
config in order), so two variants sharing a prefix of steps share its output file and
its cache entry: the prefix runs once.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from shrinkflow.artifacts import DataArtifact, ModelArtifact, atomic_path, file_sha256
from shrinkflow.config import Params, QuantizeStep, Section, Variant, stable_hash
from shrinkflow.workspace import Workspace


def torch_steps(variant: Variant) -> list[Section]:
    """The steps that act on a checkpoint (ORT quantization acts later, on the ONNX file)."""
    return [s for s in variant.steps if not (isinstance(s, QuantizeStep) and s.is_onnx_only)]


def derivation_keys(params: Params) -> dict[str, list[str]]:
    """For every model, the keys of the checkpoints along its chain (last = the model)."""
    teacher = stable_hash({"prepare": params.prepare.model_dump(mode="json"),
                           "train": params.train.model_dump(mode="json")})
    keys: dict[str, list[str]] = {"teacher": [teacher]}
    for name in params.variant_order():
        variant = params.variants[name]
        key, chain = keys[variant.from_][-1], []
        for step in torch_steps(variant):
            key = stable_hash([key, step.model_dump(mode="json")])
            chain.append(key)
        keys[name] = chain or [key]
    return keys


def publish(model: ModelArtifact, name: str, parent: str, path: str | Path) -> ModelArtifact:
    """Copy a chain's final checkpoint to the variant's path (``models/<name>.pt``) and
    label the record with the variant's name and parent."""
    path = Path(path)
    if not (path.is_file() and file_sha256(path) == model.sha256):
        with atomic_path(path) as tmp:
            shutil.copyfile(model.path, tmp)
    return model.model_copy(update={"path": str(path.resolve()), "name": name, "parent": parent})


def run_chain(params: Params, name: str, ws: Workspace, data: DataArtifact,
              threads: int) -> ModelArtifact:
    """Run variant ``name``'s steps one after another from its parent's checkpoint
    (what the ``compress`` stage of dvc.yaml does; the flow wires the same steps as tasks)."""
    from shrinkflow.compress import run_step
    from shrinkflow.models import model_record

    variant = params.variants[name]
    keys = derivation_keys(params)[name]
    art = model_record(ws.checkpoint(variant.from_), name=variant.from_)
    for step, key in zip(torch_steps(variant), keys, strict=False):
        art = run_step(art, step, data, ws.step_checkpoint(key), threads)
    return publish(art, name, variant.from_, ws.checkpoint(name))


def stale_outputs(params: Params, ws: Workspace) -> list[Path]:
    """Published files of models no longer in params (removed before DVC records)."""
    names = set(params.model_names)
    found = [*ws.root.glob("models/*.pt"), *ws.root.glob("onnx/*.onnx")]
    return [p for p in found if p.stem not in names]
