"""MLOps adapters: MLflow tracking and registry, DVC, lineage, provenance, change
detection, data snapshots, reports, and recording a finished run."""

from shrinkflow.ops import transfer as _transfer  # noqa: E402, F401  (resolves train.init_from)
