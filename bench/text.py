"""all-MiniLM-L6-v2: torch fp32 against each compressed form, side by side.

    .venv/bin/python bench/text.py                       # defaults: batch 32, 1 thread
    .venv/bin/python bench/text.py --rounds 20 --repeats 5 --sentences my.txt

The models are made by the pipeline's own step functions (prepare, train = the
pretrained encoder, convert = dynamo export + ONNX Runtime fusions, quantize,
distill_layers) with ``bench/text.yaml``'s settings, in ``bench/work/text`` (reused when
present). Each model is then timed at batch 32 (sentences of the whole file, each batch
padded to its longest sentence, as a tokenizer pads) with 1 intra-op thread,
interleaved in rounds (the order rotates each round), so machine load drifts hit every
model alike. Speed-ups are paired by round (``core.stats.ratio_interval``: fastest call
of each round, t-interval on the log ratios). Quality: mean and minimum cosine of each
model's embeddings to the torch fp32 teacher's, on the test split (sentences no
distillation saw). Writes ``bench/results/text.md`` (and ``.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TARGET = {"smaller": 3.9, "faster": 3.0, "cosine": 0.99}


def cpu() -> dict:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    name = re.search(r"model name\s*:\s*(.*)", info)
    flags = set(re.findall(r"\b(avx512_vnni|avx_vnni|amx_int8|avx512f|avx2)\b", info))
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else []
    return {"model": name.group(1).strip() if name else platform.processor(),
            "isa": sorted(flags), "avx512_vnni": "avx512_vnni" in flags,
            "cores": len(re.findall(r"^processor", info, re.M)), "loadavg": load}


def build(work: Path, sentences: Path, distill_epochs: int) -> dict:
    """Every model of bench/text.yaml, made by the pipeline's step functions."""
    from shrinkflow.core.machine import has_int8_dot_product
    from shrinkflow.data.prepare import data_record
    from shrinkflow.models.checkpoint import model_record
    from shrinkflow.plan.params import load_params
    from shrinkflow.steps.base import Context, kind
    from shrinkflow.steps.convert import ConvertStep
    from shrinkflow.steps.quantize import resolve_weight_bits

    params = load_params(REPO / "bench" / "text.yaml", [f"prepare.path={sentences}"])
    int8 = has_int8_dot_product()

    def step(name: str, kind_name: str, config, **inputs):
        out = work / name
        done = out / "record.json"
        if done.is_file():
            rec = json.loads(done.read_text())
            if rec["config"] == config.model_dump(mode="json"):
                return rec["type"], rec["record"]
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        t0 = time.perf_counter()
        r = kind(kind_name).run(config, Context(out_dir=out, threads=1, model=name), **inputs)
        print(f"  {name}: {kind_name} {time.perf_counter() - t0:.1f} s", flush=True)
        done.write_text(json.dumps({"config": config.model_dump(mode="json"),
                                    "type": type(r).__name__, "record": r.model_dump(mode="json")}))
        return type(r).__name__, r.model_dump(mode="json")

    from shrinkflow.core.records import RECORD_TYPES

    def rec(pair):
        return RECORD_TYPES[pair[0]].model_validate(pair[1])

    data = rec(step("prepare", "prepare", params.prepare.resolved(REPO)))
    data = data_record(data.path)
    teacher = rec(step("teacher", "train", params.train, data=data))
    teacher = model_record(teacher.path)
    conv = ConvertStep(**params.convert.model_dump(), target="onnxruntime")
    onnx = {"teacher": rec(step("teacher_onnx", "convert", conv, data=data, model=teacher))}
    models = {"teacher": teacher}
    for name in params.variant_order():
        v = params.variants[name]
        parent = models[v.from_]
        current = parent
        for s in v.torch_steps:
            if s.kind == "distill_layers" and distill_epochs:
                s = s.model_copy(update={"fit": s.fit.model_copy(update={"epochs": distill_epochs})})
            current = rec(step(f"{name}_{s.kind}", s.kind, s, data=data, model=current))
        models[name] = current
        float_onnx = onnx.get(v.from_) if v.onnx_quantize and not v.torch_steps else None
        if float_onnx is None:
            float_onnx = rec(step(f"{name}_onnx", "convert", conv, data=data, model=current))
        if v.onnx_quantize:
            q = resolve_weight_bits(v.onnx_quantize, int8)
            onnx[name] = rec(step(f"{name}_q", "quantize", q, data=data, model=current,
                                  export=float_onnx))
        else:
            onnx[name] = float_onnx
    return {"params": params, "data": data, "models": models, "onnx": onnx}


def measure(built: dict, batch: int, rounds: int, repeats: int, warmup: int) -> dict:
    import numpy as np
    import torch

    from shrinkflow.core import stats
    from shrinkflow.data.prepare import load_raw
    from shrinkflow.models import text
    from shrinkflow.models.checkpoint import load_checkpoint
    from shrinkflow.targets.onnxruntime import OnnxRuntime

    torch.set_num_threads(1)
    arrays, _ = load_raw(built["data"].path)
    every = np.concatenate([arrays[f"x_{s}"] for s in ("train", "val", "test")]).astype(np.int64)
    batches = []
    for i in range(0, len(every) - batch + 1, batch):
        b = every[i:i + batch]
        width = int(b[:, 1].sum(1).max())
        batches.append(np.ascontiguousarray(b[:, :, :width]))
    x_test = arrays["x_test"].astype(np.int64)

    teacher, _ = load_checkpoint(built["models"]["teacher"].path)
    teacher.eval()

    def torch_runner(model):
        def run(x):
            with torch.inference_mode():
                return model(torch.from_numpy(x)).numpy()
        return run

    runners = {"torch fp32": torch_runner(teacher)}
    for name, export in built["onnx"].items():
        runners[f"onnx {name}"] = OnnxRuntime.load(export.path, 1)
    reference = text.embed(teacher, x_test)
    quality, sizes = {}, {}
    state = sum(t.numel() * t.element_size() for t in teacher.state_dict().values())
    sizes["torch fp32"] = state
    for label, run in runners.items():
        out = np.concatenate([run(x_test[i:i + batch]) for i in range(0, len(x_test), batch)])
        c = text.cosine(out, reference)
        quality[label] = (float(c.mean()), float(c.min()))
        if label != "torch fp32":
            sizes[label] = Path(built["onnx"][label.removeprefix("onnx ")].path).stat().st_size
    samples = {label: [] for label in runners}
    names = list(runners)
    start = time.perf_counter()
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for label in order:
            run = runners[label]
            for i in range(warmup):
                run(batches[i % len(batches)])
            times = []
            for i in range(repeats):
                xb = batches[(r * repeats + i) % len(batches)]
                t0 = time.perf_counter()
                run(xb)
                times.append((time.perf_counter() - t0) * 1e3)
            samples[label].append(times)
        print(f"  round {r + 1}/{rounds}", flush=True)
    rows = []
    for label in names:
        flat = [t for rr in samples[label] for t in rr]
        p50 = stats.quantile_interval(flat, 0.5)
        speed = stats.ratio_interval(samples["torch fp32"], samples[label])
        rows.append({"model": label, "size_bytes": sizes[label],
                     "smaller": sizes["torch fp32"] / sizes[label],
                     "p50_ms": p50.estimate, "p50_low": p50.low, "p50_high": p50.high,
                     "faster": speed.estimate, "faster_low": speed.low, "faster_high": speed.high,
                     "mean_cosine": quality[label][0], "min_cosine": quality[label][1]})
    return {"rows": rows, "seconds": round(time.perf_counter() - start, 1),
            "batches": len(batches), "test_sentences": len(x_test),
            "mean_tokens": float(np.mean([b[:, 1].sum(1).mean() for b in batches])),
            "samples": samples}


def verdict(row: dict) -> str:
    if row["model"] == "torch fp32":
        return "reference"
    ok = (row["smaller"] >= TARGET["smaller"], row["faster"] >= TARGET["faster"],
          row["mean_cosine"] >= TARGET["cosine"])
    return "**meets**" if all(ok) else "misses: " + ", ".join(
        w for w, good in zip(("size", "speed", "cosine"), ok, strict=True) if not good)


def write(result: dict, out: Path, command: str, machine: dict, args) -> None:
    import onnxruntime
    import torch

    lines = [
        "# all-MiniLM-L6-v2: torch fp32 vs its compressed forms",
        "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  ",
        f"CPU: {machine['model']}, {machine['cores']} cores; ISA: {', '.join(machine['isa'])}  ",
        f"`grep -o avx512_vnni /proc/cpuinfo`: {'yes' if machine['avx512_vnni'] else 'no'}  ",
        f"Load average at start: {' '.join(machine['loadavg'])} (shared machine; models are "
        "interleaved per round so load drift hits all alike)  ",
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}; 1 intra-op thread; "
        f"batch {args.batch} ({result['batches']} batches of the sentence file, "
        f"{result['mean_tokens']:.1f} tokens per sentence on average, each batch padded to "
        f"its longest); {args.rounds} rounds x {args.repeats} calls (+{args.warmup} warm-up) "
        f"per model; quality on the {result['test_sentences']} test sentences.",
        "",
        f"Target for int8: >= {TARGET['smaller']}x smaller and >= {TARGET['faster']}x faster "
        f"than torch fp32 at batch {args.batch}, 1 thread, mean cosine >= {TARGET['cosine']}.",
        "",
        "| model | size MB | x smaller | p50 ms (95 % CI) | x faster (95 % CI) | mean cosine | "
        "min cosine | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['model']} | {r['size_bytes'] / 1e6:.2f} | {r['smaller']:.2f} | "
            f"{r['p50_ms']:.1f} ({r['p50_low']:.1f}-{r['p50_high']:.1f}) | "
            f"{r['faster']:.2f} ({r['faster_low']:.2f}-{r['faster_high']:.2f}) | "
            f"{r['mean_cosine']:.4f} | {r['min_cosine']:.4f} | {verdict(r)} |")
    lines += [
        "",
        "Models: `onnx teacher` = fp32 ONNX (dynamo export + ONNX Runtime BERT fusions: GELU "
        "and bias-GELU fused, SkipLayerNormalization fusion off); `onnx dyn8` = ONNX Runtime "
        "dynamic int8, per-channel weights; `onnx static8` = static int8 QDQ (MinMax "
        "calibration on the validation sentences; MatMul and Gather, the feed-forward "
        "down-projections kept float); `onnx l3` = 3 of the 6 layers (0, 2, 5) initialised "
        "from the teacher and distilled on the training sentences; `onnx l3_dyn8` = that, "
        "dynamic int8. Size: torch fp32 = its state dict's bytes; ONNX = the file.",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    doc = {k: v for k, v in result.items() if k != "samples"}
    out.with_suffix(".json").write_text(json.dumps(
        {**doc, "machine": machine, "command": command, "samples_ms": result["samples"]},
        indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", default="tests/data/sentences.txt")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--distill-epochs", type=int, default=0, help="0: bench/text.yaml's")
    ap.add_argument("--work", default="bench/work/text")
    ap.add_argument("--out", default="bench/results/text.md")
    args = ap.parse_args()

    from shrinkflow.core.env import setup

    setup()
    machine = cpu()
    command = "python bench/text.py " + " ".join(sys.argv[1:])
    print("building models (pipeline steps) ...", flush=True)
    built = build(REPO / args.work, (REPO / args.sentences).resolve(), args.distill_epochs)
    print("measuring ...", flush=True)
    result = measure(built, args.batch, args.rounds, args.repeats, args.warmup)
    write(result, REPO / args.out, command.strip(), machine, args)
    print((REPO / args.out).read_text())


if __name__ == "__main__":
    main()
