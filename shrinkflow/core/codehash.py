"""Which library files a module really runs: its import closure within ``shrinkflow``.

A step's cache key and its ``dvc.yaml`` deps are computed from this closure, so they
can neither be forgotten nor drift: editing a file invalidates exactly the steps that
import it, directly or through other modules (function-level imports included).
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "shrinkflow"


def package_root() -> Path:
    """The directory holding the ``shrinkflow`` package (wherever it is installed)."""
    return Path(__file__).resolve().parents[1]


def module_file(module: str, root: Path | None = None) -> Path | None:
    """``shrinkflow.a.b`` -> ``<root>/a/b.py`` (or ``a/b/__init__.py``); None if absent."""
    root = root or package_root()
    parts = module.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, module: str) -> set[str]:
    """Modules of our package imported anywhere in ``path`` (any nesting level)."""
    st = path.stat()
    return _parsed_imports(path, module, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4096)
def _parsed_imports(path: Path, module: str, mtime_ns: int, size: int) -> frozenset[str]:
    """Parsed once per file version (a plan hashes a dozen closures sharing most files)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[:len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{a.name}" for a in node.names)
    return frozenset(m for m in found if m == PACKAGE or m.startswith(PACKAGE + "."))


def closure(modules: tuple[str, ...] | list[str], root: Path | None = None) -> list[Path]:
    """Every file of our package that importing ``modules`` executes: each module, its
    parent packages' ``__init__``, and recursively what they import. Sorted."""
    root = root or package_root()
    seen: dict[str, Path] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = module_file(name, root)
        if path is None:  # an attribute imported from a package, not a module
            continue
        seen[name] = path
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))  # parent packages
        todo.extend(_imports(path, name))
    return sorted(set(seen.values()))


def relative_files(modules: tuple[str, ...] | list[str], root: Path | None = None) -> list[str]:
    """The closure as repository paths (``shrinkflow/steps/train.py``), for dvc.yaml."""
    root = root or package_root()
    return [f"{PACKAGE}/{p.relative_to(root).as_posix()}" for p in closure(modules, root)]


@functools.cache
def code_hash(modules: tuple[str, ...]) -> str:
    """sha256 (16 hex) over the files of the closure (names and bytes)."""
    root = package_root()
    h = hashlib.sha256()
    for p in closure(modules, root):
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]
