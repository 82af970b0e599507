"""Errors that ptyengine reports to its users."""

from __future__ import annotations

import os


class PtyengineError(Exception):
    """A user-facing error: the CLI prints its message on one line, without a traceback."""


def write_error(path, exc: OSError) -> PtyengineError:
    """A one-line error for an ``OSError`` met while writing the output ``path``:
    'cannot write PATH: No space left on device' (naming the file the system named too,
    when it is another one, e.g. a chunk inside a store)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    name = exc.filename if isinstance(exc.filename, str | bytes | os.PathLike) else None
    where = f" ({os.fsdecode(name)})" if name and os.fsdecode(name) != os.fspath(path) else ""
    return PtyengineError(f"cannot write {os.fspath(path)}: {reason}{where}")
