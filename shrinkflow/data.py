"""Datasets: load from a registry of sources, split, normalise, fingerprint.

``prepare`` writes ``<out>/{x,y}_{train,val,test}.npy`` plus ``meta.json``. ``.npy``
bytes are deterministic (unlike ``.npz``, whose zip entries carry timestamps), so an
unchanged input gives byte-identical outputs and DVC sees nothing to redo.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shrinkflow.artifacts import DataArtifact, atomic_path, dir_sha256
from shrinkflow.config import PrepareParams
from shrinkflow.errors import ShrinkflowError

SPLITS = ("train", "val", "test")
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


@dataclass(frozen=True)
class RawDataset:
    """Images as (N, C, H, W) in their stored dtype; ``scale`` maps them to [0, 1]."""

    x: np.ndarray
    y: np.ndarray
    scale: float
    classes: list[str]
    # Sources with an official test split keep it (comparable to published numbers).
    x_test: np.ndarray | None = None
    y_test: np.ndarray | None = None


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


# --- sources -----------------------------------------------------------------------


def _load_digits(params: PrepareParams) -> RawDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.uint8)[:, None, :, :]  # values 0..16
    return RawDataset(x=x, y=d.target.astype(np.int64), scale=16.0,
                      classes=[str(c) for c in d.target_names])


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) as used by MNIST and Fashion-MNIST."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise ShrinkflowError(f"{path}: cannot read IDX file ({exc}); re-download or "
                              "reinstall it") from None
    if len(data) < 4:
        raise ShrinkflowError(f"{path}: truncated IDX file (no header); re-download it")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ShrinkflowError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    header = 4 + 4 * ndim
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims))
    if len(data) - header != expected:
        raise ShrinkflowError(f"{path}: corrupt IDX file: header says {expected} bytes of "
                              f"data, file has {len(data) - header}; re-download it")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).is_file():
            return root / name
    raise ShrinkflowError(
        f"fashion-mnist: {root / stem}(.gz) not found. Install Debian's package "
        "(apt-get install dataset-fashion-mnist) or set prepare.path to a directory "
        "holding the four idx files"
    )


def _load_fashion_mnist(params: PrepareParams) -> RawDataset:
    root = Path(params.path) if params.path else FASHION_MNIST_DIR
    x_tr = _read_idx(_find_idx(root, "train-images-idx3-ubyte"))
    y_tr = _read_idx(_find_idx(root, "train-labels-idx1-ubyte"))
    x_te = _read_idx(_find_idx(root, "t10k-images-idx3-ubyte"))
    y_te = _read_idx(_find_idx(root, "t10k-labels-idx1-ubyte"))
    if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
        raise ShrinkflowError(f"fashion-mnist in {root}: image and label counts differ")
    return RawDataset(x=x_tr[:, None], y=y_tr.astype(np.int64), scale=255.0,
                      classes=list(FASHION_MNIST_CLASSES),
                      x_test=x_te[:, None], y_test=y_te.astype(np.int64))


def _load_npz(params: PrepareParams) -> RawDataset:
    path = Path(params.path or "")
    if not path.is_file():
        raise ShrinkflowError(f"prepare.path: {path} not found; give an .npz file with "
                              "arrays x (N,H,W or N,C,H,W) and y (N,)")
    try:
        with np.load(path, allow_pickle=False) as f:
            if "x" not in f or "y" not in f:
                raise ShrinkflowError(f"{path}: needs arrays named x and y "
                                      f"(found {sorted(f.files)})")
            x, y = f["x"], f["y"]
    except ShrinkflowError:
        raise
    except Exception as exc:  # zip/format errors from numpy
        raise ShrinkflowError(f"{path}: not a readable .npz file ({exc})") from None
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
        raise ShrinkflowError(f"{path}: x must be (N,H,W) or (N,C,H,W) and y (N,); "
                              f"got x{x.shape}, y{y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ShrinkflowError(f"{path}: y must hold integer class labels (got {y.dtype})")
    if np.issubdtype(x.dtype, np.integer):
        scale = float(max(1, int(x.max())))
        x = x.astype(np.uint8) if x.max() <= 255 and x.min() >= 0 else x.astype(np.float32)
    else:
        x, scale = x.astype(np.float32), 1.0
    classes = [str(c) for c in range(int(y.max()) + 1)]
    return RawDataset(x=x, y=y.astype(np.int64), scale=scale, classes=classes)


LOADERS: dict[str, Callable[[PrepareParams], RawDataset]] = {
    "digits": _load_digits,
    "fashion-mnist": _load_fashion_mnist,
    "npz": _load_npz,
}


# --- split, normalise, fingerprint -------------------------------------------------


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
    raw = LOADERS[params.dataset](params)
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
    mean, std = float(train01.mean()), float(train01.std() or 1.0)
    meta = {
        "dataset": params.dataset,
        # The file name only: an absolute path would make the bytes differ per checkout.
        "source": Path(params.path).name if params.path else None,
        "classes": raw.classes,
        "num_classes": n_classes,
        "input_shape": list(raw.x.shape[1:]),
        "scale": raw.scale,
        "mean": round(mean, 8),
        "std": round(std, 8),
        "split_seed": params.seed,
        "counts": {s: int(len(arrays[f"y_{s}"])) for s in SPLITS},
    }
    meta["fingerprint"] = fingerprint(arrays, {k: meta[k] for k in ("scale", "mean", "std")})

    out = Path(out_dir)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for name, arr in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return data_record(out)


def _read_meta(root: Path) -> dict:
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
    meta = _read_meta(root)
    return DataArtifact(
        path=str(root.resolve()), sha256=dir_sha256(root), dataset=meta["dataset"],
        fingerprint=meta["fingerprint"], input_shape=tuple(meta["input_shape"]),
        num_classes=meta["num_classes"], n_train=meta["counts"]["train"],
        n_val=meta["counts"]["val"], n_test=meta["counts"]["test"],
        split_seed=meta["split_seed"], mean=meta["mean"], std=meta["std"],
    )


def load_prepared(path: str | Path) -> Splits:
    """Read prepared splits and normalise them (float32, (x/scale - mean)/std)."""
    root = Path(path)
    meta = _read_meta(root)
    arrays = {}
    for split in SPLITS:
        for kind in ("x", "y"):
            f = root / f"{kind}_{split}.npy"
            try:
                arrays[f"{kind}_{split}"] = np.load(f, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ShrinkflowError(f"{f}: unreadable prepared array ({exc}); rerun prepare "
                                      "or dvc pull") from None
    for split in SPLITS:
        x = arrays[f"x_{split}"].astype(np.float32) / np.float32(meta["scale"])
        arrays[f"x_{split}"] = (x - np.float32(meta["mean"])) / np.float32(meta["std"])
        arrays[f"y_{split}"] = arrays[f"y_{split}"].astype(np.int64)
    return Splits(meta=meta, **arrays)


def normalize(x: np.ndarray, meta: dict) -> np.ndarray:
    """Apply a prepared dataset's normalisation to raw images (same dtype rules)."""
    x = np.asarray(x, dtype=np.float32) / np.float32(meta["scale"])
    return (x - np.float32(meta["mean"])) / np.float32(meta["std"])


def resolve_source(params: PrepareParams, root: str | Path) -> PrepareParams:
    """``prepare.path`` made absolute against the workspace (params.yaml's relative paths
    mean the workspace, whatever the process's working directory)."""
    if params.path and not Path(params.path).expanduser().is_absolute():
        return params.model_copy(update={"path": str(Path(root) / params.path)})
    return params


def source_files(params: PrepareParams) -> list[Path]:
    """The files a data source reads (what decides whether the data changed)."""
    if params.dataset == "digits":
        import importlib.util

        # Located, not imported: importing sklearn.datasets costs seconds.
        sklearn_dir = Path(importlib.util.find_spec("sklearn").origin).parent
        return [sklearn_dir / "datasets" / "data" / "digits.csv.gz"]
    if params.dataset == "fashion-mnist":
        root = Path(params.path) if params.path else FASHION_MNIST_DIR
        return [_find_idx(root, s) for s in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                             "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
    path = Path(params.path or "")
    if not path.is_file():
        raise ShrinkflowError(f"prepare.path: {path} not found; give an .npz file with "
                              "arrays x and y (or `shrinkflow data add FILE`)")
    return [path]


def source_fingerprint(params: PrepareParams) -> str:
    """sha256 of the source files' bytes: cheap (no decoding), so a scheduled run can tell
    in seconds whether the data changed."""
    from shrinkflow.artifacts import file_sha256

    h = hashlib.sha256(params.dataset.encode())
    for f in source_files(params):
        h.update(file_sha256(f).encode())
    return h.hexdigest()
