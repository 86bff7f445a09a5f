"""The run report: every model's metrics and gate verdict, the Pareto frontier, the
choice, as markdown plus a PNG plot."""

from __future__ import annotations

from pathlib import Path

from shrinkflow.artifacts import Metrics, atomic_path
from shrinkflow.selection import Decision


def markdown(results: list[Metrics], decision: Decision, title: str,
             promotion: str | None = None) -> str:
    lines = [f"# {title}", "",
             f"Selected: **{decision.selected or 'none'}** — {decision.why}.", ""]
    if promotion:
        lines += [f"Registry: {promotion}", ""]
    lines += ["| model | parent | ORT acc % | drop pp | size KB | gzip KB | b1 ms | b256 ms | "
              "sparsity | gates | frontier | reasons |", "|" + "---|" * 12]
    teacher = results[0].values
    for m in results:
        v, verdict = m.values, decision.verdicts[m.name]
        drop = (teacher["onnx_test_accuracy"] - v["onnx_test_accuracy"]) * 100
        mark = "**selected**" if m.name == decision.selected else (
            "yes" if verdict.on_frontier else "")
        lines.append(
            f"| {m.name} | {verdict.parent or '-'} | {v['onnx_test_accuracy'] * 100:.2f} | "
            f"{drop:+.2f} | {v['size_bytes'] / 1000:.1f} | {v['size_gzip_bytes'] / 1000:.1f} | "
            f"{v['latency_p50_ms_b1']:.3f} | {v['latency_p50_ms_b256']:.3f} | "
            f"{v.get('sparsity', 0) * 100:.0f} % | {'pass' if verdict.passed else 'FAIL'} | "
            f"{mark} | {'; '.join(verdict.reasons)} |")
    lines += ["", "Sizes are ONNX files on disk; gzip shows what unstructured pruning's zeros "
              "would save compressed. Latency: p50 of one ONNX Runtime call.", ""]
    return "\n".join(lines)


def pareto_plot(results: list[Metrics], decision: Decision, path: str | Path,
                latency_key: str = "latency_p50_ms_b256") -> None:
    """Accuracy against size (log scale); marker area ~ latency; frontier joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    lat = [m.values[latency_key] for m in results]
    scale = 300 / max(lat)
    for m in results:
        v, verdict = m.values, decision.verdicts[m.name]
        color = "tab:green" if verdict.passed else "tab:red"
        if m.name == decision.selected:
            color = "tab:blue"
        ax.scatter(v["size_bytes"] / 1000, v["onnx_test_accuracy"] * 100,
                   s=20 + v[latency_key] * scale, c=color, alpha=0.7,
                   edgecolors="k" if verdict.on_frontier else "none")
        ax.annotate(m.name, (v["size_bytes"] / 1000, v["onnx_test_accuracy"] * 100),
                    fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = sorted((m for m in results if decision.verdicts[m.name].on_frontier),
                   key=lambda m: m.values["size_bytes"])
    if front:
        ax.plot([m.values["size_bytes"] / 1000 for m in front],
                [m.values["onnx_test_accuracy"] * 100 for m in front], "k--", lw=0.8,
                label="Pareto frontier (passing)")
    ax.set_xscale("log")
    ax.set_xlabel("ONNX size (KB, log scale)")
    ax.set_ylabel("test accuracy, ONNX Runtime (%)")
    ax.set_title("green: passes gates · red: rejected · blue: selected · area: latency")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_report(results: list[Metrics], decision: Decision, out_dir: str | Path, stem: str,
                 title: str, promotion: str | None = None) -> tuple[Path, Path]:
    out = Path(out_dir)
    md, png = out / f"{stem}.md", out / f"{stem}.png"
    text = markdown(results, decision, title, promotion)
    text += f"\n![Pareto plot]({png.name})\n"
    with atomic_path(md) as tmp:
        tmp.write_text(text)
    pareto_plot(results, decision, png)
    return md, png
