"""Which library files a module really runs: its import closure within ``shrinkflow``.

A step's cache key and its ``dvc.yaml`` deps are computed from this closure, so they
can neither be forgotten nor drift: editing a file invalidates exactly the steps that
import it, directly or through other modules (function-level imports included).
"""

from __future__ import annotations

import dis
import functools
import hashlib
from pathlib import Path
from types import CodeType

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
    """Read once per file version (a plan hashes a dozen closures sharing most files).

    The imports are read from the compiled bytecode, not from ``ast.parse``: CPython
    3.11's AST conversion keeps its recursion depth per interpreter, not per thread, and
    two threads parsing at once (this one, and a traceback being formatted or torch
    reading a source beside it) fail with "AST constructor recursion depth mismatch"."""
    code = compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for name, level, fromlist in _import_instructions(code):
        if level:
            base = module.split(".")
            base = base if is_package else base[:-1]
            base = base[:len(base) - (level - 1)]
            prefix = ".".join(base + ([name] if name else []))
        else:
            prefix = name
        found.add(prefix)
        found.update(f"{prefix}.{n}" for n in fromlist or () if n != "*")
    return frozenset(m for m in found if m == PACKAGE or m.startswith(PACKAGE + "."))


def _import_instructions(code: CodeType):
    """(module, level, fromlist) of every ``import`` in ``code`` and the code nested in
    it (functions, classes, comprehensions): IMPORT_NAME takes the level and fromlist
    the two instructions before it pushed."""
    before: list = [None, None]
    for ins in dis.get_instructions(code):
        if ins.opname == "IMPORT_NAME":
            yield ins.argval, before[0] or 0, before[1]
        before = [before[1], ins.argval]
    for const in code.co_consts:
        if isinstance(const, CodeType):
            yield from _import_instructions(const)


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
