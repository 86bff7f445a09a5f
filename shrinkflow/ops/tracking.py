"""MLflow: the pipeline's parent run, one nested run per model, logged models.

Runs are addressed by id through ``MlflowClient`` (never the implicit "active run"),
except ``log_model``, which MLflow offers no other way, scoped to one ``with`` block.
A model whose content did not change keeps its run: a later pipeline run links it
instead of logging it again.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import urllib.parse
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from shrinkflow.core.errors import ShrinkflowError

TAG = "shrinkflow."  # prefix of every tag this project writes

# A tracking server that is down must fail within seconds, not after minutes of retries.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}


class RunRef(BaseModel):
    """How to reach an MLflow run from any process."""

    model_config = ConfigDict(frozen=True)

    tracking_uri: str
    experiment_id: str
    run_id: str


def resolve_tracking_uri(uri: str, root: str | Path) -> str:
    """Make a relative ``sqlite:///file.db`` relative to the workspace; refuse file
    stores and schemes MLflow cannot use, naming the key."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((Path(root) / uri[len("sqlite:///"):]).resolve())
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if not scheme or scheme == "file":
        raise ShrinkflowError(
            f"base.tracking_uri {uri!r}: MLflow's file store is not supported; use "
            "sqlite:///mlflow.db (embedded) or http(s)://host:port (an MLflow server)")
    if scheme not in ("sqlite", "http", "https", "databricks") and \
            not scheme.startswith(("postgresql", "mysql", "mssql")):
        raise ShrinkflowError(f"base.tracking_uri {uri!r}: unknown scheme {scheme!r}; use "
                              "sqlite:///mlflow.db or http(s)://host:port")
    return uri


def check_reachable(uri: str, timeout: float = 3.0) -> None:
    """Fail in seconds, with one line, when an MLflow server cannot be reached; check a
    SQLite store's file is a usable database."""
    if uri.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(uri)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            with socket.create_connection((parts.hostname, port), timeout=timeout):
                pass
        except OSError as exc:
            raise ShrinkflowError(f"cannot reach MLflow at {uri} ({exc.strerror or exc}); start "
                                  "the server or set base.tracking_uri / MLFLOW_TRACKING_URI") \
                from None
    elif (path := sqlite_path(uri)) is not None:
        if path.exists():
            _check_sqlite(path)
        elif not os.access(path.parent if path.parent.exists() else Path("."), os.W_OK):
            raise ShrinkflowError(f"MLflow store {path}: its directory is not writable")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI (None for a server)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def is_new_store(uri: str) -> bool:
    """A local SQLite store that does not exist yet: it holds no run, so a run cannot
    be a no-op."""
    path = sqlite_path(uri)
    return path is not None and not path.exists()


def _check_sqlite(path: Path) -> None:
    import sqlite3

    if not os.access(path, os.R_OK):
        raise ShrinkflowError(f"MLflow store {path}: not readable (permissions)")
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as con:
            con.execute("select count(*) from sqlite_master").fetchone()
            ok = con.execute("pragma quick_check").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise ShrinkflowError(f"MLflow store {path}: not a usable SQLite database ({exc}); "
                              "restore it from a backup or move it away") from None
    if ok != "ok":
        raise ShrinkflowError(f"MLflow store {path}: corrupt ({ok}); restore it from a backup")
    if not os.access(path, os.W_OK):
        raise ShrinkflowError(f"MLflow store {path}: read-only; make it writable or use "
                              "another base.tracking_uri")


def client(uri: str):
    """An MlflowClient for ``uri`` (a new SQLite store is created and migrated here);
    also sets the process-wide URI for ``log_model``."""
    import logging

    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    import mlflow
    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.ERROR)  # MLflow resets it on import
    # set_tracking_uri also exports MLFLOW_TRACKING_URI, which shrinkflow reads as the
    # user's override: left set, the next pipeline in this process (another workspace)
    # would record into this store. The user's own value is put back.
    user = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    if user is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user
    return MlflowClient(tracking_uri=uri)


@contextlib.contextmanager
def in_run(run_id: str):
    """MLflow's fluent API inside an existing run. The run's own experiment is made the
    active one first: a caller's earlier ``mlflow.set_experiment`` (process-wide state)
    must not make ``start_run`` refuse the run."""
    import mlflow

    mlflow.set_experiment(experiment_id=mlflow.get_run(run_id).info.experiment_id)
    with mlflow.start_run(run_id=run_id) as run:
        yield run


def call(uri: str, what: str, fn, *args, **kwargs):
    """Run an MLflow call; turn connection and store problems into one actionable line."""
    try:
        return fn(*args, **kwargs)
    except ShrinkflowError:
        raise
    except Exception as exc:
        name, text = type(exc).__name__, str(exc)
        if any(k in name for k in ("Connection", "MaxRetry", "Timeout")) or \
                "Connection refused" in text or "API request" in text:
            raise ShrinkflowError(f"cannot reach MLflow at {uri}: cannot {what} ({name}); is "
                                  "the server running? Start it or set base.tracking_uri / "
                                  "MLFLOW_TRACKING_URI") from None
        if "readonly database" in text or "disk I/O error" in text or "database disk image" \
                in text or "No space left" in text:
            first = text.strip().splitlines()[0][:200]
            raise ShrinkflowError(f"MLflow store at {uri}: cannot {what} ({first})") from None
        raise


def ensure_experiment(c, name: str, artifact_location: str | None) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    return c.create_experiment(name, artifact_location=artifact_location)


def flat_params(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested params to dotted keys (MLflow params are flat strings)."""
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_params(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return out


def log_params(c, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in flat_params(params).items()]
    for i in range(0, len(items), 100):
        c.log_batch(run_id, params=items[i:i + 100])


def log_metrics(c, run_id: str, values: dict[str, float], step: int = 0,
                model_id: str | None = None) -> None:
    """Log finite metrics in batches."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step, model_id=model_id) for k, v in values.items()
             if v is not None and np.isfinite(v)]
    for i in range(0, len(items), 500):
        c.log_batch(run_id, metrics=items[i:i + 500])


def start_pipeline_run(uri: str, experiment: str, artifact_location: str | None,
                       params: dict[str, Any], tags: dict[str, str]) -> RunRef:
    """Create the parent run of one pipeline execution (left RUNNING until :func:`end_run`).

    On a tracking server the server decides where a new experiment's artifacts go (its
    ``--artifacts-destination``, served as ``mlflow-artifacts:``): a path on this client
    would be invisible to every other machine."""
    c = client(uri)
    if uri.startswith(("http://", "https://")):
        artifact_location = None
    exp_id = call(uri, "create the experiment", ensure_experiment, c, experiment,
                  artifact_location)
    run = call(uri, "create a run", c.create_run, exp_id,
               run_name=f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}",
               tags={f"{TAG}step": "pipeline", **tags})
    log_params(c, run.info.run_id, params)
    return RunRef(tracking_uri=uri, experiment_id=exp_id, run_id=run.info.run_id)


def set_tags(ref: RunRef, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    c = client(ref.tracking_uri)
    items = [RunTag(k, str(v)[:4900]) for k, v in tags.items()]
    for i in range(0, len(items), 100):
        call(ref.tracking_uri, "tag a run", c.log_batch, ref.run_id, tags=items[i:i + 100])


def log_artifact(ref: RunRef, path: str | Path, artifact_path: str | None = None) -> None:
    client(ref.tracking_uri).log_artifact(ref.run_id, str(path), artifact_path=artifact_path)


def log_text(ref: RunRef, text: str, name: str) -> None:
    client(ref.tracking_uri).log_text(ref.run_id, text, name)


def end_run(ref: RunRef, status: str = "FINISHED", error: str | None = None) -> None:
    """Terminate a run (FINISHED / FAILED / KILLED), recording why it failed."""
    c, uri = client(ref.tracking_uri), ref.tracking_uri
    if error:
        call(uri, "record the run's error", c.set_tag, ref.run_id, f"{TAG}error", error[:4000])
    call(uri, f"mark the run {status}", c.set_terminated, ref.run_id, status=status)


def find_model_run(uri: str, experiment_id: str, model_key: str) -> str | None:
    """A finished model run already holding exactly this model (same content key)."""
    c = client(uri)
    runs = call(uri, "search runs", c.search_runs, [experiment_id],
                f"tags.`{TAG}model_key` = '{model_key}' and attributes.status = 'FINISHED'",
                order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def mark_orphans(uri: str, experiment: str, workspace: str) -> list[str]:
    """Runs of this workspace left RUNNING by a killed process become KILLED."""
    c = client(uri)
    exp = call(uri, "read the experiment", c.get_experiment_by_name, experiment)
    if exp is None:
        return []
    runs = c.search_runs([exp.experiment_id],
                         f"attributes.status = 'RUNNING' and tags.`{TAG}workspace` = '{workspace}'")
    killed = []
    for run in runs:
        c.set_tag(run.info.run_id, f"{TAG}error", "the process running it was killed; marked "
                                                   "KILLED by the next run in this workspace")
        c.set_terminated(run.info.run_id, status="KILLED")
        killed.append(run.info.run_id)
    return killed


def end_abandoned(uri: str, experiment: str, ended: Callable[[str], str | None]) -> list[str]:
    """Pipeline runs left RUNNING by an orchestrator flow run that has ended (the tracking
    server was down when it failed, so it could not end them) become FAILED.

    ``ended(flow_run_id)`` returns that flow run's final state name, or None while it
    runs. Runs of a deployment clone a fresh workspace, so :func:`mark_orphans` (by
    workspace path) does not find them."""
    c = client(uri)
    exp = call(uri, "read the experiment", c.get_experiment_by_name, experiment)
    if exp is None:
        return []
    runs = call(uri, "search runs", c.search_runs, [exp.experiment_id],
                f"attributes.status = 'RUNNING' and tags.`{TAG}step` = 'pipeline'")
    done = []
    for run in runs:
        owner = run.data.tags.get(f"{TAG}prefect_flow_run")
        state = ended(owner) if owner else None
        if state:
            c.set_tag(run.info.run_id, f"{TAG}error", f"its flow run {owner} ended {state} "
                                                      "without ending it (tracking server "
                                                      "unreachable); marked FAILED")
            c.set_terminated(run.info.run_id, status="FAILED")
            done.append(run.info.run_id)
    return done


def test_dataset(data_path: str, dataset: str, fingerprint: str):
    """An MLflow dataset entity for the prepared test split (raw inputs), digest = the
    data fingerprint."""
    import mlflow

    from shrinkflow.data.prepare import raw_test_split

    x, y, _ = raw_test_split(data_path)
    with warnings.catch_warnings():  # MLflow registers two equivalent local-path sources
        warnings.simplefilter("ignore", UserWarning)
        return mlflow.data.from_numpy(x, targets=y, source=data_path,
                                      name=f"{dataset}-{fingerprint[:8]}", digest=fingerprint[:16])


def log_onnx_model(run_id: str, name: str, onnx_path: str, example: np.ndarray,
                   sha256: str, dataset) -> dict[str, str]:
    """The ONNX file as an MLflow model (signature and input example: raw inputs), and
    ``dataset`` as the run's test input: one entry into the run for both (each costs
    ~50 ms of MLflow's SQL store)."""
    import mlflow
    import onnx

    from shrinkflow.targets.onnxruntime import ort_session

    proto = onnx.load(onnx_path)
    sess = ort_session(onnx_path, 1)
    logits = sess.run(None, {sess.get_inputs()[0].name: example})[0]
    with in_run(run_id):
        signature = mlflow.models.infer_signature(example, logits)
        info = mlflow.onnx.log_model(
            proto, name=name, signature=signature, input_example=example,
            save_as_external_data=False, pip_requirements=pip_requirements(),
            metadata={"shrinkflow_variant": name}, tags={f"{TAG}onnx_sha256": sha256},
        )
        location = f"{mlflow.get_logged_model(info.model_id).artifact_location}/model.onnx"
        mlflow.log_input(dataset, context="test")
    return {"model_id": info.model_id, "model_uri": info.model_uri, "location": location,
            "stored_sha256": stored_sha256(location)}


def stored_sha256(artifact_uri: str) -> str:
    """sha256 of a file as MLflow stored it (the ONNX flavor re-serialises the model)."""
    import tempfile

    import mlflow

    from shrinkflow.core.files import file_sha256

    with tempfile.TemporaryDirectory() as d:
        return file_sha256(mlflow.artifacts.download_artifacts(artifact_uri, dst_path=d))


def pip_requirements() -> list[str]:
    # Given explicitly: inferring them costs seconds per logged model.
    from importlib import metadata

    return [f"{p}=={metadata.version(p)}" for p in ("onnx", "onnxruntime", "numpy")]


# Columns of MLflow's SQL store that hold absolute artifact locations.
_LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                     ("logged_models", "artifact_location"),
                     ("model_versions", "storage_location"))


def follow_moved_workspace(uri: str, root: Path, state_dir: Path) -> str | None:
    """A workspace moved or copied elsewhere keeps working with its embedded SQLite store:
    MLflow records absolute artifact locations, so they are rewritten from the old root
    to the new one. Returns the old root when it moved (None otherwise). Stores that are
    not the workspace's own SQLite file are never touched."""
    import json
    import sqlite3

    marker = state_dir / "workspace.json"
    old = json.loads(marker.read_text()).get("root") if marker.is_file() else None
    new = str(root)
    moved = None
    db = sqlite_path(uri)
    if old and old != new and db is not None and db.is_file() and \
            db.resolve().is_relative_to(root):
        with sqlite3.connect(db) as con:
            for table, column in _LOCATION_COLUMNS:
                for prefix in (f"file://{old}/", f"{old}/"):
                    con.execute(f"update {table} set {column} = replace({column}, ?, ?) "  # noqa: S608
                                f"where {column} like ?",
                                (prefix, prefix.replace(old, new, 1), prefix + "%"))
            con.execute("update tags set value = ? where key = ? and value = ?",
                        (new, f"{TAG}workspace", old))
        moved = old
    if old != new:
        state_dir.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps({"root": new}) + "\n")
    return moved
