"""Wall time of scheduled runs against a real Prefect server, side by side in one run.

    .venv/bin/python bench/schedule.py [--out bench/results/schedule]

In a temporary clone of this repository (its committed files, a local DVC remote) it
starts ``prefect server`` on 127.0.0.1 and ``shrinkflow serve``, then triggers the
deployment through the API four times: a full first run (cold step cache), an unchanged
run, a run after changing only one variant's calibrator, and an unchanged run again.
Writes ``schedule.md`` and ``schedule.csv``: result, wall time from trigger to finished,
the flow run's own time, and what was recomputed or reused.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENT = "shrinkflow-retrain/nightly"
# The one quantization step the third run changes (variant p80_ft_q8 in params.yaml).
QUANT_BEFORE = "- quantize: {method: static, calibrator: minmax, per_channel: true}"
QUANT_AFTER = "- quantize: {method: static, calibrator: entropy, per_channel: true}"


def _workspace(tmp: Path) -> Path:
    """A clone of the committed repository with its own local DVC remote."""
    ws = tmp / "ws"
    subprocess.run(["git", "clone", "-q", str(REPO), str(ws)], check=True)
    subprocess.run(
        [sys.executable, "-m", "dvc", "remote", "add", "-d", "--local", "-f", "bench", str(tmp / "r")],
        cwd=ws,
        check=True,
        capture_output=True,
    )
    return ws


def _row(label: str, flow_run, wall: float, triggered: float) -> dict:
    """One trigger's figures. Where the wall time went, from the flow run's own
    timestamps: created -> running (the runner's pick-up, the flow's process start and
    imports), running -> finished (the flow itself), finished -> seen by the caller."""
    result = flow_run.state.result()
    start = flow_run.start_time.timestamp() if flow_run.start_time else triggered
    end = flow_run.end_time.timestamp() if flow_run.end_time else triggered + wall
    return {
        "run": label,
        "result": result.status,
        "wall_s": round(wall, 1),
        "to_running_s": round(start - triggered, 1),
        "flow_run_s": round(flow_run.total_run_time.total_seconds(), 1),
        "after_s": round(triggered + wall - end, 1),
        "changed": " ".join(result.changed) or "-",
        "recomputed": len(result.computed),
        "reused": len(result.reused),
        "teacher_retrained": "teacher:train" in result.computed,
        "recomputed_steps": " ".join(result.computed[:6]) + (" …" if len(result.computed) > 6 else ""),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "schedule")
    ap.add_argument("--keep", action="store_true", help="keep the temporary workspace and logs")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    from shrinkflow.core.env import setup

    setup()
    if QUANT_BEFORE not in (REPO / "params.yaml").read_text():
        raise SystemExit(f"params.yaml: no line '{QUANT_BEFORE}'; update QUANT_BEFORE in {__file__}")

    from shrinkflow.app.localserver import prefect_server, serving

    tmp = Path(tempfile.mkdtemp(prefix="shrinkflow-schedule-"))
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home")}
    ws = _workspace(tmp)
    rows: list[dict] = []
    with prefect_server(env, tmp / "server.log") as url:
        os.environ["PREFECT_API_URL"] = url
        os.environ["PREFECT_HOME"] = env["PREFECT_HOME"]
        with serving(ws, url, DEPLOYMENT, env, tmp / "serve.log"):
            from prefect.deployments import run_deployment

            def trigger(label: str) -> None:
                triggered, start = time.time(), time.perf_counter()
                flow_run = run_deployment(DEPLOYMENT, timeout=3600, poll_interval=1)
                wall = time.perf_counter() - start
                if not flow_run.state.is_completed():
                    state = flow_run.state.name
                    raise SystemExit(f"{label}: flow run ended {state}; see {tmp}/serve.log")
                rows.append(_row(label, flow_run, wall, triggered))
                print(rows[-1], flush=True)

            trigger("first (cold step cache)")
            trigger("unchanged")
            params = ws / "params.yaml"
            params.write_text(params.read_text().replace(QUANT_BEFORE, QUANT_AFTER))
            trigger("only p80_ft_q8's calibrator changed")
            trigger("unchanged again")

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "schedule.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cols = [c for c in rows[0] if c != "changed"]
    lines = [
        "# shrinkflow scheduled runs (real Prefect server, `shrinkflow serve`, default params.yaml)",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        *("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows),
        "",
        "wall_s: `run_deployment` call to finished state; to_running_s: call to the flow run's "
        "start (the runner's pick-up, the flow process's start and imports); flow_run_s: the "
        "flow run's own time; after_s: its end to the caller seeing it.",
    ]
    (args.out / "schedule.md").write_text("\n".join(lines) + "\n")
    if args.keep:
        print(f"workspace and logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote {args.out / 'schedule.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
