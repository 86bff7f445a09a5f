"""Data sources: each turns ``prepare`` params into raw images and labels.

A source is one function registered in :data:`LOADERS`; :func:`source_files` names the
files it reads, so a scheduled run can tell whether the data changed without decoding.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.validation import (
    check_inputs,
    check_labels,
    image_files,
    read_csv,
    read_images,
    read_npz,
)

if TYPE_CHECKING:
    from shrinkflow.data.prepare import PrepareParams

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


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


def _load_digits(params: PrepareParams) -> RawDataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.uint8)[:, None, :, :]  # values 0..16
    return RawDataset(x=x, y=d.target.astype(np.int64), scale=16.0,
                      classes=[str(c) for c in d.target_names])


def read_idx(path: Path) -> np.ndarray:
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
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise ShrinkflowError(f"{path}: not an unsigned-byte IDX file (bad magic number)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ShrinkflowError(f"{path}: truncated IDX header; re-download it")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(dims, dtype=np.float64))
    if len(data) - header != expected:
        raise ShrinkflowError(f"{path}: corrupt IDX file: header says {expected} bytes of "
                              f"data, file has {len(data) - header}; re-download it")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def find_idx(root: Path, stem: str) -> Path:
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
    x_tr, y_tr, x_te, y_te = (read_idx(find_idx(root, s)) for s in FASHION_MNIST_FILES)
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
    arrays = read_npz(path)
    x, y = arrays["x"], arrays["y"]
    if x.ndim == 3:
        x = x[:, None]
    check_inputs(x, str(path), ndims=(2, 4))  # feature vectors, or images
    k = check_labels(y, str(path), len(x))
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        lo, hi = int(x.min()), int(x.max())
        scale = float(max(1, hi))
        x = x.astype(np.uint8) if lo >= 0 and hi <= 255 else x.astype(np.float32)
    else:
        x, scale = x.astype(np.float32), 1.0
    return RawDataset(x=x, y=y.astype(np.int64), scale=scale, classes=[str(c) for c in range(k)])


def image_size(params: PrepareParams) -> tuple[int, int] | None:
    size = params.image_size
    return None if size is None else (size, size) if isinstance(size, int) else tuple(size)


def _load_imagefolder(params: PrepareParams) -> RawDataset:
    x, y, classes = read_images(Path(params.path or ""), params.color, image_size(params))
    return RawDataset(x=x, y=y, scale=255.0, classes=classes)


def _load_csv(params: PrepareParams) -> RawDataset:
    x, y, classes = read_csv(Path(params.path or ""), params.label_column)
    return RawDataset(x=x, y=y, scale=1.0, classes=classes)


LOADERS: dict[str, Callable[[PrepareParams], RawDataset]] = {
    "digits": _load_digits,
    "fashion-mnist": _load_fashion_mnist,
    "npz": _load_npz,
    "imagefolder": _load_imagefolder,
    "csv": _load_csv,
}


def load(params: PrepareParams) -> RawDataset:
    """The raw data set of ``params`` (validated)."""
    raw = LOADERS[params.dataset](params)
    check_labels(raw.y, params.dataset, len(raw.x))
    if raw.y_test is not None:
        check_labels(raw.y_test, f"{params.dataset} (test split)", len(raw.x_test))
    return raw


def source_files(params: PrepareParams) -> list[Path]:
    """The files a data source reads (what decides whether the data changed)."""
    if params.dataset == "digits":
        import importlib.util

        # Located, not imported: importing sklearn.datasets costs seconds.
        sklearn_dir = Path(importlib.util.find_spec("sklearn").origin).parent
        return [sklearn_dir / "datasets" / "data" / "digits.csv.gz"]
    if params.dataset == "fashion-mnist":
        root = Path(params.path) if params.path else FASHION_MNIST_DIR
        return [find_idx(root, s) for s in FASHION_MNIST_FILES]
    if params.dataset == "imagefolder":
        root = Path(params.path or "")
        return [p for files in image_files(root).values() for p in files]
    path = Path(params.path or "")
    if params.dataset == "text":
        from shrinkflow.data.text import pretrained_dir, tokenizer_files

        if not path.is_file():
            raise ShrinkflowError(f"prepare.path: {path} not found; give a UTF-8 text file "
                                  "with one sentence per line")
        # The tokens depend on the tokenizer, every model on the pretrained weights.
        root = pretrained_dir()
        return [path, *tokenizer_files(root), root / "model.safetensors"]
    if not path.is_file():
        want = ("a CSV file with a header" if params.dataset == "csv" else
                "an .npz file with arrays x and y (or `shrinkflow data add FILE`)")
        raise ShrinkflowError(f"prepare.path: {path} not found; give {want}")
    return [path]


def source_fingerprint(params: PrepareParams) -> str:
    """sha256 of the source files' bytes (not their names): cheap (no decoding), so a
    scheduled run can tell in seconds whether the data changed."""
    import hashlib

    from shrinkflow.core.files import path_sha256

    h = hashlib.sha256(params.dataset.encode())
    for f in source_files(params):
        if params.dataset == "imagefolder":  # the class is the folder: names count
            h.update(f.relative_to(params.path).as_posix().encode())
        h.update(path_sha256(f).encode())
    return h.hexdigest()


def num_classes(params: PrepareParams) -> int:
    """K of a file source (reads its labels)."""
    return int(load(params).y.max()) + 1
