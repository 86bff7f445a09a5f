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
