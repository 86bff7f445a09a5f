"""The one exception type a user can meet."""

from __future__ import annotations


class ShrinkflowError(Exception):
    """A problem the user can fix.

    The message names the bad key, file or URL and says what to do; the CLI prints it
    on one line without a traceback and exits non-zero.
    """


class GateFailure(ShrinkflowError):
    """A validation gate failed: the metrics are logged, but the model is not accepted."""

    def __init__(self, failures: list[str]):
        self.failures = failures
        super().__init__("gate failed: " + "; ".join(failures))
