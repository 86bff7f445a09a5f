"""``shrinkflow.tasks``: the Prefect tasks around the library (source in the repository's
top-level ``tasks/``).

- :mod:`shrinkflow.tasks.steps`: one task per registered step kind, generated from the
  step registry; each runs :func:`shrinkflow.plan.executor.run_step` on a worker.
- :mod:`shrinkflow.tasks.record`: record-keeping after compute (decide, metrics, DVC,
  MLflow, registry, report), run in the flow's process.
- ``python -m shrinkflow.tasks STAGE`` runs a ``dvc.yaml`` stage through the same
  executor (no Prefect involved).

Importing this package imports nothing heavy.
"""
