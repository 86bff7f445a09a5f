"""The step store: every step's output under ``.shrinkflow/store/<key>/``, with its
record (``record.json``).

A cached result is served only when its files still have the recorded sha256: a file
changed or replaced on disk is noticed and the step recomputes. Paths inside records
are stored relative to the entry, so a workspace can be moved or copied.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from shrinkflow.core.files import atomic_path, remove
from shrinkflow.core.records import RECORD_TYPES, Artifact

log = logging.getLogger("shrinkflow")

RECORD = "record.json"


class StepRecord(BaseModel):
    """A step's output record and how it was made."""

    model_config = ConfigDict(frozen=True)

    step_id: str
    kind: str
    key: str
    record_type: str
    record: dict[str, Any]
    seconds: float = 0.0
    worker: str = ""
    machine: dict[str, Any] = Field(default_factory=dict)
    threads: int = 1
    created: str = ""
    cached: bool = False  # served from the store in this run
    system: list[dict[str, float]] = Field(default_factory=list)  # CPU / memory samples

    def output(self):
        """The typed record (DataArtifact, ModelArtifact, ExportArtifact, Metrics, ...)."""
        return RECORD_TYPES[self.record_type].model_validate(self.record)

    @property
    def sha256(self) -> str:
        return self.record.get("sha256", "")


def _relocate(record: dict[str, Any], old: Path, new: Path) -> dict[str, Any]:
    """Rewrite ``path`` fields under ``old`` to be under ``new``."""
    out = dict(record)
    p = out.get("path")
    if isinstance(p, str):
        with contextlib.suppress(ValueError):
            out["path"] = str(new / Path(p).relative_to(old))
    return out


class Store:
    """Content-addressed step outputs of one workspace."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def has_entries(self) -> bool:
        """Whether any step result is stored (scratch space aside)."""
        if not self.root.is_dir():
            return False
        return any(p.name != "tmp" and p.is_dir() for p in self.root.iterdir())

    def entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def scratch(self, key: str) -> Path:
        """An empty directory a step writes into before its output is committed."""
        path = self.root / "tmp" / f"{key}-{os.getpid()}-{time.monotonic_ns()}"
        path.mkdir(parents=True)
        return path

    def get(self, key: str) -> StepRecord | None:
        """The stored record for ``key`` if its outputs are intact (else None)."""
        entry = self.entry(key)
        path = entry / RECORD
        if not path.is_file():
            return None
        try:
            stored = json.loads(path.read_text())
            stored["record"] = _relocate(stored["record"], Path("."), entry)
            rec = StepRecord.model_validate(stored)
            out = rec.output()
        except (ValueError, KeyError, TypeError):
            log.warning("step store: %s is unreadable; recomputing", path)
            return None
        if isinstance(out, Artifact) and not out.is_intact():
            log.warning("step store: %s changed on disk since it was made; recomputing",
                        rec.step_id)
            return None
        return rec.model_copy(update={"cached": True})

    def commit(self, key: str, scratch: Path, rec: StepRecord) -> StepRecord:
        """Move a step's scratch directory into place and write its record."""
        entry = self.entry(key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(scratch, entry)
        stored = rec.model_dump(mode="json")
        stored["record"] = _relocate(stored["record"], scratch, Path("."))
        with atomic_path(entry / RECORD) as tmp:
            tmp.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
        return rec.model_copy(update={"record": _relocate(rec.record, scratch, entry)})

    def discard(self, scratch: Path) -> None:
        remove(scratch)

    def clean_scratch(self) -> None:
        """Remove scratch directories of runs that were killed."""
        remove(self.root / "tmp")
