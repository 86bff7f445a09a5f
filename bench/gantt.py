"""Where a cold run's compute phase went: each step's start and end on its worker, read
from the step store's records (``created`` is a step's end, ``seconds`` its own time).

    .venv/bin/python bench/gantt.py WORKSPACE [--since ISO-TIME]

Prints, per worker, its busy time and the gaps between its steps (the time a worker
waited: for a dependency, for the scheduler, or for Prefect's task-run bookkeeping),
and the critical path's share. Only steps computed after ``--since`` (default: all).
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path


def steps(ws: Path, since: float = 0.0) -> list[dict]:
    out = []
    for path in (ws / ".shrinkflow" / "store").glob("*/*/record.json"):
        r = json.loads(path.read_text())
        if not r.get("created"):
            continue
        end = datetime.fromisoformat(r["created"].replace("Z", "+00:00")).timestamp()
        if end < since:
            continue
        out.append({"id": r["step_id"], "kind": r["kind"], "worker": r.get("worker", ""),
                    "start": end - r["seconds"], "end": end, "seconds": r["seconds"]})
    return sorted(out, key=lambda s: s["start"])


def summary(rows: list[dict]) -> list[str]:
    if not rows:
        return ["no computed steps"]
    t0, t1 = min(r["start"] for r in rows), max(r["end"] for r in rows)
    lines = [f"{len(rows)} steps, {t1 - t0:.1f} s from the first start to the last end, "
             f"{sum(r['seconds'] for r in rows):.1f} s of steps' own time"]
    by_worker: dict[str, list[dict]] = {}
    for r in rows:
        by_worker.setdefault(r["worker"], []).append(r)
    for w, rs in sorted(by_worker.items()):
        busy = sum(r["seconds"] for r in rs)
        gaps = [b["start"] - a["end"] for a, b in zip(rs, rs[1:], strict=False)]
        lines.append(f"  {w or '?'}: {len(rs)} steps, busy {busy:.1f} s, gaps {sum(gaps):.1f} s "
                     f"(median {sorted(gaps)[len(gaps) // 2] if gaps else 0:.2f} s, "
                     f"max {max(gaps, default=0):.1f} s)")
    kinds: dict[str, float] = {}
    for r in rows:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + r["seconds"]
    lines.append("  by kind: " + ", ".join(f"{k} {v:.1f} s" for k, v in
                                            sorted(kinds.items(), key=lambda kv: -kv[1])))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--since", default="", help="ISO time: only steps that ended after it")
    ap.add_argument("--json", action="store_true", help="print every step as JSON")
    args = ap.parse_args()
    since = datetime.fromisoformat(args.since).timestamp() if args.since else 0.0
    rows = steps(args.workspace, since)
    if args.json:
        print(json.dumps(rows, indent=1))
    print("\n".join(summary(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
