"""Bring your own architecture: factory models (a residual net with skip adds, an MLP)
through train, prune, structured prune, distill, QAT (or its refusal), convert and
validate; checkpoints rebuilt by factory + kwargs; refusals before compute."""

from pathlib import Path

import numpy as np
import pytest
import torch

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepare import PrepareParams, load_prepared
from shrinkflow.models.checkpoint import load_checkpoint, read_checkpoint
from shrinkflow.models.qat import qat_refusal
from shrinkflow.models.spec import FactorySpec, add_import_root, build, factory_sha256
from shrinkflow.steps.convert import ConvertStep
from shrinkflow.steps.distill import DistillStep
from shrinkflow.steps.fit import FitParams
from shrinkflow.steps.prune import PruneStep
from shrinkflow.steps.quantize import QuantizeStep
from shrinkflow.steps.support import refusal
from shrinkflow.steps.train import TrainParams
from shrinkflow.steps.validate import ValidateStep
from tests.steps_helpers import call

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "byo"
RESNET = FactorySpec(factory="byo_models.resnet:resnet", kwargs={"width": 8, "blocks": 2})
MLP = FactorySpec(factory="byo_models.mlp:mlp", kwargs={"hidden": [32]})
FIT = FitParams(epochs=1, lr=2e-3, batch_size=32)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    add_import_root(FIXTURES)
    root = tmp_path_factory.mktemp("byo")
    return root, call("prepare", PrepareParams(max_train=300), root / "prepare")


@pytest.fixture(scope="module", params=["resnet", "mlp"])
def teacher(request, digits):
    root, data = digits
    spec = RESNET if request.param == "resnet" else MLP
    model = call("train", TrainParams(model=spec, epochs=3, batch_size=32),
                 root / f"train-{request.param}", label="teacher", data=data)
    return request.param, spec, data, model


def _deploy(tmp_path, data, model):
    export = call("convert", ConvertStep(), tmp_path / "c", data=data, model=model)
    assert export.format == "onnx", export.failure
    result = call("validate", ValidateStep(target="onnxruntime", threads=1), tmp_path / "v",
                  data=data, model=model, export=export)
    return export, result


def test_factory_teacher_checkpoint_stores_spec_and_source_hash(teacher):
    _, spec, data, model = teacher
    ckpt = read_checkpoint(model.path)
    assert ckpt["arch"] == spec.model_dump(mode="json")
    assert ckpt["factory_sha256"] == factory_sha256(spec)
    net, _ = load_checkpoint(model.path)  # rebuilt by factory + kwargs, then the weights
    x = torch.from_numpy(load_prepared(data.path).x_test[:8])
    assert net(x).shape == (8, 10)


def test_unstructured_prune_then_convert_and_validate(teacher, tmp_path):
    _, _, data, model = teacher
    pruned = call("prune", PruneStep(amount=0.5, fit=FIT), tmp_path / "p", data=data, model=model)
    assert pruned.summary["sparsity"] == pytest.approx(0.5, abs=0.02)
    _, result = _deploy(tmp_path, data, pruned)
    assert result.values["parity_top1_agreement"] >= 0.99


def test_structured_prune_shrinks_and_reloads(teacher, tmp_path):
    name, spec, data, model = teacher
    net, _ = load_checkpoint(model.path)
    assert refusal(PruneStep(method="structured"), net, (1, 8, 8), 10) is None
    pruned = call("prune", PruneStep(method="structured", amount=0.5, fit=FIT), tmp_path / "p",
                  data=data, model=model)
    assert pruned.num_params < model.num_params
    small, ckpt = load_checkpoint(pruned.path)  # factory rebuilt, reshaped to the pruned weights
    assert ckpt["arch"] == spec.model_dump(mode="json")
    x = torch.from_numpy(load_prepared(data.path).x_test[:8])
    assert small(x).shape == (8, 10)
    if name == "resnet":  # the skip adds keep coupled channels equal
        assert small.blocks[0].conv2.out_channels == small.stem[0].out_channels < 8
    _deploy(tmp_path, data, pruned)


def test_distill_into_a_factory_student(teacher, tmp_path):
    _, _, data, model = teacher
    step = DistillStep(student=MLP.model_copy(update={"kwargs": {"hidden": [16]}}),
                       fit=FitParams(epochs=2, lr=2e-3, batch_size=32))
    student = call("distill", step, tmp_path / "d", data=data, model=model)
    net, ckpt = load_checkpoint(student.path)
    assert ckpt["arch"]["kwargs"] == {"hidden": [16]} and ckpt["factory_sha256"]
    _, result = _deploy(tmp_path, data, student)
    assert result.values["test_accuracy"] > 0.3


def test_qat_on_the_mlp_and_refused_on_the_residual_net(teacher, tmp_path):
    name, _, data, model = teacher
    net, _ = load_checkpoint(model.path)
    step = QuantizeStep(method="qat", weight_bits=7, fit=FIT)
    if name == "resnet":
        why = refusal(step, net, (1, 8, 8), 10)
        assert why.startswith("quantize qat: layer 'blocks.0' (Block)")
        with pytest.raises(ShrinkflowError, match="quantize qat: layer 'blocks.0'"):
            call("quantize", step, tmp_path / "q", data=data, model=model)
        return
    assert qat_refusal(net) is None
    q = call("quantize", step, tmp_path / "q", data=data, model=model)
    export, result = _deploy(tmp_path, data, q)
    assert export.quantization == "qat"
    assert result.values["parity_top1_agreement"] >= 0.95


def test_builtin_mlp_is_qat_able():
    from shrinkflow.models.spec import MLPParams

    net = build(MLPParams(hidden=[8]), (4,), 3, seed=0)
    assert qat_refusal(net) is None
    assert net(torch.zeros(2, 4)).shape == (2, 3)


def test_factory_errors_are_one_line(digits):
    from shrinkflow.models.spec import check_built

    with pytest.raises(ShrinkflowError, match="module 'nope' not found"):
        build(FactorySpec(factory="nope:f"), (1, 8, 8), 10)
    with pytest.raises(ShrinkflowError, match="has no function 'missing'"):
        build(FactorySpec(factory="byo_models.mlp:missing"), (1, 8, 8), 10)
    with pytest.raises(ShrinkflowError, match=r"train.model: the model must return logits "
                                              r"of shape \(N, 10\); it returned \(2, 3\)"):
        check_built(FactorySpec(factory="byo_models.mlp:three"), (1, 8, 8), 10, "train.model")


def test_plan_key_follows_the_factory_source(tmp_path):
    """The teacher's cache key includes the factory file's sha256."""
    import shutil

    from shrinkflow.plan.params import load_params
    from shrinkflow.plan.plan import build_plan

    shutil.copytree(FIXTURES / "byo_models", tmp_path / "wsmodels")
    params = load_params(None, ["train.model.factory=wsmodels.mlp:mlp"])
    key1 = build_plan(params, tmp_path).step("teacher:train").config_key
    src = tmp_path / "wsmodels" / "mlp.py"
    src.write_text(src.read_text() + "\n# edited\n")
    key2 = build_plan(params, tmp_path).step("teacher:train").config_key
    assert key1 != key2
    assert np.all([build_plan(params, tmp_path).step("prepare").config_key])


def test_preflight_refuses_unsupported_steps_before_compute(digits):
    """One line naming the variant, the step and the layer."""
    from shrinkflow.app.preflight import check_support
    from shrinkflow.plan.params import load_params

    base = ["train.model.factory=byo_models.resnet:resnet"]
    params = load_params(None, [*base, "variants.q.from=teacher",
                                "variants.q.steps=[{quantize: {method: qat}}]"])
    with pytest.raises(ShrinkflowError, match=r"^variants.q.steps\[0\]: quantize qat: layer "
                                              r"'blocks.0' \(Block\) has its own forward"):
        check_support(params, (1, 8, 8), 10)
    ok = load_params(None, [*base, "variants.s.from=teacher",
                            "variants.s.steps=[{prune: {method: structured}}, "
                            "{distill: {student: {factory: 'byo_models.mlp:mlp'}}}, "
                            "{quantize: {method: qat}}]"])
    check_support(ok, (1, 8, 8), 10)  # the MLP student is QAT-able
    csv_like = load_params(None, [])
    with pytest.raises(ShrinkflowError, match=r"train.model: the CNN needs images"):
        check_support(csv_like, (64,), 10)
