"""Calling step kinds directly in tests: a tiny prepared data set and teacher."""

from __future__ import annotations

from pathlib import Path

from shrinkflow.steps import base
from shrinkflow.steps.base import Context


def call(kind: str, config, out_dir: Path, label: str = "m", **inputs):
    """Run step ``kind`` as the executor would (threads 1), writing into ``out_dir``;
    ``inputs`` are its records by role (data=..., model=..., export=...)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return base.kind(kind).run(config, Context(out_dir=out_dir, threads=1, model=label), **inputs)
