"""The one exception type that reaches the user as a one-line message instead of a traceback."""


class SkyfuseError(Exception):
    """A problem the user can fix (bad input, bad configuration); the CLI prints it and exits non-zero."""
