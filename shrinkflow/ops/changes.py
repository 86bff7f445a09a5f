"""What changed since the last run: data (source files), code (library sources) and
params (per section), compared with the lineage recorded in MLflow.

A scheduled run calls :func:`what_changed` first: nothing changed -> it skips in
seconds; otherwise the pipeline runs and its step cache recomputes only what the
change invalidates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from shrinkflow.data.sources import source_fingerprint
from shrinkflow.ops.provenance import code_hash
from shrinkflow.ops.registry import get_alias
from shrinkflow.ops.tracking import TAG, client
from shrinkflow.plan.params import Params

STATE_TAG = f"{TAG}inputs"


class InputsState(BaseModel):
    """The identity of a run's inputs."""

    source_fingerprint: str
    code_hash: str
    params_hash: str
    sections: dict[str, str]

    def tags(self) -> dict[str, str]:
        return {STATE_TAG: self.model_dump_json(), f"{TAG}source_fingerprint":
                self.source_fingerprint, f"{TAG}code_hash": self.code_hash}


def section_hashes(params: Params) -> dict[str, str]:
    """A hash per params section (one per variant), so a diff can name what changed."""
    out = {}
    for key, value in params.dump().items():
        if key == "variants":
            out.update({f"variants.{n}": params.variants[n].config_hash() for n in value})
        elif key == "targets":
            out.update({f"targets.{t.runtime}": t.config_hash() for t in params.targets})
        else:
            out[key] = getattr(params, key if key != "validate" else "validate_").config_hash()
    return out


def current_state(params: Params, root: str | Path = ".") -> InputsState:
    return InputsState(source_fingerprint=source_fingerprint(params.prepare.resolved(root)),
                       code_hash=code_hash(), params_hash=params.config_hash(),
                       sections=section_hashes(params))


def diff(old: InputsState, new: InputsState) -> list[str]:
    """Names of what differs: ``data``, ``code``, ``params.<section>``."""
    changed = []
    if old.source_fingerprint != new.source_fingerprint:
        changed.append("data")
    if old.code_hash != new.code_hash:
        changed.append("code")
    for key in sorted(set(old.sections) | set(new.sections)):
        if old.sections.get(key) != new.sections.get(key):
            changed.append(f"params.{key}")
    return changed


def state_from_tags(tags: dict[str, str]) -> InputsState | None:
    try:
        return InputsState.model_validate(json.loads(tags[STATE_TAG]))
    except (KeyError, ValueError):
        return None


def recorded_states(uri: str, experiment: str, model_name: str) -> list[tuple[str, InputsState]]:
    """The inputs of the current champion and of the latest finished pipeline run."""
    c = client(uri)
    found: list[tuple[str, InputsState]] = []
    try:
        champion = get_alias(c, model_name, "champion")
    except Exception:  # no registered model yet
        champion = None
    if champion is not None and (state := state_from_tags(champion.tags)):
        found.append((f"champion v{champion.version}", state))
    exp = c.get_experiment_by_name(experiment)
    if exp is not None:
        runs = c.search_runs([exp.experiment_id],
                             f"tags.`{TAG}step` = 'pipeline' and attributes.status = 'FINISHED'",
                             order_by=["attributes.start_time DESC"], max_results=1)
        if runs and (state := state_from_tags(runs[0].data.tags)):
            found.append((f"run {runs[0].info.run_id}", state))
    return found


def what_changed(params: Params, uri: str, root: str | Path = ".") -> dict[str, Any]:
    """``{"changed": [...], "against": label, "state": InputsState}``; ``changed`` is
    empty when the current inputs equal a recorded run's (nothing to do)."""
    state = current_state(params, root)
    recorded = recorded_states(uri, params.base.experiment, params.registered_model_name())
    if not recorded:
        return {"changed": ["no previous run"], "against": None, "state": state}
    best = min(recorded, key=lambda r: len(diff(r[1], state)))
    return {"changed": diff(best[1], state), "against": best[0], "state": state}
