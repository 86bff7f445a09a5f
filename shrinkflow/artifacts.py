"""Frozen records passed between steps: paths and content hashes, never live objects.

A record is what a step returns and what the next step (and a Prefect cache key, and
the MLflow lineage tags) consumes; :meth:`Artifact.is_intact` lets a caller check that
the file a cached record points at is still the file that was produced.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    """Hex digest of a file's bytes (sha256 for our records, md5 for DVC's)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    return file_digest(path)


def dir_sha256(path: str | Path) -> str:
    """sha256 over a directory's files (relative names and contents, in sorted order)."""
    root = Path(path)
    h = hashlib.sha256()
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        h.update(file_sha256(p).encode() + b"\n")
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it into place only if the block succeeds.

    Works for files and directories, so a killed step never leaves a half-written output.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    _remove(tmp)
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        _remove(tmp)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class Artifact(BaseModel):
    """A file (or directory) a step wrote, with its content hash."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    sha256: str

    def is_intact(self) -> bool:
        """True when the path exists and still has the recorded hash."""
        p = Path(self.path)
        if p.is_dir():
            return dir_sha256(p) == self.sha256
        return p.is_file() and file_sha256(p) == self.sha256


class DataArtifact(Artifact):
    """The prepared splits (a directory of .npy files plus meta.json)."""

    dataset: str
    fingerprint: str  # sha256 over the arrays' contents, independent of file format
    input_shape: tuple[int, ...]
    num_classes: int
    n_train: int
    n_val: int
    n_test: int
    split_seed: int
    mean: float
    std: float


class ModelArtifact(Artifact):
    """A torch checkpoint (``weights_only``-loadable dict) of one variant."""

    name: str  # the variant name: "teacher", "p80_ft", ...
    step: str  # the step that made it: train, prune, finetune, distill, quantize
    config_hash: str
    parent: str | None = None  # the variant it was derived from
    data_fingerprint: str
    num_params: int
    nonzero_params: int
    # How the step went (epochs run, best validation accuracy, seconds, ...).
    summary: dict[str, float] = {}


class OnnxArtifact(Artifact):
    """An ONNX file converted from (or quantized after) a checkpoint."""

    name: str
    source_sha256: str  # the checkpoint (or float ONNX) it came from
    opset: int
    exporter: str
    config_hash: str
    quantization: str = "none"  # none | dynamic | static | qat
    calibration_fingerprint: str = ""  # sha256 of the static-calibration subset


class Metrics(BaseModel):
    """Validation results of one variant, with the gate verdict."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    values: dict[str, float]
    gate_failures: tuple[str, ...] = ()
    path: str | None = None

    @property
    def passed(self) -> bool:
        return not self.gate_failures
