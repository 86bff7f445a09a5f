"""The MLflow model registry: challenger -> champion promotion behind a rule, rollback,
and a record of every move on the version it moved.

Aliases: ``challenger`` (the newest selected model), ``champion`` (what serves),
``previous`` (the champion before it, the target of a rollback). A move re-reads the
champion inside a lock and compares against what it finds (compare-and-set), so two
pipelines finishing together cannot both leave their model as champion unchecked.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from shrinkflow.config import Params
from shrinkflow.errors import ShrinkflowError
from shrinkflow.tracking import TAG, client

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
METRIC_TAG = f"{TAG}metric."
EVENTS_TAG = f"{TAG}events"
KEY_METRICS = ("onnx_test_accuracy", "test_accuracy", "size_bytes", "size_gzip_bytes",
               "latency_p50_ms_b1", "latency_p50_ms_b256", "parity_top1_agreement",
               "parity_max_abs_diff", "accuracy_drop_pp", "sparsity", "params")


class Promotion(BaseModel):
    """What a promotion attempt did, and why."""

    name: str
    version: str
    promoted: bool
    reason: str
    champion_before: str | None = None
    champion_after: str | None = None


# --- small helpers ------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def get_alias(c, name: str, alias: str):
    """The version holding ``alias``, or None."""
    try:
        return c.get_model_version_by_alias(name, alias)
    except Exception as exc:  # MLflow raises RestException / MlflowException when unset
        if "not found" in str(exc).lower() or "RESOURCE_DOES_NOT_EXIST" in str(exc) \
                or "alias" in str(exc).lower():
            return None
        raise


def version_metrics(mv) -> dict[str, float]:
    return {k[len(METRIC_TAG):]: float(v) for k, v in mv.tags.items() if k.startswith(METRIC_TAG)}


def record_event(c, name: str, version: str, action: str, command: str, reason: str) -> None:
    """Append a move to the version's history (tag ``shrinkflow.events``, JSON list)."""
    mv = c.get_model_version(name, version)
    events = json.loads(mv.tags.get(EVENTS_TAG, "[]"))
    events.append({"at": _now(), "action": action, "by": command, "user": getpass.getuser(),
                   "reason": reason})
    blob = json.dumps(events)
    while len(blob) > 4900 and len(events) > 1:  # tag values are capped at 5000 chars
        events.pop(0)
        blob = json.dumps(events)
    c.set_model_version_tag(name, version, EVENTS_TAG, blob)
    c.set_model_version_tag(name, version, f"{TAG}last_action", f"{action} ({_now()})")


def events(mv) -> list[dict[str, str]]:
    return json.loads(mv.tags.get(EVENTS_TAG, "[]"))


@contextlib.contextmanager
def promotion_lock(uri: str, name: str, timeout: float = 120.0) -> Iterator[None]:
    """Serialise alias moves of one registered model.

    SQLite (the embedded default): an OS file lock beside the database, exact across
    processes on this machine. A tracking server: a lease written as a registered-model
    tag and read back after a pause; the compare-and-set inside still re-reads the
    champion, so a lost race is detected rather than silently overwritten.
    """
    if uri.startswith("sqlite:///"):
        from filelock import FileLock, Timeout

        path = Path(uri[len("sqlite:///"):])
        lock = FileLock(str(path.with_name(f".{path.name}.{name}.promote.lock")))
        try:
            with lock.acquire(timeout=timeout):
                yield
        except Timeout:
            raise ShrinkflowError(f"registry {name}: another promotion held the lock for "
                                  f"{timeout:.0f} s; retry") from None
        return
    c = client(uri)
    token, key, deadline = uuid.uuid4().hex, f"{TAG}promotion_lock", time.time() + timeout
    while True:
        current = c.get_registered_model(name).tags.get(key, "")
        holder, _, expires = current.partition("@")
        if not holder or float(expires or 0) < time.time():
            c.set_registered_model_tag(name, key, f"{token}@{time.time() + 60}")
            time.sleep(0.5)
            if c.get_registered_model(name).tags.get(key, "").startswith(token):
                break
        if time.time() > deadline:
            raise ShrinkflowError(f"registry {name}: promotion lock busy; retry")
        time.sleep(1.0)
    try:
        yield
    finally:
        c.delete_registered_model_tag(name, key)


# --- register ---------------------------------------------------------------------------


def register(uri: str, name: str, model_uri: str, run_id: str, values: dict[str, float],
             tags: dict[str, str], command: str) -> str:
    """Register ``model_uri`` (a logged ONNX model) as a new version with its key metrics
    and lineage tags, and give it the ``challenger`` alias. Returns the version."""
    c = client(uri)
    try:
        c.get_registered_model(name)
    except Exception:
        c.create_registered_model(name, description="Models selected by shrinkflow: "
                                  "aliases champion, challenger, previous.")
    sha = tags.get(f"{TAG}onnx_sha256")
    if sha:  # the same ONNX file selected again (nothing changed): no duplicate version
        for mv in c.search_model_versions(f"name='{name}'"):
            if mv.tags.get(f"{TAG}onnx_sha256") == sha:
                version = str(mv.version)
                c.set_registered_model_alias(name, CHALLENGER, version)
                record_event(c, name, version, CHALLENGER, command,
                             "selected again: the same ONNX file as this version")
                return version
    all_tags = {**tags, **{f"{METRIC_TAG}{k}": f"{values[k]:.8g}" for k in KEY_METRICS
                           if k in values}}
    mv = c.create_model_version(name, source=model_uri, run_id=run_id, tags=all_tags)
    version = str(mv.version)
    c.set_registered_model_alias(name, CHALLENGER, version)
    record_event(c, name, version, CHALLENGER, command,
                 tags.get(f"{TAG}selection", "selected by the pipeline"))
    return version


# --- compare ---------------------------------------------------------------------------


def evaluate_onnx(model_uri: str, x_test: np.ndarray, y_test: np.ndarray) -> dict[str, float]:
    """Accuracy and size of a registered ONNX model, measured now on ``x_test``."""
    import mlflow.onnx
    import onnxruntime as ort

    proto = mlflow.onnx.load_model(model_uri)
    blob = proto.SerializeToString()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    logits = np.concatenate([sess.run(None, {name: x_test[i:i + 1024]})[0]
                             for i in range(0, len(x_test), 1024)])
    return {"onnx_test_accuracy": float((logits.argmax(1) == y_test).mean()),
            "size_bytes": float(len(blob))}


def challenger_wins(challenger: dict[str, float], champion: dict[str, float],
                    params: Params) -> tuple[bool, str]:
    """The promotion rule: accurate enough against the champion, and better on the
    selection objective by at least ``registry.min_objective_gain``."""
    from shrinkflow.selection import objective_score

    rule = params.registry
    loss = (champion["onnx_test_accuracy"] - challenger["onnx_test_accuracy"]) * 100
    if loss > rule.max_accuracy_loss_pp:
        return False, (f"{loss:.2f} pp less accurate than the champion (allowed "
                       f"{rule.max_accuracy_loss_pp:g})")
    key = f"latency_p50_ms_b{params.gates.latency_batch}"
    # The weighted objective is relative to a teacher; against the champion, normalise
    # by the champion itself.
    score_c = objective_score(challenger, champion, params.select, key)
    score_ch = objective_score(champion, champion, params.select, key)
    objective = params.select.objective
    # Relative improvement (scores are lower-is-better; most_accurate's are negative).
    gain = (score_ch - score_c) / max(abs(score_ch), 1e-12)
    if not gain > rule.min_objective_gain:
        return False, (f"not better on '{objective}' ({gain * 100:+.2f} %, need "
                       f"> {rule.min_objective_gain * 100:g} %) at {-loss:+.2f} pp accuracy")
    return True, f"better on '{objective}' by {gain * 100:.2f} % at {-loss:+.2f} pp accuracy"


# --- moves ---------------------------------------------------------------------------


def _move_champion(c, name: str, version: str, old, command: str, reason: str) -> None:
    c.set_registered_model_alias(name, CHAMPION, version)
    record_event(c, name, version, CHAMPION, command, reason)
    if old is not None:
        c.set_registered_model_alias(name, PREVIOUS, str(old.version))
        record_event(c, name, str(old.version), PREVIOUS, command,
                     f"replaced as champion by version {version}")


def promote(uri: str, name: str, version: str | None, params: Params, command: str,
            test_data: tuple[np.ndarray, np.ndarray, str] | None = None,
            force: bool = False, reason: str | None = None) -> Promotion:
    """Try to make ``version`` (default: the challenger) the champion.

    Inside the lock the champion is re-read and the rule applied against *that* version
    (compare-and-set). When the champion was evaluated on other data than
    ``test_data`` (x, y, fingerprint), both are re-measured on ``test_data`` now.
    A forced promotion skips the rule but needs a reason.
    """
    if force and not reason:
        raise ShrinkflowError("promote --force needs --reason: say why the rule is bypassed")
    c = client(uri)
    with promotion_lock(uri, name):
        if version is None:
            challenger = get_alias(c, name, CHALLENGER)
            if challenger is None:
                raise ShrinkflowError(f"registry {name}: no challenger to promote; run the "
                                      "pipeline or pass --version")
            version = str(challenger.version)
        try:
            mv = c.get_model_version(name, version)
        except Exception:
            raise ShrinkflowError(f"registry {name}: no version {version} (see "
                                  "`shrinkflow models`)") from None
        old = get_alias(c, name, CHAMPION)
        before = str(old.version) if old is not None else None
        if old is not None and str(old.version) == version:
            record_event(c, name, version, "kept", command, "already the champion")
            return Promotion(name=name, version=version, promoted=False,
                             reason="already the champion", champion_before=before,
                             champion_after=before)
        if force:
            why = f"forced: {reason}"
            _move_champion(c, name, version, old, command, why)
            return Promotion(name=name, version=version, promoted=True, reason=why,
                             champion_before=before, champion_after=version)
        if mv.tags.get(f"{TAG}gate") == "fail":
            why = "failed its gates: " + mv.tags.get(f"{TAG}gate_reasons", "")
            record_event(c, name, version, "not promoted", command, why)
            return Promotion(name=name, version=version, promoted=False, reason=why,
                             champion_before=before, champion_after=before)
        if old is None:
            why = "no champion yet; passed its gates"
            _move_champion(c, name, version, None, command, why)
            return Promotion(name=name, version=version, promoted=True, reason=why,
                             champion_after=version)
        ours, theirs = version_metrics(mv), version_metrics(old)
        data_fp = test_data[2] if test_data else mv.tags.get(f"{TAG}data_fingerprint")
        if old.tags.get(f"{TAG}data_fingerprint") != data_fp \
                or mv.tags.get(f"{TAG}data_fingerprint") != data_fp:
            if test_data is None:
                raise ShrinkflowError(
                    f"registry {name}: champion v{old.version} and v{version} were measured "
                    "on different data; run `shrinkflow promote` in the workspace whose "
                    "prepared data should decide")
            x, y, _ = test_data
            ours.update(evaluate_onnx(f"models:/{name}/{version}", x, y))
            theirs.update(evaluate_onnx(f"models:/{name}/{old.version}", x, y))
            note = " (both re-evaluated on the current test data)"
        else:
            note = " (same test data)"
        wins, why = challenger_wins(ours, theirs, params)
        why = f"vs champion v{old.version}: {why}{note}"
        if wins:
            _move_champion(c, name, version, old, command, why)
            return Promotion(name=name, version=version, promoted=True, reason=why,
                             champion_before=before, champion_after=version)
        record_event(c, name, version, "not promoted", command, why)
        return Promotion(name=name, version=version, promoted=False, reason=why,
                         champion_before=before, champion_after=before)


def rollback(uri: str, name: str, command: str, reason: str | None = None) -> Promotion:
    """champion <- previous; the demoted champion becomes ``previous`` (so a second
    rollback undoes the first)."""
    c = client(uri)
    with promotion_lock(uri, name):
        old, prev = get_alias(c, name, CHAMPION), get_alias(c, name, PREVIOUS)
        if prev is None:
            raise ShrinkflowError(f"registry {name}: no 'previous' version to roll back to")
        why = f"rollback{': ' + reason if reason else ''}"
        c.set_registered_model_alias(name, CHAMPION, str(prev.version))
        record_event(c, name, str(prev.version), CHAMPION, command, why)
        if old is not None:
            c.set_registered_model_alias(name, PREVIOUS, str(old.version))
            record_event(c, name, str(old.version), "rolled back", command, why)
        return Promotion(name=name, version=str(prev.version), promoted=True, reason=why,
                         champion_before=str(old.version) if old else None,
                         champion_after=str(prev.version))


def list_versions(uri: str, name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, newest first, with aliases and key metrics."""
    c = client(uri)
    try:
        rm = c.get_registered_model(name)
    except Exception:
        raise ShrinkflowError(f"registry: no registered model {name!r} at {uri}; run the "
                              "pipeline first (or pass --name)") from None
    aliases: dict[str, list[str]] = {}
    for alias, v in (rm.aliases or {}).items():
        aliases.setdefault(str(v), []).append(alias)
    rows = []
    for mv in c.search_model_versions(f"name='{name}'"):
        ev = events(mv)
        rows.append({"version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                     "variant": mv.tags.get(f"{TAG}variant", ""),
                     "gate": mv.tags.get(f"{TAG}gate", ""), "metrics": version_metrics(mv),
                     "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC)
                     .isoformat(timespec="seconds"),
                     "last_event": ev[-1] if ev else {}, "run_id": mv.run_id})
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


def test_data_of(data) -> tuple[np.ndarray, np.ndarray, str]:
    """(x_test, y_test, fingerprint) of prepared data: what a promotion compares on."""
    from shrinkflow.data import load_prepared

    splits = load_prepared(data.path)
    return splits.x_test, splits.y_test, data.fingerprint


def lineage_chain(params: Params, name: str) -> list[str]:
    """teacher -> ... -> name."""
    chain = [name]
    while chain[0] != "teacher":
        chain.insert(0, params.variants[chain[0]].from_)
    return chain
