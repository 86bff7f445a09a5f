"""dvc.yaml and the flow describe one DAG: same steps, same code, same params, same paths."""

import importlib

import yaml

from flows.pipeline import STEPS
from shrinkflow.config import Params
from shrinkflow.workspace import Workspace
from tests.conftest import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_stages_are_the_flow_steps_in_order():
    assert tuple(DVC) == STEPS


def test_each_stage_runs_the_task_module_of_its_name():
    for name, stage in DVC.items():
        assert stage["cmd"] == f"python -m tasks.{name}"
        module = importlib.import_module(f"tasks.{name}")
        assert getattr(module, name).name == name  # the Prefect task has the same name
        assert f"tasks/{name}.py" in stage["deps"]


def test_listed_params_exist_and_code_deps_exist():
    dumped = Params().dump()
    for name, stage in DVC.items():
        for key in stage.get("params", []):
            node = dumped
            for part in key.split("."):
                assert part in node, f"{name}: params key {key} is not in Params"
                node = node[part]
        for dep in stage["deps"]:
            if dep.endswith(".py"):
                assert (REPO / dep).is_file(), f"{name}: dep {dep} missing"


def test_outs_are_the_workspace_paths():
    ws = Workspace(REPO)
    rel = lambda p: str(p.relative_to(REPO))  # noqa: E731
    assert DVC["prepare"]["outs"] == [rel(ws.data_dir)]
    assert DVC["train"]["outs"] == [rel(ws.checkpoint("teacher"))]
    assert DVC["convert"]["outs"] == [rel(ws.onnx("teacher"))]
    assert DVC["validate"]["metrics"] == [rel(ws.validate_metrics)]
