"""Process environment: telemetry off, quiet third-party logging.

Called explicitly by every entry point (CLI, ``python -m tasks.<step>``, tests) before
Prefect, MLflow, DVC or ONNX Runtime are imported -- never at import time of the library.
"""

from __future__ import annotations

import logging
import os
import warnings

# Each tool's own switch; ONNX Runtime's Python call does not work, its env var does.
TELEMETRY_OFF = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "ORT_DISABLE_TELEMETRY": "1",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    # Prefect: show the library's progress logs in flow-run logs.
    "PREFECT_LOGGING_EXTRA_LOGGERS": "shrinkflow",
    # MLflow: no git-based source lookup (we tag the commit ourselves).
    "GIT_PYTHON_REFRESH": "quiet",
    # A first start of Prefect's ephemeral server migrates its database: give it time.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "MLFLOW_LOGGING_LEVEL": "ERROR",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # Library logs outside a flow run (DVC stages, reproduce) stay local, silently.
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
}


def quiet_telemetry() -> None:
    """Turn off every phone-home (respecting values the user set explicitly)."""
    for key, value in TELEMETRY_OFF.items():
        os.environ.setdefault(key, value)


def quiet_logs() -> None:
    """Silence warnings from third parties that a user cannot act on."""
    for name in ("torch.onnx", "torch._export", "torch.export", "onnxscript", "onnx_ir", "mlflow", "dvc",
                 "alembic", "urllib3", "git"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*torchvision.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
    warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")


def setup() -> None:
    quiet_telemetry()
    quiet_logs()
    # The library's progress lines (epochs, pruning cycles); Prefect forwards them to
    # the flow-run logs (PREFECT_LOGGING_EXTRA_LOGGERS).
    logging.getLogger("shrinkflow").setLevel(logging.INFO)
