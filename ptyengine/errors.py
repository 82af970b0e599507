"""Errors that ptyengine reports to its users."""


class PtyengineError(Exception):
    """A user-facing error: the CLI prints its message on one line, without a traceback."""
