"""A step's code is its import closure: edits invalidate exactly the steps that import."""

import shutil

from shrinkflow.core import codehash
from tests.conftest import REPO


def test_closure_follows_module_and_function_level_imports():
    files = codehash.relative_files(["shrinkflow.steps.train"])
    assert "shrinkflow/steps/train.py" in files
    assert "shrinkflow/steps/fit.py" in files and "shrinkflow/models/checkpoint.py" in files
    assert "shrinkflow/core/config.py" in files  # where every section's base lives
    assert "shrinkflow/steps/prune.py" not in files  # a sibling step is not a dependency
    assert "shrinkflow/ops/tracking.py" not in files  # nor MLflow


def test_editing_a_file_changes_the_hash_of_its_importers_only(tmp_path):
    copy = tmp_path / "shrinkflow"
    shutil.copytree(REPO / "shrinkflow", copy, ignore=shutil.ignore_patterns("__pycache__"))

    def digest(module):
        h = __import__("hashlib").sha256()
        for p in codehash.closure([module], copy):
            h.update(p.read_bytes())
        return h.hexdigest()

    train, prune = digest("shrinkflow.steps.train"), digest("shrinkflow.steps.prune")
    (copy / "steps" / "prune.py").write_text((copy / "steps" / "prune.py").read_text() + "\n#\n")
    assert digest("shrinkflow.steps.train") == train and digest("shrinkflow.steps.prune") != prune
    (copy / "steps" / "fit.py").write_text((copy / "steps" / "fit.py").read_text() + "\n#\n")
    assert digest("shrinkflow.steps.train") != train


def test_relative_imports_resolve(tmp_path):
    pkg = tmp_path / "shrinkflow"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from . import y\nfrom .z import f\n")
    (pkg / "a" / "y.py").write_text("")
    (pkg / "a" / "z.py").write_text("def f(): pass\n")
    names = {p.name for p in codehash.closure(["shrinkflow.a.x"], pkg)}
    assert {"x.py", "y.py", "z.py"} <= names


def _ast_imports(path, module):
    """What the package's files import, read the other way (from the syntax tree)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = module.split(".")
            base = base if path.name == "__init__.py" else base[:-1]
            base = base[:len(base) - (node.level - 1)] + ([node.module] if node.module else [])
            prefix = ".".join(base) if node.level else node.module
            found.add(prefix)
            found.update(f"{prefix}.{a.name}" for a in node.names if a.name != "*")
    return {m for m in found if m == "shrinkflow" or m.startswith("shrinkflow.")}


def test_imports_read_from_bytecode_match_the_syntax_tree_for_every_file():
    root = codehash.package_root()
    checked = 0
    for path in sorted(root.rglob("*.py")):
        parts = ("shrinkflow", *path.relative_to(root).with_suffix("").parts)
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        assert codehash._imports(path, module) == _ast_imports(path, module), path
        checked += bool(_ast_imports(path, module))
    assert checked > 20


def test_imports_in_functions_classes_and_comprehensions_are_found(tmp_path):
    pkg = tmp_path / "shrinkflow"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("a", "b", "c", "d", "e"):
        (pkg / f"{name}.py").write_text("")
    (pkg / "m.py").write_text(
        "import shrinkflow.a\n"
        "def f():\n    from shrinkflow import b\n"
        "class C:\n    def g(self):\n        import shrinkflow.c as c\n"
        "x = [__import__('os') for _ in ()]\n"
        "def h():\n    return [y for y in (lambda: __import__('shrinkflow.e'))()]\n"
        "from .d import *\n")
    names = {p.name for p in codehash.closure(["shrinkflow.m"], pkg)}
    assert {"a.py", "b.py", "c.py", "d.py"} <= names and "e.py" not in names
