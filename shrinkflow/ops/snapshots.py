"""Data snapshots: a user's .npz becomes ``data/raw/dataset.npz``, versioned by DVC."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import atomic_path
from shrinkflow.data.validation import check_labels, read_npz
from shrinkflow.ops.versioning import dvc, is_dvc_workspace
from shrinkflow.plan.params import load_params

SNAPSHOT = Path("data") / "raw" / "dataset.npz"


def add_snapshot(path: str | Path, root: str | Path, push: bool = True) -> dict[str, Any]:
    """Validate ``path``, copy it to the workspace's snapshot path, ``dvc add`` (and push)."""
    import yaml

    src, root = Path(path), Path(root)
    if not is_dvc_workspace(root):
        raise ShrinkflowError(f"{root}: not a DVC workspace (no .dvc/ or dvc.yaml); run this "
                              "in the project directory or pass --workspace")
    arrays = read_npz(src)  # one validation for prepare, data add and predict
    y = arrays["y"]
    classes = check_labels(y, str(src), len(arrays["x"]))
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
                            "classes": classes, "md5": md5,
                            "dvc_file": str(dvc_file.relative_to(root)),
                            "gitignore": str((dest.parent / ".gitignore").relative_to(root))}
    params_file = root / "params.yaml"
    if params_file.is_file():
        prep = load_params(params_file).prepare
        if prep.dataset != "npz" or Path(prep.path or "") != SNAPSHOT:
            info["params_note"] = (f"params.yaml reads prepare.dataset={prep.dataset}; to "
                                   f"train on this snapshot set prepare.dataset: npz and "
                                   f"prepare.path: {SNAPSHOT}")
    return info
