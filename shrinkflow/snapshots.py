"""Data snapshots: a user's .npz becomes ``data/raw/dataset.npz``, versioned by DVC."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from shrinkflow.artifacts import atomic_path
from shrinkflow.config import load_params
from shrinkflow.errors import ShrinkflowError
from shrinkflow.versioning import dvc, is_dvc_workspace

SNAPSHOT = Path("data") / "raw" / "dataset.npz"


def add_snapshot(path: str | Path, root: str | Path, push: bool = True) -> dict[str, Any]:
    """Validate ``path``, copy it to the workspace's snapshot path, ``dvc add`` (and push)."""
    import yaml

    src, root = Path(path), Path(root)
    if not is_dvc_workspace(root):
        raise ShrinkflowError(f"{root}: not a DVC workspace (no .dvc/ or dvc.yaml); run this "
                              "in the project directory or pass --workspace")
    try:
        with np.load(src, allow_pickle=False) as f:
            x, y = f["x"], f["y"]
    except (OSError, ValueError, KeyError) as exc:
        raise ShrinkflowError(f"{src}: needs an .npz with arrays x and y ({exc})") from None
    if len(x) != len(y) or x.ndim not in (3, 4) or not np.issubdtype(y.dtype, np.integer):
        raise ShrinkflowError(f"{src}: x must be (N,H,W) or (N,C,H,W) and y (N,) integer "
                              f"labels; got x{x.shape}, y{y.shape} {y.dtype}")
    dest = root / SNAPSHOT
    if src.resolve() != dest.resolve():
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
    dvc(root, "add", str(SNAPSHOT))
    if push:
        dvc(root, "push", str(SNAPSHOT) + ".dvc")
    dvc_file = root / (str(SNAPSHOT) + ".dvc")
    md5 = yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
    info: dict[str, Any] = {"path": str(SNAPSHOT), "examples": int(len(y)),
                            "classes": int(y.max()) + 1, "md5": md5,
                            "dvc_file": str(dvc_file.relative_to(root))}
    params_file = root / "params.yaml"
    if params_file.is_file():
        prep = load_params(params_file).prepare
        if prep.dataset != "npz" or Path(prep.path or "") != SNAPSHOT:
            info["params_note"] = (f"params.yaml reads prepare.dataset={prep.dataset}; to "
                                   f"train on this snapshot set prepare.dataset: npz and "
                                   f"prepare.path: {SNAPSHOT}")
    return info
