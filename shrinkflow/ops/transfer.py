"""Transfer from a registered model: ``train.init_from: models:/NAME@ALIAS`` resolved to
the torch checkpoint its version's run holds (``checkpoint/<name>.pt``, logged by
``ops.record``), fetched once into ``.shrinkflow/init/<NAME>-v<VERSION>/``.

Registered with the plan on import (the plan cannot reach MLflow itself)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import copy_atomic, file_sha256
from shrinkflow.plan.params import Params, tracking_uri
from shrinkflow.plan.plan import register_model_resolver


def resolve_registered(uri: str, root: Path, params: Params) -> dict[str, Any]:
    """{path, sha256, name, version, run_id} of the checkpoint behind ``uri``."""
    from shrinkflow.core.workspace import Workspace
    from shrinkflow.ops.registry import version_of
    from shrinkflow.ops.tracking import client, resolve_tracking_uri

    store = resolve_tracking_uri(tracking_uri(params), root)
    mv = version_of(client(store), uri)
    dest = Workspace.at(root).state_dir / "init" / f"{mv.name}-v{mv.version}"
    found = sorted(dest.glob("*.pt")) if dest.is_dir() else []
    if not found:
        import mlflow

        with tempfile.TemporaryDirectory() as tmp:
            try:
                got = Path(mlflow.artifacts.download_artifacts(
                    run_id=mv.run_id, artifact_path="checkpoint", dst_path=tmp,
                    tracking_uri=store))
            except Exception as exc:
                raise ShrinkflowError(f"train.init_from {uri}: its run {mv.run_id} holds no "
                                      f"torch checkpoint ({type(exc).__name__}); register a "
                                      "model made by shrinkflow run") from None
            pts = sorted(got.glob("*.pt")) if got.is_dir() else [got]
            if not pts:
                raise ShrinkflowError(f"train.init_from {uri}: no .pt checkpoint in run "
                                      f"{mv.run_id}")
            dest.mkdir(parents=True, exist_ok=True)
            copy_atomic(pts[0], dest / pts[0].name)  # a concurrent run never reads half
        found = sorted(dest.glob("*.pt"))
    path = found[0]
    return {"path": str(path), "sha256": file_sha256(path), "name": mv.name,
            "version": str(mv.version), "run_id": mv.run_id}


register_model_resolver(resolve_registered)
