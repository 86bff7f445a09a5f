"""Transfer: the teacher starts from another model's checkpoint (its architecture and
weights), with a new classifier when the classes differ, and frozen layers kept."""

import numpy as np
import pytest
import torch

from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.data.prepare import PrepareParams
from shrinkflow.models.checkpoint import load_checkpoint, read_checkpoint
from shrinkflow.steps.train import TrainParams
from tests.steps_helpers import call
from tests.unit.steps.conftest import TINY


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """Digits 0-2 as an npz: other classes than the 10-class source."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("three")
    d = load_digits()
    keep = d.target < 3
    np.savez(root / "d.npz", x=d.images[keep].astype(np.uint8), y=d.target[keep])
    return call("prepare", PrepareParams(dataset="npz", path=str(root / "d.npz")), root / "p")


def _train(tmp_path, data, source, **kw):
    config = TrainParams(model=TINY, epochs=2, batch_size=32, init_from=str(source.path),
                         **kw).model_copy(update={"init_checkpoint": str(source.path)})
    return call("train", config, tmp_path / "t", label="teacher", data=data)


def test_transfer_replaces_the_head_and_keeps_the_body(tiny, three_classes, tmp_path):
    _, _, source = tiny
    out = _train(tmp_path, three_classes, source, freeze=["features"])
    src, _ = load_checkpoint(source.path)
    new, ckpt = load_checkpoint(out.path)
    assert new.head[-1].out_features == 3
    info = ckpt["init_from"]
    assert info["sha256"] == source.sha256 and info["head_replaced"] is True
    assert info["num_classes"] == 10
    for (name, a), b in zip(src.features.state_dict().items(),
                            new.features.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # frozen: weights and batch-norm statistics


def test_transfer_same_classes_keeps_the_head_and_trains(tiny, tmp_path):
    _, data, source = tiny
    out = _train(tmp_path, data, source)
    ckpt = read_checkpoint(out.path)
    assert ckpt["init_from"]["head_replaced"] is False
    before = read_checkpoint(source.path)["state_dict"]
    assert not torch.equal(before["head.1.weight"], ckpt["state_dict"]["head.1.weight"])


def test_freeze_names_an_unknown_prefix(tiny, tmp_path):
    _, data, source = tiny
    with pytest.raises(ShrinkflowError, match=r"train.freeze: 'nope' matches no parameter "
                                              r"\(layers: features.0"):
        _train(tmp_path, data, source, freeze=["nope"])


def test_plan_keys_the_teacher_by_the_source_checkpoint(tiny, tmp_path):
    import shutil

    from shrinkflow.plan.params import load_params
    from shrinkflow.plan.plan import build_plan

    _, _, source = tiny
    shutil.copyfile(source.path, tmp_path / "src.pt")
    params = load_params(None, ["train.init_from=src.pt", "train.freeze=[features]"])
    step = build_plan(params, tmp_path).step("teacher:train")
    assert step.extra["init_from"] == {"uri": "src.pt", "sha256": source.sha256}
    assert step.config.init_checkpoint == str((tmp_path / "src.pt").resolve())
    assert "init_checkpoint" not in step.config.model_dump()
    ckpt = read_checkpoint(tmp_path / "src.pt")
    ckpt["history"] = []
    torch.save(ckpt, tmp_path / "src.pt")
    assert build_plan(params, tmp_path).step("teacher:train").config_key != step.config_key
    with pytest.raises(ShrinkflowError, match=r"train.init_from: .*missing.pt not found"):
        build_plan(load_params(None, ["train.init_from=missing.pt"]), tmp_path)


def test_preflight_checks_the_source_and_the_freeze_prefixes(tiny, tmp_path):
    import shutil

    from shrinkflow.app.preflight import check_architectures
    from shrinkflow.plan.params import load_params

    _, _, source = tiny
    shutil.copyfile(source.path, tmp_path / "src.pt")
    ok = load_params(None, ["train.init_from=src.pt", "train.freeze=[features]",
                            "variants.q.from=teacher",
                            "variants.q.steps=[{quantize: {method: qat}}]"])
    check_architectures(ok, (1, 8, 8), 3, tmp_path)  # the source CNN is QAT-able
    bad = load_params(None, ["train.init_from=src.pt", "train.freeze=[stem]"])
    with pytest.raises(ShrinkflowError, match=r"train.freeze: 'stem' matches no parameter"):
        check_architectures(bad, (1, 8, 8), 3, tmp_path)
    with pytest.raises(ShrinkflowError, match=r"train.init_from src.pt: the model takes "
                                              r"inputs \(1, 8, 8\), the data has \(3, 8, 8\)"):
        check_architectures(load_params(None, ["train.init_from=src.pt"]), (3, 8, 8), 3,
                            tmp_path)
    with pytest.raises(ShrinkflowError, match=r"train.freeze: 'nope'"):
        check_architectures(load_params(None, ["train.freeze=[nope]"]), (1, 8, 8), 10, tmp_path)
