"""Step ``prune``: remove weights (magnitude, random, movement) or whole channels (structured).

Runs inside a variant chain; ``python -m tasks.compress NAME`` runs a whole chain for dvc.yaml.
"""

from tasks._common import chain_step_task

prune = chain_step_task("prune")
