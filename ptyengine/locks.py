"""One writer per output: an exclusive lock beside it, taken before any work.

:func:`output_lock` holds ``fcntl.flock`` on ``NAME.lock``, a sibling of the output ``NAME``
and of its ``NAME.partial``, from before the first byte is written until after the rename
to ``NAME``; a second writer (another process, or another thread) is refused at once with
one line. ``simulate``, ``convert`` and ``reconstruct`` all write through it (the dataset
writer of :mod:`ptyengine.io` and :func:`ptyengine.results.write_result` take it), and
only the holder renames a ``.partial`` to its final name.

A flock dies with its process (``kill -9`` included), so a lock file left by a killed run
blocks nothing; the holder deletes the file when it lets go (after checking that the file
it locked is still the one at that path, so a file deleted under a waiting writer cannot
give two holders). On NFS, Linux emulates flock by fcntl byte-range locks, which hold
across machines. Within one thread the lock is re-entrant (a command holds it around the
library call that takes it again). Creating the lock file is also the first check that the
output's folder can be written.
"""

from __future__ import annotations

import os
import socket
import threading
from contextlib import contextmanager
from pathlib import Path

from .errors import PtyengineError, write_error

try:
    import fcntl
except ImportError:  # not POSIX: no locking (ptyengine runs on Linux and macOS)
    fcntl = None

LOCK = ".lock"
_held: dict[str, list] = {}  # absolute lock path -> [fd, depth, owning thread]
_guard = threading.Lock()


def lock_path(path) -> Path:
    """The lock file of the output ``path``: ``NAME.lock``."""
    return Path(str(path) + LOCK)


def _busy(path, lock: Path, holder: str) -> PtyengineError:
    who = f" ({holder})" if holder else ""
    return PtyengineError(f"{path} is being written by another ptyengine process{who}; "
                          f"wait for it to finish, or write elsewhere (lock {lock})")  # fmt: skip


def _holder(lock: Path) -> str:
    try:
        return lock.read_text().strip()[:100]
    except OSError:
        return ""


def _open_locked(path, lock: Path) -> int:
    """A descriptor of ``lock`` holding an exclusive flock on the file now at that path."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise write_error(path, exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(path, lock, _holder(lock)) from None
        except OSError as exc:  # a file system without locks
            os.close(fd)
            raise PtyengineError(f"cannot lock {lock} for writing {path}: "
                                 f"{exc.strerror or exc}") from exc  # fmt: skip
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(lock))
        except FileNotFoundError:  # the holder let go and deleted it meanwhile
            same = False
        if same:
            return fd
        os.close(fd)


def acquire(path) -> None:
    """Take the write lock of the output ``path`` (re-entrant within a thread); raises a
    :class:`PtyengineError` if another process or thread holds it or the folder cannot
    be written. Creates the output's parent folder."""
    lock = lock_path(path)
    key = os.path.abspath(lock)
    me = threading.get_ident()
    with _guard:
        held = _held.get(key)
        if held is not None:
            if held[2] != me:
                raise _busy(path, lock, "another thread of this process")
            held[1] += 1
            return
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            blocker = next((p for p in (lock.parent, *lock.parent.parents)
                            if p.exists() and not p.is_dir()), None)  # fmt: skip
            if blocker is None:
                raise write_error(path, exc) from exc
            raise PtyengineError(f"cannot write {path}: {blocker} is a file, not a "
                                 "folder") from None  # fmt: skip
        except OSError as exc:
            raise write_error(path, exc) from exc
        if fcntl is None:
            _held[key] = [None, 1, me]
            return
        fd = _open_locked(path, lock)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        except OSError:
            pass  # the note for a refused writer is optional
        _held[key] = [fd, 1, me]


def release(path) -> None:
    """Let go of a lock taken by :func:`acquire` (the outermost release deletes the file)."""
    lock = lock_path(path)
    key = os.path.abspath(lock)
    with _guard:
        held = _held.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _held[key]
        if held[0] is not None:
            try:
                lock.unlink()  # while still holding it: a waiting writer then retries
            except OSError:
                pass
            os.close(held[0])


@contextmanager
def output_lock(path):
    """``with output_lock(path):`` holds the write lock of the output ``path``."""
    acquire(path)
    try:
        yield Path(path)
    finally:
        release(path)
