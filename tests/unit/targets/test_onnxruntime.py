"""ONNX export parity on a tiny model, self-contained files, and the graph's cost."""

import numpy as np
import pytest
import torch

from shrinkflow.models.cnn import ArchParams, build_model
from shrinkflow.targets.base import batched
from shrinkflow.targets.onnxruntime import OnnxRuntime, check_onnx, export_onnx, graph_cost

TINY = ArchParams(blocks=[[4], [8]], dropout=0.0)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(TINY, (1, 8, 8), 3).eval()
    # Non-trivial BatchNorm statistics, so folding them into the conv is exercised.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    export_onnx(model, (1, 8, 8), path, 18, "dynamo", {"k": "v"})
    return model, path


def test_export_matches_torch_on_any_batch_size(tiny_onnx):
    model, path = tiny_onnx
    assert check_onnx(path) == 18
    run = OnnxRuntime.load(str(path), 1)
    for n in (1, 7, 300):
        x = np.random.default_rng(n).standard_normal((n, 1, 8, 8)).astype(np.float32)
        got = batched(run, x)
        want = model(torch.from_numpy(x)).detach().numpy()
        assert got.shape == (n, 3) and np.abs(got - want).max() < 1e-4


def test_export_writes_one_self_contained_deterministic_file(tiny_onnx, tmp_path):
    model, path = tiny_onnx
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.onnx"]
    again = tmp_path / "again.onnx"
    export_onnx(model, (1, 8, 8), again, 18, "dynamo", {"k": "v"})
    assert again.read_bytes() == path.read_bytes()


def test_legacy_exporter_also_matches(tmp_path, tiny_onnx):
    model, _ = tiny_onnx
    path = tmp_path / "legacy.onnx"
    export_onnx(model, (1, 8, 8), path, 18, "legacy")
    x = np.ones((2, 1, 8, 8), np.float32)
    assert np.abs(OnnxRuntime.load(str(path), 1)(x)
                  - model(torch.from_numpy(x)).detach().numpy()).max() < 1e-4


def test_graph_cost_counts_conv_and_linear_macs(tiny_onnx):
    _, path = tiny_onnx
    cost = graph_cost(path)
    assert cost["macs"] == 8 * 8 * 4 * 9 + 4 * 4 * 8 * 4 * 9 + 8 * 3
    assert cost["onnx_params"] == pytest.approx(4 * 9 + 4 + 8 * 4 * 9 + 8 + 8 * 3 + 3)


def test_a_non_onnx_file_is_one_clear_error(tmp_path):
    from shrinkflow.core.errors import ShrinkflowError

    (tmp_path / "x.onnx").write_bytes(b"garbage")
    with pytest.raises(ShrinkflowError, match="ONNX Runtime cannot load it"):
        OnnxRuntime.load(str(tmp_path / "x.onnx"), 1)
