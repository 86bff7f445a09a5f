"""``python -m shrinkflow.tasks STAGE [VARIANT]``: one ``dvc.yaml`` stage.

It builds the plan of ./params.yaml, runs the steps of that stage through the executor
(in this process; inputs from the files upstream stages published, results from the
step store when their key is there) and publishes the stage's outputs.
"""

from __future__ import annotations

import sys

from shrinkflow.ops.stage import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
