"""The MLflow model registry: challenger -> champion promotion behind a rule, rollback,
and the full history of every move.

Aliases per target: ``challenger`` (the newest selected model), ``champion`` (what
serves), ``previous`` (the champion before it, the target of a rollback) for the default
target (ONNX Runtime), and ``champion-<target>`` etc. for the others. A move re-reads
the champion inside a lock and compares against what it finds (compare-and-set), so two
pipelines finishing together cannot both leave their model as champion unchecked.

History: every move is one registered-model tag ``shrinkflow.event.<n>`` (JSON), so
nothing is ever dropped to fit a tag's size limit.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from shrinkflow.core import machine, stats
from shrinkflow.core.errors import ShrinkflowError
from shrinkflow.decide.promotion import RegistryParams, challenger_wins, needs_latency
from shrinkflow.decide.select import SelectParams
from shrinkflow.ops.tracking import TAG, call, client, sqlite_path
from shrinkflow.steps.validate import accuracy_key

DEFAULT_TARGET = "onnxruntime"
METRIC_TAG = f"{TAG}metric."
EVENT_TAG = f"{TAG}event."
LEGACY_EVENTS_TAG = f"{TAG}events"  # per-version list, written before the full log existed
KEY_METRICS = ("onnx_test_accuracy", "test_accuracy", "size_bytes", "size_gzip_bytes",
               "latency_p50_ms_b1", "latency_p50_ms_b256", "parity_top1_agreement",
               "parity_max_abs_diff", "accuracy_drop_pp", "sparsity", "params", "macs",
               "onnx_test_cosine")


def alias(role: str, target: str = DEFAULT_TARGET) -> str:
    """``champion`` for the default target, ``champion-openvino`` for another."""
    return role if target == DEFAULT_TARGET else f"{role}-{target}"


class Promotion(BaseModel):
    """What a promotion attempt did, and why."""

    name: str
    version: str
    promoted: bool
    reason: str
    target: str = DEFAULT_TARGET
    champion_before: str | None = None
    champion_after: str | None = None
    measurement: dict[str, Any] | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def get_alias(c, name: str, alias_: str):
    """The version holding ``alias_``, or None."""
    try:
        return c.get_model_version_by_alias(name, alias_)
    except Exception as exc:  # MLflow raises RestException / MlflowException when unset
        text = str(exc)
        if "not found" in text.lower() or "RESOURCE_DOES_NOT_EXIST" in text \
                or "alias" in text.lower():
            return None
        raise


def version_of(c, model_uri: str):
    """The registered version behind ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``."""
    ref = model_uri[len("models:/"):]
    try:
        if "@" in ref:
            name, alias_ = ref.split("@", 1)
            return c.get_model_version_by_alias(name, alias_)
        name, version = ref.rsplit("/", 1)
        return c.get_model_version(name, version)
    except Exception:
        raise ShrinkflowError(f"{model_uri}: no such registered version (see `shrinkflow "
                              "models`)") from None


def version_metrics(mv) -> dict[str, float]:
    return {k[len(METRIC_TAG):]: float(v) for k, v in mv.tags.items() if k.startswith(METRIC_TAG)}


def record_event(c, name: str, version: str, action: str, command: str, reason: str,
                 target: str = DEFAULT_TARGET, measurement: dict | None = None) -> dict:
    """Append a move to the registered model's history (one tag per event)."""
    event = {"at": _now(), "version": str(version), "target": target, "action": action,
             "by": command, "user": getpass.getuser(), "reason": reason}
    if measurement:
        event["measurement"] = measurement
    rm = c.get_registered_model(name)
    seq = 1 + max((int(k[len(EVENT_TAG):]) for k in (rm.tags or {})
                   if k.startswith(EVENT_TAG) and k[len(EVENT_TAG):].isdigit()), default=0)
    blob = json.dumps(event, sort_keys=True)
    if len(blob) > 4900 and measurement:  # keep the verdict, point to the summary
        event["measurement"] = {k: v for k, v in measurement.items() if k != "rounds"}
        blob = json.dumps(event, sort_keys=True)[:4900]
    c.set_registered_model_tag(name, f"{EVENT_TAG}{seq:06d}", blob)
    c.set_model_version_tag(name, str(version), f"{TAG}last_action",
                            f"{action} ({event['at']}): {reason}"[:4900])
    return event


def history(c, name: str, version: str | None = None) -> list[dict[str, Any]]:
    """Every recorded move of ``name`` (of one version if given), oldest first; includes
    the per-version lists written by earlier shrinkflow versions."""
    rm = c.get_registered_model(name)
    found = [json.loads(v) for k, v in sorted((rm.tags or {}).items()) if k.startswith(EVENT_TAG)]
    if version is not None:
        found = [e for e in found if e.get("version") == str(version)]
        mv = c.get_model_version(name, str(version))
        legacy = json.loads(mv.tags.get(LEGACY_EVENTS_TAG, "[]"))
        found = [{**e, "version": str(version)} for e in legacy] + found
    else:
        for mv in c.search_model_versions(f"name='{name}'"):
            legacy = json.loads(mv.tags.get(LEGACY_EVENTS_TAG, "[]"))
            found += [{**e, "version": str(mv.version)} for e in legacy]
    return sorted(found, key=lambda e: e.get("at", ""))


@contextlib.contextmanager
def promotion_lock(uri: str, name: str, timeout: float = 120.0) -> Iterator[None]:
    """Serialise alias moves of one registered model.

    SQLite (the embedded default): an OS file lock beside the database. PostgreSQL
    (``SHRINKFLOW_REGISTRY_LOCK_DSN``, written by ``shrinkflow stack up``): a session-level
    advisory lock held for the whole compare-and-set. Any other server: a lease written
    as a registered-model tag and read back; the compare-and-set inside still re-reads
    the champion, so a lost race is detected rather than silently overwritten.
    """
    path = sqlite_path(uri)
    if path is not None:
        from filelock import FileLock, Timeout

        lock = FileLock(str(path.with_name(f".{path.name}.{name}.promote.lock")))
        try:
            with lock.acquire(timeout=timeout):
                yield
        except Timeout:
            raise ShrinkflowError(f"registry {name}: another promotion held the lock for "
                                  f"{timeout:.0f} s; retry") from None
        return
    dsn = os.environ.get("SHRINKFLOW_REGISTRY_LOCK_DSN")
    if dsn:
        from shrinkflow.ops.locks import advisory_lock

        with advisory_lock(dsn, f"shrinkflow-promote:{name}", timeout):
            yield
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


def ensure_registered_model(c, name: str) -> None:
    try:
        c.get_registered_model(name)
    except Exception:
        c.create_registered_model(name, description="Models selected by shrinkflow: aliases "
                                  "champion, challenger, previous (-<target> for targets "
                                  "other than ONNX Runtime).")


def register(uri: str, name: str, model_uri: str, run_id: str, values: dict[str, float],
             tags: dict[str, str], command: str, description: str = "",
             target: str = DEFAULT_TARGET) -> str:
    """Register ``model_uri`` as a new version with its key metrics and lineage tags and
    give it the challenger alias; the same artifact selected again reuses its version."""
    c = client(uri)
    call(uri, "register a model", ensure_registered_model, c, name)
    sha = tags.get(f"{TAG}artifact_sha256") or tags.get(f"{TAG}onnx_sha256")
    challenger = alias("challenger", target)
    if sha:
        for mv in c.search_model_versions(f"name='{name}'"):
            same = mv.tags.get(f"{TAG}artifact_sha256") or mv.tags.get(f"{TAG}onnx_sha256")
            if same == sha and mv.tags.get(f"{TAG}target", DEFAULT_TARGET) == target:
                version = str(mv.version)
                c.set_registered_model_alias(name, challenger, version)
                record_event(c, name, version, challenger, command,
                             "selected again: the same artifact as this version", target)
                return version
    all_tags = {**tags, **{f"{METRIC_TAG}{k}": f"{values[k]:.8g}" for k in values
                           if k in KEY_METRICS or k.endswith("_test_accuracy")}}
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    mv = c.create_model_version(name, source=model_uri, run_id=run_id, tags=all_tags,
                                description=description, model_id=model_id)
    version = str(mv.version)
    c.set_registered_model_alias(name, challenger, version)
    record_event(c, name, version, challenger, command,
                 tags.get(f"{TAG}selection", "selected by the pipeline"), target)
    return version


def _download(model_uri: str, dst: Path) -> Path:
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(dst)))
    except Exception as exc:
        raise ShrinkflowError(f"{model_uri}: cannot load ({type(exc).__name__}: "
                              f"{str(exc)[:200]}); see `shrinkflow models`") from None


def version_runner(model_uri: str, target: str, threads: int, dst: Path):
    """(runner taking raw inputs, artifact bytes on disk) of a registered version."""
    from shrinkflow.steps.validate import size_stats
    from shrinkflow.targets import base as targets

    local = _download(model_uri, dst)
    run = targets.get(target).load(str(local), threads)
    if target == DEFAULT_TARGET:  # versions made before preprocessing moved into the graph
        import onnx

        from shrinkflow.targets.base import model_file
        from shrinkflow.targets.onnxruntime import input_for

        proto = onnx.load(str(model_file(local, ".onnx")), load_external_data=False)
        meta = {p.key: p.value for p in proto.metadata_props}
        inner = run
        run = lambda x: inner(input_for(meta, x))  # noqa: E731
        size = float(model_file(local, ".onnx").stat().st_size)
    else:
        size = size_stats(local)["size_bytes"]
    return run, size


def refuse_reevaluating_encoders(name: str, version: str, champion: str,
                                 ours: dict[str, float], theirs: dict[str, float]) -> None:
    """Encoders measured on different sentences cannot be compared: an encoder's quality
    is its cosine to its own teacher on its own test sentences, and re-evaluating it on
    other data would need that teacher (``evaluate`` scores classifiers)."""
    if "onnx_test_cosine" in ours or "onnx_test_cosine" in theirs:
        raise ShrinkflowError(
            f"registry {name}: v{version} and champion v{champion} are sentence encoders "
            "measured on different sentences, so their cosines cannot be compared; check "
            f"both and promote by hand: shrinkflow promote --version {version} --force "
            "--reason TEXT")


def evaluate(model_uri: str, target: str, x_raw: np.ndarray, y: np.ndarray, key: str
             ) -> dict[str, float]:
    """Accuracy and size of a registered version, measured now on raw test inputs."""
    import tempfile

    from shrinkflow.targets.base import batched

    with tempfile.TemporaryDirectory() as d:
        run, size = version_runner(model_uri, target, 1, Path(d))
        logits = batched(run, x_raw.astype(np.float32))
    return {key: float((logits.argmax(1) == y).mean()), "size_bytes": size}


def measure_side_by_side(uris: dict[str, str], target: str, x_raw: np.ndarray,
                         rounds: int = 12, threads: int = 1, batch: int = 256, repeats: int = 5,
                         confidence: float = 0.95, resolution: float = 0.02) -> dict[str, Any]:
    """Time two registered versions now, interleaved in rounds; the speed-up of the
    first over the second with its interval, and the machine."""
    import tempfile

    from shrinkflow.steps.validate import measure_rounds

    with tempfile.TemporaryDirectory() as d:
        runners = {label: version_runner(uri, target, threads, Path(d) / label)[0]
                   for label, uri in uris.items()}
        samples = {n: {str(batch): []} for n in runners}
        measure_rounds(runners, x_raw.astype(np.float32), samples, rounds, 1, {batch: repeats})
    a, b = list(runners)
    speed = stats.speedup(stats.widen(stats.ratio_interval(
        samples[b][str(batch)], samples[a][str(batch)], confidence), resolution))
    return {"speedup": speed, "summary": {
        "speedup": speed.as_dict(), "verdict": stats.compare(speed), "batch": batch,
        "rounds": rounds, "threads": threads, "target": target,
        "machine": machine.describe(machine.fingerprint({"runtime": threads})),
        "p50_ms": {n: float(np.median([t for r in samples[n][str(batch)] for t in r]))
                   for n in samples}}}


def _move_champion(c, name: str, version: str, old, command: str, reason: str, target: str,
                   measurement: dict | None = None) -> None:
    c.set_registered_model_alias(name, alias("champion", target), version)
    record_event(c, name, version, alias("champion", target), command, reason, target,
                 measurement)
    if old is not None:
        c.set_registered_model_alias(name, alias("previous", target), str(old.version))
        record_event(c, name, str(old.version), alias("previous", target), command,
                     f"replaced as champion by version {version}", target)


def promote(uri: str, name: str, version: str | None, select: SelectParams,
            rule: RegistryParams, command: str,
            test_data: tuple[np.ndarray, np.ndarray, str] | None = None,
            force: bool = False, reason: str | None = None, target: str = DEFAULT_TARGET,
            latency_batch: int = 256, threads: int = 1, resolution: float = 0.02) -> Promotion:
    """Try to make ``version`` (default: the challenger) the champion.

    Inside the lock the champion is re-read and the rule applied against *that* version
    (compare-and-set). Accuracy and size compare exactly; when the champion was measured
    on other data than ``test_data`` (raw x, y, fingerprint) both are re-evaluated on it.
    A latency objective re-measures both models side by side, now, on this machine. A
    forced promotion skips the rule but needs a reason.
    """
    if force and not reason:
        raise ShrinkflowError("promote --force needs --reason: say why the rule is bypassed")
    c = client(uri)
    champion_alias = alias("champion", target)
    with promotion_lock(uri, name):
        if version is None:
            challenger = call(uri, "read the registry", get_alias, c, name,
                              alias("challenger", target))
            if challenger is None:
                raise ShrinkflowError(f"registry {name}: no {alias('challenger', target)} to "
                                      "promote; run the pipeline or pass --version")
            version = str(challenger.version)
        try:
            mv = c.get_model_version(name, version)
        except Exception:
            raise ShrinkflowError(f"registry {name}: no version {version} (see "
                                  "`shrinkflow models`)") from None
        old = get_alias(c, name, champion_alias)
        before = str(old.version) if old is not None else None

        def result(promoted: bool, why: str, after: str | None, measurement=None) -> Promotion:
            return Promotion(name=name, version=version, promoted=promoted, reason=why,
                             target=target, champion_before=before, champion_after=after,
                             measurement=measurement)

        if old is not None and str(old.version) == version:
            record_event(c, name, version, "kept", command, "already the champion", target)
            return result(False, "already the champion", before)
        if force:
            why = f"forced: {reason}"
            _move_champion(c, name, version, old, command, why, target)
            return result(True, why, version)
        if mv.tags.get(f"{TAG}gate") == "fail":
            why = "failed its gates: " + mv.tags.get(f"{TAG}gate_reasons", "")
            record_event(c, name, version, "not promoted", command, why, target)
            return result(False, why, before)
        if old is None:
            why = "no champion yet; passed its gates"
            _move_champion(c, name, version, None, command, why, target)
            return result(True, why, version)
        ours, theirs = version_metrics(mv), version_metrics(old)
        data_fp = test_data[2] if test_data else mv.tags.get(f"{TAG}data_fingerprint")
        same_data = old.tags.get(f"{TAG}data_fingerprint") == data_fp == \
            mv.tags.get(f"{TAG}data_fingerprint")
        if (not same_data or needs_latency(select)) and test_data is None:
            raise ShrinkflowError(
                f"registry {name}: comparing v{version} with champion v{old.version} needs "
                "the test data; run `shrinkflow promote` in the workspace whose prepared "
                "data should decide")
        uris = {"challenger": f"models:/{name}/{version}",
                "champion": f"models:/{name}/{old.version}"}
        key = accuracy_key(target)
        note = " (same test data)"
        if not same_data:
            refuse_reevaluating_encoders(name, version, old.version, ours, theirs)
            x, y, _ = test_data
            ours.update(evaluate(uris["challenger"], target, x, y, key))
            theirs.update(evaluate(uris["champion"], target, x, y, key))
            note = " (both re-evaluated on the current test data)"
        speed, measurement = None, None
        if needs_latency(select):
            m = measure_side_by_side(uris, target, test_data[0], threads=threads,
                                     batch=latency_batch, resolution=resolution)
            speed, measurement = m["speedup"], m["summary"]
        wins, why = challenger_wins(ours, theirs, select, rule, key, speed)
        why = f"vs champion v{old.version}: {why}{note}"
        if wins:
            _move_champion(c, name, version, old, command, why, target, measurement)
            return result(True, why, version, measurement)
        record_event(c, name, version, "not promoted", command, why, target, measurement)
        return result(False, why, before, measurement)


def rollback(uri: str, name: str, command: str, reason: str | None = None,
             target: str = DEFAULT_TARGET) -> Promotion:
    """champion <- previous; the demoted champion becomes ``previous`` (so a second
    rollback undoes the first)."""
    c = client(uri)
    with promotion_lock(uri, name):
        old = call(uri, "read the registry", get_alias, c, name, alias("champion", target))
        prev = get_alias(c, name, alias("previous", target))
        if prev is None:
            raise ShrinkflowError(f"registry {name}: no '{alias('previous', target)}' version to "
                                  "roll back to")
        why = f"rollback{': ' + reason if reason else ''}"
        c.set_registered_model_alias(name, alias("champion", target), str(prev.version))
        record_event(c, name, str(prev.version), alias("champion", target), command, why, target)
        if old is not None:
            c.set_registered_model_alias(name, alias("previous", target), str(old.version))
            record_event(c, name, str(old.version), "rolled back", command, why, target)
        return Promotion(name=name, version=str(prev.version), promoted=True, reason=why,
                         target=target, champion_before=str(old.version) if old else None,
                         champion_after=str(prev.version))


def list_versions(uri: str, name: str) -> list[dict[str, Any]]:
    """Every version of ``name``, newest first, with aliases, key metrics, last move."""
    c = client(uri)
    try:
        rm = call(uri, "read the registry", c.get_registered_model, name)
    except ShrinkflowError:
        raise
    except Exception:
        raise ShrinkflowError(f"registry: no registered model {name!r} at {uri}; run the "
                              "pipeline first (or pass --name)") from None
    aliases: dict[str, list[str]] = {}
    for a, v in (rm.aliases or {}).items():
        aliases.setdefault(str(v), []).append(a)
    log = history(c, name)
    rows = []
    for mv in c.search_model_versions(f"name='{name}'"):
        ev = [e for e in log if e.get("version") == str(mv.version)]
        rows.append({"version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                     "variant": mv.tags.get(f"{TAG}variant", ""),
                     "target": mv.tags.get(f"{TAG}target", DEFAULT_TARGET),
                     "gate": mv.tags.get(f"{TAG}gate", ""), "metrics": version_metrics(mv),
                     "machine": mv.tags.get(f"{TAG}machine", ""),
                     "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC)
                     .isoformat(timespec="seconds"),
                     "description": mv.description or "",
                     "last_event": ev[-1] if ev else {}, "run_id": mv.run_id})
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)
