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
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEPLOYMENT = "shrinkflow-retrain/nightly"
# The one quantization step the third run changes (variant p80_ft_q8 in params.yaml).
QUANT_BEFORE = "- quantize: {method: static, calibrator: minmax, per_channel: true}"
QUANT_AFTER = "- quantize: {method: static, calibrator: entropy, per_channel: true}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what}: process exited with {proc.returncode}")
        try:
            if predicate():
                return
        except Exception:
            pass
        time.sleep(1)
    raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=bench@localhost", "-c", "user.name=bench", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "schedule")
    ap.add_argument("--keep", action="store_true", help="keep the temporary workspace and logs")
    args = ap.parse_args()

    sys.path.insert(0, str(REPO))
    from shrinkflow.env import setup

    setup()
    if QUANT_BEFORE not in (REPO / "params.yaml").read_text():
        raise SystemExit(f"params.yaml: no line '{QUANT_BEFORE}'; update QUANT_BEFORE in {__file__}")

    tmp = Path(tempfile.mkdtemp(prefix="shrinkflow-schedule-"))
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp / "prefect-home"), "PREFECT_API_URL": ""}
    ws = _workspace(tmp)
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=open(tmp / "server.log", "w"),  # noqa: SIM115 (lives as long as the process)
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    serve = None
    rows: list[dict] = []
    try:
        def healthy() -> bool:
            return urllib.request.urlopen(f"{url}/health", timeout=2).status == 200

        _wait(healthy, 180, "the Prefect server", server)
        os.environ["PREFECT_API_URL"] = url
        os.environ["PREFECT_HOME"] = env["PREFECT_HOME"]
        serve = subprocess.Popen(
            [sys.executable, "-m", "shrinkflow.cli", "serve", "--workspace", str(ws)],
            env={**env, "PREFECT_API_URL": url},
            cwd=ws,
            stdout=open(tmp / "serve.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        from prefect.client.orchestration import get_client
        from prefect.deployments import run_deployment

        def deployed() -> bool:
            with get_client(sync_client=True) as client:
                return client.read_deployment_by_name(DEPLOYMENT) is not None

        _wait(deployed, 180, "the served deployment", serve)

        def trigger(label: str) -> None:
            start = time.perf_counter()
            flow_run = run_deployment(DEPLOYMENT, timeout=3600, poll_interval=1)
            wall = time.perf_counter() - start
            if not flow_run.state.is_completed():
                raise SystemExit(f"{label}: flow run ended {flow_run.state.name}; see {tmp}/serve.log")
            result = flow_run.state.result()
            rows.append(
                {
                    "run": label,
                    "result": result.status,
                    "wall_s": round(wall, 1),
                    "flow_run_s": round(flow_run.total_run_time.total_seconds(), 1),
                    "changed": " ".join(result.changed) or "-",
                    "recomputed": len(result.computed),
                    "reused": len(result.reused),
                    "teacher_retrained": "train" in result.computed,
                    "recomputed_steps": " ".join(result.computed[:6])
                    + (" …" if len(result.computed) > 6 else ""),
                }
            )
            print(rows[-1], flush=True)

        trigger("first (cold step cache)")
        trigger("unchanged")
        params = ws / "params.yaml"
        params.write_text(params.read_text().replace(QUANT_BEFORE, QUANT_AFTER))
        trigger("only p80_ft_q8's calibrator changed")
        trigger("unchanged again")
    finally:
        if serve is not None:
            _stop(serve)
        _stop(server)

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "schedule.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cols = [*(c for c in rows[0] if c != "changed")]
    lines = [
        "# shrinkflow scheduled runs (real Prefect server, `shrinkflow serve`, default params.yaml)",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "---|" * len(cols),
        *("| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows),
        "",
        "wall_s: `run_deployment` call to finished state; flow_run_s: the flow run's own time.",
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
