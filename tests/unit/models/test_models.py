"""The CNN, its checkpoint format, and the training loop's determinism."""

import numpy as np
import torch

from shrinkflow.data.prepare import Splits
from shrinkflow.models.checkpoint import load_checkpoint, save_checkpoint
from shrinkflow.models.cnn import ArchParams, build_model, count_params
from shrinkflow.models.preprocess import Deployed
from shrinkflow.models.qat import prepare_qat
from shrinkflow.steps.fit import (
    FitConfig,
    apply_masks,
    augment,
    fit,
    view_count,
    view_of,
)

TINY = ArchParams(blocks=[[4], [8]], dropout=0.0)


def tiny_splits(n=120, seed=0) -> Splits:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    x[:, 0, y, y] += 3.0  # a learnable signal: a bright pixel per class
    return Splits(x, y, x[:30], y[:30], x[:30], y[:30], meta={"num_classes": 3})


def _train(seed=1, arch=TINY, threads=1):
    model = build_model(arch, (1, 8, 8), 3, seed=seed)
    result = fit(model, tiny_splits(), FitConfig(epochs=3, batch_size=16, lr=0.01, seed=seed,
                                                 patience=5, threads=threads))
    return model, result


def test_fit_is_deterministic_and_learns():
    a, ra = _train()
    b, _ = _train()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert ra.best_val_accuracy > 0.5
    assert ra.epochs_run == 3 and [h["epoch"] for h in ra.history] == [1, 2, 3]


def test_training_never_touches_the_global_generator():
    arch = ArchParams(blocks=[[4], [8]], dropout=0.3, hidden=8)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, _ = _train(1, arch)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(999)  # whatever ran before does not matter
    b, _ = _train(1, arch)
    for va, vb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb)


def test_masks_stay_zero_through_training():
    model = build_model(TINY, (1, 8, 8), 3, seed=0)
    w = model.features[0].weight
    mask = (torch.rand_like(w) > 0.5).float()
    masks = {"features.0.weight": mask}
    fit(model, tiny_splits(), FitConfig(epochs=2, batch_size=16, lr=0.05, seed=0, patience=5,
                                        threads=1), masks=masks)
    assert torch.all(model.features[0].weight[mask == 0] == 0)
    apply_masks(model, masks)  # idempotent


def test_random_shift_keeps_shape_and_moves_pixels():
    x = torch.zeros(50, 1, 8, 8)
    x[:, :, 4, 4] = 1.0
    out, _ = augment(x, 2, False, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(50))  # nothing lost at shift 2
    assert (out[:, 0, 4, 4] == 0).any()


def test_augment_views_are_what_view_of_makes():
    """A view number names one transformation, whatever batch the image came in: the
    distiller's cached teacher logits depend on it."""
    x = torch.randn(64, 1, 6, 6)
    for shift, flip in ((0, True), (1, False), (2, True)):
        out, views = augment(x, shift, flip, torch.Generator().manual_seed(3), fill=-1.0)
        assert views.min() >= 0 and views.max() < view_count(shift, flip)
        assert len(views.unique()) > view_count(shift, flip) // 2  # draws spread out
        for i in range(len(x)):
            assert torch.equal(out[i:i + 1], view_of(x[i:i + 1], int(views[i]), shift, flip, -1.0))


def test_view_of_mirrors_and_shifts():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    assert torch.equal(view_of(x, 0, 0, False, 0.0), x)
    assert torch.equal(view_of(x, 1, 0, True, 0.0), x.flip(-1))
    # shift 1: view 0 moves the image one pixel down and right, filling with -1
    moved = view_of(x, 0, 1, False, -1.0)
    assert torch.equal(moved[..., 1:, 1:], x[..., :3, :3])
    assert (moved[..., 0, :] == -1).all() and (moved[..., :, 0] == -1).all()
    assert torch.equal(view_of(x, 4, 1, False, -1.0), x)  # the centre cell: no shift


def test_checkpoint_round_trip_weights_only(tmp_path):
    model = build_model(TINY, (1, 8, 8), 3).eval()
    save_checkpoint(model, TINY, tmp_path / "m.pt", input_shape=[1, 8, 8], num_classes=3,
                    step="train", name="t")
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))
    assert ckpt["arch"]["blocks"] == [[4], [8]] and ckpt["name"] == "t"
    assert count_params(loaded) == count_params(model)
    torch.load(tmp_path / "m.pt", weights_only=True)  # the promise: no pickle needed


def test_qat_checkpoints_from_before_weight_bits_load_as_7_bit(tmp_path):
    q = prepare_qat(build_model(TINY, (1, 8, 8), 3, seed=0).eval(), weight_bits=7)
    save_checkpoint(q, TINY, tmp_path / "q.pt", input_shape=[1, 8, 8], num_classes=3,
                    step="quantize", name="q", qat={"per_channel": True})  # the old format
    loaded, _ = load_checkpoint(tmp_path / "q.pt")
    assert loaded.features[1].qmax == 63


def test_deployed_model_takes_raw_inputs():
    model = build_model(TINY, (1, 8, 8), 3, seed=0).eval()
    norm = {"scale": 16.0, "mean": 0.3, "std": 0.4}
    raw = torch.rand(4, 1, 8, 8) * 16
    want = model((raw / 16.0 - 0.3) / 0.4)
    assert torch.equal(Deployed(model, norm)(raw), want)
