"""One validation for prepare, data add and predict: each bad input is one line naming
the file and what is wrong, found before anything large is allocated."""

import numpy as np
import pytest

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepare import PrepareParams, prepare
from shrinkflow.data.validation import read_npz


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


GOOD_X = np.zeros((30, 4, 4), np.uint8)
GOOD_Y = np.arange(30) % 3


@pytest.mark.parametrize("x, y, message", [
    (np.full((30, 4, 4), np.nan, np.float32), GOOD_Y, "NaN/Inf value"),
    (np.where(np.eye(4) > 0, np.inf, 0)[None].repeat(30, 0).astype(np.float32), GOOD_Y,
     "NaN/Inf value"),
    (GOOD_X, GOOD_Y - 1, "negative label -1"),
    (GOOD_X, np.where(GOOD_Y == 1, 5, GOOD_Y), "missing 1, 3, 4"),
    (GOOD_X, np.zeros(30, np.int64), "single class"),
    (GOOD_X, np.array([0, 2**40] * 15), "at most 10000 classes"),
    (np.zeros((0, 4, 4)), np.zeros(0, np.int64), "x is empty"),
    (GOOD_X, GOOD_Y[:10], "x has 30 examples but y has 10"),
    (GOOD_X, GOOD_Y + 0.5, "integer class labels"),
    (np.zeros((30, 1, 4, 4, 1)), GOOD_Y, "must be 2-d or 3-d or 4-d"),  # (N,F) features are fine
])
def test_bad_arrays_are_refused_in_one_line(tmp_path, x, y, message):
    f = _npz(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(ShrinkflowError) as err:
        read_npz(f)
    assert message in str(err.value) and str(f) in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ShrinkflowError):
        prepare(PrepareParams(dataset="npz", path=str(f)), tmp_path / "p")
    assert not (tmp_path / "p").exists()


def test_a_header_claiming_gigabytes_is_refused_before_reading(tmp_path, monkeypatch):
    f = _npz(tmp_path / "d.npz", x=np.zeros((1000, 32, 32), np.float32), y=np.arange(1000) % 2)
    monkeypatch.setenv("SHRINKFLOW_MAX_ARRAY_BYTES", str(1 << 20))
    with pytest.raises(ShrinkflowError, match="array x claims shape .1000, 32, 32."):
        read_npz(f)


def test_object_arrays_never_unpickle(tmp_path):
    f = tmp_path / "d.npz"
    np.savez(f, x=np.array([object()] * 3, dtype=object), y=np.arange(3))
    with pytest.raises(ShrinkflowError, match="holds Python objects"):
        read_npz(f)


def test_float_labels_that_are_whole_numbers_pass(tmp_path):
    f = _npz(tmp_path / "d.npz", x=GOOD_X, y=GOOD_Y.astype(np.float64))
    assert read_npz(f)["y"].shape == (30,)
