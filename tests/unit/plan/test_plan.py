"""The plan: every step of a params file, once, in order, with content keys."""

import pytest

from shrinkflow.plan.params import load_params
from shrinkflow.plan.plan import build_plan
from tests.conftest import REPO

PRUNE = "{prune: {amount: 0.5}}, {finetune: {fit: {epochs: 1}}}"
VARIANTS = ("variants={"
            f"pr: {{from: teacher, steps: [{PRUNE}]}},"
            "pr_q8: {from: pr, steps: [{quantize: {method: static, calibration_size: 64}}]},"
            f"pr_qat: {{from: teacher, steps: [{PRUNE}, {{quantize: {{method: qat}}}}]}}}}")


def plan(*overrides, root=REPO):
    return build_plan(load_params(None, [VARIANTS, *overrides]), root)


def test_every_model_has_a_chain_an_export_and_a_validation():
    p = plan()
    assert list(p.models) == ["teacher", "pr", "pr_q8", "pr_qat"]
    assert [s.id for s in p.steps][:3] == ["prepare", "teacher:train", "pr:prune"]
    ids = [s.id for s in p.steps]
    assert len(ids) == len(set(ids))
    for s in p.steps:  # dependency order
        assert all(ids.index(i) < ids.index(s.id) for i in s.input_ids()), s.id


def test_shared_prefixes_are_one_step():
    p = plan()
    assert p.models["pr_qat"].chain[:3] == p.models["pr"].chain  # teacher, prune, finetune
    assert sum(1 for s in p.steps if s.kind == "prune") == 1


def test_ort_quantization_starts_from_the_parents_float_onnx():
    p = plan()
    q = p.step(p.models["pr_q8"].exports["onnxruntime"])
    assert q.kind == "quantize" and q.inputs["export"] == "pr:convert" and q.stage == "convert"
    assert p.models["pr_q8"].checkpoint == p.models["pr"].checkpoint
    assert p.models["pr_q8"].quantized and p.models["pr_qat"].quantized


def test_stages_and_outputs_match_dvc_yaml_paths():
    p = plan()
    assert p.step("pr:prune").stage == "compress@pr"
    assert p.outputs["models/pr_q8.pt"] == "pr:finetune"
    assert p.outputs["onnx/pr_q8.onnx"] == "pr_q8:quantize"
    assert p.outputs["data/prepared"] == "prepare"


def test_keys_follow_config_and_nothing_else():
    a, b = plan(), plan()
    assert [s.config_key for s in a.steps] == [s.config_key for s in b.steps]
    c = plan("train.epochs=7")
    changed = {s.id for s in c.steps if s.config_key != a.step(s.id).config_key}
    assert changed == {"teacher:train"}  # downstream keys change through input hashes
    d = plan("validate.repeats_b1=7")
    assert {s.id for s in d.steps if s.config_key != a.step(s.id).config_key} == \
        {"latency:onnxruntime"}


def test_the_data_key_is_the_source_content_not_its_path(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x=rng.integers(0, 9, (40, 4, 4)), y=np.arange(40) % 2)
    (tmp_path / "b.npz").write_bytes((tmp_path / "a.npz").read_bytes())
    a = plan("prepare.dataset=npz", "prepare.path=a.npz", root=tmp_path)
    b = plan("prepare.dataset=npz", "prepare.path=b.npz", root=tmp_path)
    assert a.step("prepare").config_key == b.step("prepare").config_key


@pytest.mark.parametrize("bits", [7, 8])
def test_weight_bits_are_decided_in_the_plan(monkeypatch, bits):
    import shrinkflow.core.machine as machine

    monkeypatch.setattr(machine, "has_int8_dot_product", lambda: bits == 8)
    p = plan()
    assert p.step("pr_q8:quantize").config.weight_bits == bits
    assert p.step("pr_qat:quantize").config.weight_bits == bits


def test_a_model_sharing_its_parents_artifact_is_still_timed_under_its_own_name():
    # LiteRT converts from torch: ONNX Runtime's dynamic int8 leaves the teacher's
    # checkpoint, so on LiteRT `dyn` gets the teacher's stored artifact (same content key,
    # named "teacher"); the latency step must still time it as `dyn`.
    p = build_plan(load_params(None, [
        "variants={dyn: {from: teacher, steps: [{quantize: {method: dynamic}}]}}",
        "targets=[onnxruntime, {runtime: litert, batch_sizes: [1, 256]}]"]), REPO)
    lat = p.step(p.latency["litert"])
    assert lat.config.models == ["teacher", "dyn"]
    assert len(lat.inputs["exports"]) == 2
