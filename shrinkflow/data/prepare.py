"""The prepare step's logic: load the configured source, split it (stratified, seeded),
fingerprint it, and write ``<out>/{x,y}_{train,val,test}.npy`` plus ``meta.json``.

Arrays are stored raw (as the source stores them); normalisation statistics from the
training split go into ``meta.json``. ``.npy`` bytes are deterministic (unlike
``.npz``, whose zip entries carry timestamps), so unchanged inputs give byte-identical
outputs and DVC sees nothing to redo.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from shrinkflow.core.config import Int, Section, Seed
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import atomic_path, dir_sha256
from shrinkflow.core.records import DataArtifact
from shrinkflow.data import sources

SPLITS = ("train", "val", "test")


class PrepareParams(Section):
    dataset: Literal["digits", "fashion-mnist", "npz", "imagefolder", "csv", "text"] = "digits"
    # classification (images or features -> classes) or embedding (sentences -> vectors;
    # dataset text: prepare.path is a UTF-8 file with one sentence per line).
    task: Literal["classification", "embedding"] = "classification"
    # embedding: sentences are cut at this many tokens.
    max_tokens: Int = Field(128, ge=8, le=512)
    # fashion-mnist: a directory holding the four idx(.gz) files (default: Debian's
    # dataset-fashion-mnist). npz: a file with arrays x and y. imagefolder: a directory
    # of class subfolders holding PNG/JPEG files. csv: numeric feature columns and a
    # label column. Relative paths are relative to the workspace.
    path: str | None = None
    # imagefolder: resize every image to this (square side, or [height, width]); None
    # keeps the size, which must then be the same for every image.
    image_size: Int | tuple[Int, Int] | None = None
    color: Literal["grayscale", "rgb"] = "grayscale"
    # csv: the column holding the class labels (every other column is a feature).
    label_column: str = Field("label", min_length=1)
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    # Ignored by fashion-mnist, which keeps its official 10k test split.
    test_fraction: float = Field(0.2, gt=0, lt=0.5)
    # Keep at most this many training examples (stratified); None keeps all.
    max_train: Int | None = Field(None, ge=10)
    seed: Seed = 0

    @model_validator(mode="after")
    def _path_needed(self) -> PrepareParams:
        if self.dataset == "npz" and not self.path:
            raise ValueError("dataset 'npz' needs prepare.path: the .npz file with arrays x and y")
        if (self.task == "embedding") != (self.dataset == "text"):
            raise ValueError("task 'embedding' goes with dataset 'text' (and dataset 'text' "
                             "with task 'embedding')")
        if self.dataset == "text" and not self.path:
            raise ValueError("dataset 'text' needs prepare.path: a text file, one sentence per line")
        if self.dataset == "imagefolder" and not self.path:
            raise ValueError("dataset 'imagefolder' needs prepare.path: a directory of class "
                             "subfolders holding PNG/JPEG images")
        if self.dataset == "csv" and not self.path:
            raise ValueError("dataset 'csv' needs prepare.path: a CSV file with a header, "
                             "numeric feature columns and a label column")
        size = self.image_size
        if size is not None and any(not 1 <= s <= 4096 for s in
                                    (size if isinstance(size, tuple) else (size,))):
            raise ValueError("image_size: each side must be 1..4096 pixels")
        return self

    def resolved(self, root: str | Path) -> PrepareParams:
        """``path`` made absolute against the workspace (params.yaml's relative paths
        mean the workspace, whatever the process's working directory)."""
        if self.path and not Path(self.path).expanduser().is_absolute():
            return self.model_copy(update={"path": str(Path(root) / self.path)})
        return self


@dataclass(frozen=True)
class Splits:
    """Normalised float32 arrays, ready for a model."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    meta: dict

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])


def split_indices(y: np.ndarray, fractions: tuple[float, float], seed: int,
                  has_test: bool) -> dict[str, np.ndarray]:
    """Deterministic stratified split into train/val(/test) index arrays.

    ``fractions`` is (val, test) of the whole; with ``has_test`` the test split comes
    from elsewhere and val is taken from ``y`` alone.
    """
    from sklearn.model_selection import train_test_split

    val_f, test_f = fractions
    idx = np.arange(len(y))
    out: dict[str, np.ndarray] = {}
    if not has_test:
        idx, out["test"] = train_test_split(idx, test_size=test_f, stratify=y[idx],
                                            random_state=seed)
        val_f = val_f / (1.0 - test_f)
    out["train"], out["val"] = train_test_split(idx, test_size=val_f, stratify=y[idx],
                                                random_state=seed)
    return {k: np.sort(v) for k, v in out.items()}


def fingerprint(arrays: dict[str, np.ndarray], extra: dict) -> str:
    """sha256 over array names, dtypes, shapes and bytes, plus the metadata in ``extra``."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    h.update(json.dumps(extra, sort_keys=True).encode())
    return h.hexdigest()


def prepare(params: PrepareParams, out_dir: str | Path) -> DataArtifact:
    """Load the configured source, split it by seed, and write the splits to ``out_dir``."""
    if params.task == "embedding":
        from shrinkflow.data.text import prepare_text

        return prepare_text(params, out_dir)
    raw = sources.load(params)
    n_classes = int(raw.y.max()) + 1
    counts = np.bincount(raw.y, minlength=n_classes)
    if counts.min() < 3:
        raise ShrinkflowError(f"{params.dataset}: class {int(counts.argmin())} has "
                              f"{int(counts.min())} example(s); each class needs >= 3 to split")
    has_test = raw.x_test is not None
    try:
        idx = split_indices(raw.y, (params.val_fraction, params.test_fraction), params.seed,
                            has_test)
    except ValueError as exc:  # a split too small to hold every class
        raise ShrinkflowError(f"{params.dataset}: cannot split {len(raw.y)} examples of "
                              f"{n_classes} classes ({exc}); raise prepare.val_fraction / "
                              "prepare.test_fraction or add data") from None
    arrays = {"x_train": raw.x[idx["train"]], "y_train": raw.y[idx["train"]],
              "x_val": raw.x[idx["val"]], "y_val": raw.y[idx["val"]]}
    if has_test:
        arrays["x_test"], arrays["y_test"] = raw.x_test, raw.y_test
    else:
        arrays["x_test"], arrays["y_test"] = raw.x[idx["test"]], raw.y[idx["test"]]
    if params.max_train is not None and params.max_train < len(arrays["y_train"]):
        from sklearn.model_selection import train_test_split

        keep, _ = train_test_split(np.arange(len(arrays["y_train"])),
                                   train_size=params.max_train,
                                   stratify=arrays["y_train"], random_state=params.seed)
        keep = np.sort(keep)
        arrays["x_train"], arrays["y_train"] = arrays["x_train"][keep], arrays["y_train"][keep]

    # Normalisation statistics come from the training split only (no test leakage).
    train01 = arrays["x_train"].astype(np.float64) / raw.scale
    mean, std = float(train01.mean()), float(train01.std())
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise ShrinkflowError(f"{params.dataset}: the training images are not finite numbers "
                              "(mean/std is NaN or Inf); check the data")
    meta = {
        "dataset": params.dataset,
        "classes": raw.classes,
        "num_classes": n_classes,
        "input_shape": list(raw.x.shape[1:]),
        "scale": raw.scale,
        "mean": round(mean, 8),
        "std": round(std or 1.0, 8),
        "split_seed": params.seed,
        "counts": {s: int(len(arrays[f"y_{s}"])) for s in SPLITS},
    }
    meta["fingerprint"] = fingerprint(arrays, {k: meta[k] for k in ("scale", "mean", "std")})

    out = Path(out_dir)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True,
                                                  allow_nan=False) + "\n")
    return data_record(out)


def read_meta(root: Path) -> dict:
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise ShrinkflowError(f"{root}: no prepared data (meta.json missing); run the "
                              "prepare step first (shrinkflow run, or dvc repro prepare)")
    try:
        return json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise ShrinkflowError(f"{meta_path}: corrupt ({exc}); rerun prepare or dvc pull") from None


def data_record(path: str | Path) -> DataArtifact:
    """The record of prepared data on disk."""
    root = Path(path)
    meta = read_meta(root)
    return DataArtifact(
        path=str(root.resolve()), sha256=dir_sha256(root), dataset=meta["dataset"],
        fingerprint=meta["fingerprint"], input_shape=tuple(meta["input_shape"]),
        num_classes=meta["num_classes"], n_train=meta["counts"]["train"],
        n_val=meta["counts"]["val"], n_test=meta["counts"]["test"],
        split_seed=meta["split_seed"], mean=meta["mean"], std=meta["std"],
        task=meta.get("task", "classification"),
    )


def load_raw(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Prepared arrays as stored (raw pixels) and the metadata."""
    root = Path(path)
    meta = read_meta(root)
    arrays = {}
    for split in SPLITS:
        for kind in ("x", "y"):
            f = root / f"{kind}_{split}.npy"
            try:
                arrays[f"{kind}_{split}"] = np.load(f, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ShrinkflowError(f"{f}: unreadable prepared array ({exc}); rerun prepare "
                                      "or dvc pull") from None
    return arrays, meta


def normalize(x: np.ndarray, meta: dict) -> np.ndarray:
    """Raw images -> the model's training inputs: float32 (x/scale - mean)/std."""
    x = np.asarray(x, dtype=np.float32) / np.float32(meta["scale"])
    return (x - np.float32(meta["mean"])) / np.float32(meta["std"])


def load_prepared(path: str | Path) -> Splits:
    """Read prepared splits and normalise them (what torch models train on)."""
    arrays, meta = load_raw(path)
    out = {}
    for split in SPLITS:
        out[f"x_{split}"] = normalize(arrays[f"x_{split}"], meta)
        out[f"y_{split}"] = arrays[f"y_{split}"].astype(np.int64)
    return Splits(meta=meta, **out)


def raw_test_split(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """The test split as raw float32 pixels (what deployed artifacts take) and labels;
    for the embedding task, the packed int64 tokens (see :mod:`shrinkflow.data.text`)."""
    arrays, meta = load_raw(path)
    x = arrays["x_test"]
    x = x.astype(np.int64) if meta.get("task") == "embedding" else x.astype(np.float32)
    return x, arrays["y_test"].astype(np.int64), meta


def fingerprint_of(path: str | Path) -> str:
    """Recompute the fingerprint of prepared data on disk (what ``meta.json`` claims)."""
    arrays, meta = load_raw(path)
    return fingerprint(arrays, {k: meta[k] for k in ("scale", "mean", "std")})
