"""DVC: record a flow's outputs in ``dvc.lock`` and push them to the remote.

The flow writes exactly the paths ``dvc.yaml`` declares, so ``dvc commit`` can hash
them into ``dvc.lock`` as if ``dvc repro`` had made them; a later ``dvc repro`` then
finds every stage up to date, and a clean clone can ``dvc pull`` the outputs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from shrinkflow.core.config import read_yaml
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.core.files import file_digest, file_sha256, parse_yaml
from shrinkflow.plan.params import Params, parse_params


def is_dvc_workspace(root: str | Path) -> bool:
    root = Path(root)
    return (root / ".dvc").is_dir() and (root / "dvc.yaml").is_file()


def params_match_file(params: Params, root: str | Path) -> bool:
    """True when the workspace's params.yaml holds exactly the params the run used.

    dvc.lock records params.yaml's values; committing outputs made with other values
    (``--set``, ``--params other.yaml``) would make the lock lie.
    """
    path = Path(root) / "params.yaml"
    if not path.is_file():
        return False
    try:
        on_disk = parse_params(read_yaml(path), source=str(path))
    except ShrinkflowError:
        return False
    return on_disk.dump() == params.dump()


def dvc(root: str | Path, *args: str, timeout: float = 600) -> str:
    """Run ``dvc ARGS`` in ``root`` in a subprocess (DVC's Python API depends on the
    process's working directory, which a flow must not change under its threads)."""
    out = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True,
                         text=True, timeout=timeout, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if out.returncode != 0:
        lines = [ln for ln in (out.stderr or out.stdout).strip().splitlines() if ln.strip()]
        detail = lines[-1] if lines else f"exit code {out.returncode}"
        raise ShrinkflowError(f"dvc {' '.join(args)} in {root}: {detail}; check .dvc/config "
                              "(remote) or run `dvc status` there")
    return out.stdout


def record_outputs(root: str | Path, push: bool = True, remote: str | None = None) -> dict[str, Any]:
    """``dvc commit`` every stage (outs into the cache, hashes into dvc.lock), then push.

    Returns what happened: the dvc.lock hash and the number of files pushed.
    """
    root = Path(root)
    dvc(root, "commit", "--force")
    pushed = push_outputs(root, remote)["dvc_pushed"] if push else 0
    lock = root / "dvc.lock"
    return {"dvc_lock_sha256": file_sha256(lock) if lock.is_file() else "",
            "dvc_pushed": pushed}


def push_outputs(root: str | Path, remote: str | None = None) -> dict[str, int]:
    """``dvc push`` what dvc.lock records; returns the number of files pushed."""
    text = dvc(Path(root), "push", *(["--remote", remote] if remote else []))
    match = re.search(r"(\d+) files? pushed", text)
    return {"dvc_pushed": int(match.group(1)) if match else 0}


def locked_out(root: str | Path, path: str) -> dict[str, Any] | None:
    """The entry dvc.lock records for output ``path`` (md5, size, nfiles), if any."""
    lock = Path(root) / "dvc.lock"
    if not lock.is_file():
        return None
    for stage in (parse_yaml(lock.read_text()) or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            if out.get("path") == path:
                return {k: out[k] for k in ("path", "md5", "size", "nfiles") if k in out}
    return None


def object_stores(root: str | Path) -> list[tuple[str, Path]]:
    """Where this workspace's DVC cache keeps content by md5 (remotes are reached through
    DVC itself: :func:`fetch`)."""
    root = Path(root)
    cache = root / ".dvc" / "cache"
    try:
        configured = dvc(root, "cache", "dir").strip()
        if configured:
            cache = Path(configured)
    except ShrinkflowError:
        pass
    return [("dvc cache", cache / "files" / "md5")]


def find_object(stores: list[tuple[str, Path]], md5: str) -> tuple[str, Path] | None:
    for label, base in stores:
        path = base / md5[:2] / md5[2:]
        if path.is_file():
            return label, path
    return None


def md5_file(path: str | Path) -> str:
    """md5 of a file, as DVC names its cache objects."""
    return file_digest(path, "md5")


def remotes(root: str | Path) -> list[str]:
    """Names of the workspace's DVC remotes, the default first."""
    try:
        default = dvc(root, "remote", "default").strip()
        names = [line.split()[0] for line in dvc(root, "remote", "list").splitlines()
                 if line.strip()]
    except ShrinkflowError:
        return []
    return sorted(names, key=lambda n: n != default)


def fetch(root: str | Path, md5: str) -> str:
    """Bring object ``md5`` (and a directory's files) into the workspace's DVC cache from
    whichever remote holds it, through DVC itself; returns where it was found ("" if
    nowhere)."""
    import json

    names = remotes(root)
    out = subprocess.run([sys.executable, "-m", "shrinkflow.ops.dvc_fetch", str(root), md5,
                          *names], capture_output=True, text=True, timeout=1800,
                         env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if out.returncode != 0:
        return ""
    try:
        result = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return ""
    return result["where"] if not result["missing"] else ""


def restore(dvc_entry: dict[str, Any], root: str | Path, dest: Path) -> tuple[str, list[str]]:
    """Copy the directory DVC recorded as ``dvc_entry`` (md5 ``….dir``) into ``dest``,
    fetched through DVC from the cache or any remote, checking every file's md5. Returns
    (where, problems)."""
    import json
    import shutil

    md5 = dvc_entry["md5"]
    stores = object_stores(root)
    found = find_object(stores, md5)
    where_fetched = ""
    if found is None or any(find_object(stores, e["md5"]) is None
                            for e in json.loads(found[1].read_text())):
        where_fetched = fetch(root, md5)
        found = find_object(stores, md5)
    if found is None:
        return "", [f"directory listing {md5} not in the DVC cache nor any remote "
                    f"({', '.join(remotes(root)) or 'none configured'})"]
    where, listing = found
    problems = []
    if md5_file(listing) != md5.removesuffix(".dir"):
        problems.append(f"listing {md5} is corrupt in {where}")
    dest.mkdir(parents=True, exist_ok=True)
    for entry in json.loads(listing.read_text()):
        obj = find_object(stores, entry["md5"])
        if obj is None:
            problems.append(f"{entry['relpath']}: md5 {entry['md5']} missing")
            continue
        if md5_file(obj[1]) != entry["md5"]:
            problems.append(f"{entry['relpath']}: md5 mismatch in {obj[0]}")
        shutil.copyfile(obj[1], dest / entry["relpath"])
    return where_fetched or where, problems
