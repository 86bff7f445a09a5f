"""shrinkflow: train, compress, convert, validate and prove; see README.md."""

from pathlib import Path as _Path

# In a source checkout, shrinkflow.tasks and shrinkflow.flows are the tasks/ and flows/
# beside this package. An editable install maps those names to the checkout it was made
# from, so another checkout run with the same environment (a clone for a benchmark, a
# second workspace) would mix its own library with that checkout's flows: search this
# checkout first (the path finder runs before the editable finder).
_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "flows" / "__init__.py").is_file() \
        and (_root / "tasks" / "__init__.py").is_file():
    __path__.append(str(_root))  # noqa: F821 (a package's own __path__)
