"""Stability and speed of the default pipeline, measured, not assumed.

    .venv/bin/python bench/stability.py --runs 10          # N cold runs, fresh workspaces
    .venv/bin/python bench/stability.py --workers 1,2      # cold wall time by worker count
    .venv/bin/python bench/stability.py --verdicts 10      # re-validate N times, idle and busy

Cold runs: each in a fresh clone of the committed repository (its own DVC remote, MLflow
store and step store; one Prefect home for all, created before the first, as a user's
~/.prefect), ``shrinkflow run --json``; counts failures and records the wall time and
where it went (compute, steps' own time, Prefect, MLflow, DVC, registry).

Verdicts: in one workspace, after a first run, ``shrinkflow run --force latency`` N times
with the machine otherwise idle, then N times with a busy-loop process pinned to one
core; counts the runs whose gate verdicts and selected model equal the first run's.

Writes ``stability.md`` and ``stability.json`` to ``--out`` (default
``bench/results/stability``), naming the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


def clone(tmp: Path, name: str) -> Path:
    ws = tmp / name
    subprocess.run(["git", "clone", "-q", str(REPO), str(ws)], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-d", "--local", "-f", "bench",
                    str(tmp / f"{name}-remote")], cwd=ws, check=True, capture_output=True)
    return ws


def shrinkflow_run(ws: Path, *args: str, env: dict | None = None) -> tuple[int, float, dict, str]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "shrinkflow.app.cli", "run", "--json", *args,
                          "--workspace", str(ws)], cwd=ws, capture_output=True, text=True,
                         env={**os.environ, **(env or {})}, timeout=3600)
    wall = time.perf_counter() - start
    try:
        doc = json.loads(out.stdout[out.stdout.index("{"):])
    except ValueError:
        doc = {}
    return out.returncode, wall, doc, out.stderr[-2000:]


def verdicts(doc: dict) -> dict:
    """Which models fail their gates and which is selected, on every target (the reasons'
    numbers are measurements and vary; the verdicts must not)."""
    out = {"rejected": sorted(doc.get("rejected", {})), "selected": doc.get("selected")}
    for t, d in sorted(doc.get("targets", {}).items()):
        out[t] = {"rejected": sorted(d.get("rejected", {})), "selected": d.get("selected")}
    return out


def kept(doc: dict) -> list[str]:
    """Models whose speed gate kept its remembered outcome in this run."""
    return doc.get("speed_kept", []) + [f"{t}:{n}" for t, d in doc.get("targets", {}).items()
                                        for n in d.get("speed_kept", [])]


def cold_runs(n: int, tmp: Path, extra: list[str]) -> list[dict]:
    rows = []
    for i in range(n):
        ws = clone(tmp, f"cold{i}")
        env = {"PREFECT_HOME": str(prefect_home(tmp))}
        code, wall, doc, err = shrinkflow_run(ws, *extra, env=env)
        rows.append({"run": i + 1, "exit": code, "wall_s": round(wall, 1),
                     "timing": doc.get("timing", {}), "selected": doc.get("selected"),
                     "error": err.strip().splitlines()[-1] if code else "", **dag(ws)})
        print(f"cold run {i + 1}/{n}: exit {code}, {wall:.0f} s", flush=True)
        shutil.rmtree(ws, ignore_errors=True)
    return rows


def prefect_home(tmp: Path) -> Path:
    """One Prefect home for every cold run, as a user has (~/.prefect): its database is
    created and migrated once, here, not inside the first measured run (that costs ~7 s
    of a temporary server's start)."""
    home = tmp / "prefect"
    if not home.is_dir():
        code = ("from prefect.server.api.server import SubprocessASGIServer\n"
                "s = SubprocessASGIServer(); s.start(timeout=180); s.stop()\n")
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PREFECT_HOME": str(home)},
                       check=True, capture_output=True, timeout=600)
    return home


def dag(ws: Path) -> dict:
    """The parallel phase (every step but the latency measurements, which run alone),
    from the step store: its span and the steps' own seconds in it."""
    from gantt import steps

    rows = [r for r in steps(ws) if r["kind"] != "latency"]
    if not rows:
        return {}
    span = max(r["end"] for r in rows) - min(r["start"] for r in rows)
    return {"dag_span_s": round(span, 1), "dag_busy_s": round(sum(r["seconds"] for r in rows), 1)}


def cluster_start() -> float:
    """Seconds for a LocalCluster of two processes to have its workers ready."""
    from distributed import Client, LocalCluster

    start = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        return time.perf_counter() - start


def verdict_runs(n: int, tmp: Path) -> dict:
    ws = clone(tmp, "verdicts")
    env = {"PREFECT_HOME": str(tmp / "prefect-v")}
    code, _, first, err = shrinkflow_run(ws, env=env)
    assert code == 0, err
    out = {"first": verdicts(first)}
    for label in ("idle", "busy"):
        hog = None
        if label == "busy":  # a busy loop pinned to core 0, all along
            # It spins until this script's process is gone, even if the script is killed.
            spin = (f"import os\nwhile os.getppid() == {os.getpid()}:\n"
                    "    for _ in range(10**6): pass\n")
            hog = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-c", spin])
        try:
            same, held, runs = 0, 0, []
            for i in range(n):
                code, wall, doc, err = shrinkflow_run(ws, "--force", "latency", env=env)
                v = verdicts(doc)
                same += int(code == 0 and v == out["first"])
                held += int(bool(kept(doc)))
                runs.append({"exit": code, "wall_s": round(wall, 1), "kept": kept(doc), **v})
                print(f"{label} {i + 1}/{n}: identical={v == out['first']} kept={kept(doc)}",
                      flush=True)
        finally:
            if hog:
                hog.kill()
        out[label] = {"identical": same, "kept": held, "runs": runs}
    return out


def main() -> int:
    from shrinkflow.core import env, machine

    env.setup()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=0, help="cold runs, each in a fresh workspace")
    ap.add_argument("--workers", default="", help="e.g. 1,2: one cold run per worker count")
    ap.add_argument("--verdicts", type=int, default=0, help="validation re-runs per condition")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "stability")
    args = ap.parse_args()
    where = machine.describe(machine.fingerprint())
    result: dict = {"machine": machine.fingerprint(), "commit": subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()}
    lines = [f"# shrinkflow stability ({machine.cpu()['isa_kind']})", "", f"Machine: {where}.",
             f"Commit: {result['commit'][:12]}.", ""]
    with tempfile.TemporaryDirectory(prefix="shrinkflow-stability-") as d:
        tmp = Path(d)
        if args.runs:
            rows = cold_runs(args.runs, tmp, [])
            result["cold"] = rows
            failures = sum(r["exit"] != 0 for r in rows)
            lines += [f"## Cold runs: {failures} failure(s) in {len(rows)}", "",
                      "| run | exit | wall s | compute s | steps' own s | parallel phase s "
                      "(steps' own s in it) | selected | error |",
                      "|---|---|---|---|---|---|---|---|"]
            lines += [f"| {r['run']} | {r['exit']} | {r['wall_s']} | "
                      f"{r['timing'].get('compute', '-')} | {r['timing'].get('steps_own', '-')} | "
                      f"{r.get('dag_span_s', '-')} ({r.get('dag_busy_s', '-')}) | "
                      f"{r['selected']} | {r['error']} |" for r in rows]
            lines.append("")
        if args.workers:
            result["cluster_start_s"] = round(cluster_start(), 2)
            rows = []
            for w in [int(x) for x in args.workers.split(",")]:
                r = cold_runs(1, tmp, ["--set", f"base.parallel_steps={w}"])[0]
                rows.append({"workers": w, **r})
            result["workers"] = rows
            lines += ["## Worker processes (one cold run each)", "",
                      f"A LocalCluster of 2 processes is ready in {result['cluster_start_s']} s "
                      "(measured alone).", "",
                      "| workers | exit | wall s | compute s | steps' own s | parallel phase s "
                      "(steps' own s in it) | Prefect API s | MLflow s | DVC s | registry s | "
                      "report s |", "|" + "---|" * 11]
            for r in rows:
                t = r["timing"]
                lines.append(f"| {r['workers']} | {r['exit']} | {r['wall_s']} | "
                             f"{t.get('compute')} | {t.get('steps_own')} | "
                             f"{r.get('dag_span_s', '-')} ({r.get('dag_busy_s', '-')}) | "
                             f"{t.get('prefect_api')} | "
                             f"{round(t.get('mlflow_start', 0) + t.get('mlflow_models', 0), 2)} | "
                             f"{t.get('dvc')} | {t.get('registry')} | {t.get('report')} |")
            if len(rows) == 2 and rows[1]["timing"].get("compute"):
                lines += ["", "Compute-phase speed-up with "
                          f"{rows[1]['workers']} workers: "
                          f"{rows[0]['timing']['compute'] / rows[1]['timing']['compute']:.2f}x."]
            lines.append("")
        if args.verdicts:
            v = verdict_runs(args.verdicts, tmp)
            result["verdicts"] = v
            lines += ["## Verdict stability (`shrinkflow run --force latency`)", "",
                      f"First run: selected `{v['first']['selected']}`, rejected "
                      f"{sorted(v['first']['rejected'])}.", "",
                      "| condition | runs with identical gate verdicts and selection (every "
                      "target) | runs where a remembered speed verdict was kept |", "|---|---|---|",
                      f"| idle | {v['idle']['identical']}/{args.verdicts} | "
                      f"{v['idle']['kept']}/{args.verdicts} |",
                      f"| one core busy (taskset -c 0 busy loop) | {v['busy']['identical']}/"
                      f"{args.verdicts} | {v['busy']['kept']}/{args.verdicts} |", "",
                      "A kept verdict: that run's measurement alone would have decided the "
                      "other way, by less than validate.hysteresis (see README).", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "stability.md").write_text("\n".join(lines) + "\n")
    (args.out / "stability.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
