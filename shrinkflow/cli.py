"""The ``shrinkflow`` command line (Typer). Errors a user can fix print one line, no traceback."""

from __future__ import annotations

import functools
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from shrinkflow.env import setup
from shrinkflow.errors import GateFailure, ShrinkflowError

app = typer.Typer(
    name="shrinkflow", no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False,
    help="Train, compress, convert to ONNX and validate a model; tracked in MLflow, "
         "versioned in DVC, orchestrated by Prefect.",
)
# Wide enough for the per-model table when output is not a terminal (CI logs, pipes).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

EXIT_ERROR = 1
EXIT_GATE = 3


def user_errors(fn):
    """Turn a ShrinkflowError into one red line and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except GateFailure as exc:
            err_console.print(f"[bold red]gate failed:[/] {'; '.join(exc.failures)}")
            raise typer.Exit(EXIT_GATE) from None
        except ShrinkflowError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
            raise typer.Exit(EXIT_ERROR) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper


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


def _load(params: Path | None, overrides: list[str] | None, workspace: Path):
    from shrinkflow.config import load_params

    if params is None and (workspace / "params.yaml").is_file():
        params = workspace / "params.yaml"
    elif params is None:
        err_console.print(f"note: no params.yaml in {workspace.resolve()}; using built-in defaults")
    return load_params(params, overrides or [])


@app.command()
@user_errors
def run(params: ParamsOpt = None, set_: SetOpt = None, workspace: WorkspaceOpt = Path(".")):
    """Run the pipeline: prepare -> train -> convert -> validate (cached steps are reused)."""
    config = _load(params, set_, workspace)  # validated before anything is computed
    workspace = workspace.resolve()
    from flows.pipeline import run_pipeline

    start = time.perf_counter()
    result = run_pipeline(config, workspace)
    _print_summary(result, time.perf_counter() - start)


@app.command()
@user_errors
def bench(params: ParamsOpt = None, set_: SetOpt = None,
          workspace: Annotated[Path | None, typer.Option(
              "--workspace", "-w", help="where the benchmark's models, cache and MLflow "
                                        "database live (default: bench/work/<dataset>)")] = None,
          out: Annotated[Path | None, typer.Option(
              help="where benchmark.md and benchmark.csv go "
                   "(default: bench/results/<dataset>)")] = None,
          rounds: Annotated[int, typer.Option(min=1, help="interleaved latency rounds")] = 3):
    """Benchmark side by side: torch teacher, ONNX Runtime peer baselines, every variant.

    Runs the pipeline first (cached steps, such as a trained teacher, are reused).
    """
    config = _load(params, set_, Path("."))
    dataset = config.prepare.dataset
    ws = (workspace or Path("bench") / "work" / dataset).resolve()
    ws.mkdir(parents=True, exist_ok=True)
    config = config.model_copy(update={"base": config.base.model_copy(
        update={"dvc_commit": False})})
    from flows.pipeline import run_pipeline
    from shrinkflow import bench as lib
    from shrinkflow.workspace import Workspace

    start = time.perf_counter()
    result = run_pipeline(config, ws)
    console.print(f"pipeline done in {time.perf_counter() - start:.0f} s (MLflow run "
                  f"{result.run.run_id}); measuring side by side...")
    md, _ = lib.benchmark(config, Workspace.at(ws), out or Path("bench") / "results" / dataset,
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
    ws = workspace.resolve()
    _load(ws / params_file if (ws / params_file).is_file() else None, None, ws)
    from flows.retrain import retrain

    console.print(f"serving shrinkflow-retrain/{name} on '{cron}' for {ws}")
    retrain.serve(name=name, cron=cron, tags=["shrinkflow"],
                  parameters={"workspace": str(ws), "params_file": params_file},
                  print_starting_message=True)


data_app = typer.Typer(help="Version data snapshots with DVC.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("add")
@user_errors
def data_add(path: Annotated[Path, typer.Argument(help=".npz with arrays x and y")],
             workspace: WorkspaceOpt = Path("."),
             push: Annotated[bool, typer.Option(help="push the snapshot to the DVC remote")] = True):
    """Version a new data snapshot: it becomes data/raw/dataset.npz, tracked by DVC.

    The next (scheduled) run sees the new data and retrains. params.yaml must read it:
    prepare.dataset: npz and prepare.path: data/raw/dataset.npz.
    """
    from shrinkflow.snapshots import add_snapshot

    info = add_snapshot(path, workspace.resolve(), push=push)
    console.print(f"data snapshot {info['path']}: {info['examples']} examples, "
                  f"{info['classes']} classes, md5 {info['md5']}")
    console.print(f"tracked in {info['dvc_file']}{' and pushed' if push else ''}; commit it: "
                  f"git add {info['dvc_file']} && git commit -m 'data snapshot'")
    if info.get("params_note"):
        console.print(f"[yellow]{info['params_note']}[/]")


RegistryOpts = Annotated[str | None, typer.Option(
    "--name", help="registered model (default: registry.model_name, else shrinkflow-<dataset>)")]


def _registry_target(params: Path | None, set_: list[str] | None, workspace: Path,
                     name: str | None):
    from shrinkflow.config import tracking_uri
    from shrinkflow.tracking import resolve_tracking_uri

    config = _load(params, set_, workspace)
    uri = resolve_tracking_uri(tracking_uri(config), workspace.resolve())
    return config, uri, name or config.registered_model_name()


@app.command()
@user_errors
def models(name: RegistryOpts = None, params: ParamsOpt = None, set_: SetOpt = None,
           workspace: WorkspaceOpt = Path(".")):
    """List registered versions: aliases, key metrics, gate verdict, last move."""
    from shrinkflow.registry import list_versions

    _, uri, name = _registry_target(params, set_, workspace, name)
    rows = list_versions(uri, name)
    table = Table(title=f"registered model {name} ({uri})", title_justify="left")
    for col in ("version", "aliases", "variant", "ORT acc %", "size KB", "b256 ms", "gate",
                "created", "last move"):
        table.add_column(col, justify="right" if col in ("version", "ORT acc %", "size KB",
                                                          "b256 ms") else "left")
    for r in rows:
        m, ev = r["metrics"], r["last_event"]
        move = f"{ev['action']} by {ev['by']} at {ev['at']}: {ev['reason']}" if ev else ""
        table.add_row(r["version"], ", ".join(r["aliases"]), r["variant"],
                      _fmt(m.get("onnx_test_accuracy"), "pct"), _fmt(m.get("size_bytes"), "bytes"),
                      _fmt(m.get("latency_p50_ms_b256"), "ms"), r["gate"], r["created"], move)
    console.print(table)


@app.command()
@user_errors
def promote(version: Annotated[str | None, typer.Option(
                help="version to promote (default: the challenger)")] = None,
            force: Annotated[bool, typer.Option(
                help="skip the promotion rule (needs --reason)")] = False,
            reason: Annotated[str | None, typer.Option(help="why (recorded on the version)")] = None,
            name: RegistryOpts = None, params: ParamsOpt = None, set_: SetOpt = None,
            workspace: WorkspaceOpt = Path(".")):
    """Promote the challenger (or --version N) to champion if it wins by the rule."""
    from shrinkflow.data import data_record
    from shrinkflow.registry import promote as do_promote
    from shrinkflow.registry import test_data_of
    from shrinkflow.workspace import Workspace

    config, uri, name = _registry_target(params, set_, workspace, name)
    ws = Workspace.at(workspace)
    test_data = test_data_of(data_record(ws.data_dir)) if (ws.data_dir / "meta.json").is_file() \
        else None
    command = "shrinkflow promote" + (" --force" if force else "")
    result = do_promote(uri, name, version, config, command, test_data, force=force,
                        reason=reason)
    verb = "[green]promoted to champion[/]" if result.promoted else "[yellow]not promoted[/]"
    console.print(f"{name} v{result.version} {verb}: {result.reason}")
    console.print(f"champion: v{result.champion_before or '-'} -> v{result.champion_after or '-'}")


@app.command()
@user_errors
def rollback(reason: Annotated[str | None, typer.Option(help="why (recorded)")] = None,
             name: RegistryOpts = None, params: ParamsOpt = None, set_: SetOpt = None,
             workspace: WorkspaceOpt = Path(".")):
    """champion <- previous (the demoted champion becomes previous)."""
    from shrinkflow.registry import rollback as do_rollback

    _, uri, name = _registry_target(params, set_, workspace, name)
    result = do_rollback(uri, name, "shrinkflow rollback", reason)
    console.print(f"{name}: champion v{result.champion_before} -> v{result.champion_after} "
                  f"({result.reason})")


@app.command()
@user_errors
def predict(model_uri: Annotated[str, typer.Argument(
                help="models:/NAME@champion, models:/NAME/VERSION, runs:/... or a .onnx file")],
            input_npz: Annotated[Path, typer.Argument(help=".npz with an array x of raw images")],
            out: Annotated[Path | None, typer.Option(help="write pred and probs to this .npz")] = None,
            normalized: Annotated[bool, typer.Option(
                help="x is already normalised (skip the model's stored normalisation)")] = False,
            params: ParamsOpt = None, workspace: WorkspaceOpt = Path(".")):
    """Predict with a registered ONNX model on ONNX Runtime."""
    from shrinkflow.config import tracking_uri
    from shrinkflow.predict import predict as do_predict
    from shrinkflow.tracking import client, resolve_tracking_uri

    config = _load(params, None, workspace)
    client(resolve_tracking_uri(tracking_uri(config), workspace.resolve()))
    result = do_predict(model_uri, input_npz, out, normalized)
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
    import json

    from shrinkflow import audit as lib
    from shrinkflow.config import tracking_uri
    from shrinkflow.tracking import resolve_tracking_uri

    config = _load(params, None, workspace)
    uri = resolve_tracking_uri(tracking_uri(config), workspace.resolve())
    if data or commit:
        rows = lib.find_versions(uri, data, commit)
        if as_json:
            console.print_json(json.dumps(rows))
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
    report = lib.audit(uri, model_uri)
    checks = lib.verify(report, workspace.resolve()) if verify else []
    if as_json:
        report["checks"] = [c.model_dump() for c in checks]
        console.print_json(json.dumps(report, default=str))
    else:
        console.print(lib.render_tree(report))
    if graph:
        if graph.suffix == ".png":
            lib.graph_png(report, graph)
        else:
            graph.write_text(lib.mermaid(report))
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
    """Re-derive a model from its lineage and compare metrics with the recorded ones."""
    from shrinkflow import audit as lib
    from shrinkflow.config import tracking_uri
    from shrinkflow.tracking import resolve_tracking_uri

    config = _load(params, None, workspace)
    uri = resolve_tracking_uri(tracking_uri(config), workspace.resolve())
    ok, rows = lib.reproduce(uri, model_uri, workspace.resolve(), tolerance, keep)
    table = Table(title=f"reproduce {model_uri} (tolerance {tolerance})", title_justify="left")
    for col in ("model", "metric", "recorded", "reproduced", "diff", "ok"):
        table.add_column(col)
    for r in rows:
        fmt = (lambda x: f"{x:.6g}" if isinstance(x, float) else str(x))  # noqa: E731
        mark = ("[green]yes[/]" if r.get("info") else "[yellow]no[/]") if "info" in r else \
            ("[green]ok[/]" if r["within"] else "[red]OFF[/]")
        table.add_row(r["model"], r["metric"], fmt(r["recorded"]), fmt(r["reproduced"]),
                      "" if r["diff"] is None else f"{r['diff']:+.3g}", mark)
    console.print(table)
    if not ok:
        err_console.print("[bold red]reproduction outside tolerance[/]")
        raise typer.Exit(EXIT_ERROR)
    console.print("[green]reproduced within tolerance[/]")


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    return {"pct": f"{value * 100:.2f}", "pct0": f"{value * 100:.0f} %", "ms": f"{value:.3f}",
            "diff": f"{value:.1e}", "bytes": f"{value / 1024:.1f}K", "int": f"{int(value):,}",
            "pp": f"{value:+.2f}", "x": f"{value:.1f}"}[kind]


def _print_summary(result, seconds: float) -> None:
    # One row per model. "×" columns compare with the teacher (times smaller / faster).
    table = Table(title="shrinkflow: validated models (test split, ONNX Runtime, "
                        "latency p50 at 1 thread)", title_justify="left")
    columns = [("model", None, None), ("torch acc", "test_accuracy", "pct"),
               ("ORT acc", "onnx_test_accuracy", "pct"), ("drop pp", "accuracy_drop_pp", "pp"),
               ("top-1 agree", "parity_top1_agreement", "pct"),
               ("max|diff|", "parity_max_abs_diff", "diff"),
               ("size", "size_bytes", "bytes"), ("gzip", "size_gzip_bytes", "bytes"),
               ("×smaller", "size_ratio_vs_teacher", "x"),
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
    run = result.run
    console.print(f"MLflow run  {run.run_id}  (experiment {run.experiment_id})")
    console.print(f"steps reused from cache: {len(result.reused)}; computed: "
                  f"{', '.join(result.computed) or 'nothing'}")
    if result.dvc.get("skipped"):
        console.print(f"DVC: not recorded ({result.dvc['skipped']})")
    elif result.dvc:
        console.print(f"DVC: outputs recorded in dvc.lock, {result.dvc['dvc_pushed']} file(s) "
                      "pushed to the remote")
    if result.rejected:
        console.print("rejected by the gates (kept and logged):")
        for name, reasons in result.rejected.items():
            console.print(f"  {name}: {'; '.join(reasons)}", highlight=False)
    console.print(f"selected: {result.selected or 'none'} ({result.selection})")
    if result.promotion:
        p = result.promotion
        verb = "[green]promoted to champion[/]" if p["promoted"] else "[yellow]not promoted[/]"
        console.print(f"registry {p['name']}: version {p['version']} {verb}: {p['reason']}")
    if result.report:
        console.print(f"report: {result.report}")
    console.print(f"wall time {seconds:.1f} s")
    console.print(f"MLflow UI:  mlflow ui --backend-store-uri {run.tracking_uri}   "
                  "(then http://127.0.0.1:5000)")
    console.print("Prefect UI: prefect server start   (then http://127.0.0.1:4200)")


def main() -> None:
    """Console-script entry point."""
    setup()
    app()


if __name__ == "__main__":
    sys.exit(main())
