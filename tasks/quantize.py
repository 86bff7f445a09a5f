"""Step ``quantize``: quantization-aware training (ONNX Runtime dynamic/static int8 happen in convert).

Runs inside a variant chain; ``python -m tasks.compress NAME`` runs a whole chain for dvc.yaml.
"""

from tasks._common import chain_step_task

quantize = chain_step_task("quantize")
