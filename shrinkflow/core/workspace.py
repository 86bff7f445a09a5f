"""Where each step reads and writes, relative to a workspace root.

The published paths are the ones ``dvc.yaml`` declares as outs; step results live in
a content-addressed store under ``.shrinkflow/store/<key>/`` and are published (copied)
to these paths.
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

    def export(self, name: str, target: str = "onnxruntime") -> Path:
        """The published artifact of a model for a target (``onnx/<name>.onnx`` for
        ONNX Runtime; ``exports/<target>/<name>...`` for the others)."""
        if target == "onnxruntime":
            return self.root / "onnx" / f"{name}.onnx"
        suffix = {"litert": ".tflite"}.get(target, "")
        return self.root / "exports" / target / f"{name}{suffix}"

    def onnx(self, name: str) -> Path:
        return self.export(name, "onnxruntime")

    @property
    def validate_metrics(self) -> Path:
        return self.root / "metrics" / "validate.json"

    @property
    def state_dir(self) -> Path:
        """Generated local state (the step store, locks, Prefect results); never committed."""
        return self.root / ".shrinkflow"

    @property
    def store_dir(self) -> Path:
        return self.state_dir / "store"

    def resolve(self, path: str | Path) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.root / p

    def relative(self, path: str | Path) -> str:
        """``path`` relative to the root when inside it (as dvc.yaml names it)."""
        p = Path(path)
        try:
            return p.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return str(p)
