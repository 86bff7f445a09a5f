"""The plan and its executor: ``params.yaml`` becomes an ordered list of content-keyed
steps, and one executor runs them (for the Prefect flow, the DVC stages and
``reproduce`` alike)."""
