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
        failed = [f for f in result.gate_failures if f.startswith(f"{name}:")]
        table.add_row(name, *[_fmt(values.get(key), kind) for _, key, kind in columns[1:]],
                      "[red]fail[/]" if failed else "[green]pass[/]")
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
