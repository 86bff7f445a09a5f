"""One validation for every way data comes in (``prepare``, ``data add``, ``predict``):
shapes and sizes checked before anything is allocated, finite values, and labels
0..K-1 with every class present. Each problem is one line naming the file and what.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from shrinkflow.core.errors import ShrinkflowError

MAX_CLASSES = 10_000
# An array larger than this is refused before it is read (a corrupt header can claim
# terabytes); raise it with SHRINKFLOW_MAX_ARRAY_BYTES for very large data sets.
MAX_ARRAY_BYTES = 16 * 2**30


def max_array_bytes() -> int:
    import os

    try:
        return int(os.environ.get("SHRINKFLOW_MAX_ARRAY_BYTES", MAX_ARRAY_BYTES))
    except ValueError:
        return MAX_ARRAY_BYTES


def npz_headers(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array in an .npz, read from the headers only."""
    out = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with z.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                out[info.filename[:-4]] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ShrinkflowError(f"{path}: not a readable .npz file ({exc}); save it with "
                              "numpy.savez(path, x=..., y=...)") from None
    return out


def check_npz_sizes(path: Path, names: tuple[str, ...]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Headers of ``names`` in ``path``: present, not object arrays, not too large."""
    headers = npz_headers(path)
    missing = [n for n in names if n not in headers]
    if missing:
        raise ShrinkflowError(f"{path}: needs array(s) named {', '.join(names)} "
                              f"(found {', '.join(sorted(headers)) or 'none'})")
    limit = max_array_bytes()
    for name in names:
        shape, dtype = headers[name]
        if dtype.hasobject:
            raise ShrinkflowError(f"{path}: array {name} holds Python objects ({dtype}); "
                                  "give numeric arrays")
        size = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if size > limit:
            raise ShrinkflowError(f"{path}: array {name} claims shape {shape} "
                                  f"({size / 2**30:.1f} GiB), over the {limit / 2**30:.0f} GiB "
                                  "limit (SHRINKFLOW_MAX_ARRAY_BYTES); is the file corrupt?")
    return headers


def check_inputs(x: np.ndarray, where: str, ndims: tuple[int, ...] = (3, 4)) -> None:
    """Numeric, non-empty, finite inputs of an allowed rank."""
    if x.size == 0 or len(x) == 0:
        raise ShrinkflowError(f"{where}: x is empty (shape {x.shape}); give at least one example")
    if x.ndim not in ndims:
        want = " or ".join(f"{n}-d" for n in ndims)
        raise ShrinkflowError(f"{where}: x must be {want} (N,H,W or N,C,H,W); got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_):
        raise ShrinkflowError(f"{where}: x must be numeric (got {x.dtype})")
    if np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x)
        if bad.any():
            first = np.unravel_index(int(np.argmax(bad)), x.shape)
            raise ShrinkflowError(f"{where}: x holds {int(bad.sum())} NaN/Inf value(s) (first "
                                  f"at example {first[0]}); clean or drop those examples")


def check_labels(y: np.ndarray, where: str, n: int | None = None) -> int:
    """Integer labels 0..K-1 with every class present; returns K."""
    if y.ndim != 1:
        raise ShrinkflowError(f"{where}: y must be 1-d class labels; got shape {y.shape}")
    if n is not None and len(y) != n:
        raise ShrinkflowError(f"{where}: x has {n} examples but y has {len(y)} labels")
    if len(y) == 0:
        raise ShrinkflowError(f"{where}: y is empty; give at least one labelled example")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.isfinite(y).all() \
                and (y == np.round(y)).all():
            y = y.astype(np.int64)
        else:
            raise ShrinkflowError(f"{where}: y must hold integer class labels (got {y.dtype})")
    lo, hi = int(y.min()), int(y.max())
    if lo < 0:
        raise ShrinkflowError(f"{where}: y has negative label {lo}; labels are 0..K-1")
    if hi >= MAX_CLASSES:
        raise ShrinkflowError(f"{where}: y has label {hi}; at most {MAX_CLASSES} classes "
                              "(labels 0..K-1) are supported")
    present = np.unique(y)
    if len(present) < 2:
        raise ShrinkflowError(f"{where}: y has a single class ({lo}); a classifier needs at "
                              "least two")
    if len(present) != hi + 1:
        gaps = sorted(set(range(hi + 1)) - set(present.tolist()))
        shown = ", ".join(map(str, gaps[:5])) + (" …" if len(gaps) > 5 else "")
        raise ShrinkflowError(f"{where}: labels must be 0..K-1 with every class present; "
                              f"missing {shown} (relabel to consecutive integers)")
    return hi + 1


def read_npz(path: str | Path, names: tuple[str, ...] = ("x", "y")) -> dict[str, np.ndarray]:
    """Arrays ``names`` of an .npz, validated (sizes before reading, then values)."""
    path = Path(path)
    if not path.is_file():
        raise ShrinkflowError(f"{path}: file not found")
    check_npz_sizes(path, names)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {n: f[n] for n in names}
    except Exception as exc:  # zip/format errors from numpy
        raise ShrinkflowError(f"{path}: not a readable .npz file ({type(exc).__name__}: "
                              f"{exc})") from None
    if "x" in arrays:
        check_inputs(arrays["x"], str(path))
    if "y" in arrays:
        check_labels(arrays["y"], str(path), len(arrays["x"]) if "x" in arrays else None)
    return arrays
