"""User-facing errors.

Every problem caused by bad input (missing data, wrong config key, a checkpoint of another architecture, NaN
weights) is raised as a :class:`SorobustError` whose message is one line saying what is wrong and how to fix
it. The CLI prints that line and exits with status 2; it never prints a traceback for these.
"""


class SorobustError(Exception):
    """A one-line, user-actionable error."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
