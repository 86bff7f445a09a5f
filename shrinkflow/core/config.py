"""Config building blocks: the frozen, strict ``Section`` every params section derives
from, the stable hash used for cache keys and tags, and YAML reading with one-line errors.

Each section is declared by the module that reads it (a step declares its own config);
``shrinkflow.plan.params`` assembles them into the whole ``params.yaml``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError

from shrinkflow.core.errors import ShrinkflowError

# Integers are strict (``epochs: true`` is not 1); seeds fit every RNG we seed.
Int = Annotated[int, Strict()]
Seed = Annotated[int, Strict(), Field(ge=0, le=2**32 - 1)]


class Section(BaseModel):
    """A params section: unknown keys are refused, values are immutable after parsing."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def config_hash(self) -> str:
        """Short, stable hash of this section's values (tags, cache keys, lineage)."""
        return stable_hash(self.model_dump(mode="json"))


def stable_hash(value: Any) -> str:
    """sha256 of canonical JSON, first 16 hex digits: stable across runs and machines."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_MESSAGES = {
    "greater_than": "must be > {gt}",
    "greater_than_equal": "must be >= {ge}",
    "less_than": "must be < {lt}",
    "less_than_equal": "must be <= {le}",
    "int_parsing": "must be an integer",
    "int_type": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "model_type": "must be a mapping of keys",
    "dict_type": "must be a mapping of keys",
    "too_short": "needs at least {min_length} item(s)",
    "string_too_short": "must not be empty",
    "string_pattern_mismatch": "must match {pattern}",
    "missing": "missing (required)",
}


def format_error(err: dict[str, Any]) -> str:
    """One pydantic error as ``key.path: what is wrong (got value)``."""
    parts = [str(p) for p in err["loc"] if not str(p).startswith(("function-", "tagged"))]
    is_key = bool(parts) and parts[-1] == "[key]"  # a mapping's key, not a value, is wrong
    if is_key:
        parts = parts[:-1]
    loc = ".".join(parts).replace("validate_", "validate") or "<top level>"
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"{loc}: unknown key (check its spelling; see the shipped params.yaml for the keys)"
    if kind == "union_tag_invalid":
        return (f"{loc}: unknown {ctx.get('discriminator', 'kind').strip(chr(39))} "
                f"{ctx.get('tag')!r} (one of {ctx.get('expected_tags')})")
    if kind == "literal_error":
        what = "key " if is_key else ""
        if is_key:
            loc = loc.rsplit(".", 1)[0]
        return f"{loc}: {what}must be one of {ctx.get('expected')} (got {err.get('input')!r})"
    if kind in ("value_error", "assertion_error"):
        msg = str(ctx.get("error", err["msg"]))
        return msg if loc == "<top level>" else f"{loc}: {msg}"
    template = _MESSAGES.get(kind)
    msg = template.format(**ctx) if template else err["msg"]
    if "input" in err and not isinstance(err["input"], dict):
        shown = repr(err["input"])
        msg += f" (got {shown[:60] + '…' if len(shown) > 60 else shown})"
    return f"{loc}: {msg}"


def validate_section(cls: type[BaseModel], raw: Any, source: str) -> Any:
    """``cls.model_validate(raw)``; the first problem becomes one ShrinkflowError line."""
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
        first = format_error(errors[0])
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise ShrinkflowError(f"{source}: {first}{more}") from None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (value parsed as YAML) to a raw mapping."""
    for item in overrides:
        if "=" not in item:
            raise ShrinkflowError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=5")
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ShrinkflowError(f"--set {item!r}: empty key part in {key!r}")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise ShrinkflowError(f"--set {item!r}: value is not valid YAML ({problem})") from None
        node = raw
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ShrinkflowError(f"--set {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def read_yaml(path: Path, allow_empty: bool = False) -> dict[str, Any]:
    """Read a YAML mapping; a missing, unreadable, empty or malformed file names the file
    (and the line) in one error."""
    if not path.is_file():
        raise ShrinkflowError(f"{path}: params file not found (pass --params FILE)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ShrinkflowError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") \
            from None
    except OSError as exc:
        raise ShrinkflowError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ShrinkflowError(f"{path}:{where} YAML syntax error: {problem}") from None
    if raw is None:
        if allow_empty:
            return {}
        raise ShrinkflowError(f"{path}: the params file is empty (or only comments); copy the "
                              "shipped params.yaml and edit it")
    if not isinstance(raw, dict):
        raise ShrinkflowError(f"{path}: the top level must be a mapping of sections")
    return raw


def yaml_dump(raw: dict[str, Any]) -> str:
    """A mapping as YAML (key order kept), e.g. the effective params logged with a run."""
    return yaml.safe_dump(raw, sort_keys=False)
