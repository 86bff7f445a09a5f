"""dvc.yaml and the flow describe one DAG: same steps, same code, same params, same paths."""

import importlib

import yaml

from flows.pipeline import STAGES, STEP_TASKS
from shrinkflow.compress import STEP_FUNCTIONS
from shrinkflow.config import STEP_KINDS, Params
from shrinkflow.workspace import Workspace
from tests.conftest import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _stage(name):
    return DVC[name].get("do", DVC[name])


def test_stages_are_the_flow_stages_in_order():
    assert tuple(DVC) == STAGES


def test_each_stage_runs_the_task_module_of_its_name():
    for name in DVC:
        stage = _stage(name)
        assert stage["cmd"].split(" ")[:3] == ["python", "-m", f"tasks.{name}"]
        importlib.import_module(f"tasks.{name}")
        assert f"tasks/{name}.py" in stage["deps"]


def test_every_step_kind_has_one_task_one_function_and_one_name():
    assert set(STEP_KINDS) == set(STEP_TASKS) == set(STEP_FUNCTIONS)
    for kind in STEP_KINDS:
        module = importlib.import_module(f"tasks.{kind}")
        assert getattr(module, kind).name == kind
        assert STEP_TASKS[kind] is getattr(module, kind)


def test_compress_runs_once_per_variant_from_its_parent():
    stage = DVC["compress"]
    assert stage["foreach"] == "${variants}"
    assert "models/${item.from}.pt" in stage["do"]["deps"]
    assert stage["do"]["outs"] == ["models/${key}.pt"]


def test_listed_params_exist_and_code_deps_exist():
    dumped = Params().dump()
    for name in DVC:
        stage = _stage(name)
        for key in stage.get("params", []):
            node = dumped
            for part in key.split("."):
                if part == "${key}":
                    break
                assert part in node, f"{name}: params key {key} is not in Params"
                node = node[part]
        for dep in stage["deps"]:
            if dep.startswith(("shrinkflow", "tasks")):
                assert (REPO / dep).exists(), f"{name}: dep {dep} missing"


def test_outs_are_the_workspace_paths():
    ws = Workspace(REPO)
    rel = lambda p: str(p.relative_to(REPO))  # noqa: E731
    assert DVC["prepare"]["outs"] == [rel(ws.data_dir)]
    assert DVC["train"]["outs"] == [rel(ws.checkpoint("teacher"))]
    assert DVC["convert"]["outs"] == [rel(ws.onnx("teacher").parent)]
    assert DVC["validate"]["metrics"] == [rel(ws.validate_metrics)]


def test_prefect_cache_and_dvc_watch_the_same_library_code():
    from tasks._common import STEP_SOURCES

    for name in DVC:
        deps = {d for d in _stage(name)["deps"] if d.startswith("shrinkflow")}
        assert deps == set(STEP_SOURCES[name]), name


def test_library_source_hash_changes_with_a_listed_file_only(tmp_path, monkeypatch):
    import shutil

    import shrinkflow
    from tasks._common import source_hash

    copy = tmp_path / "shrinkflow"
    shutil.copytree(REPO / "shrinkflow", copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(shrinkflow, "__file__", str(copy / "__init__.py"))
    before = source_hash(("shrinkflow/training.py",))
    (copy / "cli.py").write_text("# unrelated edit\n")
    assert source_hash(("shrinkflow/training.py",)) == before
    (copy / "training.py").write_text((copy / "training.py").read_text() + "\n# edit\n")
    assert source_hash(("shrinkflow/training.py",)) != before
