"""`shrinkflow data add`: a snapshot versioned by DVC, which change detection sees."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepare import PrepareParams
from shrinkflow.data.sources import source_fingerprint
from shrinkflow.ops.snapshots import SNAPSHOT, add_snapshot
from tests.conftest import make_workspace

pytestmark = pytest.mark.slow


def _npz(path, seed):
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 255, (60, 8, 8)), y=np.arange(60) % 3)
    return path


def test_data_add_versions_a_snapshot_and_changes_the_fingerprint(tmp_path):
    ws = make_workspace(tmp_path / "ws", tmp_path / "remote")
    first = add_snapshot(_npz(tmp_path / "a.npz", 0), ws)
    assert first["examples"] == 60 and first["classes"] == 3
    assert (ws / f"{SNAPSHOT}.dvc").is_file() and "prepare.dataset: npz" in first["params_note"]
    assert any((tmp_path / "remote").rglob("*"))  # pushed
    params = PrepareParams(dataset="npz", path=str(SNAPSHOT)).resolved(ws)
    before = source_fingerprint(params)

    second = add_snapshot(_npz(tmp_path / "b.npz", 1), ws)
    assert second["md5"] != first["md5"]
    assert yaml.safe_load((ws / f"{SNAPSHOT}.dvc").read_text())["outs"][0]["md5"] == second["md5"]
    assert source_fingerprint(params) != before  # the next scheduled run retrains


def test_data_add_refuses_bad_input_and_leaves_nothing(tmp_path):
    ws = make_workspace(tmp_path / "ws", tmp_path / "remote")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((3, 4, 4)))
    with pytest.raises(ShrinkflowError, match="needs array.s. named x, y"):
        add_snapshot(bad, ws)
    for x, y, message in ((np.full((30, 4, 4), np.nan), np.arange(30) % 3, "NaN"),
                          (np.zeros((30, 4, 4)), np.arange(30) % 3 - 1, "negative label")):
        np.savez(bad, x=x, y=y)
        with pytest.raises(ShrinkflowError, match=message):
            add_snapshot(bad, ws)
    assert not (ws / SNAPSHOT).exists()
    with pytest.raises(ShrinkflowError, match="not a DVC workspace"):
        add_snapshot(_npz(tmp_path / "a.npz", 0), tmp_path)
