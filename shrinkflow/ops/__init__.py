"""MLOps adapters: MLflow tracking and registry, DVC, lineage, provenance, change
detection, data snapshots, reports, and recording a finished run."""
