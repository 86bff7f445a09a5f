"""The run report: every model's metrics and gate verdict, the Pareto frontier, the
choice and where latency was measured, as markdown plus a PNG plot (and the data the
plot is made from, for ``dvc plots``)."""

from __future__ import annotations

from pathlib import Path

from shrinkflow.core import stats
from shrinkflow.core.files import atomic_path
from shrinkflow.decide.select import Decision, ModelResult
from shrinkflow.steps.validate import accuracy_key


def _speed(verdict) -> str:
    c = verdict.speed_vs_parent
    if not c:
        return "-"
    i = stats.Interval(c["speedup_estimate"], c["speedup_low"], c["speedup_high"],
                       c["speedup_confidence"], int(c["speedup_n"]))
    kept = " (earlier outcome kept: within validate.hysteresis)" if c.get("kept") else ""
    return f"{c['verdict']}: {stats.describe(i)}{kept}"


def target_section(results: list[ModelResult], decision: Decision,
                   promotion: str | None = None) -> list[str]:
    """One target's table: every model, its verdict and why."""
    key = accuracy_key(decision.target)
    lines = [f"## {decision.target}", "",
             f"Selected: **{decision.selected or 'none'}** — {decision.why}.", ""]
    if promotion:
        lines += [f"Registry: {promotion}", ""]
    lines += ["| model | parent | acc % | drop pp | size KB | gzip KB | MACs | b1 ms | b256 ms "
              "(95 % CI) | speed vs parent | sparsity | gates | frontier | reasons |",
              "|" + "---|" * 14]
    teacher = results[0].values
    for m in results:
        v, verdict = m.values, decision.verdicts[m.name]
        if m.failure or not teacher:
            lines.append(f"| {m.name} | {verdict.parent or '-'} |" + " - |" * 10 +
                         f" FAIL | | {'; '.join(verdict.reasons)} |")
            continue
        drop = (teacher[key] - v[key]) * 100
        mark = "**selected**" if m.name == decision.selected else (
            "yes" if verdict.on_frontier else "")
        ci = ""
        if "latency_p50_ms_b256_low" in v:
            ci = f" ({v['latency_p50_ms_b256_low']:.3f}–{v['latency_p50_ms_b256_high']:.3f})"
        lines.append(
            f"| {m.name} | {verdict.parent or '-'} | {v[key] * 100:.2f} | "
            f"{drop:+.2f} | {v['size_bytes'] / 1000:.1f} | {v['size_gzip_bytes'] / 1000:.1f} | "
            f"{v.get('macs', 0) / 1e6:.2f}M | {v.get('latency_p50_ms_b1', 0):.3f} | "
            f"{v.get('latency_p50_ms_b256', 0):.3f}{ci} | {_speed(verdict)} | "
            f"{v.get('sparsity', 0) * 100:.0f} % | {'pass' if verdict.passed else 'FAIL'} | "
            f"{mark} | {'; '.join(verdict.reasons)} |")
    return [*lines, ""]


def markdown(decisions: dict[str, tuple[list[ModelResult], Decision]], title: str,
             moves: dict[str, str] | None = None, machine: str = "") -> str:
    lines = [f"# {title}", ""]
    if machine:
        lines += [f"Latency measured on: {machine}", ""]
    for target, (results, decision) in decisions.items():
        lines += target_section(results, decision, (moves or {}).get(target))
    lines += ["Sizes are artifacts on disk; gzip shows what unstructured pruning's zeros "
              "would save compressed. Latency: p50 of one runtime call over interleaved rounds; "
              "speed vs parent: paired t-interval over rounds of the log ratio of each round's "
              "fastest call, widened by validate.resolution. MACs: multiply-accumulates per "
              "sample counted from the graph.", ""]
    return "\n".join(lines)


def pareto_points(results: list[ModelResult], decision: Decision,
                  latency_key: str = "latency_p50_ms_b256") -> list[dict]:
    """The plot's data: one row per model (what ``dvc plots show`` reads)."""
    key = accuracy_key(decision.target)
    return [{"model": m.name, "size_kb": round(m.values["size_bytes"] / 1000, 3),
             "accuracy": round(m.values[key] * 100, 4),
             "latency_ms": round(m.values.get(latency_key, 0.0), 6),
             "macs": m.values.get("macs", 0.0),
             "gate": "pass" if decision.verdicts[m.name].passed else "fail",
             "frontier": decision.verdicts[m.name].on_frontier,
             "selected": m.name == decision.selected} for m in results if not m.failure]


def pareto_plot(results: list[ModelResult], decision: Decision, path: str | Path,
                latency_key: str = "latency_p50_ms_b256") -> None:
    """Accuracy against size (log scale); marker area ~ latency; frontier joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = accuracy_key(decision.target)
    results = [m for m in results if not m.failure]
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=110)
    lat = [m.values.get(latency_key, 0.0) for m in results]
    scale = 300 / max(max(lat), 1e-9)
    for m in results:
        v, verdict = m.values, decision.verdicts[m.name]
        color = "tab:green" if verdict.passed else "tab:red"
        if m.name == decision.selected:
            color = "tab:blue"
        ax.scatter(v["size_bytes"] / 1000, v[key] * 100,
                   s=20 + v.get(latency_key, 0.0) * scale, c=color, alpha=0.7,
                   edgecolors="k" if verdict.on_frontier else "none")
        ax.annotate(m.name, (v["size_bytes"] / 1000, v[key] * 100),
                    fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = sorted((m for m in results if decision.verdicts[m.name].on_frontier),
                   key=lambda m: m.values["size_bytes"])
    if front:
        ax.plot([m.values["size_bytes"] / 1000 for m in front],
                [m.values[key] * 100 for m in front], "k--", lw=0.8,
                label="Pareto frontier (passing)")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("artifact size (KB, log scale)")
    ax.set_ylabel("test accuracy on the runtime (%)")
    ax.set_title("green: passes gates · red: rejected · blue: selected · area: latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_report(decisions: dict[str, tuple[list[ModelResult], Decision]], out_dir: str | Path,
                 stem: str, title: str, moves: dict[str, str] | None = None, machine: str = ""
                 ) -> tuple[Path, Path]:
    """reports/<stem>.md (every target) and reports/<stem>.png (the default target's plot)."""
    out = Path(out_dir)
    md, png = out / f"{stem}.md", out / f"{stem}.png"
    text = markdown(decisions, title, moves, machine)
    text += f"\n![Pareto plot]({png.name})\n"
    with atomic_path(md) as tmp:
        tmp.write_text(text)
    results, decision = next(iter(decisions.values()))
    pareto_plot(results, decision, png)
    return md, png
