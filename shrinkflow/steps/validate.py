"""Step ``validate``: what a converted model is, measured on its own runtime.

Two step kinds, both in the ``validate`` stage:
- ``validate`` (one per model and target): accuracy on the full test split in torch and
  on the runtime, parity against the model's own torch checkpoint (max abs logit
  difference, top-1 agreement), size on disk and gzipped, parameters, sparsity, and
  multiply-accumulates counted from the graph. Deterministic: cached by content.
- ``latency`` (one per target): every model of the run timed side by side, interleaved
  in rounds (the order rotates each round), at batch 1 and 256 with fixed threads. The
  samples are kept; comparisons whose interval straddles a gate get more rounds
  (bounded). The judgement is :mod:`shrinkflow.decide`'s.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from shrinkflow.core import machine, stats
from shrinkflow.core.config import Int, Section
from shrinkflow.core.files import file_sha256, write_text_atomic
from shrinkflow.core.records import (
    DataArtifact,
    ExportArtifact,
    LatencyArtifact,
    Metrics,
    ModelArtifact,
)
from shrinkflow.data.prepare import raw_test_split
from shrinkflow.models.checkpoint import load_checkpoint
from shrinkflow.models.preprocess import Deployed
from shrinkflow.steps.base import Context, step
from shrinkflow.steps.fit import predict_logits
from shrinkflow.targets import base as targets
from shrinkflow.targets.base import SIDECAR

log = logging.getLogger("shrinkflow")

BATCHES = (1, 256)


class ValidateGates(Section):
    max_abs_diff: float = Field(1e-3, gt=0, allow_inf_nan=False)
    min_top1_agreement: float = Field(0.999, ge=0, le=1)


class ValidateParams(Section):
    # Intra-op threads of the runtime for latency (1 = the comparable, single-core number).
    threads: Int = Field(1, ge=1, le=256)
    # Untimed calls per model, batch and round (the previous model evicted the caches).
    warmup: Int = Field(1, ge=0, le=10_000)
    # Timed calls per model, batch and round: short rounds pair the models closely.
    repeats_b1: Int = Field(30, ge=1, le=100_000)
    repeats_b256: Int = Field(5, ge=1, le=100_000)
    # Interleaved rounds; comparisons still undecided get more, up to max_rounds.
    rounds: Int = Field(12, ge=2, le=10_000)
    max_rounds: Int = Field(40, ge=2, le=10_000)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    # Speed differences inside this fraction are never called: the run-to-run variation
    # on one machine that one run's interval cannot show (see README, measured there).
    resolution: float = Field(0.02, ge=0, lt=0.5)
    # A speed gate remembers its outcome per (model, parent, machine); a re-measurement
    # of the same artifacts overturns it only when decisive by this much (see
    # decide.speed.settle), so a speed-up that sits on the threshold cannot flip.
    hysteresis: float = Field(0.04, ge=0, lt=0.5)
    # Conversion parity of float models: the runtime against the same torch model.
    gates: ValidateGates = Field(default_factory=ValidateGates)
    # int8 models (ORT-quantized against their float torch model, or QAT): int8 rounding
    # is expected, a different prediction on more than a few examples is not.
    quantized_gates: ValidateGates = Field(
        default_factory=lambda: ValidateGates(max_abs_diff=3.0, min_top1_agreement=0.97))


class ValidateStep(Section):
    """Accuracy, parity, size and cost of one model on one target."""

    target: str = "onnxruntime"
    threads: Int = 1


class LatencyStep(Section):
    """Latency of every model of one target, measured side by side."""

    target: str = "onnxruntime"
    threads: Int = 1
    warmup: Int = 1
    repeats_b1: Int = 30
    repeats_b256: Int = 5
    rounds: Int = 12
    max_rounds: Int = 40
    confidence: float = 0.95
    resolution: float = 0.02
    # (child, parent) comparisons a gate judges, the threshold, and the batch it reads.
    pairs: list[tuple[str, str]] = Field(default_factory=list)
    threshold: float = 0.05
    gate_batch: Literal[1, 256] = 256
    # The machine's fingerprint: a latency measured elsewhere is not reused.
    machine: str = ""
    # The model each export serves, in order: two models may share one export (a
    # technique the target does not use leaves the parent's artifact), and each is timed.
    models: list[str] = Field(default_factory=list)


def size_stats(path: str | Path) -> dict[str, float]:
    """Bytes on disk and gzip-compressed bytes (zeros from pruning only show in the
    latter); for a directory artifact, over its model files."""
    p = Path(path)
    files = sorted(q for q in p.rglob("*") if q.is_file() and q.name != SIDECAR) \
        if p.is_dir() else [p]
    data = b"".join(f.read_bytes() for f in files)
    return {"size_bytes": float(len(data)),
            "size_gzip_bytes": float(len(gzip.compress(data, compresslevel=9, mtime=0)))}


def parity(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Max abs logit difference and top-1 agreement of ``candidate`` against ``reference``."""
    return {
        "parity_max_abs_diff": float(np.abs(reference - candidate).max()),
        "parity_top1_agreement": float((reference.argmax(1) == candidate.argmax(1)).mean()),
    }


def accuracy_key(target: str) -> str:
    """The metric holding a model's accuracy on ``target``'s runtime (ONNX Runtime keeps
    its historical name)."""
    return "onnx_test_accuracy" if target == "onnxruntime" else f"{target}_test_accuracy"


@step("validate", ValidateStep, stage="validate")
def run(config: ValidateStep, ctx: Context, data: DataArtifact, model: ModelArtifact,
        export: ExportArtifact) -> Metrics:
    """Accuracy in torch and on the runtime, parity, size, parameters and MACs of one model."""
    import torch

    if export.format == "failed":
        return Metrics(name=ctx.model, values={}, target=config.target,
                       gate_failures=(export.failure,))
    torch.set_num_threads(ctx.threads)
    if data.task == "embedding":  # quality: cosine similarity to the teacher's embeddings
        from shrinkflow.steps import embed

        values = {**embed.validate(config, ctx, data, model, export, accuracy_key(config.target)),
                  **size_stats(export.path), "params": float(model.num_params),
                  "nonzero_params": float(model.nonzero_params),
                  "sparsity": 1.0 - model.nonzero_params / max(1, model.num_params)}
        return Metrics(name=ctx.model, values=values, target=config.target)
    x, y, _ = raw_test_split(data.path)
    net, ckpt = load_checkpoint(model.path)
    reference = predict_logits(Deployed(net, ckpt["norm"]), x)
    runner = targets.get(config.target).load(export.path, config.threads)
    logits = targets.batched(runner, x)
    values = {"test_accuracy": float((reference.argmax(1) == y).mean()),
              accuracy_key(config.target): float((logits.argmax(1) == y).mean()),
              **parity(reference, logits), **size_stats(export.path),
              "params": float(model.num_params), "nonzero_params": float(model.nonzero_params),
              "sparsity": 1.0 - model.nonzero_params / max(1, model.num_params)}
    if export.format == "onnx":
        from shrinkflow.targets.onnxruntime import graph_cost

        values.update(graph_cost(export.path))
    return Metrics(name=ctx.model, values=values, target=config.target)


def _timed(run, batches: list[np.ndarray], warmup: int, repeats: int) -> list[float]:
    """Wall time (ms) of ``repeats`` calls after ``warmup`` untimed ones; inputs cycle
    through ``batches`` so the cache never sees one frozen tensor."""
    for i in range(warmup):
        run(batches[i % len(batches)])
    times = []
    for i in range(repeats):
        xb = batches[i % len(batches)]
        t0 = time.perf_counter()
        run(xb)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def make_batches(x: np.ndarray, batch: int, count: int) -> list[np.ndarray]:
    if len(x) < batch:
        x = np.concatenate([x] * (batch // len(x) + 1))
    n = max(1, min(len(x) // batch, count))
    return [np.ascontiguousarray(x[i * batch:(i + 1) * batch]) for i in range(n)]


def measure_rounds(runners: dict[str, targets.Runner], x: np.ndarray, samples: dict,
                   rounds: int, warmup: int, repeats: dict[int, int], names: list[str] | None = None
                   ) -> None:
    """Append ``rounds`` interleaved rounds for ``names`` (default: all) to ``samples``
    (name -> batch -> list of rounds of ms)."""
    names = names or list(runners)
    inputs = {b: make_batches(x, b, warmup + repeats[b]) for b in repeats}
    for _ in range(rounds):
        done = len(samples[names[0]][str(next(iter(repeats)))])
        order = names[done % len(names):] + names[:done % len(names)]  # rotate each round
        for name in order:
            for b, reps in repeats.items():
                samples[name][str(b)].append(_timed(runners[name], inputs[b], warmup, reps))


def undecided_models(samples: dict, config: LatencyStep) -> list[str]:
    """Models (and their parents) whose speed-up interval straddles the gate threshold."""
    key, out = str(config.gate_batch), set()
    for child, parent in config.pairs:
        if child not in samples or parent not in samples:
            continue
        speed = stats.speedup(stats.widen(stats.ratio_interval(
            samples[parent][key], samples[child][key], config.confidence), config.resolution))
        if stats.undecided(speed, config.threshold):
            out.update((child, parent))
    return sorted(out)


def sample_latency(runners: dict[str, targets.Runner], x: np.ndarray, config: LatencyStep,
                   repeats: dict[int, int]) -> tuple[dict, int]:
    """``config.rounds`` interleaved rounds of every model; then, while a gate comparison
    is undecided (up to ``config.max_rounds``), more rounds of only the models such
    comparisons involve (the two sides of a pair stay matched by round; a decided model
    is not timed again). Returns the samples and the most rounds any model got."""
    samples = {n: {str(b): [] for b in BATCHES} for n in runners}
    measure_rounds(runners, x, samples, config.rounds, config.warmup, repeats)
    rounds = config.rounds
    while rounds < config.max_rounds and (more := undecided_models(samples, config)):
        log.info("latency: %d model(s) undecided after %d rounds; measuring them more",
                 len(more), rounds)
        extra = min(4, config.max_rounds - rounds)
        measure_rounds(runners, x, samples, extra, config.warmup, repeats, more)
        rounds += extra
    return samples, rounds


@step("latency", LatencyStep, stage="validate")
def run_latency(config: LatencyStep, ctx: Context, data: DataArtifact,
                exports: list[ExportArtifact]) -> LatencyArtifact:
    """Time every model of a target side by side, interleaved in rounds."""
    x, _, _ = raw_test_split(data.path)
    impl = targets.get(config.target)
    names = config.models or [e.name for e in exports]
    runners = {n: impl.load(e.path, config.threads) for n, e in zip(names, exports, strict=True)
               if e.format != "failed"}
    repeats = {1: config.repeats_b1, 256: config.repeats_b256}
    start = time.perf_counter()
    samples, rounds = sample_latency(runners, x, config, repeats)
    fingerprint = machine.fingerprint({"runtime": config.threads})
    doc = {"format": "shrinkflow.latency/1", "target": config.target, "unit": "ms",
           "machine": fingerprint, "rounds": rounds, "warmup": config.warmup,
           "repeats": {str(b): r for b, r in repeats.items()},
           "seconds": round(time.perf_counter() - start, 3), "samples": samples}
    out = ctx.out_dir / "latency.json"
    write_text_atomic(out, json.dumps(doc, sort_keys=True) + "\n")
    return LatencyArtifact(path=str(out), sha256=file_sha256(out), target=config.target,
                           models=list(runners), machine=fingerprint)


def read_latency(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def latency_values(doc: dict, name: str, confidence: float = 0.95) -> dict[str, float]:
    """p50/p95 (with interval bounds) of one model at each batch, from the samples."""
    out = {}
    for b, rounds in doc["samples"][name].items():
        flat = [t for r in rounds for t in r]
        p50 = stats.quantile_interval(flat, 0.5, confidence)
        p95 = stats.quantile_interval(flat, 0.95, confidence)
        out.update({f"latency_p50_ms_b{b}": p50.estimate, f"latency_p50_ms_b{b}_low": p50.low,
                    f"latency_p50_ms_b{b}_high": p50.high, f"latency_p95_ms_b{b}": p95.estimate,
                    f"latency_p95_ms_b{b}_low": p95.low, f"latency_p95_ms_b{b}_high": p95.high})
    return out

