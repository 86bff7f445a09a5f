"""Pruning: masks, schedules, structured removal, and the prune step on a tiny model."""

import pytest
import torch

from shrinkflow.models.checkpoint import load_checkpoint
from shrinkflow.models.cnn import ArchParams, build_model, count_params
from shrinkflow.steps import prune as P
from shrinkflow.steps.finetune import FinetuneStep
from tests.steps_helpers import call
from tests.unit.steps.conftest import FIT, TINY


def test_magnitude_masks_hit_the_amount_globally_and_per_layer():
    model = build_model(TINY, (1, 8, 8), 10, seed=0)
    total = sum(p.numel() for p in P.prunable(model).values())
    masks = P.magnitude_masks(model, 0.7, "global")
    zeros = sum(int((m == 0).sum()) for m in masks.values())
    assert zeros == round(0.7 * total)
    per_layer = P.magnitude_masks(model, 0.5, "layer")
    for name, m in per_layer.items():
        assert (m == 0).sum() == round(0.5 * m.numel()), name
    w = P.prunable(model)["features.0.weight"].detach().abs()
    m = per_layer["features.0.weight"]
    assert w[m == 0].max() <= w[m == 1].min()  # only the smallest weights go


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
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)  # the classes are never pruned


def test_prune_then_finetune_keeps_masks(tiny, tmp_path):
    _, data, teacher = tiny
    pruned = call("prune", P.PruneStep(amount=0.8), tmp_path / "p", data=data, model=teacher)
    tuned = call("finetune", FinetuneStep(fit=FIT), tmp_path / "f", data=data, model=pruned)
    model, ckpt = load_checkpoint(tuned.path)
    assert ckpt["masks"] and ckpt["lineage"][-1]["sha256"] == pruned.sha256
    params = dict(model.named_parameters())
    for name, mask in ckpt["masks"].items():
        assert torch.all(params[name][mask == 0] == 0), name
    assert P.sparsity(model) == pytest.approx(0.8, abs=0.01)
    assert tuned.nonzero_params < 0.3 * tuned.num_params
    # The checkpoint carries the chain's curves: the teacher's epochs, then its own.
    assert [(h["step"], h["epoch"]) for h in tuned.history][-2:] == [("finetune", 1),
                                                                     ("finetune", 2)]
    assert tuned.history[0]["step"] == "train"


@pytest.mark.parametrize("step", [
    P.PruneStep(method="movement", amount=0.5, fit=FIT),
    P.PruneStep(method="magnitude", amount=0.75, iterations=3, fit=FIT),
    P.PruneStep(method="structured", amount=0.5, iterations=2, fit=FIT),
])
def test_other_pruning_methods_run_and_reach_their_target(tiny, tmp_path, step):
    _, data, teacher = tiny
    out = call("prune", step, tmp_path, data=data, model=teacher)
    model, ckpt = load_checkpoint(out.path)  # reloads with the architecture it has now
    if step.method == "structured":
        assert out.num_params < 0.6 * teacher.num_params
        assert ckpt["arch"]["blocks"] != TINY.blocks
    else:
        assert P.sparsity(model) == pytest.approx(step.amount, abs=0.01)


def test_movement_scores_follow_minus_w_times_grad():
    model = build_model(TINY, (1, 8, 8), 10, seed=0)
    tracker = P.MovementScores(model)
    model(torch.randn(4, 1, 8, 8)).square().sum().backward()
    tracker(model)
    w = P.prunable(model)["features.0.weight"]
    assert torch.allclose(tracker.scores["features.0.weight"], -w.detach() * w.grad)
