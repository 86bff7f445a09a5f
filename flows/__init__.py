"""``shrinkflow.flows``: the Prefect flows (source in the repository's top-level
``flows/``): ``pipeline`` (one run of the plan) and ``retrain`` (scheduled: skip when
nothing changed). They only wire tasks; the logic is in the library."""
