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
        forms = "N,F features, " if 2 in ndims else ""
        raise ShrinkflowError(f"{where}: x must be {want} ({forms}N,H,W or N,C,H,W); got shape "
                              f"{x.shape}")
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
        check_inputs(arrays["x"], str(path), ndims=(2, 3, 4))
    if "y" in arrays:
        check_labels(arrays["y"], str(path), len(arrays["x"]) if "x" in arrays else None)
    return arrays


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def image_files(root: Path) -> dict[str, list[Path]]:
    """Class name -> its image files, for a directory of class subfolders (sorted).

    Refused with one line: a missing directory, an image outside a class folder (no
    label), a class folder without images, a single class.
    """
    if not root.is_dir():
        raise ShrinkflowError(f"prepare.path: {root} is not a directory; give a directory of "
                              "class subfolders holding PNG/JPEG images")
    stray = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if stray:
        raise ShrinkflowError(f"{stray[0]}: image outside a class folder (missing label); move "
                              "each image into the subfolder named after its class")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    out: dict[str, list[Path]] = {}
    for d in classes:
        files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise ShrinkflowError(f"{d}: class folder without PNG/JPEG images; add images or "
                                  "remove the folder")
        out[d.name] = files
    if len(out) < 2:
        found = f"only {next(iter(out))!r}" if out else "none"
        raise ShrinkflowError(f"{root}: a single class folder ({found}); a classifier needs "
                              "at least two class subfolders")
    return out


def read_image(path: Path, color: str, size: tuple[int, int] | None) -> np.ndarray:
    """One image as uint8 (C, H, W), converted to ``color`` and resized to ``size`` (H, W)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("L" if color == "grayscale" else "RGB")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            a = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ShrinkflowError(f"{path}: unreadable image ({type(exc).__name__}: "
                              f"{str(exc)[:120]}); replace or remove it") from None
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def read_images(root: Path, color: str, size: tuple[int, int] | None
                ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A directory of class subfolders as (x uint8 (N, C, H, W), y, class names); images
    of different sizes are refused unless ``size`` resizes them all."""
    files = image_files(root)
    xs, ys, first = [], [], None
    for label, (_, paths) in enumerate(files.items()):
        for p in paths:
            a = read_image(p, color, size)
            if first is None:
                first = (p, a.shape)
            elif a.shape != first[1]:
                raise ShrinkflowError(f"{p}: image size {a.shape[2]}x{a.shape[1]} differs from "
                                      f"{first[1][2]}x{first[1][1]} ({first[0].name}); set "
                                      "prepare.image_size to resize every image")
            xs.append(a)
            ys.append(label)
    return np.stack(xs), np.asarray(ys, dtype=np.int64), list(files)


def read_csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A CSV with a header as (x float32 (N, F), y, class names).

    Feature columns must be numbers (NaN, empty cells and text are refused naming the
    column and row); every row needs a label. Labels that are all integers 0..K-1 keep
    their value; other labels become 0..K-1 in sorted order (the names are the classes).
    """
    import csv

    if not path.is_file():
        raise ShrinkflowError(f"prepare.path: {path} not found; give a CSV file with a header")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ShrinkflowError(f"{path}: unreadable CSV ({type(exc).__name__}: {exc})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if len(rows) < 2:
        raise ShrinkflowError(f"{path}: needs a header row and at least one data row")
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        raise ShrinkflowError(f"{path}: no column {label_column!r} (columns: "
                              f"{', '.join(header[:8])}{' …' if len(header) > 8 else ''}); set "
                              "prepare.label_column")
    li = header.index(label_column)
    features = [i for i in range(len(header)) if i != li]
    if not features:
        raise ShrinkflowError(f"{path}: no feature columns beside {label_column!r}")
    x = np.empty((len(rows) - 1, len(features)), dtype=np.float32)
    labels: list[str] = []
    for r, row in enumerate(rows[1:], start=2):  # line numbers as an editor shows them
        if len(row) != len(header):
            raise ShrinkflowError(f"{path}: line {r} has {len(row)} fields, the header "
                                  f"{len(header)}")
        label = row[li].strip()
        if not label:
            raise ShrinkflowError(f"{path}: column {label_column!r} is empty at line {r} "
                                  "(missing label); label every row")
        labels.append(label)
        for j, i in enumerate(features):
            cell = row[i].strip()
            try:
                v = float(cell)
            except ValueError:
                what = "empty" if not cell else f"{cell[:20]!r} is not a number"
                raise ShrinkflowError(f"{path}: column {header[i]!r} at line {r}: {what}; "
                                      "feature columns must be numbers") from None
            if not np.isfinite(v):
                raise ShrinkflowError(f"{path}: column {header[i]!r} holds NaN/Inf at line "
                                      f"{r}; clean or drop those rows")
            x[r - 2, j] = v
    names = sorted(set(labels))
    if all(n.lstrip("-").isdigit() for n in names):
        y = np.asarray([int(v) for v in labels], dtype=np.int64)
        check_labels(y, f"{path}: column {label_column!r}", len(x))
        classes = [str(c) for c in range(int(y.max()) + 1)]
    else:
        if len(names) < 2:
            raise ShrinkflowError(f"{path}: column {label_column!r} has a single class "
                                  f"({names[0]!r}); a classifier needs at least two")
        index = {n: k for k, n in enumerate(names)}
        y = np.asarray([index[v] for v in labels], dtype=np.int64)
        classes = names
    return x, y, classes
