"""Step ``distill``: train a student on the parent's outputs.

Runs inside a variant chain; ``python -m tasks.compress NAME`` runs a whole chain for dvc.yaml.
"""

from tasks._common import chain_step_task

distill = chain_step_task("distill")
