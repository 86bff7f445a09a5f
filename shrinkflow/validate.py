"""Validate a converted model: accuracy in torch and ONNX Runtime, parity, latency, size.

Every variant is measured by the same functions, so numbers in MLflow, in
``metrics/*.json`` and in the benchmark table are comparable.
"""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import numpy as np

from shrinkflow.artifacts import DataArtifact, Metrics, ModelArtifact, OnnxArtifact, atomic_path
from shrinkflow.config import ValidateGates, ValidateParams
from shrinkflow.data import load_prepared

# The metric names every tool reads (MLflow, DVC metrics, the benchmark, the gates).
METRIC_NAMES = (
    "test_accuracy", "onnx_test_accuracy", "parity_max_abs_diff", "parity_top1_agreement",
    "latency_p50_ms_b1", "latency_p95_ms_b1", "latency_p50_ms_b256", "latency_p95_ms_b256",
    "size_bytes", "size_gzip_bytes", "params",
)  # fmt: skip


def ort_session(path: str | Path, threads: int = 1):
    """An ONNX Runtime CPU session with a fixed intra-op thread count."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])


def onnx_logits(session, x: np.ndarray, batch: int = 1024) -> np.ndarray:
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: x[i:i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(outs).astype(np.float32)


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max abs logit difference and top-1 agreement of ``candidate`` against ``reference``."""
    return {
        "parity_max_abs_diff": float(np.abs(reference - candidate).max()),
        "parity_top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
    }


def latency_samples(session, x: np.ndarray, batch: int, warmup: int, repeats: int) -> np.ndarray:
    """Wall time (ms) of each of ``repeats`` ``session.run`` calls at ``batch``, after
    ``warmup`` untimed runs. Inputs cycle through ``x`` (tiled when it is smaller than
    a batch), so the cache never sees one frozen tensor."""
    name = session.get_inputs()[0].name
    if len(x) < batch:
        x = np.concatenate([x] * (batch // len(x) + 1))
    n_batches = max(1, min(len(x) // batch, warmup + repeats))
    batches = [np.ascontiguousarray(x[i * batch:(i + 1) * batch]) for i in range(n_batches)]
    for i in range(warmup):
        session.run(None, {name: batches[i % n_batches]})
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        session.run(None, {name: batches[i % n_batches]})
        times[i] = time.perf_counter() - t0
    return times * 1e3


def latency_ms(session, x: np.ndarray, batch: int, warmup: int, repeats: int) -> tuple[float, float]:
    """p50 and p95 wall time (ms) of one ``session.run`` at ``batch`` (see latency_samples)."""
    times = latency_samples(session, x, batch, warmup, repeats)
    return float(np.percentile(times, 50)), float(np.percentile(times, 95))


def size_stats(path: str | Path) -> dict[str, float]:
    """Bytes on disk and gzip-compressed bytes (zeros from pruning only show in the latter)."""
    data = Path(path).read_bytes()
    return {"size_bytes": float(len(data)),
            "size_gzip_bytes": float(len(gzip.compress(data, compresslevel=9, mtime=0)))}


def measure_onnx(path: str | Path, x_test: np.ndarray, y_test: np.ndarray,
                 params: ValidateParams, reference_logits: np.ndarray | None = None
                 ) -> dict[str, float]:
    """Accuracy, latency and size of an ONNX file; parity against ``reference_logits``."""
    session = ort_session(path, params.threads)
    logits = onnx_logits(session, x_test)
    metrics = {"onnx_test_accuracy": float((logits.argmax(1) == y_test).mean())}
    if reference_logits is not None:
        metrics.update(parity(reference_logits, logits))
    p50, p95 = latency_ms(session, x_test, 1, params.warmup, params.repeats_b1)
    metrics.update(latency_p50_ms_b1=p50, latency_p95_ms_b1=p95)
    p50, p95 = latency_ms(session, x_test, 256, params.warmup, params.repeats_b256)
    metrics.update(latency_p50_ms_b256=p50, latency_p95_ms_b256=p95)
    metrics.update(size_stats(path))
    return metrics


def check_gates(metrics: dict[str, float], gates: ValidateGates) -> list[str]:
    """Human-readable reasons the parity gates fail (empty when they pass)."""
    failures = []
    diff = metrics.get("parity_max_abs_diff")
    if diff is not None and not diff <= gates.max_abs_diff:
        failures.append(f"parity_max_abs_diff {diff:.3g} > validate.gates.max_abs_diff "
                        f"{gates.max_abs_diff:g}")
    agree = metrics.get("parity_top1_agreement")
    if agree is not None and not agree >= gates.min_top1_agreement:
        failures.append(f"parity_top1_agreement {agree:.4f} < "
                        f"validate.gates.min_top1_agreement {gates.min_top1_agreement:g}")
    return failures


def write_metrics(metrics: dict, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def relative_metrics(values: dict[str, float], teacher: dict[str, float]) -> dict[str, float]:
    """How a variant compares with the teacher (both measured as ONNX Runtime models):
    accuracy drop in percentage points, and how many times smaller / faster it is."""
    return {
        "accuracy_drop_pp": (teacher["onnx_test_accuracy"] - values["onnx_test_accuracy"]) * 100,
        "size_ratio_vs_teacher": teacher["size_bytes"] / values["size_bytes"],
        "size_gzip_ratio_vs_teacher": teacher["size_gzip_bytes"] / values["size_gzip_bytes"],
        "latency_ratio_vs_teacher_b256":
            teacher["latency_p50_ms_b256"] / values["latency_p50_ms_b256"],
        "latency_ratio_vs_teacher_b1": teacher["latency_p50_ms_b1"] / values["latency_p50_ms_b1"],
    }


def validate(model: ModelArtifact, onnx: OnnxArtifact, data: DataArtifact,
             params: ValidateParams, teacher: dict[str, float] | None = None) -> Metrics:
    """Measure one converted model on the full test split and apply the parity gates.

    Accuracy comes from torch and from ONNX Runtime; parity compares the ONNX logits
    with those of ``model``, the checkpoint it was converted from (for an ORT-quantized
    model, its float checkpoint). With ``teacher``'s metrics, ratios against it too.
    """
    from shrinkflow.models import load_checkpoint
    from shrinkflow.training import accuracy, predict_logits

    splits = load_prepared(data.path)
    torch_model, _ = load_checkpoint(model.path)
    reference = predict_logits(torch_model, splits.x_test)
    values = {"test_accuracy": accuracy(reference, splits.y_test)}
    values.update(measure_onnx(onnx.path, splits.x_test, splits.y_test, params, reference))
    values["params"] = float(model.num_params)
    values["nonzero_params"] = float(model.nonzero_params)
    values["sparsity"] = 1.0 - model.nonzero_params / max(1, model.num_params)
    if teacher is not None:
        values.update(relative_metrics(values, teacher))
    gates = params.gates if onnx.quantization == "none" else params.quantized_gates
    return Metrics(name=onnx.name, values=values, gate_failures=tuple(check_gates(values, gates)))


def metrics_document(results: list[Metrics]) -> dict[str, dict]:
    """The content of ``metrics/validate.json``: one entry per model, with its gate verdict."""
    return {m.name: {**{k: round(v, 8) for k, v in m.values.items()},
                     "gate_passed": m.passed} for m in results}


def validate_all(pairs: list[tuple[ModelArtifact, OnnxArtifact]], data: DataArtifact,
                 params: ValidateParams, out_path: str | Path) -> list[Metrics]:
    """Validate the teacher (first) and then every variant, one after another (latency
    is measured alone, never concurrently), and write the metrics file."""
    teacher = validate(*pairs[0], data, params)
    results = [teacher, *(validate(m, o, data, params, teacher.values) for m, o in pairs[1:])]
    write_metrics(metrics_document(results), out_path)
    return results
