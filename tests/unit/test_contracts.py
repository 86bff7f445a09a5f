"""The layer contract holds, and the checker would see a violation."""

from tests import contracts


def test_layers_import_only_downward_and_the_library_never_imports_prefect():
    assert contracts.violations() == []


def test_the_checker_sees_function_level_imports(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from shrinkflow.app import cli\n")
    assert (2, "shrinkflow.app") in contracts.imported(f)
