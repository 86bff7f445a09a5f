import gzip
import json

import numpy as np
import pytest

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import dir_sha256
from shrinkflow.data import prepare as data
from shrinkflow.data.prepare import PrepareParams


def test_split_is_deterministic_and_disjoint():
    y = np.repeat(np.arange(5), 40)
    a = data.split_indices(y, (0.2, 0.2), seed=1, has_test=False)
    b = data.split_indices(y, (0.2, 0.2), seed=1, has_test=False)
    c = data.split_indices(y, (0.2, 0.2), seed=2, has_test=False)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)
    union = np.concatenate(list(a.values()))
    assert len(union) == len(set(union)) == len(y)


def test_split_is_stratified():
    y = np.array([0] * 300 + [1] * 100)  # 3:1 imbalance
    parts = data.split_indices(y, (0.25, 0.25), seed=0, has_test=False)
    for idx in parts.values():
        share = (y[idx] == 1).mean()
        assert share == pytest.approx(0.25, abs=0.02)


def test_prepare_digits_splits_and_normalises_on_load(tmp_path):
    art = data.prepare(PrepareParams(), tmp_path / "p")
    assert (art.n_train, art.n_val, art.n_test) == (1167, 270, 360)
    splits = data.load_prepared(art.path)
    # Normalisation statistics come from train only: train is standardised exactly.
    assert splits.x_train.mean() == pytest.approx(0, abs=1e-5)
    assert splits.x_train.std() == pytest.approx(1, abs=1e-4)
    assert splits.x_test.dtype == np.float32 and splits.input_shape == (1, 8, 8)
    assert art.is_intact()


def test_prepare_is_byte_deterministic_and_fingerprint_tracks_content(tmp_path):
    a = data.prepare(PrepareParams(), tmp_path / "a")
    b = data.prepare(PrepareParams(), tmp_path / "b")
    c = data.prepare(PrepareParams(seed=3), tmp_path / "c")
    assert dir_sha256(a.path) == dir_sha256(b.path) and a.fingerprint == b.fingerprint
    assert c.fingerprint != a.fingerprint


def test_max_train_subsamples_stratified(tmp_path):
    art = data.prepare(PrepareParams(max_train=200), tmp_path / "p")
    assert art.n_train == 200
    counts = np.bincount(data.load_prepared(art.path).y_train)
    assert counts.min() >= 18


def _write_idx(path, arr):
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def _fake_fashion(root, n_train=200, n_test=30, corrupt=False):
    rng = np.random.default_rng(0)
    root.mkdir()
    _write_idx(root / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (n_train, 28, 28)))
    _write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(n_train) % 10)
    _write_idx(root / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (n_test, 28, 28)))
    _write_idx(root / "t10k-labels-idx1-ubyte.gz", np.arange(n_test) % 10)
    if corrupt:
        raw = gzip.decompress((root / "t10k-images-idx3-ubyte.gz").read_bytes())
        with gzip.open(root / "t10k-images-idx3-ubyte.gz", "wb") as f:
            f.write(raw[:-100])


def test_fashion_mnist_from_idx_dir_keeps_official_test(tmp_path):
    _fake_fashion(tmp_path / "fm")
    art = data.prepare(PrepareParams(dataset="fashion-mnist", path=str(tmp_path / "fm")),
                       tmp_path / "p")
    assert art.n_test == 30 and art.n_train + art.n_val == 200
    assert art.input_shape == (1, 28, 28)


def test_fashion_mnist_missing_or_corrupt_is_a_clear_error(tmp_path):
    with pytest.raises(ShrinkflowError, match="apt-get install dataset-fashion-mnist"):
        data.prepare(PrepareParams(dataset="fashion-mnist", path=str(tmp_path)), tmp_path / "p")
    _fake_fashion(tmp_path / "bad", corrupt=True)
    with pytest.raises(ShrinkflowError, match="corrupt IDX file"):
        data.prepare(PrepareParams(dataset="fashion-mnist", path=str(tmp_path / "bad")),
                     tmp_path / "p")
    assert not (tmp_path / "p").exists()  # nothing half-written


def test_npz_source_and_its_errors(tmp_path):
    rng = np.random.default_rng(0)
    f = tmp_path / "d.npz"
    np.savez(f, x=rng.integers(0, 255, (90, 6, 6)), y=np.arange(90) % 3)
    art = data.prepare(PrepareParams(dataset="npz", path=str(f)), tmp_path / "p")
    assert art.num_classes == 3 and art.input_shape == (1, 6, 6)
    np.savez(tmp_path / "bad.npz", a=np.zeros(3))
    with pytest.raises(ShrinkflowError, match="needs array.s. named x, y"):
        data.prepare(PrepareParams(dataset="npz", path=str(tmp_path / "bad.npz")), tmp_path / "q")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ShrinkflowError, match="not a readable .npz"):
        data.prepare(PrepareParams(dataset="npz", path=str(tmp_path / "junk.npz")), tmp_path / "q")


def test_too_few_examples_to_split_is_a_clear_error(tmp_path):
    f = tmp_path / "d.npz"
    np.savez(f, x=np.zeros((12, 4, 4), np.uint8), y=np.arange(12) % 4)
    with pytest.raises(ShrinkflowError, match="cannot split 12 examples of 4 classes"):
        data.prepare(PrepareParams(dataset="npz", path=str(f)), tmp_path / "p")


def test_load_prepared_without_prepare_is_a_clear_error(tmp_path):
    with pytest.raises(ShrinkflowError, match="run the prepare step first"):
        data.load_prepared(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"x": 1})[:-2])
    with pytest.raises(ShrinkflowError, match="corrupt"):
        data.load_prepared(tmp_path)


def test_relative_source_paths_mean_the_workspace(tmp_path):
    rel = PrepareParams(dataset="npz", path="data/raw/x.npz").resolved(tmp_path)
    assert rel.path == str(tmp_path / "data/raw/x.npz")
    absolute = PrepareParams(dataset="npz", path="/abs/x.npz")
    assert absolute.resolved(tmp_path) == absolute
    assert PrepareParams().resolved(tmp_path) == PrepareParams()


def test_same_bytes_under_another_name_are_the_same_data(tmp_path):
    from shrinkflow.data.sources import source_fingerprint

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "a.npz", x=rng.integers(0, 255, (60, 4, 4)), y=np.arange(60) % 3)
    (tmp_path / "b.npz").write_bytes((tmp_path / "a.npz").read_bytes())
    a = data.prepare(PrepareParams(dataset="npz", path=str(tmp_path / "a.npz")), tmp_path / "pa")
    b = data.prepare(PrepareParams(dataset="npz", path=str(tmp_path / "b.npz")), tmp_path / "pb")
    assert a.sha256 == b.sha256  # the name is not in meta.json
    assert source_fingerprint(PrepareParams(dataset="npz", path=str(tmp_path / "a.npz"))) == \
        source_fingerprint(PrepareParams(dataset="npz", path=str(tmp_path / "b.npz")))


def test_prepared_arrays_are_raw_and_normalised_on_load(tmp_path):
    art = data.prepare(PrepareParams(), tmp_path / "p")
    x, _, meta = data.raw_test_split(art.path)
    assert x.max() == 16.0 and x.min() == 0.0  # digits' own scale
    np.testing.assert_array_equal(data.normalize(x, meta), data.load_prepared(art.path).x_test)
    assert data.fingerprint_of(art.path) == art.fingerprint
