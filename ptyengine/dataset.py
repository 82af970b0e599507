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
    """A 4-D array ``(scan_y, scan_x, k_y, k_x)`` of real intensities with its calibration,
    and optionally a detector mask (:func:`detector_mask`).

    Reads like :class:`io.Dataset` (``calibration``, ``shape``, ``dtype``,
    ``read_rows``, ``iter_row_blocks``, ``arrays()``, context manager); ``path`` is None.
    The array is not copied: ``read_rows`` returns views.
    """

    path = None

    def __init__(self, data, calibration: Calibration, mask=None):
        if not isinstance(calibration, Calibration):
            raise PtyengineError(f"calibration must be a Calibration, got {calibration!r}")
        data = np.asarray(data)
        if data.dtype.kind not in "fiu":
            raise PtyengineError(f"data has dtype {data.dtype}; expected real intensities")
        calibration.check_data_shape(data.shape, source="data")
        self.data, self.calibration = data, calibration
        self.metadata: dict = {}
        #: the detector mask (see :func:`detector_mask`), checked here
        self.mask = None if mask is None else check_mask(mask, calibration, "mask")

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


#: the name of the detector mask stored next to the data (``ptyengine convert --mask``)
MASK_ARRAY = "detector_mask"
#: a mask must keep at least this fraction of the bright-field disc's pixels
MIN_BRIGHT_FIELD = 0.5


def detector_mask(ds) -> np.ndarray | None:
    """The detector mask of a dataset: (Ky, Kx) uint8, 1 for a pixel that counts, 0 for a
    dead or hot pixel that the reconstructions ignore; None when every pixel counts.

    ``ds.mask`` (set by ``ptyengine reconstruct --mask``, or given to
    :class:`InMemoryDataset`) wins over the array :data:`MASK_ARRAY` stored in the dataset
    (``ptyengine convert --mask``). Checked by :func:`check_mask`.
    """
    given = getattr(ds, "mask", None)
    name = getattr(ds, "path", None) or "data"
    if given is not None:
        return check_mask(given, ds.calibration, "mask")
    if MASK_ARRAY not in ds.arrays():
        return None
    values, _ = ds.read_array(MASK_ARRAY)
    return check_mask(values, ds.calibration, f"{name}: {MASK_ARRAY}")


def bright_field_disc(cal) -> np.ndarray:
    """(Ky, Kx) bool: the detector pixels inside the bright-field disc |k| ≤ α/λ."""
    k_ap = cal.semiangle * 1e-3 / cal.wavelength
    ky = (np.arange(cal.detector_shape[0]) - cal.detector_center[0]) * cal.dk[0]
    kx = (np.arange(cal.detector_shape[1]) - cal.detector_center[1]) * cal.dk[1]
    return np.hypot(ky[:, None], kx[None, :]) <= k_ap


def check_mask(mask, cal, source: str = "mask") -> np.ndarray:
    """``mask`` as (Ky, Kx) uint8 (1: use, 0: ignore), or a PtyengineError naming
    ``source``: not 2-D booleans or 0/1 integers, a shape other than the detector's, or
    fewer than :data:`MIN_BRIGHT_FIELD` of the bright-field disc's pixels kept (a mask
    that hides the bright field leaves nothing to reconstruct from; an inverted mask, 1
    marking the bad pixels, does that)."""
    m = np.asarray(mask)
    if m.shape != tuple(cal.detector_shape):
        raise PtyengineError(f"{source} has shape {m.shape} but the detector has "
                             f"{tuple(cal.detector_shape)} pixels: give a mask of the "
                             "detector's shape")  # fmt: skip
    if m.dtype.kind not in "biu" or (m.dtype.kind != "b" and not np.isin(m, (0, 1)).all()):
        raise PtyengineError(f"{source} must hold booleans or 0/1 integers (1: a pixel that "
                             f"counts, 0: dead or hot), got {m.dtype} values")  # fmt: skip
    m = m.astype(np.uint8)
    disc = bright_field_disc(cal)
    kept, total = int(m[disc].sum()), int(disc.sum())
    if total and kept < MIN_BRIGHT_FIELD * total:
        raise PtyengineError(
            f"{source} leaves {kept} of the {total} bright-field pixels (fewer than "
            f"{MIN_BRIGHT_FIELD:.0%}): nothing to reconstruct from; 1 marks a pixel that "
            "counts, 0 a dead or hot one (is the mask inverted?)")
    return m


def load_positions(path) -> np.ndarray:
    """Measured scan positions from a .npy file ((N, 2) array) or a text file (.csv, .txt:
    two columns y, x, comma- or space-separated, '#' comments), in Å, scan frame, scan
    order; checked against a calibration later (:func:`.reconstruct.epie.check_positions`),
    or a PtyengineError naming the file."""
    hint = "give a .npy (N, 2) array or a text file of two columns y, x in Å, in scan order"
    if str(path).lower().endswith(".npy"):
        return _load_npy(path, "positions", hint)
    try:
        with open(path) as f:
            text = f.read().replace(",", " ")
        return np.loadtxt(text.splitlines(), ndmin=2)
    except (OSError, ValueError) as exc:
        raise PtyengineError(f"cannot read the positions {path}: {exc} ({hint})") from None


def _load_npy(path, what: str, hint: str) -> np.ndarray:
    """One array from a .npy file, or a PtyengineError naming the file and ``what``."""
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise PtyengineError(f"cannot read the {what} {path}: {exc} ({hint})") from None
    if not isinstance(a, np.ndarray):  # an .npz archive
        a.close()
        raise PtyengineError(f"cannot read the {what} {path}: an .npz archive ({hint})")
    return a


def load_mask(path) -> np.ndarray:
    """A detector mask from a .npy file (booleans or 0/1; checked by :func:`check_mask`
    against a calibration later), or a PtyengineError naming the file."""
    return _load_npy(path, "mask", "give a .npy file of booleans or 0/1, the detector's shape")
