"""ONNX export parity on a tiny model, the latency harness, sizes and gates."""

import numpy as np
import pytest
import torch

from shrinkflow.config import ArchParams, ConvertParams, ValidateGates, ValidateParams
from shrinkflow.export import check_onnx, export_onnx
from shrinkflow.models import build_model
from shrinkflow.validate import (
    check_gates,
    latency_ms,
    measure_onnx,
    onnx_logits,
    ort_session,
    parity,
    size_stats,
)

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
    export_onnx(model, (1, 8, 8), path, ConvertParams(), {"k": "v"})
    return model, path


def test_export_matches_torch_on_any_batch_size(tiny_onnx):
    model, path = tiny_onnx
    assert check_onnx(path) == 18
    session = ort_session(path)
    for n in (1, 7, 300):
        x = np.random.default_rng(n).standard_normal((n, 1, 8, 8)).astype(np.float32)
        got = onnx_logits(session, x)
        want = model(torch.from_numpy(x)).detach().numpy()
        assert got.shape == (n, 3)
        assert np.abs(got - want).max() < 1e-4


def test_export_writes_one_self_contained_file(tiny_onnx):
    _, path = tiny_onnx
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.onnx"]


def test_legacy_exporter_also_matches(tmp_path, tiny_onnx):
    model, _ = tiny_onnx
    path = tmp_path / "legacy.onnx"
    export_onnx(model, (1, 8, 8), path, ConvertParams(exporter="legacy"))
    x = np.ones((2, 1, 8, 8), np.float32)
    assert np.abs(onnx_logits(ort_session(path), x)
                  - model(torch.from_numpy(x)).detach().numpy()).max() < 1e-4


def test_parity_metrics():
    ref = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]], np.float32)
    cand = ref.copy()
    cand[1] = [1.5, 1.0]  # flips the top-1 of row 1 by a 1.5 difference
    p = parity(ref, cand)
    assert p["parity_max_abs_diff"] == pytest.approx(1.5)
    assert p["parity_top1_agreement"] == pytest.approx(2 / 3)


def test_latency_harness_orders_percentiles_and_tiles_small_inputs(tiny_onnx):
    _, path = tiny_onnx
    session = ort_session(path, threads=1)
    x = np.zeros((10, 1, 8, 8), np.float32)  # fewer rows than the batch
    p50, p95 = latency_ms(session, x, batch=64, warmup=1, repeats=5)
    assert 0 < p50 <= p95


def test_latency_grows_with_batch(tiny_onnx):
    _, path = tiny_onnx
    session = ort_session(path)
    x = np.zeros((512, 1, 8, 8), np.float32)
    b1, _ = latency_ms(session, x, 1, 3, 30)
    b512, _ = latency_ms(session, x, 512, 3, 10)
    assert b512 > b1


def test_measure_onnx_reports_every_metric(tiny_onnx):
    model, path = tiny_onnx
    x = np.random.default_rng(0).standard_normal((20, 1, 8, 8)).astype(np.float32)
    y = np.zeros(20, np.int64)
    ref = model(torch.from_numpy(x)).detach().numpy()
    m = measure_onnx(path, x, y, ValidateParams(repeats_b1=3, repeats_b256=3, warmup=0), ref)
    for key in ("onnx_test_accuracy", "parity_max_abs_diff", "latency_p95_ms_b256",
                "size_bytes", "size_gzip_bytes"):
        assert key in m
    assert m["parity_top1_agreement"] == 1.0


def test_size_stats_sees_zeros_compress(tmp_path):
    dense = tmp_path / "dense"
    sparse = tmp_path / "sparse"
    dense.write_bytes(np.random.default_rng(0).bytes(10000))
    sparse.write_bytes(bytes(10000))
    assert size_stats(dense)["size_bytes"] == size_stats(sparse)["size_bytes"] == 10000
    assert size_stats(sparse)["size_gzip_bytes"] < 0.1 * size_stats(dense)["size_gzip_bytes"]


def test_gates():
    gates = ValidateGates(max_abs_diff=1e-3, min_top1_agreement=0.99)
    assert check_gates({"parity_max_abs_diff": 1e-4, "parity_top1_agreement": 1.0}, gates) == []
    failures = check_gates({"parity_max_abs_diff": 0.5, "parity_top1_agreement": 0.9}, gates)
    assert len(failures) == 2 and "max_abs_diff" in failures[0]
    assert check_gates({"parity_max_abs_diff": float("nan")}, gates)  # NaN never passes
