"""The layer contract: each layer imports only the layers below it, and the library
never imports Prefect. ``python -m tests.contracts`` (run by ``make lint``) prints every
violation; ``tests/unit/test_contracts.py`` fails on any.

import-linter cannot check this tree: ``shrinkflow.tasks`` and ``shrinkflow.flows`` are
mapped from the repository's ``tasks/`` and ``flows/``, which its graph builder does not
follow. This uses the same import scanner as the step code hashes (function-level
imports included, so a hidden cycle is still a violation).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Top to bottom: a module may import its own layer and the layers below it.
LAYERS = ("app", "flows", "tasks", "audit", "ops", "plan", "decide", "steps", "targets",
          "models", "data", "core")
SOURCES = {"tasks": REPO / "tasks", "flows": REPO / "flows"}
LIBRARY = ("audit", "ops", "plan", "decide", "steps", "targets", "models", "data", "core")
FORBIDDEN_IN_LIBRARY = ("prefect", "prefect_dask")


def layer_files() -> dict[str, list[Path]]:
    out = {}
    for layer in LAYERS:
        root = SOURCES.get(layer, REPO / "shrinkflow" / layer)
        out[layer] = sorted(root.rglob("*.py"))
    return out


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in ``path``, at any nesting level."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def violations() -> list[str]:
    out = []
    for layer, files in layer_files().items():
        rank = LAYERS.index(layer)
        for path in files:
            rel = path.relative_to(REPO)
            for line, module in imported(path):
                parts = module.split(".")
                if parts[0] in FORBIDDEN_IN_LIBRARY and layer in LIBRARY:
                    out.append(f"{rel}:{line}: the library imports {module} (only tasks/ and "
                               "flows/ may)")
                if parts[0] != "shrinkflow" or len(parts) < 2 or parts[1] not in LAYERS:
                    continue
                if LAYERS.index(parts[1]) < rank:
                    out.append(f"{rel}:{line}: layer '{layer}' imports {module} from the "
                               f"higher layer '{parts[1]}'")
    return out


def main() -> int:
    found = violations()
    for v in found:
        print(v)
    print(f"layer contract: {len(found)} violation(s) ({' > '.join(LAYERS)})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
