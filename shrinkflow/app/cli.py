"""The ``shrinkflow`` command line (Typer). Errors a user can fix print one line, no traceback."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from shrinkflow.core.env import setup
from shrinkflow.core.errors import GateFailure, ShrinkflowError

app = typer.Typer(
    name="shrinkflow", no_args_is_help=True, add_completion=True,
    pretty_exceptions_enable=False,
    help="Train, compress, convert and validate a model on every target runtime; tracked "
         "in MLflow, versioned in DVC, orchestrated by Prefect on Dask.",
)
# Wide enough for the per-model table when output is not a terminal (CI logs, pipes).
console = Console(width=None if sys.stdout.isatty() else 200)
# Never wrap an error line when stderr is not a terminal.
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 100_000,
                      soft_wrap=True)

EXIT_ERROR = 1
EXIT_GATE = 3


def _one_line(exc: BaseException) -> str:
    """An OS or database error as one line naming the file and the cause."""
    if isinstance(exc, OSError):
        what = {errno.ENOSPC: "disk full", errno.EROFS: "read-only file system",
                errno.EACCES: "permission denied", errno.EDQUOT: "disk quota exceeded"}.get(
            exc.errno, exc.strerror or type(exc).__name__)
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{what}{where}; free space or fix permissions and retry"
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"


def _is_environment_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EROFS, errno.EACCES,
                                                  errno.EDQUOT):
        return True
    text = str(exc)
    return any(k in text for k in ("database or disk is full", "readonly database",
                                   "No space left", "database disk image is malformed",
                                   "unable to open database file", "disk I/O error"))


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, a container stop, ``kill``), handled like Ctrl-C: the run
    is marked FAILED in MLflow, the local Dask cluster and the temporary Prefect API
    stop, and the process exits with 143. Python's default ends the process on the spot,
    leaving the MLflow run RUNNING and the temporary API server behind."""


def _terminate(_signum, _frame) -> None:
    raise Terminated()


def user_errors(fn):
    """Turn a ShrinkflowError (or a full disk, a read-only store) into one red line and a
    non-zero exit code. SHRINKFLOW_DEBUG=1 shows the traceback of unexpected errors."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GateFailure as exc:
            err_console.print(f"[bold red]gate failed:[/] {'; '.join(exc.failures)}",
                              highlight=False)
            raise typer.Exit(EXIT_GATE) from None
        except ShrinkflowError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(EXIT_ERROR) from None
        except Terminated:
            err_console.print("[yellow]terminated[/]")
            raise typer.Exit(143) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except typer.Exit:
            raise
        except Exception as exc:
            if os.environ.get("SHRINKFLOW_DEBUG") or not _is_environment_error(exc):
                if os.environ.get("SHRINKFLOW_DEBUG"):
                    raise
                err_console.print(f"[bold red]error:[/] unexpected {_one_line(exc)} (run with "
                                  "SHRINKFLOW_DEBUG=1 for the traceback)", highlight=False)
                raise typer.Exit(EXIT_ERROR) from None
            err_console.print(f"[bold red]error:[/] {_one_line(exc)}", highlight=False)
            raise typer.Exit(EXIT_ERROR) from None

    return wrapper


def _quiet_known_tracebacks() -> None:
    """Prefect logs a failed task's traceback; for a user error one line is enough."""
    import logging

    class DropUserTracebacks(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            if record.exc_info and isinstance(record.exc_info[1], ShrinkflowError):
                record.exc_info, record.exc_text = None, None
            return True

    for name in ("prefect", "prefect.flow_runs", "prefect.task_runs", "prefect.engine"):
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(DropUserTracebacks())
    for handler in logging.getLogger().handlers:
        handler.addFilter(DropUserTracebacks())


@app.callback()
def _root() -> None:
    """shrinkflow: train -> compress -> convert -> validate, and prove it."""


ParamsOpt = Annotated[Path | None, typer.Option(
    "--params", "-p", help="params file (default: params.yaml in the workspace, else the "
                           "built-in defaults)")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", "-s", help="override one param, e.g. --set train.epochs=5 (repeatable)")]
WorkspaceOpt = Annotated[Path, typer.Option(
    "--workspace", "-w", help="directory holding params.yaml, dvc.yaml and the outputs")]


def _workspace(workspace: Path, create: bool = False) -> Path:
    ws = workspace.expanduser().resolve()
    if not ws.is_dir() and not create:
        raise ShrinkflowError(f"--workspace {workspace}: no such directory")
    return ws


def _load(params: Path | None, overrides: list[str] | None, workspace: Path):
    from shrinkflow.plan.params import load_params

    if params is None and (workspace / "params.yaml").is_file():
        params = workspace / "params.yaml"
    elif params is None:
        err_console.print(f"note: no params.yaml in {workspace.resolve()}; using built-in defaults")
    return load_params(params, overrides or [])


@app.command()
@user_errors
def run(params: ParamsOpt = None, set_: SetOpt = None, workspace: WorkspaceOpt = Path("."),
        refresh: Annotated[list[str] | None, typer.Option(
            "--force", "--refresh", help="recompute this step kind (or step id, e.g. "
                                         "teacher:train) even if its result is stored; "
                                         "repeatable; 'all' recomputes everything")] = None,
        dask_address: Annotated[str | None, typer.Option(
            help="run the steps on this Dask scheduler (tcp://HOST:PORT) instead of a "
                 "local cluster (also: SHRINKFLOW_DASK_ADDRESS, base.dask_address)")] = None,
        wait: Annotated[float, typer.Option(
            help="seconds to wait for another run in this workspace to finish")] = 0.0,
        as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False):
    """Run the pipeline: prepare -> train -> compress -> convert -> validate -> decide ->
    record -> promote (stored steps are reused; nothing changed: nothing runs)."""
    start = time.perf_counter()  # before the imports: they are part of what a run costs
    from shrinkflow.core.workspace import Workspace
    from shrinkflow.plan.store import Store

    ws = Workspace.at(_workspace(workspace))
    # A workspace without a stored step cannot be a no-op: the temporary Prefect API
    # (seconds of CPU to come up) starts first thing, beside loading and checking the
    # params on this process's core; stopped at exit if they are refused.
    api = None if Store(ws.store_dir).has_entries() else _prestart_api()
    config = _load(params, set_, ws.root)  # validated before anything is computed
    from shrinkflow.app.preflight import preflight
    from shrinkflow.ops.locks import workspace_lock

    uri = preflight(config, ws)  # data, architectures, tracking store: before any step
    refresh = list(refresh or [])
    if "all" in refresh:
        from shrinkflow.steps.base import kinds

        refresh = list(kinds())
    with workspace_lock(ws.state_dir, "shrinkflow run", wait):
        from shrinkflow.ops import tracking
        from shrinkflow.ops.record import nothing_changed
        from shrinkflow.plan.plan import build_plan

        # A run that will compute (forced, or a new tracking store: no run to compare
        # with, none left RUNNING) starts the temporary Prefect API and the local cluster
        # now, while this process loads the flow; otherwise they start once the no-op
        # test has failed. A new store is created where the flow starts its MLflow run,
        # beside the first steps.
        new_store = tracking.is_new_store(uri)
        if api is not None or refresh or new_store:
            api = _prestart(config, dask_address, api)

        Store(ws.store_dir).clean_scratch()  # what a killed run left half-written
        moved = tracking.follow_moved_workspace(uri, ws.root, ws.state_dir)
        if moved:
            err_console.print(f"note: this workspace moved from {moved}; MLflow artifact "
                              "locations in its store now point here")
        if not new_store:
            for run_id in tracking.mark_orphans(uri, config.base.experiment, str(ws.root)):
                err_console.print(f"note: run {run_id} was left RUNNING by a killed "
                                  "process; marked KILLED")
        if not refresh and not new_store:
            same = nothing_changed(build_plan(config, ws.root), ws, uri)
            if same is not None:
                _print_outcome(same, time.perf_counter() - start, as_json)
                return
        _quiet_known_tracebacks()
        api = _prestart(config, dask_address, api)  # up while the flow's modules load
        from shrinkflow.flows.pipeline import run_pipeline

        result = run_pipeline(config, ws.root, refresh, dask_address, api)
    _print_outcome(result, time.perf_counter() - start, as_json)


def _prestart_api():
    from shrinkflow.flows import runner

    return runner.prestart()


def _prestart(config, dask_address: str | None, api=None):
    """Start the temporary Prefect API (when none is configured and ``api`` is not
    started yet) and the local Dask cluster (when the run has no address) in the
    background: both come up while this process prepares the run. Returns the API for
    :func:`run_pipeline`."""
    from shrinkflow.flows import runner
    from shrinkflow.plan.params import dask_address as resolve_address

    api = api or runner.prestart()
    if not resolve_address(config, dask_address):
        runner.prestart_cluster(config.base.parallel_steps, api)
    return api


@app.command()
@user_errors
def bench(params: ParamsOpt = None, set_: SetOpt = None,
          workspace: Annotated[Path | None, typer.Option(
              "--workspace", "-w", help="where the benchmark's models, step store and MLflow "
                                        "database live (default: bench/work/<dataset>)")] = None,
          out: Annotated[Path | None, typer.Option(
              help="where benchmark.md and benchmark.csv go "
                   "(default: bench/results/<dataset>)")] = None,
          rounds: Annotated[int, typer.Option(min=1, help="interleaved latency rounds")] = 3):
    """Benchmark side by side: torch teacher, ONNX Runtime peer baselines, every variant.

    Runs the pipeline first (stored steps, such as a trained teacher, are reused).
    """
    config = _load(params, set_, Path("."))
    dataset = config.prepare.dataset
    ws_root = (workspace or Path("bench") / "work" / dataset).resolve()
    ws_root.mkdir(parents=True, exist_ok=True)
    config = config.model_copy(update={"base": config.base.model_copy(
        update={"dvc_commit": False})})
    from shrinkflow.app import bench as lib
    from shrinkflow.app.preflight import preflight
    from shrinkflow.core.workspace import Workspace
    from shrinkflow.flows.pipeline import run_pipeline
    from shrinkflow.ops.locks import workspace_lock

    ws = Workspace.at(ws_root)
    preflight(config, ws)
    start = time.perf_counter()
    _quiet_known_tracebacks()
    with workspace_lock(ws.state_dir, "shrinkflow bench"):
        result = run_pipeline(config, ws.root)
        console.print(f"pipeline done in {time.perf_counter() - start:.0f} s (MLflow run "
                      f"{result.run.run_id}); measuring side by side...")
        md, _ = lib.benchmark(config, ws, out or Path("bench") / "results" / dataset,
                              rounds=rounds)
    console.print(md.read_text(), markup=False, highlight=False)
    console.print(f"written: {md} and {md.with_suffix('.csv')}; total "
                  f"{time.perf_counter() - start:.0f} s")


@app.command()
@user_errors
def serve(cron: Annotated[str, typer.Option(help="cron schedule (UTC)")] = "0 3 * * *",
          name: Annotated[str, typer.Option(help="deployment name")] = "nightly",
          params_file: Annotated[str, typer.Option(
              "--params-file", help="params file, relative to the workspace, read at "
                                    "each run")] = "params.yaml",
          workspace: WorkspaceOpt = Path(".")):
    """Serve the retraining flow on a schedule (Prefect serve; Ctrl-C stops).

    Each run skips in seconds when data, code and params are unchanged; otherwise it
    recomputes only what changed. Trigger one by hand with
    `prefect deployment run shrinkflow-retrain/NAME`.
    """
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValueError:
        raise ShrinkflowError(f"--cron {cron!r}: not a cron expression (e.g. '0 3 * * *')") \
            from None
    ws = _workspace(workspace)
    _load(ws / params_file if (ws / params_file).is_file() else None, None, ws)
    from prefect.settings import PREFECT_RUNNER_POLL_FREQUENCY, temporary_settings

    from shrinkflow.flows.retrain import retrain

    console.print(f"serving shrinkflow-retrain/{name} on '{cron}' for {ws}")
    # A triggered run starts within a second, not at the runner's default 10 s poll
    # (unless the user set one). Prefect reads its settings when it is imported, so
    # this goes through a settings context, not the environment.
    poll = {} if os.environ.get("PREFECT_RUNNER_POLL_FREQUENCY") else \
        {PREFECT_RUNNER_POLL_FREQUENCY: 1}
    with temporary_settings(poll):
        retrain.serve(name=name, cron=cron, tags=["shrinkflow"],
                      parameters={"workspace": str(ws), "params_file": params_file},
                      print_starting_message=True)


data_app = typer.Typer(help="Version data snapshots with DVC.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("add")
@user_errors
def data_add(path: Annotated[Path, typer.Argument(
                 help=".npz with arrays x and y, a .csv, or a directory of class subfolders")],
             workspace: WorkspaceOpt = Path("."),
             push: Annotated[bool, typer.Option(help="push the snapshot to the DVC remote")] = True):
    """Version a new data snapshot: it becomes data/raw/dataset.npz, tracked by DVC.

    The next (scheduled) run sees the new data and retrains. params.yaml must read it:
    prepare.dataset: npz and prepare.path: data/raw/dataset.npz.
    """
    from shrinkflow.ops.snapshots import add_snapshot

    info = add_snapshot(path, _workspace(workspace), push=push)
    console.print(f"data snapshot {info['path']}: {info['examples']} examples, "
                  f"{info['classes']} classes, md5 {info['md5']}")
    console.print(f"tracked in {info['dvc_file']}{' and pushed' if push else ''}; commit it: "
                  f"git add {info['dvc_file']} {info['gitignore']} && "
                  "git commit -m 'data snapshot'")
    if info.get("params_note"):
        console.print(f"[yellow]{info['params_note']}[/]")


stack_app = typer.Typer(help="A team's servers on this machine: PostgreSQL, MLflow, Prefect "
                             "(server, work pool, worker) and Dask.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")


@stack_app.command("up")
@user_errors
def stack_up(workspace: WorkspaceOpt = Path(".")):
    """Start every service of the stack that is not running (127.0.0.1, same ports as
    before) and write .shrinkflow/stack/stack.env; `source` it, then run as usual."""
    from shrinkflow.app.stack import Stack

    stack = Stack(_workspace(workspace), echo=lambda line: console.print(line, highlight=False))
    env = stack.up()
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "SHRINKFLOW_DASK_ADDRESS"):
        console.print(f"  {key}={env[key]}", highlight=False)
    console.print(f"stack up; point your shell at it:  source {stack.env_file}", highlight=False)


@stack_app.command("status")
@user_errors
def stack_status(workspace: WorkspaceOpt = Path("."),
                 as_json: Annotated[bool, typer.Option("--json", help="machine-readable")] = False):
    """Each service: running or not, its PID, address and log."""
    from dataclasses import asdict

    from shrinkflow.app.stack import Stack

    rows = Stack(_workspace(workspace)).status()
    if as_json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return
    table = Table("service", "state", "pid", "address", "log")
    for r in rows:
        table.add_row(r.name, "[green]running[/]" if r.running else "[red]stopped[/]",
                      str(r.pid or "-"), r.url, r.log)
    console.print(table)
    if not all(r.running for r in rows):
        raise typer.Exit(EXIT_ERROR)


@stack_app.command("down")
@user_errors
def stack_down(workspace: WorkspaceOpt = Path("."),
               purge: Annotated[bool, typer.Option(
                   help="also delete the databases, artifacts and the env file")] = False):
    """Stop every service by PID (SIGTERM, then SIGKILL); the data stays unless --purge."""
    from shrinkflow.app.stack import Stack

    stack = Stack(_workspace(workspace), echo=lambda line: console.print(line, highlight=False))
    stopped = stack.down(purge=purge)
    console.print(f"stack down ({len(stopped)} service(s) stopped"
                  f"{'; data deleted' if purge else ''})")


RegistryOpts = Annotated[str | None, typer.Option(
    "--name", help="registered model (default: registry.model_name, else shrinkflow-<dataset>)")]
TargetOpt = Annotated[str, typer.Option(
    "--target", help="deployment target whose aliases to use (champion-<target>, ...)")]


def _registry_target(params: Path | None, set_: list[str] | None, workspace: Path,
                     name: str | None):
    from shrinkflow.ops.tracking import check_reachable, resolve_tracking_uri, sqlite_path
    from shrinkflow.plan.params import tracking_uri

    ws = _workspace(workspace)
    config = _load(params, set_, ws)
    uri = resolve_tracking_uri(tracking_uri(config), ws)
    db = sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ShrinkflowError(f"no MLflow store at {db}: run the pipeline "
                              "in this workspace first (or pass --workspace)")
    check_reachable(uri)
    from shrinkflow.ops.tracking import follow_moved_workspace

    follow_moved_workspace(uri, ws, ws / ".shrinkflow")
    return config, uri, name or config.registered_model_name()


@app.command()
@user_errors
def models(name: RegistryOpts = None, params: ParamsOpt = None, set_: SetOpt = None,
           workspace: WorkspaceOpt = Path("."),
           history: Annotated[bool, typer.Option(
               "--history", help="every recorded move (promotions, rollbacks, ...)")] = False,
           as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False):
    """List registered versions: aliases, key metrics, gate verdict, where measured, last move."""
    from shrinkflow.ops.registry import history as moves
    from shrinkflow.ops.registry import list_versions
    from shrinkflow.ops.tracking import client

    _, uri, name = _registry_target(params, set_, workspace, name)
    rows = list_versions(uri, name)
    if history:
        events = moves(client(uri), name)
        if as_json:
            print(json.dumps(events, indent=1))
            return
        table = Table(title=f"history of {name} ({len(events)} moves)", title_justify="left")
        for col in ("at", "version", "target", "action", "by", "user", "reason"):
            table.add_column(col)
        for e in events:
            table.add_row(e.get("at", ""), e.get("version", ""), e.get("target", ""),
                          e.get("action", ""), e.get("by", ""), e.get("user", ""),
                          e.get("reason", ""))
        console.print(table)
        return
    if as_json:
        print(json.dumps(rows, indent=1, default=str))
        return
    table = Table(title=f"registered model {name} ({uri})", title_justify="left")
    for col in ("version", "aliases", "variant", "acc %", "size KB", "b256 ms", "MACs", "gate",
                "measured on", "last move"):
        table.add_column(col, justify="right" if col in ("version", "acc %", "size KB",
                                                          "b256 ms", "MACs") else "left")
    for r in rows:
        m, ev = r["metrics"], r["last_event"]
        move = f"{ev['action']} by {ev['by']} at {ev['at']}: {ev['reason']}" if ev else ""
        table.add_row(r["version"], ", ".join(r["aliases"]), r["variant"],
                      _fmt(m.get("onnx_test_accuracy"), "pct"), _fmt(m.get("size_bytes"), "bytes"),
                      _fmt(m.get("latency_p50_ms_b256"), "ms"), _fmt(m.get("macs"), "mega"),
                      r["gate"], r["machine"], move)
    console.print(table)


@app.command()
@user_errors
def promote(version: Annotated[str | None, typer.Option(
                help="version to promote (default: the challenger)")] = None,
            force: Annotated[bool, typer.Option(
                help="skip the promotion rule (needs --reason)")] = False,
            reason: Annotated[str | None, typer.Option(help="why (recorded on the version)")] = None,
            name: RegistryOpts = None, params: ParamsOpt = None, set_: SetOpt = None,
            workspace: WorkspaceOpt = Path("."), target: TargetOpt = "onnxruntime"):
    """Promote the challenger (or --version N) to champion if it wins by the rule."""
    from shrinkflow.core.workspace import Workspace
    from shrinkflow.data.prepare import data_record, raw_test_split
    from shrinkflow.ops.registry import promote as do_promote

    config, uri, name = _registry_target(params, set_, workspace, name)
    ws = Workspace.at(workspace)
    test_data = None
    if (ws.data_dir / "meta.json").is_file():
        x, y, _ = raw_test_split(ws.data_dir)
        test_data = (x, y, data_record(ws.data_dir).fingerprint)
    command = "shrinkflow promote" + (" --force" if force else "")
    result = do_promote(uri, name, version, config.select, config.registry, command, test_data,
                        force=force, reason=reason, target=target,
                        latency_batch=config.gates.latency_batch,
                        threads=config.validate_.threads, resolution=config.validate_.resolution)
    verb = "[green]promoted to champion[/]" if result.promoted else "[yellow]not promoted[/]"
    console.print(f"{name} v{result.version} {verb}: {result.reason}", highlight=False)
    console.print(f"champion: v{result.champion_before or '-'} -> v{result.champion_after or '-'}")


@app.command()
@user_errors
def rollback(reason: Annotated[str | None, typer.Option(help="why (recorded)")] = None,
             name: RegistryOpts = None, params: ParamsOpt = None, set_: SetOpt = None,
             workspace: WorkspaceOpt = Path("."), target: TargetOpt = "onnxruntime"):
    """champion <- previous (the demoted champion becomes previous)."""
    from shrinkflow.ops.registry import rollback as do_rollback

    _, uri, name = _registry_target(params, set_, workspace, name)
    result = do_rollback(uri, name, "shrinkflow rollback", reason, target)
    console.print(f"{name}: champion v{result.champion_before} -> v{result.champion_after} "
                  f"({result.reason})")


@app.command()
@user_errors
def predict(model_uri: Annotated[str, typer.Argument(
                help="models:/NAME@champion, models:/NAME/VERSION, runs:/... or a .onnx file")],
            input_npz: Annotated[Path, typer.Argument(
                help=".npz with an array x of raw images (a sentence encoder: a text file, "
                     "one sentence per line)")],
            out: Annotated[Path | None, typer.Option(help="write pred and probs to this .npz")] = None,
            normalized: Annotated[bool, typer.Option(
                help="x is already normalised with the model's training statistics")] = False,
            params: ParamsOpt = None, workspace: WorkspaceOpt = Path(".")):
    """Predict with a registered ONNX model on ONNX Runtime (it takes raw images)."""
    from shrinkflow.app.predict import predict as do_predict

    if not Path(model_uri).is_file():
        _registry_target(params, None, workspace, None)  # sets the tracking URI
    result = do_predict(model_uri, input_npz, out, normalized)
    if "embeddings" in result:  # a sentence encoder: the input was a text file
        emb = result["embeddings"]
        console.print(f"{emb.shape[0]} embeddings of size {emb.shape[1]} from {model_uri}")
        for i in range(min(5, len(emb))):
            console.print(f"  {i}: {result['sentences'][i][:60]!r} -> [{emb[i][0]:+.4f}, "
                          f"{emb[i][1]:+.4f}, ...]")
        if out:
            console.print(f"written: {out} (array embeddings)")
        return
    pred, labels = result["pred"], result["labels"]
    console.print(f"{len(pred)} predictions from {model_uri}")
    for i in range(min(10, len(pred))):
        console.print(f"  {i}: {labels[i]} (p={result['probs'][i].max():.3f})")
    if out:
        console.print(f"written: {out}")


@app.command()
@user_errors
def audit(model_uri: Annotated[str | None, typer.Argument(
              help="models:/NAME@ALIAS, models:/NAME/VERSION or a run id")] = None,
          verify: Annotated[bool, typer.Option(
              "--verify", help="recompute every hash; exit 1 on any MISMATCH or MISSING")] = False,
          as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
          graph: Annotated[Path | None, typer.Option(
              help="write the chain as a picture (.png) or Mermaid text (.mmd/.md)")] = None,
          data: Annotated[str | None, typer.Option(
              help="reverse query: versions derived from this data (hash or path)")] = None,
          commit: Annotated[str | None, typer.Option(
              help="reverse query: versions built from this git commit")] = None,
          params: ParamsOpt = None, workspace: WorkspaceOpt = Path(".")):
    """The full derivation chain of a registered model, with every hash verifiable."""
    from shrinkflow.audit import query, render, resolve
    from shrinkflow.audit import verify as verifier

    _, uri, _ = _registry_target(params, None, workspace, None)
    if data or commit:
        rows = query.find_versions(uri, data, commit)
        if as_json:
            print(json.dumps(rows, indent=1))
            return
        table = Table(title=f"registered versions from data={data or '*'} commit={commit or '*'}",
                      title_justify="left")
        for col in ("name", "version", "aliases", "variant", "data", "commit"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["name"], r["version"], ", ".join(r["aliases"]), r["variant"],
                          r["data"], r["commit"])
        console.print(table)
        return
    if model_uri is None:
        raise ShrinkflowError("audit: give MODEL_URI (e.g. models:/shrinkflow-digits@champion), "
                              "or --data / --commit for a reverse query")
    report = resolve.audit(uri, model_uri)
    checks = verifier.verify(report, _workspace(workspace)) if verify else []
    if as_json:
        doc = report.model_dump(mode="json")
        doc["checks"] = [c.model_dump() for c in checks]
        print(json.dumps(doc, indent=1, default=str))
    else:
        console.print(render.render_tree(report))
    if graph:
        if graph.suffix == ".png":
            render.graph_png(report, graph)
        else:
            graph.write_text(render.mermaid(report))
        console.print(f"graph written: {graph}")
    if verify and not as_json:
        table = Table(title="verify", title_justify="left")
        for col in ("item", "status", "detail"):
            table.add_column(col)
        colors = {"OK": "green", "INFO": "cyan"}
        for c in checks:
            table.add_row(c.item, f"[{colors.get(c.status, 'red')}]{c.status}[/]", c.detail)
        console.print(table)
    if any(c.status in ("MISMATCH", "MISSING") for c in checks):
        raise typer.Exit(EXIT_ERROR)


@app.command()
@user_errors
def reproduce(model_uri: Annotated[str, typer.Argument(
                  help="models:/NAME@ALIAS, models:/NAME/VERSION or a run id")],
              tolerance: Annotated[float, typer.Option(
                  help="allowed absolute difference of accuracies")] = 0.005,
              keep: Annotated[Path | None, typer.Option(
                  help="keep the re-derivation workspace here")] = None,
              params: ParamsOpt = None, workspace: WorkspaceOpt = Path(".")):
    """Re-derive a model from its lineage through the executor and compare: bit-identical
    on a machine with the same kernels, metrics within tolerance on another."""
    from shrinkflow.audit.reproduce import reproduce as do_reproduce

    _, uri, _ = _registry_target(params, None, workspace, None)
    ok, rows, summary = do_reproduce(uri, model_uri, _workspace(workspace), tolerance, keep)
    table = Table(title=f"reproduce {model_uri} (tolerance {tolerance})", title_justify="left")
    for col in ("model", "metric", "recorded", "reproduced", "diff", "ok"):
        table.add_column(col)
    for r in rows:
        fmt = (lambda x: f"{x:.6g}" if isinstance(x, float) else str(x))  # noqa: E731
        if r.get("bytes"):
            mark = "[green]identical[/]" if r["identical"] else (
                "[red]DIFFERENT[/]" if not r["within"] else "[yellow]differs (other ISA)[/]")
        else:
            mark = "[green]ok[/]" if r["within"] else "[red]OFF[/]"
        table.add_row(r["model"], r["metric"], fmt(r["recorded"]), fmt(r["reproduced"]),
                      "" if r["diff"] is None else f"{r['diff']:+.3g}", mark)
    console.print(table)
    console.print(f"recorded on: {summary['recorded_machine']}\nthis machine: "
                  f"{summary['this_machine']}", highlight=False)
    if not summary["same_kernels"]:
        console.print("[yellow]other kernels than the recording machine (ISA or library "
                      "versions differ): bytes may differ; metrics must agree[/]")
    if not ok:
        err_console.print("[bold red]reproduction failed[/]")
        raise typer.Exit(EXIT_ERROR)
    console.print("[green]reproduced[/]" + (" bit for bit" if summary["same_kernels"] else
                                             " within tolerance"))


@app.command("dvc-yaml")
@user_errors
def dvc_yaml(check: Annotated[bool, typer.Option(
                 "--check", help="exit 1 if dvc.yaml differs from what the code generates")] = False,
             workspace: WorkspaceOpt = Path(".")):
    """Write dvc.yaml from the step registry (stages, computed code deps, params, outs)."""
    from shrinkflow.ops.dvcyaml import render

    path = _workspace(workspace) / "dvc.yaml"
    text = render()
    if check:
        if not path.is_file() or path.read_text() != text:
            raise ShrinkflowError(f"{path} is stale: run `shrinkflow dvc-yaml` and commit it")
        console.print(f"{path} is up to date")
        return
    path.write_text(text)
    console.print(f"written: {path}")


@app.command()
@user_errors
def steps():
    """The registered step kinds: stage, config keys with defaults, what each does."""
    from shrinkflow.steps.base import kinds

    table = Table(title="step kinds (one module each in shrinkflow/steps/)", title_justify="left")
    for col in ("step", "dvc stage", "module", "config (defaults)", "what it does"):
        table.add_column(col)
    for name, k in kinds().items():
        fields = ", ".join(f"{f}={v.default!r}" for f, v in k.config.model_fields.items()
                           if f != "kind" and not callable(v.default_factory))
        table.add_row(name, k.stage, k.module, fields, k.doc)
    console.print(table)


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    return {"pct": f"{value * 100:.2f}", "pct0": f"{value * 100:.0f} %", "ms": f"{value:.3f}",
            "diff": f"{value:.1e}", "bytes": f"{value / 1024:.1f}K", "int": f"{int(value):,}",
            "pp": f"{value:+.2f}", "x": f"{value:.1f}", "mega": f"{value / 1e6:.2f}M"}[kind]


def _print_outcome(result, seconds: float, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps({**result.model_dump(mode="json"), "wall_seconds": round(seconds, 2)},
                         indent=1, default=str))
        return
    run = result.run
    if result.nothing_changed:
        console.print(f"[green]{result.message}[/]", highlight=False)
        console.print(f"{len(result.reused)} steps in the store; selected {result.selected}; "
                      f"report: {result.report}")
        if run:
            console.print(f"MLflow: mlflow ui --backend-store-uri {run.tracking_uri}  (run "
                          f"{run.run_id}); use --force STEP to recompute on purpose")
        console.print(f"wall time {seconds:.1f} s")
        return
    # One row per model. "×" columns compare with the teacher (times smaller / faster).
    table = Table(title="shrinkflow: validated models (test split, ONNX Runtime, "
                        "latency p50 at 1 thread)", title_justify="left")
    columns = [("model", None, None), ("torch acc", "test_accuracy", "pct"),
               ("ORT acc", "onnx_test_accuracy", "pct"), ("drop pp", "accuracy_drop_pp", "pp"),
               ("top-1 agree", "parity_top1_agreement", "pct"),
               ("max|diff|", "parity_max_abs_diff", "diff"),
               ("size", "size_bytes", "bytes"), ("gzip", "size_gzip_bytes", "bytes"),
               ("×smaller", "size_ratio_vs_teacher", "x"), ("MACs", "macs", "mega"),
               ("b1 ms", "latency_p50_ms_b1", "ms"), ("b256 ms", "latency_p50_ms_b256", "ms"),
               ("×faster", "latency_ratio_vs_teacher_b256", "x"),
               ("sparsity", "sparsity", "pct0"), ("params", "params", "int")]
    for title, _, _ in columns:
        table.add_column(title, justify="left" if title == "model" else "right")
    table.add_column("gate")
    for name, values in result.metrics.items():
        mark = "[red]fail[/]" if name in result.rejected else "[green]pass[/]"
        if name == result.selected:
            mark = "[bold blue]selected[/]"
        table.add_row(name, *[_fmt(values.get(key), kind) for _, key, kind in columns[1:]], mark)
    console.print(table)
    console.print(f"latency measured on: {result.machine}", highlight=False)
    console.print(f"MLflow run  {run.run_id}  (experiment {run.experiment_id})")
    reused_models = [n for n, m in result.models.items() if m.get("reused")]
    console.print(f"steps reused from the store: {len(result.reused)}; computed: "
                  f"{', '.join(result.computed) or 'nothing'}")
    if reused_models:
        console.print(f"models unchanged (their MLflow runs kept): {', '.join(reused_models)}")
    if result.removed:
        console.print(f"removed (no longer in params): {', '.join(result.removed)}")
    if result.dvc.get("skipped"):
        console.print(f"DVC: not recorded ({result.dvc['skipped']})")
    elif result.dvc:
        console.print(f"DVC: outputs recorded in dvc.lock, {result.dvc['dvc_pushed']} file(s) "
                      "pushed to the remote; commit dvc.lock to share them (git add dvc.lock)")
    if result.rejected:
        console.print("rejected by the gates (kept and logged):")
        for name, reasons in result.rejected.items():
            console.print(f"  {name}: {'; '.join(reasons)}", highlight=False)
    console.print(f"selected: {result.selected or 'none'} ({result.selection})", highlight=False)
    if result.promotion:
        p = result.promotion
        verb = "[green]promoted to champion[/]" if p["promoted"] else "[yellow]not promoted[/]"
        console.print(f"registry {p['name']}: version {p['version']} {verb}: {p['reason']}",
                      highlight=False)
    for target, t in result.targets.items():
        console.print(f"[bold]{target}[/]: selected {t['selected'] or 'none'} ({t['selection']}); "
                      f"{len(t['rejected'])} rejected", highlight=False)
        for name, reasons in t["rejected"].items():
            console.print(f"  {name}: {'; '.join(reasons)}", highlight=False)
        p = t["promotion"]
        if p:
            verb = "promoted to champion" if p["promoted"] else "not promoted"
            console.print(f"  registry: version {p['version']} {verb} "
                          f"(alias champion-{target}): {p['reason']}", highlight=False)
    if result.report:
        console.print(f"report: {result.report}")
    console.print(f"wall time {seconds:.1f} s")
    if run.tracking_uri.startswith(("http://", "https://")):  # a tracking server: its UI
        console.print(f"MLflow UI:  {run.tracking_uri}/#/experiments/{run.experiment_id}/runs/"
                      f"{run.run_id}", highlight=False)
    else:
        console.print(f"MLflow UI:  mlflow ui --backend-store-uri {run.tracking_uri}   "
                      "(then http://127.0.0.1:5000)")
    api = os.environ.get("PREFECT_API_URL", "")
    console.print(f"Prefect UI: {api.removesuffix('/api')}" if api else
                  "Prefect UI: prefect server start   (then http://127.0.0.1:4200)",
                  highlight=False)


def main() -> None:
    """Console-script entry point."""
    import atexit

    atexit.register(_end_process)  # registered first: runs after every other exit handler
    signal.signal(signal.SIGTERM, _terminate)
    setup()
    try:
        app()
    except SystemExit as exc:
        _EXIT["code"] = exc.code if isinstance(exc.code, int) else (1 if exc.code else 0)
        raise
    _EXIT["code"] = 0


_EXIT = {"code": 1}  # until main() knows better (an uncaught exception exits with 1)


def _end_process() -> None:
    """End the process once the exit handlers have run (logs flushed, temporary servers
    stopped), without finalizing every loaded module: with torch, ONNX Runtime, OpenVINO
    and LiteRT loaded, the interpreter's own teardown took 1.5 s after the last handler
    of a run. Every file shrinkflow writes is complete and closed before this."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(_EXIT["code"])


if __name__ == "__main__":
    sys.exit(main())
