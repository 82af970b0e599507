"""The calibrated 4D dataset seen by algorithms: in memory or on disk, one reading interface.

Algorithms take anything :func:`as_dataset` accepts: an :class:`io.Dataset` (Zarr/HDF5,
read lazily), an :class:`InMemoryDataset` (a 4-D array plus its :class:`Calibration`,
for tests and small data) or a path. They read it only through ``calibration``,
``shape``, ``dtype``, ``iter_row_blocks`` and ``read_rows``, so they never need the whole
dataset in memory. :func:`check_counts` is the one validation of measured intensities that
reconstructions apply to every block they read.
"""

from __future__ import annotations

import os

import numpy as np

from . import io
from .backend import xp_of
from .calibration import Calibration
from .errors import PtyengineError

BLOCK_TARGET_BYTES = 16 * 2**20  # default block of an in-memory dataset: ~16 MiB of rows


class InMemoryDataset:
    """A 4-D array ``(scan_y, scan_x, k_y, k_x)`` of real intensities with its calibration.

    Reads like :class:`io.Dataset` (``calibration``, ``shape``, ``dtype``,
    ``read_rows``, ``iter_row_blocks``, ``arrays()``, context manager); ``path`` is None.
    The array is not copied: ``read_rows`` returns views.
    """

    path = None

    def __init__(self, data, calibration: Calibration):
        if not isinstance(calibration, Calibration):
            raise PtyengineError(f"calibration must be a Calibration, got {calibration!r}")
        data = np.asarray(data)
        if data.dtype.kind not in "fiu":
            raise PtyengineError(f"data has dtype {data.dtype}; expected real intensities")
        calibration.check_data_shape(data.shape, source="data")
        self.data, self.calibration = data, calibration
        self.metadata: dict = {}

    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)

    def arrays(self) -> list[str]:
        """Names of extra arrays (an in-memory dataset has none)."""
        return []

    def read_array(self, name: str):
        raise PtyengineError(f"in-memory dataset: no array {name!r} (has: none)")

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Scan rows ``start:stop``."""
        sy = self.shape[0]
        if not 0 <= start <= stop <= sy:
            raise PtyengineError(f"in-memory dataset: rows {start}:{stop} are outside the "
                                 f"scan (0:{sy})")  # fmt: skip
        return self.data[start:stop]

    def iter_row_blocks(self, rows: int | None = None):
        """Yield ``(row_start, block)`` in order, ``rows`` rows per block (default ~16 MiB)."""
        if rows is None:
            row_bytes = max(1, int(np.prod(self.shape[1:])) * self.dtype.itemsize)
            rows = max(1, BLOCK_TARGET_BYTES // row_bytes)
        rows = int(rows)
        if rows < 1:
            raise PtyengineError(f"in-memory dataset: rows per block must be ≥ 1, got {rows}")
        for start in range(0, self.shape[0], rows):
            yield start, self.read_rows(start, min(start + rows, self.shape[0]))

    def close(self) -> None:
        pass

    def __enter__(self) -> InMemoryDataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"InMemoryDataset(shape={self.shape}, dtype={self.dtype})"


def as_dataset(obj):
    """A readable dataset from an io.Dataset, an InMemoryDataset (both returned as they are,
    as is any object with ``calibration`` and ``iter_row_blocks``) or a path (opened with
    :func:`io.open_dataset`; the caller closes it: ``if ds is not obj: ds.close()``)."""
    if isinstance(obj, io.Dataset | InMemoryDataset):
        return obj
    if isinstance(obj, str | os.PathLike):
        return io.open_dataset(obj)
    if hasattr(obj, "calibration") and hasattr(obj, "iter_row_blocks"):
        return obj
    if isinstance(obj, np.ndarray):
        raise PtyengineError("a bare array has no calibration: wrap it as "
                             "InMemoryDataset(data, calibration)")  # fmt: skip
    raise PtyengineError(f"expected a dataset or a path to one, got {type(obj).__name__}")


def check_counts(block, where: str, row_start: int | None = None) -> None:
    """Raise a PtyengineError if ``block`` (rows, Sx, Ky, Kx) holds NaN/inf or negative values.

    ``where`` names the block in the message (e.g. ``"scan rows 4:8 of x.zarr"``); given
    ``row_start`` (the block's first scan row), the message also lists the scan rows that
    hold bad values. Unsigned integer data pass without a look.
    """
    xp = xp_of(block)
    kind = block.dtype.kind
    if kind == "u" or block.size == 0:
        return
    problems = []
    bad_rows = None
    if kind == "f":
        nonfinite = ~xp.isfinite(block)
        n = int(nonfinite.sum())
        if n:
            problems.append(f"{n} non-finite value(s) (NaN or inf)")
            bad_rows = nonfinite.reshape(block.shape[0], -1).any(axis=1)
    negative = block < 0
    n = int(negative.sum())
    if n:
        problems.append(f"{n} negative value(s) (counts must be ≥ 0)")
        neg_rows = negative.reshape(block.shape[0], -1).any(axis=1)
        bad_rows = neg_rows if bad_rows is None else bad_rows | neg_rows
    if not problems:
        return
    rows = ""
    if row_start is not None:
        idx = [int(i) + int(row_start) for i in np.flatnonzero(np.asarray(
            bad_rows.get() if hasattr(bad_rows, "get") else bad_rows))]  # fmt: skip
        shown = ", ".join(str(i) for i in idx[:10]) + (", ..." if len(idx) > 10 else "")
        rows = f" in scan row{'s' if len(idx) > 1 else ''} {shown}"
    raise PtyengineError(f"{where}: {' and '.join(problems)}{rows}")
