"""Reverse queries: which registered versions came from this data, or this commit."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from shrinkflow.audit.resolve import load_lineage
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import path_sha256
from shrinkflow.data.prepare import fingerprint_of
from shrinkflow.ops.lineage import Lineage
from shrinkflow.ops.tracking import TAG, client


def _wanted(data: str) -> set[str]:
    p = Path(data)
    if (p / "meta.json").is_file():
        return {fingerprint_of(p)}
    if p.is_file():
        return {path_sha256(p)}
    return {data.lower()}


def _source_file_match(rec: Lineage, wanted: set[str]) -> bool:
    """A raw source file given by path: compare with the source fingerprint recipe
    (``shrinkflow.data.sources.source_fingerprint``: sha256 of the dataset name and each
    file's sha256)."""
    for w in wanted:
        h = hashlib.sha256(rec.data.dataset.encode())
        h.update(w.encode())
        if h.hexdigest() == rec.data.source_fingerprint:
            return True
    return False


def find_versions(uri: str, data: str | None = None, commit: str | None = None
                  ) -> list[dict[str, Any]]:
    """Registered versions derived from a data version (fingerprint, source fingerprint,
    DVC md5, or a prepared-data directory / source file path) or from a git commit."""
    c = client(uri)
    wanted = _wanted(data) if data else set()
    rows = []
    for rm in c.search_registered_models():
        for mv in c.search_model_versions(f"name='{rm.name}'"):
            run_id = mv.tags.get(f"{TAG}model_run_id")
            if not run_id:
                continue
            try:
                rec = load_lineage(uri, run_id)
            except ShrinkflowError:
                continue
            keys = {rec.data.fingerprint, rec.data.source_fingerprint or "",
                    rec.data.dvc.md5 if rec.data.dvc else ""}
            match = True
            if data:
                match = any(k and any(k.startswith(w) for w in wanted) for k in keys) \
                    or _source_file_match(rec, wanted)
            if commit:
                match = match and rec.code.git_commit.startswith(commit)
            if match:
                rows.append({"name": rm.name, "version": str(mv.version),
                             "variant": rec.model.name, "data": rec.data.fingerprint[:16],
                             "commit": rec.code.git_commit[:12],
                             "aliases": sorted(a for a, v in (rm.aliases or {}).items()
                                               if str(v) == str(mv.version))})
    return sorted(rows, key=lambda r: (r["name"], int(r["version"])))
