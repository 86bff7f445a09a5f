"""dvc.yaml is generated from the step registry: its code deps are the files each stage's
steps import, so they cannot drift from the code."""

import yaml

from shrinkflow.core.workspace import Workspace
from shrinkflow.ops import dvcyaml
from shrinkflow.plan.params import Params
from shrinkflow.steps.base import kinds
from tests.conftest import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _stage(name):
    return DVC[name].get("do", DVC[name])


def test_committed_dvc_yaml_is_what_the_code_generates():
    assert (REPO / "dvc.yaml").read_text() == dvcyaml.render(), \
        "dvc.yaml is stale: run `make dvc-yaml` (shrinkflow dvc-yaml) and commit it"


def test_every_step_kind_runs_in_exactly_one_stage():
    covered = [k for ks, _, _ in dvcyaml.STAGES.values() for k in ks]
    assert set(covered) == set(kinds())
    for name in DVC:
        assert _stage(name)["cmd"].startswith(
            f"python -m shrinkflow.tasks {name}")


def test_a_default_in_a_step_config_is_a_dep_of_the_stages_that_read_it():
    # FitParams (fine-tune, distill, QAT) lives in steps/fit.py; every stage that trains
    # depends on it, the stages that do not train do not.
    assert "shrinkflow/steps/fit.py" in _stage("train")["deps"]
    assert "shrinkflow/steps/fit.py" in _stage("compress")["deps"]
    assert "shrinkflow/core/config.py" in _stage("prepare")["deps"]
    assert "shrinkflow/steps/prune.py" not in _stage("train")["deps"]
    assert not [d for d in _stage("validate")["deps"] if d.startswith("shrinkflow/ops/")]


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
            if dep.startswith("shrinkflow"):
                assert (REPO / dep).exists(), f"{name}: dep {dep} missing"


def test_outs_are_the_workspace_paths():
    ws = Workspace(REPO)
    rel = lambda p: str(p.relative_to(REPO))  # noqa: E731
    assert DVC["prepare"]["outs"] == [rel(ws.data_dir)]
    assert DVC["train"]["outs"] == [rel(ws.checkpoint("teacher"))]
    assert DVC["convert"]["outs"] == [rel(ws.onnx("teacher").parent), "exports"]
    assert list(DVC["validate"]["metrics"][0]) == [rel(ws.validate_metrics)]
    assert DVC["compress"]["foreach"] == "${variants}"
    assert "models/${item.from}.pt" in DVC["compress"]["do"]["deps"]
