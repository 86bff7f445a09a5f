import numpy as np
import torch

from shrinkflow.config import ArchParams
from shrinkflow.data import Splits
from shrinkflow.models import build_model, count_params, load_checkpoint, save_checkpoint
from shrinkflow.training import FitConfig, apply_masks, fit, random_shift

TINY = ArchParams(blocks=[[4], [8]], dropout=0.0)


def tiny_splits(n=120, seed=0) -> Splits:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    x[:, 0, y, y] += 3.0  # a learnable signal: a bright pixel per class
    return Splits(x, y, x[:30], y[:30], x[:30], y[:30], meta={"num_classes": 3})


def _train(seed=1, arch=TINY):
    model = build_model(arch, (1, 8, 8), 3, seed=seed)
    result = fit(model, tiny_splits(), FitConfig(epochs=3, batch_size=16, lr=0.01, seed=seed,
                                                 patience=5, threads=1))
    return model, result


def test_fit_is_deterministic_and_learns():
    a, ra = _train()
    b, _ = _train()
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert ra.best_val_accuracy > 0.5
    assert ra.epochs_run == 3 and len(ra.history) == 3


def test_concurrent_fits_in_threads_match_sequential_ones():
    # Dropout and init must not draw from torch's global RNG, or threads disturb each other.
    from concurrent.futures import ThreadPoolExecutor

    arch = ArchParams(blocks=[[4], [8]], dropout=0.3, hidden=8)
    alone = [_train(seed, arch)[0] for seed in (1, 2)]
    with ThreadPoolExecutor(2) as pool:
        together = list(pool.map(lambda s: _train(s, arch)[0], (1, 2)))
    for a, b in zip(alone, together, strict=True):
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
    g = torch.Generator().manual_seed(0)
    out = random_shift(x, 2, g)
    assert out.shape == x.shape
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(50))  # nothing lost at shift 2
    assert (out[:, 0, 4, 4] == 0).any()


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
