"""Side-by-side benchmark: the torch fp32 teacher, the peer baselines (what ONNX Runtime's
quantization gives with its defaults) and every shrinkflow variant, measured in one
process on the same test split, latency interleaved across models in rounds.

Peer baselines are made here, with ``onnxruntime.quantization`` defaults (QDQ static
MinMax per-tensor; dynamic), not with shrinkflow's settings: they are what a user of
ONNX Runtime alone would get.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shrinkflow.core import machine
from shrinkflow.core.files import atomic_path

PEER = "peer: ORT static int8 (defaults)"
PEER_DYNAMIC = "peer: ORT dynamic int8 (defaults)"
TORCH = "teacher: torch fp32"
TEACHER = "teacher: ORT fp32"


@dataclass
class Entry:
    name: str
    kind: str  # torch | onnx
    path: str | None = None
    model: object | None = None  # torch module (raw inputs) for kind == torch
    reference: np.ndarray | None = None  # logits of its own torch model, for parity
    values: dict[str, float] = field(default_factory=dict)


def _torch_runner(model):
    import torch

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).numpy()

    return run


def measure(entries: list[Entry], x: np.ndarray, y: np.ndarray, rounds: int = 3,
            repeats_b1: int = 200, repeats_b256: int = 30) -> dict:
    """Fill each entry's values: accuracy, parity, size, latency p50 (b1, b256, 1 thread)
    from interleaved rounds (the same harness as the validate step). Returns the samples."""
    import torch

    from shrinkflow.steps.validate import latency_values, measure_rounds, parity, size_stats
    from shrinkflow.targets.base import batched
    from shrinkflow.targets.onnxruntime import OnnxRuntime

    torch.set_num_threads(1)
    runners = {}
    for e in entries:
        runners[e.name] = _torch_runner(e.model) if e.kind == "torch" else \
            OnnxRuntime.load(e.path, 1)
        logits = batched(runners[e.name], x)
        if e.kind != "torch":
            e.values.update(size_stats(e.path))
            from shrinkflow.targets.onnxruntime import graph_cost

            e.values.update(graph_cost(e.path))
        e.values["accuracy"] = float((logits.argmax(1) == y).mean())
        if e.reference is not None:
            e.values.update(parity(e.reference, logits))
    samples = {e.name: {"1": [], "256": []} for e in entries}
    measure_rounds(runners, x, samples, rounds, 3, {1: repeats_b1, 256: repeats_b256})
    doc = {"samples": samples}
    for e in entries:
        e.values.update(latency_values(doc, e.name))
    return samples


def add_ratios(entries: list[Entry]) -> None:
    by = {e.name: e.values for e in entries}
    teacher, peer = by[TEACHER], by[PEER]
    for v in by.values():
        v["drop_pp"] = (teacher["accuracy"] - v["accuracy"]) * 100
        if "size_bytes" in v:
            v["size_ratio"] = teacher["size_bytes"] / v["size_bytes"]
        v["speedup_vs_peer_b256"] = peer["latency_p50_ms_b256"] / v["latency_p50_ms_b256"]
        v["speedup_vs_peer_b1"] = peer["latency_p50_ms_b1"] / v["latency_p50_ms_b1"]
        v["speedup_vs_teacher_b256"] = teacher["latency_p50_ms_b256"] / v["latency_p50_ms_b256"]


COLUMNS = [
    ("model", None), ("accuracy %", "accuracy"), ("drop pp", "drop_pp"),
    ("size KB", "size_bytes"), ("gzip KB", "size_gzip_bytes"), ("× smaller", "size_ratio"),
    ("b1 ms", "latency_p50_ms_b1"), ("b256 ms", "latency_p50_ms_b256"),
    ("× faster than peer b1", "speedup_vs_peer_b1"),
    ("× faster than peer b256", "speedup_vs_peer_b256"),
    ("top-1 agree %", "parity_top1_agreement"), ("max abs diff", "parity_max_abs_diff"),
]


def _cell(key: str | None, v: dict[str, float], name: str) -> str:
    if key is None:
        return name
    if key not in v:
        return "-"
    x = v[key]
    if key in ("accuracy", "parity_top1_agreement"):
        return f"{x * 100:.2f}"
    if key.startswith("size_bytes") or key == "size_gzip_bytes":
        return f"{x / 1000:.1f}"
    if key == "drop_pp":
        return f"{x:+.2f}"
    if key == "parity_max_abs_diff":
        return f"{x:.1e}"
    return f"{x:.3f}" if key.startswith("latency") else f"{x:.2f}"


def targets(entries: list[Entry], min_size_ratio: float = 50, min_speedup: float = 4,
            max_drop: float = 1.0, min_acc: float = 0.925) -> list[str]:
    """The issue's targets, checked on the measured table."""
    variants = [e for e in entries if e.name not in (TORCH, TEACHER, PEER, PEER_DYNAMIC)]
    lines = []
    ok = [e for e in variants if e.values["drop_pp"] <= max_drop
          and e.values.get("size_ratio", 0) >= min_size_ratio
          and e.values["speedup_vs_peer_b256"] >= min_speedup]
    if ok:
        best = max(ok, key=lambda e: e.values["size_ratio"])
        lines.append(f"- target 1 MET by `{best.name}`: {best.values['drop_pp']:+.2f} pp, "
                     f"{best.values['size_ratio']:.1f}x smaller, "
                     f"{best.values['speedup_vs_peer_b256']:.1f}x faster than the peer (b256)")
    else:
        within = [e for e in variants if e.values["drop_pp"] <= max_drop]
        if within:
            best = max(within, key=lambda e: e.values.get("size_ratio", 0))
            lines.append(f"- target 1 not met: among variants within {max_drop} pp, the "
                         f"smallest is `{best.name}` ({best.values['drop_pp']:+.2f} pp, "
                         f"{best.values.get('size_ratio', 0):.1f}x smaller, "
                         f"{best.values['speedup_vs_peer_b256']:.1f}x faster than the peer)")
        else:
            lines.append(f"- target 1 not met: no variant within {max_drop} pp of the teacher")
    keep = [e for e in variants if e.values["accuracy"] >= min_acc and "size_bytes" in e.values]
    if keep:
        small = min(keep, key=lambda e: e.values["size_bytes"])
        lines.append(f"- smallest ONNX file with >= {min_acc * 100:.1f} % accuracy: "
                     f"`{small.name}`, {small.values['size_bytes'] / 1000:.1f} KB "
                     f"({small.values['accuracy'] * 100:.2f} %)")
    else:
        lines.append(f"- no variant reaches {min_acc * 100:.1f} % accuracy")
    return lines


def write_tables(entries: list[Entry], out_dir: str | Path, title: str,
                 notes: list[str]) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path = out / "benchmark.md", out / "benchmark.csv"
    header = "| " + " | ".join(c for c, _ in COLUMNS) + " |"
    rows = [header, "|" + "---|" * len(COLUMNS)]
    for e in entries:
        rows.append("| " + " | ".join(_cell(k, e.values, e.name) for _, k in COLUMNS) + " |")
    text = "\n".join([f"# {title}", "", *rows, "", *notes, ""])
    with atomic_path(md) as tmp:
        tmp.write_text(text)
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        keys = sorted({k for e in entries for k in e.values})
        w = csv.writer(f)
        w.writerow(["model", *keys])
        for e in entries:
            w.writerow([e.name, *(e.values.get(k, "") for k in keys)])
    return md, csv_path


def benchmark(params, ws, out_dir: str | Path, rounds: int = 3) -> tuple[Path, list[str]]:
    """Measure the pipeline's outputs in workspace ``ws`` side by side with the torch
    teacher and the peer baselines; write ``benchmark.md`` and ``benchmark.csv``."""
    from shrinkflow.data.prepare import load_raw, raw_test_split
    from shrinkflow.models.checkpoint import load_checkpoint
    from shrinkflow.models.preprocess import Deployed
    from shrinkflow.steps.fit import predict_logits
    from shrinkflow.steps.quantize import calibration_subset
    from shrinkflow.targets.onnxruntime import quantize_onnx

    x, y, _ = raw_test_split(ws.data_dir)
    arrays, _ = load_raw(ws.data_dir)
    net, ckpt = load_checkpoint(ws.checkpoint("teacher"))
    teacher = Deployed(net, ckpt["norm"]).eval()
    teacher_ref = predict_logits(teacher, x)
    calib, _ = calibration_subset(arrays["x_val"], arrays["y_val"], 512)
    peer_dir = ws.state_dir / "peer"
    quantize_onnx(ws.onnx("teacher"), peer_dir / "static.onnx", "static", calib, defaults=True)
    quantize_onnx(ws.onnx("teacher"), peer_dir / "dynamic.onnx", "dynamic", defaults=True)
    entries = [
        Entry(TORCH, "torch", model=teacher, reference=teacher_ref),
        Entry(TEACHER, "onnx", str(ws.onnx("teacher")), reference=teacher_ref),
        Entry(PEER, "onnx", str(peer_dir / "static.onnx"), reference=teacher_ref),
        Entry(PEER_DYNAMIC, "onnx", str(peer_dir / "dynamic.onnx"), reference=teacher_ref),
    ]
    for name in params.variant_order():
        m, c = load_checkpoint(ws.checkpoint(name))
        entries.append(Entry(name, "onnx", str(ws.onnx(name)),
                             reference=predict_logits(Deployed(m, c["norm"]), x)))
    start = time.perf_counter()
    measure(entries, x, y, rounds=rounds)
    add_ratios(entries)
    n_params = sum(p.numel() for p in net.parameters())
    t = entries[1].values
    where = machine.describe(machine.fingerprint({"threads": 1}))
    notes = [
        f"Data: {ckpt.get('data_fingerprint', '')[:12]} ({len(y)} test examples). "
        f"Teacher: {n_params:,} parameters, {t['accuracy'] * 100:.2f} % (ORT), "
        f"{t['size_bytes'] / 1000:.1f} KB fp32 ONNX.",
        f"Machine: {where}.",
        "Latency: p50 of one ONNX Runtime (or torch) call, 1 intra-op thread, pooled over "
        f"{rounds} interleaved rounds. '× smaller' is against the teacher's fp32 ONNX file; "
        "'× faster than peer' against ONNX Runtime static int8 of the teacher with "
        "onnxruntime.quantization's default settings.",
        "Sizes: 'size' is the ONNX file on disk (what is loaded and deployed); 'gzip' shows "
        "what unstructured pruning buys, since its zeros are stored but compress.",
        "", "Targets:", *targets(entries),
        "", f"Measured in {time.perf_counter() - start:.0f} s.",
    ]
    title = f"shrinkflow benchmark: {params.prepare.dataset} ({machine.cpu()['isa_kind']})"
    md, _ = write_tables(entries, out_dir, title, notes)
    return md, notes
