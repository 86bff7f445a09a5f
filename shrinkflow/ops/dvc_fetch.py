"""Fetch one object (a file or a directory listing and its files) by md5 from any DVC
remote into the workspace's DVC cache, through DVC's own API, so ``audit --verify`` and
``reproduce`` work with every remote DVC supports (S3, SSH, a local directory, ...).

Run in a subprocess (``python -m shrinkflow.ops.dvc_fetch ROOT MD5 [REMOTE...]``):
DVC's repository object works relative to the process's working directory.
"""

from __future__ import annotations

import json
import os
import sys


def fetch(root: str, md5: str, remotes: list[str]) -> tuple[str, list[str]]:
    """Pull ``md5`` from the first of ``remotes`` (None: the default) that holds it.
    Returns (where it came from, what is still missing)."""
    from dvc.repo import Repo
    from dvc_data.hashfile.hash_info import HashInfo

    os.chdir(root)
    with Repo(root) as repo:
        cache = repo.cache.local

        def have(oid: str) -> bool:
            return os.path.isfile(cache.oid_to_path(oid))

        def missing_of(oids: list[str]) -> list[str]:
            return [o for o in oids if not have(o)]

        where = "dvc cache"
        for remote in [None, *remotes] if remotes else [None]:
            if have(md5) and (not md5.endswith(".dir") or not missing_of(_children(cache, md5))):
                return where, []
            try:
                repo.cloud.pull([HashInfo("md5", md5)], remote=remote)
                if have(md5) and md5.endswith(".dir"):
                    children = missing_of(_children(cache, md5))
                    repo.cloud.pull([HashInfo("md5", o) for o in children], remote=remote)
            except Exception:  # this remote is unreachable or lacks it: try the next one
                continue
            where = f"dvc remote '{remote or repo.config['core'].get('remote', 'default')}'"
        if not have(md5):
            return "", [md5]
        return where, missing_of(_children(cache, md5)) if md5.endswith(".dir") else []


def _children(cache, md5: str) -> list[str]:
    with open(cache.oid_to_path(md5)) as f:
        return [entry["md5"] for entry in json.load(f)]


def main(argv: list[str]) -> int:
    root, md5, *remotes = argv
    where, missing = fetch(root, md5, remotes)
    print(json.dumps({"where": where, "missing": missing}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
