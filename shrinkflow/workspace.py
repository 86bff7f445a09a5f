"""Where each step reads and writes, relative to a workspace root.

These paths are the ones ``dvc.yaml`` declares as deps and outs; keeping them in one
place is what lets the flow and ``dvc repro`` produce the same files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: str | Path = ".") -> Workspace:
        return cls(Path(root).resolve())

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data" / "prepared"

    def checkpoint(self, name: str) -> Path:
        return self.root / "models" / f"{name}.pt"

    def onnx(self, name: str) -> Path:
        return self.root / "onnx" / f"{name}.onnx"

    def step_checkpoint(self, key: str) -> Path:
        """Intermediate checkpoints of variant chains, named by derivation key."""
        return self.state_dir / "steps" / f"{key}.pt"

    def scratch(self, name: str) -> Path:
        return self.state_dir / "scratch" / name

    @property
    def validate_metrics(self) -> Path:
        return self.root / "metrics" / "validate.json"

    @property
    def state_dir(self) -> Path:
        """Generated local state (Prefect results, cache keys); never committed."""
        return self.root / ".shrinkflow"

    def resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.root / p
