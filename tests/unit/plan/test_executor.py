"""The executor and its store: a step runs once; a stored result is served only while its
files hold the recorded bytes; a moved workspace keeps its store."""

import shutil
from pathlib import Path

import pytest

from shrinkflow.core.workspace import Workspace
from shrinkflow.plan.executor import execute, publish, published_intact, resolve_cached
from shrinkflow.plan.params import load_params
from shrinkflow.plan.plan import build_plan
from shrinkflow.plan.store import Store

SMALL = ["train.epochs=1", "train.model.blocks=[[4],[8]]", "prepare.max_train=200",
         "variants={pr: {from: teacher, steps: [{prune: {amount: 0.5}}]}}",
         "validate.repeats_b1=3", "validate.repeats_b256=3", "validate.warmup=0",
         "validate.rounds=2", "validate.max_rounds=2"]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    ws = Workspace.at(tmp_path_factory.mktemp("exec"))
    plan = build_plan(load_params(None, SMALL), ws.root)
    records = execute(plan, ws)
    publish(plan, records, ws)
    return ws, plan, records


def test_every_step_ran_once_and_published(done):
    ws, plan, records = done
    assert set(records) == {s.id for s in plan.steps}
    assert not any(r.cached for r in records.values())
    assert published_intact(plan, records, ws)
    assert (ws.root / "models" / "pr.pt").is_file() and (ws.root / "onnx" / "pr.onnx").is_file()
    rec = records["teacher:train"]
    assert rec.worker and rec.threads == 1 and rec.machine["isa_kind"]


def test_a_second_execution_is_served_from_the_store(done):
    ws, plan, records = done
    again = execute(plan, ws)
    assert all(r.cached for r in again.values())
    assert {k: r.key for k, r in again.items()} == {k: r.key for k, r in records.items()}


def test_a_changed_stored_file_is_recomputed(done):
    ws, plan, records = done
    path = Path(records["pr:prune"].record["path"])
    original = path.read_bytes()
    path.write_bytes(original + b"tampered")
    cached = resolve_cached(plan, Store(ws.store_dir), plan.steps)
    assert "pr:prune" not in cached and "teacher:train" in cached
    again = execute(plan, ws)
    assert not again["pr:prune"].cached
    assert Path(again["pr:prune"].record["path"]).read_bytes() == original  # deterministic
    assert again["pr:convert"].cached  # same bytes in, same key: downstream is still valid


def test_a_swapped_published_file_is_noticed_and_republished(done):
    ws, plan, records = done
    teacher = ws.root / "models" / "teacher.pt"
    shutil.copyfile(ws.root / "models" / "pr.pt", teacher)
    assert not published_intact(plan, records, ws)
    assert publish(plan, records, ws) == ["models/teacher.pt"]
    assert published_intact(plan, records, ws)


def test_a_moved_workspace_keeps_its_store(done, tmp_path):
    ws, plan, _ = done
    moved = Workspace.at(tmp_path / "moved")
    shutil.copytree(ws.root, moved.root)
    plan2 = build_plan(plan.params, moved.root)
    records = resolve_cached(plan2, Store(moved.store_dir), plan2.steps)
    assert set(records) == {s.id for s in plan2.steps}
    paths = [r.record["path"] for r in records.values() if r.record.get("path")]
    assert paths and all(p.startswith(str(moved.root)) for p in paths)


def test_refresh_recomputes_on_purpose(done):
    ws, plan, _ = done
    again = execute(plan, ws, refresh={"latency"})
    assert not again["latency:onnxruntime"].cached and again["teacher:train"].cached


def test_a_failing_step_leaves_no_scratch(done, monkeypatch):
    ws, plan, _ = done
    from shrinkflow.steps import base

    kind = base.kind("latency")
    boom = kind.__class__(**{**kind.__dict__, "run": lambda *a, **k: 1 / 0})
    monkeypatch.setitem(base._KINDS, "latency", boom)
    with pytest.raises(ZeroDivisionError):
        execute(plan, ws, refresh={"latency"})
    assert not list((ws.store_dir / "tmp").glob("*"))


def test_quiet_is_called_once_before_the_steps_measured_alone(done, monkeypatch):
    """The flow's background work (its MLflow run starting) ends before latency is
    measured: nothing else may run then."""
    from shrinkflow.plan import executor

    ws, plan, _ = done
    order, real = [], executor.run_step
    monkeypatch.setattr(executor, "run_step",
                        lambda step, *a: order.append(step.kind) or real(step, *a))
    execute(plan, ws, refresh={"validate", "latency"}, quiet=lambda: order.append("quiet"))
    assert order.count("quiet") == 1
    before, after = order[:order.index("quiet")], order[order.index("quiet") + 1:]
    assert "validate" in before and "latency" not in before
    assert after and set(after) == {"latency"}
