"""Step ``finetune``: train further, keeping pruned weights at zero.

Runs inside a variant chain; ``python -m tasks.compress NAME`` runs a whole chain for dvc.yaml.
"""

from tasks._common import chain_step_task

finetune = chain_step_task("finetune")
