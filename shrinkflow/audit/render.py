"""The chain of a registered model as a tree (terminal), Mermaid text or a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from shrinkflow.audit.resolve import Report
from shrinkflow.core import machine


def _own_steps(report: Report, i: int):
    """The chain entries model ``i`` added to its parent's."""
    models = report.models
    return models[i].chain[len(models[i + 1].chain) - 1:] if i + 1 < len(models) \
        else models[i].chain


def render_tree(report: Report):
    from rich.tree import Tree

    v, models = report.registered, report.models
    if v:
        root = Tree(f"[bold]{v['name']} v{v['version']}[/] aliases: "
                    f"{', '.join(v['aliases']) or '-'}")
        if v.get("description"):
            root.add(v["description"])
        for e in v["events"]:
            root.add(f"{e['at']} {e['action']} by {e['by']} ({e['user']}): {e['reason']}")
        node = root.add(f"variant run {models[0].run_id} ({models[0].model.name})")
    else:
        root = Tree(f"[bold]run {models[0].run_id}[/] ({models[0].model.name})")
        node = root
    for i, r in enumerate(models):
        m = r.model
        label = node if i == 0 else node.add(f"parent: [bold]{m.name}[/] run {r.run_id}")
        label.add(f"ONNX sha256 {m.onnx.sha256[:16]}… (MLflow copy "
                  f"{(m.onnx.mlflow_sha256 or '')[:16]}…), quantization {m.quantization}"
                  + (f", {m.weight_bits}-bit weights" if m.weight_bits else "")
                  + (f", calibration subset {m.calibration_fingerprint[:16]}…"
                     if m.calibration_fingerprint else ""))
        acc = r.metrics.get("onnx_test_accuracy")
        if acc is not None:
            label.add(f"metrics: ORT accuracy {acc * 100:.2f} %, size "
                      f"{r.metrics.get('size_bytes', 0) / 1000:.1f} KB, "
                      f"{r.metrics.get('macs', 0) / 1e6:.2f}M MACs")
        steps = label.add("steps")
        for s in _own_steps(report, i):
            secs = f", {s.seconds:.1f} s" if s.seconds is not None else ""
            where = f" on {s.worker}" if s.worker else ""
            steps.add(f"{s.step}: config {s.config_hash}{secs}{where}, output "
                      f"{s.output_hash[:16]}… {json.dumps(s.config, sort_keys=True)[:160]}")
        node = label
    d = models[-1].data
    data = node.add(f"data: {d.dataset}, fingerprint {d.fingerprint[:16]}…, split seed "
                    f"{d.split_seed}, counts {d.counts}")
    data.add(f"DVC: {d.dvc.path} md5 {d.dvc.md5}" if d.dvc
             else "DVC: not recorded (run was not committed to dvc.lock)")
    data.add(f"source fingerprint {(d.source_fingerprint or '')[:16]}…")
    code = models[0].code
    node.add(f"code: git {code.git_commit} (dirty: {code.git_dirty}), source hash "
             f"{code.code_hash}")
    for m in models[0].machine.get("steps", [])[:3]:
        node.add(f"machine: {machine.describe(m)}; torch {m.get('torch', '?')}, oneDNN "
                 f"{m.get('onednn', '?')}")
    env = models[0].environment
    node.add("environment: " + ", ".join(f"{k} {v}" for k, v in env.items() if k != "platform"))
    return root


def mermaid(report: Report) -> str:
    lines = ["graph TD"]
    models, v = report.models, report.registered
    if v:
        lines.append(f'  REG["{v["name"]} v{v["version"]}<br/>{", ".join(v["aliases"])}"]')
        lines.append("  REG --> M0")
    for i, r in enumerate(models):
        steps = " → ".join(s.step for s in _own_steps(report, i))
        lines.append(f'  M{i}["{r.model.name}<br/>{steps}<br/>onnx {r.model.onnx.sha256[:12]}"]')
        if i + 1 < len(models):
            lines.append(f"  M{i + 1} --> M{i}")
    d = models[-1].data
    lines.append(f'  D["data {d.dataset}<br/>{d.fingerprint[:12]}"] --> M{len(models) - 1}')
    c = models[0].code
    lines.append(f'  C["code {c.git_commit[:10]}<br/>dirty {c.git_dirty}"] -.-> M0')
    return "\n".join(lines) + "\n"


def graph_png(report: Report, path: str | Path) -> None:
    """The chain as boxes top to bottom: data -> teacher -> ... -> model -> version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(reversed(report.models))
    d = models[0].data
    boxes = [f"data: {d.dataset}\nfingerprint {d.fingerprint[:12]}"]
    for r in models:
        boxes.append(f"{r.model.name}\n" + " → ".join(s.step for s in r.chain[-3:])
                     + f"\nonnx {r.model.onnx.sha256[:12]}")
    if report.registered:
        v = report.registered
        boxes.append(f"{v['name']} v{v['version']}\n{', '.join(v['aliases'])}")
    fig, ax = plt.subplots(figsize=(6, 1.4 * len(boxes)), dpi=100)
    for i, text in enumerate(boxes):
        y = len(boxes) - i
        ax.text(0.5, y, text, ha="center", va="center", fontsize=9,
                bbox={"boxstyle": "round", "fc": "#e8f0fe", "ec": "#3367d6"})
        if i:
            ax.annotate("", xy=(0.5, y + 0.3), xytext=(0.5, y + 0.7),
                        arrowprops={"arrowstyle": "->"})
    ax.set_xlim(0, 1)
    ax.set_ylim(0.3, len(boxes) + 0.7)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
