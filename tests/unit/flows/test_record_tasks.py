"""Record-keeping tasks get their arguments as they are, never walked by Prefect."""

import pytest

pytestmark = pytest.mark.slow  # a Prefect API


class Unwalkable(dict):
    """A dict that fails when anything iterates over it (as Prefect's parameter walk does)."""

    def items(self):
        raise AssertionError("walked")

    def __iter__(self):
        raise AssertionError("walked")


def test_a_recording_task_receives_its_arguments_unwalked(prefect_harness):
    from prefect import flow, task
    from shrinkflow.tasks.record import recording

    given = Unwalkable(a=1)

    def same(x, y=None):
        return x is given and y is given

    quoted = recording("probe")(same)
    plain = task(name="probe-plain")(same)

    @flow
    def both():
        ok = quoted(given, y=given)
        try:
            plain(given)
        except Exception as exc:  # Prefect's walk met the dict
            return ok, "walked" in repr(exc) or "resolve inputs" in str(exc)
        return ok, False

    assert both() == (True, True)
