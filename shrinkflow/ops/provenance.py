"""Where a result came from: code (git commit, dirty flag) and environment."""

from __future__ import annotations

import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

KEY_PACKAGES = ("torch", "onnx", "onnxruntime", "onnxscript", "numpy", "scikit-learn",
                "prefect", "mlflow", "dvc", "torch-pruning", "shrinkflow")


def git_info(root: str | Path) -> dict[str, str]:
    """Commit and dirty flag of the git work tree at ``root`` ("unknown" outside git).

    Dirty ignores untracked files and generated outputs, i.e. what `git status
    --untracked-files=no` reports.
    """
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True,
                             timeout=20)
        if out.returncode != 0:
            raise RuntimeError(out.stderr.strip())
        return out.stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (RuntimeError, OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": "unknown"}
    return {"commit": commit, "dirty": str(dirty).lower()}


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment() -> dict[str, str]:
    """Python and key package versions, plus a hash over every installed distribution."""
    dists = sorted(f"{d.metadata['Name']}=={d.version}".lower() for d in metadata.distributions()
                   if d.metadata["Name"])
    env = package_versions()
    env["platform"] = platform.platform()
    env["lock_hash"] = hashlib.sha256("\n".join(dists).encode()).hexdigest()[:16]
    return env


def code_hash(packages: tuple[str, ...] = ("shrinkflow", "shrinkflow.tasks", "shrinkflow.flows")
              ) -> str:
    """sha256 (16 hex) over the Python sources of ``packages``, wherever installed
    (``shrinkflow.tasks`` and ``shrinkflow.flows`` live in the repository's top-level
    ``tasks/`` and ``flows/``).

    Unlike the commit, it ignores docs and tests, and it sees uncommitted edits.
    """
    import importlib.util

    h = hashlib.sha256()
    seen: set[Path] = set()
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        for p in sorted(root.rglob("*.py")):
            if p in seen:
                continue
            seen.add(p)
            h.update(f"{package}/{p.relative_to(root).as_posix()}".encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]
