"""Transfer from a registered model vs training from scratch, same epochs.

    .venv/bin/python bench/transfer.py                      # defaults: short demo run
    .venv/bin/python bench/transfer.py --source-train 6000 --epochs 6 --max-train 200

1. Source: a fresh clone of this repository trains the default CNN on Fashion-MNIST
   (Debian's dataset-fashion-mnist; ``--source-train`` examples) with ``shrinkflow run``:
   the real pipeline registers it and makes it ``champion``.
2. Target: "an MNIST-like npz the user brings": sklearn's digits upscaled to 28x28
   (uint8, 0..255), saved as ``x``/``y`` in an npz.
3. Three teachers on the target, each ``--epochs`` epochs on ``--max-train`` training
   examples (no early stopping), run by shrinkflow's executor: from scratch;
   ``train.init_from: models:/shrinkflow-fashion-mnist@champion`` (new classifier, all
   layers trained); and the same with ``train.freeze: [features]`` (only the head trains).

Prints validation accuracy per epoch and the test accuracy of each, and writes the table
to ``--out`` (default ``bench/results/transfer.md``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def source_model(work: Path, n_train: int, epochs: int) -> tuple[str, str]:
    """Train and register the Fashion-MNIST model; returns (tracking URI, model URI)."""
    ws = work / "fashion"
    if not (ws / ".git").is_dir():
        subprocess.run(["git", "clone", "-q", str(REPO), str(ws)], check=True)
    overrides = ["prepare.dataset=fashion-mnist", f"prepare.max_train={n_train}",
                 f"train.epochs={epochs}", f"train.patience={epochs}", "variants={}",
                 "targets=[onnxruntime]", "base.dvc_commit=false", "base.dvc_push=false",
                 "validate.repeats_b1=10", "validate.repeats_b256=3", "validate.warmup=1",
                 "validate.rounds=3", "validate.max_rounds=4"]
    args = [a for o in overrides for a in ("--set", o)]
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "shrinkflow.app.cli", "run", *args,
                          "--workspace", str(ws)], cwd=ws, capture_output=True, text=True,
                         env=os.environ.copy(), timeout=3600)
    if out.returncode not in (0,):
        sys.exit(f"source run failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    print(f"source: Fashion-MNIST teacher trained and registered in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return f"sqlite:///{ws / 'mlflow.db'}", "models:/shrinkflow-fashion-mnist@champion"


def target_npz(path: Path) -> Path:
    """sklearn digits (8x8, 0..16) upscaled to 28x28 uint8: MNIST-like."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.stack([np.asarray(Image.fromarray((img * 255 / 16).astype(np.uint8))
                             .resize((28, 28), Image.Resampling.BILINEAR)) for img in d.images])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x=x.astype(np.uint8), y=d.target.astype(np.int64))
    return path


def teacher(ws: Path, overrides: list[str]) -> tuple[list[float], float, float]:
    """Train one teacher on the target with the executor: (val accuracy per epoch, test
    accuracy, seconds)."""
    import torch

    from shrinkflow.core.workspace import Workspace
    from shrinkflow.data.prepare import load_prepared
    from shrinkflow.models.checkpoint import load_checkpoint, read_checkpoint
    from shrinkflow.plan.executor import execute
    from shrinkflow.plan.params import load_params
    from shrinkflow.plan.plan import build_plan

    params = load_params(None, overrides)
    plan = build_plan(params, ws)
    start = time.perf_counter()
    records = execute(plan, Workspace.at(ws), wanted=["teacher:train"])
    seconds = time.perf_counter() - start
    path = records["teacher:train"].output().path
    history = [h["val_accuracy"] for h in read_checkpoint(path)["history"]]
    net, _ = load_checkpoint(path)
    splits = load_prepared(records["prepare"].output().path)
    with torch.no_grad():
        test = float((net(torch.from_numpy(splits.x_test)).argmax(1).numpy()
                      == splits.y_test).mean())
    return history, test, seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "work" / "transfer")
    ap.add_argument("--source-train", type=int, default=6000)
    ap.add_argument("--source-epochs", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--max-train", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "transfer.md")
    args = ap.parse_args()

    from shrinkflow.core.env import setup

    setup()
    import shrinkflow.ops  # noqa: F401  (resolves models:/ URIs for the plan)

    args.work.mkdir(parents=True, exist_ok=True)
    store, source = source_model(args.work, args.source_train, args.source_epochs)
    target = args.work / "target"
    target_npz(target / "data" / "digits28.npz")
    common = ["prepare.dataset=npz", "prepare.path=data/digits28.npz",
              f"prepare.max_train={args.max_train}", f"train.epochs={args.epochs}",
              f"train.patience={args.epochs}", f"train.batch_size={args.batch_size}",
              f"train.lr={args.lr}", f"base.tracking_uri={store}", "variants={}"]
    runs = {"scratch": [],
            "transfer": [f"train.init_from={source}"],
            "transfer, features frozen": [f"train.init_from={source}", "train.freeze=[features]"]}
    results = {}
    for name, extra in runs.items():
        results[name] = teacher(target, [*common, *extra])
        print(f"{name}: test accuracy {results[name][1]:.4f} ({results[name][2]:.0f} s)",
              flush=True)

    from mlflow.tracking import MlflowClient

    ref = source[len("models:/"):]
    mv = MlflowClient(store).get_model_version_by_alias(*ref.split("@"))
    src_acc = MlflowClient(store).get_run(mv.run_id).data.metrics.get("onnx_test_accuracy")
    print(f"source {source} (version {mv.version}): Fashion-MNIST test accuracy {src_acc}")
    names = list(results)
    lines = ["| epoch | " + " | ".join(f"{n} (val acc)" for n in names) + " |",
             "| ---: | " + " | ".join("---:" for _ in names) + " |"]
    for e in range(args.epochs):
        cells = [f"{results[n][0][e]:.4f}" if e < len(results[n][0]) else "" for n in names]
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    lines.append("| test | " + " | ".join(f"**{results[n][1]:.4f}**" for n in names) + " |")
    table = "\n".join(lines)
    print(table)
    command = (f".venv/bin/python bench/transfer.py --source-train {args.source_train} "
               f"--source-epochs {args.source_epochs} --epochs {args.epochs} "
               f"--max-train {args.max_train} --batch-size {args.batch_size} --lr {args.lr}")
    text = f"""# Transfer from a registered model vs training from scratch

Command: `{command}`

Source: `{source}` — the default CNN trained by `shrinkflow run` on
{args.source_train} Fashion-MNIST images (Debian's dataset-fashion-mnist) for
{args.source_epochs} epochs, registered and promoted by the pipeline (version {mv.version};
Fashion-MNIST test accuracy {src_acc:.4f} on the official 10k test split, ONNX Runtime).

Target: sklearn's digits upscaled to 28x28 (uint8), an npz as a user brings it;
{args.max_train} training examples (stratified), validation and test splits from
`prepare` (15 % / 20 % of the 1797 images). Every teacher trains
{args.epochs} epochs (batch {args.batch_size}, Adam lr {args.lr}, cosine schedule, the same
seed, no early stopping);
the transferred ones start from the champion's weights with a new 10-way classifier
(`train.init_from`), the last one with `train.freeze: [features]` (only the head trains).

{table}

Machine: {platform.machine()}, {os.cpu_count()} CPUs visible (shared), torch threads 1.
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
