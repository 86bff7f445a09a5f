"""Each compression method on a tiny model trained for a few epochs on 300 digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shrinkflow import data as data_lib
from shrinkflow import training
from shrinkflow.compress import prune as P
from shrinkflow.compress import run_step
from shrinkflow.compress.quantize import int8_op_counts, prepare_qat
from shrinkflow.config import (
    ArchParams,
    ConvertParams,
    DistillStep,
    FinetuneStep,
    FitParams,
    PrepareParams,
    PruneStep,
    QuantizeStep,
    TrainParams,
)
from shrinkflow.distill import distillation_loss
from shrinkflow.export import convert
from shrinkflow.models import build_model, count_params, load_checkpoint
from shrinkflow.validate import onnx_logits, ort_session

TINY = ArchParams(blocks=[[8], [16]], dropout=0.0)
FIT = FitParams(epochs=2, lr=2e-3, batch_size=32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data = data_lib.prepare(PrepareParams(max_train=300), root / "data")
    teacher = training.train(TrainParams(model=TINY, epochs=4, batch_size=32), data,
                             root / "teacher.pt", threads=1)
    return root, data, teacher


def test_magnitude_masks_hit_the_amount_globally_and_per_layer():
    model = build_model(TINY, (1, 8, 8), 10, seed=0)
    total = sum(p.numel() for p in P.prunable(model).values())
    masks = P.magnitude_masks(model, 0.7, "global")
    zeros = sum(int((m == 0).sum()) for m in masks.values())
    assert zeros == round(0.7 * total)
    per_layer = P.magnitude_masks(model, 0.5, "layer")
    for name, m in per_layer.items():
        assert (m == 0).sum() == round(0.5 * m.numel()), name
    # Only the smallest weights go.
    w = P.prunable(model)["features.0.weight"].detach().abs()
    m = per_layer["features.0.weight"]
    assert w[m == 0].max() <= w[m == 1].min()


def test_random_masks_are_seeded_and_keep_earlier_masks():
    model = build_model(TINY, (1, 8, 8), 10, seed=0)
    a = P.random_masks(model, 0.5, seed=1)
    b = P.random_masks(model, 0.5, seed=1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    more = P.random_masks(model, 0.8, seed=2, keep=a)
    assert all(torch.all(more[k][a[k] == 0] == 0) for k in a)  # pruned stays pruned


def test_iteration_schedule_is_geometric():
    amounts = P.iteration_amounts(0.9, 3)
    assert amounts[-1] == pytest.approx(0.9)
    kept = [1 - a for a in amounts]
    assert kept[1] / kept[0] == pytest.approx(kept[2] / kept[1])


def test_structured_pruning_shrinks_and_stays_consistent():
    model = build_model(ArchParams(blocks=[[8, 8], [16]], hidden=12), (1, 8, 8), 10, seed=0)
    before, _ = count_params(model)
    P.structured_prune(model.eval(), 0.5, (1, 8, 8), norm=2)
    after, _ = count_params(model)
    assert after < 0.5 * before
    out = model(torch.randn(3, 1, 8, 8))
    assert out.shape == (3, 10)  # the classes are never pruned


def test_prune_then_finetune_keeps_masks(tiny, tmp_path):
    _, data, teacher = tiny
    pruned = run_step(teacher, PruneStep(amount=0.8), data, tmp_path / "p.pt", 1)
    tuned = run_step(pruned, FinetuneStep(fit=FIT), data, tmp_path / "f.pt", 1)
    _, ckpt = load_checkpoint(tuned.path)
    model, _ = load_checkpoint(tuned.path)
    assert ckpt["masks"] and ckpt["lineage"][-1]["sha256"] == pruned.sha256
    params = dict(model.named_parameters())
    for name, mask in ckpt["masks"].items():
        assert torch.all(params[name][mask == 0] == 0), name
    assert P.sparsity(model) == pytest.approx(0.8, abs=0.01)
    assert tuned.nonzero_params < 0.3 * tuned.num_params


@pytest.mark.parametrize("step", [
    PruneStep(method="movement", amount=0.5, fit=FIT),
    PruneStep(method="magnitude", amount=0.75, iterations=3, fit=FIT),
    PruneStep(method="structured", amount=0.5, iterations=2, fit=FIT),
])
def test_other_pruning_methods_run_and_reach_their_target(tiny, tmp_path, step):
    _, data, teacher = tiny
    out = run_step(teacher, step, data, tmp_path / "m.pt", 1)
    model, ckpt = load_checkpoint(out.path)  # reloads with the architecture it has now
    if step.method == "structured":
        assert out.num_params < 0.6 * teacher.num_params
        assert ckpt["arch"]["blocks"] != TINY.blocks
    else:
        assert P.sparsity(model) == pytest.approx(step.amount, abs=0.01)


def test_movement_scores_follow_minus_w_times_grad():
    model = build_model(TINY, (1, 8, 8), 10, seed=0)
    tracker = P.MovementScores(model)
    loss = model(torch.randn(4, 1, 8, 8)).square().sum()
    loss.backward()
    tracker(model)
    w = P.prunable(model)["features.0.weight"]
    assert torch.allclose(tracker.scores["features.0.weight"], -w.detach() * w.grad)


def test_distillation_loss_matches_its_formula():
    s = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    t = torch.tensor([[1.0, 3.0, 0.0], [2.0, -1.0, 0.5]])
    y = torch.tensor([0, 2])
    temp, alpha = 2.0, 0.3
    p_t = F.softmax(t / temp, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s / temp, 1))).sum(1).mean() * temp**2
    assert distillation_loss(s, t, y, "soft", alpha, temp) == pytest.approx(kl.item(), rel=1e-5)
    ce_true = F.cross_entropy(s, y)
    mixed = alpha * kl + (1 - alpha) * ce_true
    assert distillation_loss(s, t, y, "mixed", alpha, temp) == pytest.approx(mixed.item(), rel=1e-5)
    hard = -F.log_softmax(s, 1)[[0, 1], [1, 0]].mean()  # teacher argmax: 1, 0
    assert distillation_loss(s, t, y, "hard") == pytest.approx(hard.item(), rel=1e-5)


def test_distill_trains_a_smaller_student(tiny, tmp_path):
    _, data, teacher = tiny
    step = DistillStep(student=ArchParams(blocks=[[4], [8]], dropout=0.0), fit=FIT)
    student = run_step(teacher, step, data, tmp_path / "s.pt", 1)
    assert student.num_params < teacher.num_params / 2
    assert student.step == "distill"


def test_qat_exports_qdq_that_ort_runs_in_int8(tiny, tmp_path):
    _, data, teacher = tiny
    step = QuantizeStep(method="qat", fit=FitParams(epochs=1, lr=1e-4, batch_size=32))
    q = run_step(teacher, step, data, tmp_path / "q.pt", 1)
    onnx = convert(q, ConvertParams(), tmp_path / "q.onnx")
    assert onnx.quantization == "qat"
    ops = int8_op_counts(onnx.path)
    assert ops.get("QLinearConv", 0) == 2  # both convs run as int8 kernels
    model, _ = load_checkpoint(q.path)
    x = data_lib.load_prepared(data.path).x_test[:64]
    ref = model(torch.from_numpy(x)).detach().numpy()
    got = onnx_logits(ort_session(onnx.path), x)
    assert (ref.argmax(1) == got.argmax(1)).mean() >= 0.97
    fp32 = convert(teacher, ConvertParams(), tmp_path / "t.onnx")
    assert (tmp_path / "q.onnx").stat().st_size < 0.6 * (tmp_path / "t.onnx").stat().st_size
    assert fp32.quantization == "none"


@pytest.mark.parametrize("method, calibrator, op", [
    ("static", "minmax", "QLinearConv"), ("static", "percentile", "QLinearConv"),
    ("static", "entropy", "QLinearConv"), ("dynamic", "minmax", "ConvInteger")])
def test_ort_quantization(tiny, tmp_path, method, calibrator, op):
    _, data, teacher = tiny
    step = QuantizeStep(method=method, calibrator=calibrator, calibration_size=100)
    onnx = convert(teacher, ConvertParams(), tmp_path / "q.onnx", data, step)
    assert onnx.quantization == method
    assert op in int8_op_counts(onnx.path)
    assert bool(onnx.calibration_fingerprint) == (method == "static")
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_prepare_qat_folds_batchnorm_without_changing_outputs():
    model = build_model(TINY, (1, 8, 8), 10, seed=0).eval()
    x = torch.randn(8, 1, 8, 8)
    ref = model(x)
    q = prepare_qat(build_model(TINY, (1, 8, 8), 10, seed=0).eval())
    q.train()
    q(x)  # observers see data once
    q.eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in q.modules())
    err = (q(x) - ref).abs().max().item()
    assert err < 0.1 * ref.abs().max().item() and not math.isnan(err)
    assert np.isfinite(q(x).detach().numpy()).all()
