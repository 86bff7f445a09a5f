"""The speed gate's memory: the last outcome of each (model, parent) pair, keyed by what
was compared and where, so a re-measurement of unchanged artifacts on the same machine
keeps its verdict unless it contradicts it decisively (see decide.speed.settle).

The key is the target, the gate (batch, threshold, resolution), both artifacts' sha256
and the machine fingerprint's id (CPU model, ISA, cores, runtime versions, threads). A
changed model, parent, gate, runtime or machine is a new key: it is decided afresh.
The file lives in the workspace's local state (``.shrinkflow/verdicts.json``), never in
git or DVC: it describes this machine. Delete it to decide every pair afresh.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from shrinkflow.core.config import stable_hash
from shrinkflow.core.files import write_text_atomic
from shrinkflow.decide.select import Decision

log = logging.getLogger("shrinkflow")

FORMAT = "shrinkflow.verdicts/1"
KEEP = 2000  # entries; the oldest go first


def path(state_dir: str | Path) -> Path:
    return Path(state_dir) / "verdicts.json"


def load(state_dir: str | Path) -> dict[str, dict]:
    """Every remembered outcome (an unreadable file is treated as empty, with a warning:
    it is a cache of decisions, and a fresh decision is always valid)."""
    p = path(state_dir)
    if not p.is_file():
        return {}
    try:
        doc = json.loads(p.read_text())
        return dict(doc["entries"]) if doc.get("format") == FORMAT else {}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s: unreadable (%s); deciding every speed gate afresh", p, exc)
        return {}


def pair_key(target: str, batch: int, threshold: float, resolution: float, model_sha: str,
             parent_sha: str, machine_id: str) -> str:
    return stable_hash({"target": target, "batch": batch, "threshold": threshold,
                        "resolution": resolution, "model": model_sha, "parent": parent_sha,
                        "machine": machine_id})


def previous(entries: dict[str, dict], keys: dict[str, str]) -> dict[str, bool]:
    """model -> its remembered speed gate outcome, for the models whose key is known."""
    return {name: bool(entries[k]["passed"]) for name, k in keys.items() if k in entries}


def remember(entries: dict[str, dict], keys: dict[str, str], decision: Decision,
             when: str) -> bool:
    """Store each compared model's outcome under its key in ``entries`` (``when``: an ISO
    time); True when anything changed (then :func:`save` it)."""
    changed = False
    for name, key in keys.items():
        c = decision.verdicts[name].speed_vs_parent if name in decision.verdicts else None
        if not c or "gate_passed" not in c:
            continue
        old = entries.get(key)
        if old is not None and old["passed"] == c["gate_passed"]:
            continue
        entries.pop(key, None)
        entries[key] = {"passed": bool(c["gate_passed"]), "model": name,
                        "parent": c["baseline"], "target": decision.target, "at": when,
                        "speedup": [c["speedup_estimate"], c["speedup_low"],
                                    c["speedup_high"]]}
        changed = True
    return changed


def save(state_dir: str | Path, entries: dict[str, dict]) -> None:
    """Write the newest :data:`KEEP` entries."""
    kept = dict(list(entries.items())[-KEEP:])
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    write_text_atomic(path(state_dir), json.dumps({"format": FORMAT, "entries": kept},
                                                  indent=1) + "\n")
