"""The checkpoint format (``shrinkflow.checkpoint/1``).

A checkpoint is a plain dict of tensors and primitives, loadable with
``torch.load(weights_only=True)``; it stores the architecture *as built* (after
structured pruning the widths differ from params.yaml) and the config that made it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import atomic_path, file_sha256
from shrinkflow.core.records import ModelArtifact
from shrinkflow.models.cnn import count_params
from shrinkflow.models.qat import prepare_qat
from shrinkflow.models.spec import build, parse_spec, reshape_to, spec_info

CHECKPOINT_FORMAT = "shrinkflow.checkpoint/1"


def save_checkpoint(model: nn.Module, arch: Any, path: str | Path, **info: Any) -> str:
    """Write a weights-only checkpoint atomically; return its sha256.

    ``arch`` is the model's spec (CNN, MLP or factory; see ``models.spec``); a factory
    model's checkpoint also stores its source file's sha256. ``info`` holds primitives
    describing how the model was made (input_shape, num_classes, norm, step, config,
    parent, masks, history, ...).
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "arch": arch.model_dump(mode="json"),
               "state_dict": state, **spec_info(arch), **info}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return file_sha256(path)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict (tensors and primitives only: no code runs on load)."""
    p = Path(path)
    if not p.is_file():
        raise ShrinkflowError(f"{p}: checkpoint not found; rerun the step that makes it")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ShrinkflowError(f"{p}: corrupt or foreign checkpoint ({type(exc).__name__}); "
                              "rerun the step that makes it") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ShrinkflowError(f"{p}: not a shrinkflow checkpoint ({CHECKPOINT_FORMAT})")
    return ckpt


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`; returns (model in eval mode, dict)."""
    ckpt = read_checkpoint(path)
    if ckpt.get("kind") == "text":  # a sentence encoder (the embedding task)
        from shrinkflow.models.text import encoder_from_checkpoint

        return encoder_from_checkpoint(ckpt), ckpt
    arch = parse_spec(ckpt["arch"])
    model: nn.Module = build(arch, tuple(ckpt["input_shape"]), int(ckpt["num_classes"]))
    if ckpt.get("qat"):
        qat = ckpt["qat"]
        # Checkpoints from before weight_bits was recorded used 7-bit weights.
        model = prepare_qat(model, per_channel=bool(qat["per_channel"]),
                            weight_bits=int(qat.get("weight_bits", 7)))
    reshape_to(model, ckpt["state_dict"])  # a structurally pruned factory model
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


def model_record(path: str | Path, summary: dict[str, float] | None = None,
                 name: str | None = None, parent: str | None = None,
                 history: list[dict[str, float | str]] | None = None) -> ModelArtifact:
    """The record of a checkpoint on disk; ``name``/``parent`` label it (default: the
    names stored in it)."""
    model, ckpt = load_checkpoint(path)
    total, nonzero = count_params(model)
    return ModelArtifact(
        path=str(Path(path).resolve()), sha256=file_sha256(path), name=name or ckpt["name"],
        step=ckpt["step"], config_hash=ckpt["config_hash"],
        parent=parent if parent is not None else ckpt.get("parent"),
        data_fingerprint=ckpt["data_fingerprint"], num_params=total, nonzero_params=nonzero,
        summary=summary or {},
        # Every training step of the chain, each row tagged with its step (stored in the
        # checkpoint, so a DVC stage reading the published file has it too).
        history=history if history is not None else list(ckpt.get("history", [])),
    )
