"""Errors that ptyengine reports to its users."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path


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


@contextmanager
def atomic_file(path, suffix: str = ".tmp"):
    """Yields a temporary file name beside ``path`` (``.NAME`` + ``suffix``) to write to;
    on success it is renamed to ``path``, on any failure (Ctrl-C included) removed, and an
    ``OSError`` becomes :func:`write_error` naming ``path``. So ``path`` is whole or, as
    before, untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise write_error(path, exc) from exc
        raise
