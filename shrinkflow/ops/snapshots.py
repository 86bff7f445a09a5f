"""Data snapshots: a user's .npz becomes ``data/raw/dataset.npz`` (a CSV
``data/raw/dataset.csv``, a directory of class subfolders ``data/raw/images``), validated
as prepare validates it and versioned by DVC."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import atomic_path, copy_atomic, parse_yaml
from shrinkflow.data.validation import check_labels, image_files, read_csv, read_image, read_npz
from shrinkflow.ops.versioning import dvc, is_dvc_workspace
from shrinkflow.plan.params import load_params

SNAPSHOT = Path("data") / "raw" / "dataset.npz"


def add_snapshot(path: str | Path, root: str | Path, push: bool = True) -> dict[str, Any]:
    """Validate ``path``, copy it to the workspace's snapshot path, ``dvc add`` (and push)."""
    src, root = Path(path), Path(root)
    if not is_dvc_workspace(root):
        raise ShrinkflowError(f"{root}: not a DVC workspace (no .dvc/ or dvc.yaml); run this "
                              "in the project directory or pass --workspace")
    params_file = root / "params.yaml"
    prep = load_params(params_file).prepare if params_file.is_file() else None
    # One validation for prepare, data add and predict.
    if src.is_dir():
        dataset, snapshot = "imagefolder", SNAPSHOT.parent / "images"
        files = image_files(src)  # labels, class folders, at least two classes
        for paths in files.values():
            for f in paths:
                read_image(f, "rgb", (8, 8))  # readable (sizes: prepare.image_size decides)
        n, classes = sum(len(v) for v in files.values()), len(files)
    elif src.suffix.lower() == ".csv":
        dataset, snapshot = "csv", SNAPSHOT.with_suffix(".csv")
        x, y, names = read_csv(src, prep.label_column if prep else "label")
        n, classes = len(y), len(names)
    else:
        dataset, snapshot = "npz", SNAPSHOT
        arrays = read_npz(src)
        n, classes = len(arrays["y"]), check_labels(arrays["y"], str(src), len(arrays["x"]))
    dest = root / snapshot
    if src.resolve() != dest.resolve():
        if src.is_dir():
            copy_atomic(src, dest)
        else:
            with atomic_path(dest) as tmp:
                shutil.copyfile(src, tmp)
    dvc(root, "add", str(snapshot))
    if push:
        dvc(root, "push", str(snapshot) + ".dvc")
    dvc_file = root / (str(snapshot) + ".dvc")
    md5 = parse_yaml(dvc_file.read_text())["outs"][0]["md5"]
    info: dict[str, Any] = {"path": str(snapshot), "examples": int(n),
                            "classes": classes, "md5": md5,
                            "dvc_file": str(dvc_file.relative_to(root)),
                            "gitignore": str((dest.parent / ".gitignore").relative_to(root))}
    if prep is not None and (prep.dataset != dataset or Path(prep.path or "") != snapshot):
        info["params_note"] = (f"params.yaml reads prepare.dataset={prep.dataset}; to "
                               f"train on this snapshot set prepare.dataset: {dataset} and "
                               f"prepare.path: {snapshot}")
    return info
