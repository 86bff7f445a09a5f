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
    kind: str  # torch | onnx | openvino | litert (the runtime that runs it)
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
    from shrinkflow.targets import base as targets
    from shrinkflow.targets.base import batched
    from shrinkflow.targets.onnxruntime import graph_cost

    torch.set_num_threads(1)
    runners = {}
    for e in entries:
        runners[e.name] = _torch_runner(e.model) if e.kind == "torch" else \
            targets.get(e.kind).load(e.path, 1)
        logits = batched(runners[e.name], x)
        if e.kind != "torch":
            e.values.update(size_stats(e.path))
        if e.kind == "onnxruntime":
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


def add_ratios(entries: list[Entry], teacher_name: str = "", peer_name: str = "") -> None:
    by = {e.name: e.values for e in entries}
    teacher, peer = by[teacher_name or TEACHER], by[peer_name or PEER]
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
    ("weight bits", "weight_bits"),
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
    if key == "weight_bits":
        return f"{int(x)}" if x else "-"
    return f"{x:.3f}" if key.startswith("latency") else f"{x:.2f}"


def targets(entries: list[Entry], min_size_ratio: float = 50, min_speedup: float = 4,
            max_drop: float = 1.0, min_acc: float = 0.925) -> list[str]:
    """The benchmark's targets, checked on the measured table."""
    variants = [e for e in entries if not e.name.startswith(("teacher:", "peer:"))]
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


def table(entries: list[Entry]) -> list[str]:
    header = "| " + " | ".join(c for c, _ in COLUMNS) + " |"
    rows = [header, "|" + "---|" * len(COLUMNS)]
    for e in entries:
        rows.append("| " + " | ".join(_cell(k, e.values, e.name) for _, k in COLUMNS) + " |")
    return rows


def write_tables(sections: dict[str, list[Entry]], out_dir: str | Path, title: str,
                 notes: list[str]) -> tuple[Path, Path]:
    """benchmark.md (one table per target, each side by side within itself) and
    benchmark.csv (every row, with its target)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, csv_path = out / "benchmark.md", out / "benchmark.csv"
    lines = [f"# {title}", ""]
    for target, entries in sections.items():
        lines += [f"## {target}", "", *table(entries), "", "Targets:", *targets(entries), ""]
    with atomic_path(md) as tmp:
        tmp.write_text("\n".join([*lines, *notes, ""]))
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        keys = sorted({k for es in sections.values() for e in es for k in e.values})
        w = csv.writer(f)
        w.writerow(["target", "model", *keys])
        for target, entries in sections.items():
            for e in entries:
                w.writerow([target, e.name, *(e.values.get(k, "") for k in keys)])
    return md, csv_path


def _peer(target: str, ws, teacher, teacher_onnx: Path, calib: np.ndarray, shape, out: Path
          ) -> Path:
    """The runtime's own default int8 of the teacher (what a user of that runtime alone
    would get): ONNX Runtime's quantize_static defaults, OpenVINO's NNCF defaults,
    litert-torch's default (per-tensor) PT2E static quantization."""
    if target == "onnxruntime":
        from shrinkflow.targets.onnxruntime import quantize_onnx

        quantize_onnx(teacher_onnx, out / "model.onnx", "static", calib, defaults=True)
        return out / "model.onnx"
    if target == "openvino":
        from shrinkflow.targets.openvino import nncf_default_int8

        return nncf_default_int8(teacher_onnx, out, calib)
    from shrinkflow.targets.litert import default_int8

    return default_int8(teacher, shape, out, calib)


def benchmark(params, ws, out_dir: str | Path, rounds: int = 3) -> tuple[Path, list[str]]:
    """Measure the pipeline's outputs in workspace ``ws`` side by side, one table per
    target: the torch fp32 teacher, the teacher on the runtime, the runtime's own default
    int8 of the teacher (the peer), and every variant; writes benchmark.md and .csv."""
    from shrinkflow.data.prepare import load_raw, raw_test_split
    from shrinkflow.models.checkpoint import load_checkpoint
    from shrinkflow.models.preprocess import Deployed
    from shrinkflow.plan.executor import resolve_cached
    from shrinkflow.plan.plan import build_plan
    from shrinkflow.plan.store import Store
    from shrinkflow.steps.fit import predict_logits
    from shrinkflow.steps.quantize import calibration_subset

    plan = build_plan(params, ws.root)
    records = resolve_cached(plan, Store(ws.store_dir), plan.steps)
    x, y, _ = raw_test_split(ws.data_dir)
    arrays, _ = load_raw(ws.data_dir)
    net, ckpt = load_checkpoint(ws.checkpoint("teacher"))
    teacher = Deployed(net, ckpt["norm"]).eval()
    teacher_ref = predict_logits(teacher, x)
    calib, _ = calibration_subset(arrays["x_val"], arrays["y_val"], 512)
    refs = {}
    for name in params.variant_order():
        m, c = load_checkpoint(ws.checkpoint(name))
        refs[name] = predict_logits(Deployed(m, c["norm"]), x)
    sections: dict[str, list[Entry]] = {}
    start = time.perf_counter()
    for target in params.target_names:
        peer_dir = ws.state_dir / "peer" / target
        peer = _peer(target, ws, teacher, ws.onnx("teacher"), calib, tuple(ckpt["input_shape"]),
                     peer_dir)
        label = {"onnxruntime": "ORT", "openvino": "OpenVINO", "litert": "LiteRT"}[target]
        teacher_path = records[plan.models["teacher"].exports[target]].record["path"]
        entries = [Entry(TORCH, "torch", model=teacher, reference=teacher_ref),
                   Entry(f"teacher: {label} fp32", target, teacher_path, reference=teacher_ref),
                   Entry(f"peer: {label} int8 (defaults)", target, str(peer),
                         reference=teacher_ref)]
        if target == "onnxruntime":
            from shrinkflow.targets.onnxruntime import quantize_onnx

            quantize_onnx(ws.onnx("teacher"), peer_dir / "dynamic.onnx", "dynamic",
                          defaults=True)
            entries.append(Entry(PEER_DYNAMIC, target, str(peer_dir / "dynamic.onnx"),
                                 reference=teacher_ref))
        for name in params.variant_order():
            rec = records.get(plan.models[name].exports[target])
            if rec is None or not rec.record.get("path"):
                continue  # not converted for this target (its failure is in the run report)
            e = Entry(name, target, rec.record["path"], reference=refs[name])
            e.values["weight_bits"] = float(rec.record.get("weight_bits", 0))
            entries.append(e)
        measure(entries, x, y, rounds=rounds)
        add_ratios(entries, entries[1].name, entries[2].name)
        sections[target] = entries
    n_params = sum(p.numel() for p in net.parameters())
    t = sections["onnxruntime"][1].values
    where = machine.describe(machine.fingerprint({"threads": 1}))
    notes = [
        f"Data: {len(y)} test examples. Teacher: {n_params:,} parameters, "
        f"{t['accuracy'] * 100:.2f} % (ORT), {t['size_bytes'] / 1000:.1f} KB fp32 ONNX.",
        f"Machine: {where}.",
        "Latency: p50 of one runtime (or torch) call, 1 intra-op thread, pooled over "
        f"{rounds} interleaved rounds within each target's table. '× smaller' is against the "
        "teacher's fp32 artifact on that runtime; '× faster than peer' against that runtime's "
        "own default int8 of the teacher (ONNX Runtime quantize_static defaults, OpenVINO "
        "NNCF defaults, litert-torch per-tensor PT2E).",
        "Sizes: the artifact on disk (what is loaded and deployed); 'gzip' shows what "
        "unstructured pruning buys, since its zeros are stored but compress.",
        "", f"Measured in {time.perf_counter() - start:.0f} s.",
    ]
    title = f"shrinkflow benchmark: {params.prepare.dataset} ({machine.cpu()['isa_kind']})"
    md, _ = write_tables(sections, out_dir, title, notes)
    return md, notes
