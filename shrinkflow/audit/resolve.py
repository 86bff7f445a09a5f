"""From ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a run id to the typed lineage
records of the model and every ancestor."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.ops import registry
from shrinkflow.ops.lineage import ARTIFACT, Lineage
from shrinkflow.ops.tracking import TAG, call, client


class Report(BaseModel):
    """A registered version (if any) and the lineage of its model, then each parent."""

    target: str
    tracking_uri: str
    registered: dict[str, Any] | None = None
    models: list[Lineage] = Field(default_factory=list)


def resolve(uri: str, target: str) -> tuple[dict[str, Any] | None, str]:
    """``models:/name@alias``, ``models:/name/version`` or a run id -> (version, run id)."""
    c = client(uri)
    if target.startswith("models:/"):
        mv = registry.version_of(c, target)
        rm = c.get_registered_model(mv.name)
        aliases = sorted(a for a, v in (rm.aliases or {}).items() if str(v) == str(mv.version))
        version = {"name": mv.name, "version": str(mv.version), "aliases": aliases,
                   "events": registry.history(c, mv.name, str(mv.version)),
                   "tags": dict(mv.tags), "description": mv.description or ""}
        run_id = mv.tags.get(f"{TAG}model_run_id") or mv.run_id
        return version, run_id
    try:
        call(uri, "read a run", c.get_run, target)
    except ShrinkflowError:
        raise
    except Exception:
        raise ShrinkflowError(f"{target}: not models:/NAME@ALIAS, models:/NAME/VERSION or "
                              f"a run id at {uri}") from None
    return None, target


def load_lineage(uri: str, run_id: str) -> Lineage:
    import mlflow

    client(uri)
    try:
        text = mlflow.artifacts.load_text(f"runs:/{run_id}/{ARTIFACT}")
    except Exception:
        raise ShrinkflowError(f"run {run_id}: no {ARTIFACT} (not a shrinkflow model run, or "
                              "its artifacts are gone)") from None
    try:
        return Lineage.from_json(text)
    except (ValueError, json.JSONDecodeError) as exc:
        raise ShrinkflowError(f"run {run_id}: unreadable {ARTIFACT} ({exc})") from None


def chain(uri: str, run_id: str) -> list[Lineage]:
    """The lineage records from this model up to the teacher."""
    records = [load_lineage(uri, run_id)]
    while records[-1].parent:
        records.append(load_lineage(uri, records[-1].parent.run_id))
    return records


def audit(uri: str, target: str) -> Report:
    version, run_id = resolve(uri, target)
    records = chain(uri, run_id)
    c = client(uri)
    for r in records:
        r.metrics = dict(c.get_run(r.run_id).data.metrics)
    return Report(target=target, tracking_uri=uri, registered=version, models=records)
