"""Arrays in plain files (``.npy``, raw binary) read with explicit reads, block by block.

A memory map would leave every page it touched resident (counted against the RSS limits of
cluster jobs: converting a 1.07 GB ``.npy`` peaked at 1.29 GB RSS that way, 0.24 GB with
these reads); :class:`FileArray` reads the bytes of each requested range of the first axis
into a new array with ``preadv`` and keeps nothing mapped.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from .errors import PtyengineError


class FileArray:
    """An array stored in a file at ``offset`` (``order`` C or F), read with explicit reads:
    ``a[start:stop]`` reads that range of the first axis into a new array (pread of its
    bytes), so no page of the file stays mapped between reads. C order reads exactly the
    range's bytes; F order (rare: MATLAB/Fortran writers) reads the file in slabs of
    ~16 MiB and keeps the range's elements: every block reads the whole file, memory stays
    one slab and one block."""

    SLAB_BYTES = 16 * 2**20

    def __init__(self, path: Path, dtype, shape, offset: int = 0, order: str = "C"):
        self.path, self.dtype, self.offset, self.order = Path(path), np.dtype(dtype), offset, order
        self.shape = tuple(int(s) for s in shape)
        self._fd = os.open(self.path, os.O_RDONLY)

    def reshape(self, shape) -> FileArray:
        """The same C-order bytes seen with another shape (one dimension may be -1)."""
        if self.order != "C":
            raise PtyengineError(f"{self.path}: a Fortran-order array cannot be laid out as "
                                 "another scan shape; give no --scan-shape")  # fmt: skip
        shape = tuple(int(s) for s in shape)
        if -1 in shape:
            known = math.prod(s for s in shape if s != -1)
            shape = tuple(math.prod(self.shape) // known if s == -1 else s for s in shape)
        out = FileArray.__new__(FileArray)
        out.__dict__.update(self.__dict__, shape=shape)
        return out

    def _pread(self, buf: np.ndarray, offset: int) -> None:
        view, done = memoryview(buf).cast("B"), 0
        while done < len(view):
            n = os.preadv(self._fd, [view[done:]], offset + done)
            if n == 0:
                raise OSError(f"the file ends at byte {offset + done}, before the data do")
            done += n

    def __getitem__(self, sl: slice) -> np.ndarray:
        start, stop, _ = sl.indices(self.shape[0])
        stop = max(start, stop)
        rest, size = self.shape[1:], self.dtype.itemsize
        if self.order == "C":
            out = np.empty((stop - start, *rest), self.dtype)
            self._pread(out, self.offset + start * math.prod(rest) * size)
            return out
        # F order: element (i, j, ...) at i + n0·(j + ...): a column of n0 elements per
        # index of the other axes, the columns in F order of those axes
        n0, cols = self.shape[0], math.prod(rest)
        out = np.empty((stop - start, cols), self.dtype)
        per = max(1, self.SLAB_BYTES // (n0 * size))
        buf = np.empty((min(per, cols), n0), self.dtype)
        for c0 in range(0, cols, per):
            c1 = min(c0 + per, cols)
            self._pread(buf[:c1 - c0], self.offset + c0 * n0 * size)
            out[:, c0:c1] = buf[:c1 - c0, start:stop].T
        out = out.reshape((stop - start, *rest[::-1]))  # columns: C order of reversed axes
        return np.ascontiguousarray(out.transpose(0, *range(len(rest), 0, -1)))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def npy_array(path: Path) -> FileArray:
    """The array of a ``.npy`` file, from its header; empty, truncated or foreign files
    raise a one-line error (an empty file would otherwise end in EOFError)."""
    from numpy.lib import format as npy

    size = path.stat().st_size
    if size == 0:
        raise PtyengineError(f"{path} is empty (0 bytes): not a .npy file")
    try:
        with open(path, "rb") as f:
            version = npy.read_magic(f)
            read = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}
            if version not in read:
                raise ValueError(f".npy format version {version} is not supported")
            shape, fortran, dtype = read[version](f)
            offset = f.tell()
    except (ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise PtyengineError(f"{path}: not a .npy file ({exc})") from None
    nbytes = math.prod(shape) * dtype.itemsize
    if size < offset + nbytes:
        raise PtyengineError(
            f"{path} is truncated: its header says {tuple(shape)} {dtype}, {nbytes} bytes of "
            f"data after {offset} bytes of header; the file has {size} bytes")  # fmt: skip
    return FileArray(path, dtype, shape, offset, "F" if fortran and len(shape) > 1 else "C")
