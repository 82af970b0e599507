"""Where an iterative reconstruction's measured amplitudes come from: held in memory, or
streamed from disk every iteration (issue 6: no algorithm may need the dataset in memory).

The scan is cut into *blocks* of whole scan rows, one stored chunk each
(:func:`block_rows`). Each iteration visits the blocks in a random order and the positions
inside a block in a random order (:func:`visit_order`); batches never span two blocks.
Both sources follow that same order, so a streamed run does the same arithmetic on the
same numbers as a resident one and gives an identical result.

* :class:`ResidentPatterns`: every block's amplitudes on the device, read once. Used when
  they fit the memory budget (:func:`choose_patterns`).
* :class:`StreamedPatterns`: each block read, decompressed and converted to amplitudes in a
  background thread, ``prefetch`` blocks ahead of use, every iteration; on a GPU through
  pinned host memory and a copy stream of its own (:func:`backend.to_device_async`), so
  the copy overlaps the kernels.

A block hands out the amplitudes √I (float32, FFT order: the detector centre moved to
[0, 0], the axes swapped if the calibration says ``transpose``; zero at the pixels the
detector mask hides) and the separable sub-pixel shift ramps of its positions, in scan
order. The source's ``mask`` is that detector mask in the same frame (ones without one);
its ``total`` counts the kept pixels only.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from .. import backend, io
from ..dataset import BLOCK_TARGET_BYTES, check_counts, detector_mask
from ..errors import PtyengineError
from ..shift import ramps_2d


@dataclass
class Block:
    """The patterns of scan rows ``rows`` (a slice): ``amplitudes`` (n, Wy, Wx) and shift
    ``ramps`` (ry (n, Wy), rx (n, Wx)) on the device, position ``first`` .. first + n − 1."""

    rows: slice
    first: int
    amplitudes: object
    ramps: tuple


def block_rows(ds) -> int:
    """Scan rows per block: one stored chunk of an on-disk dataset (its inner chunk when
    sharded: zarr reads inner chunks of a shard on their own), ~16 MiB of rows in memory."""
    if isinstance(ds, io.Dataset):
        return int(io.chunk_shape(ds.data)[0])
    row_bytes = max(1, math.prod(ds.shape[1:]) * np.dtype(ds.dtype).itemsize)
    return int(max(1, min(ds.shape[0], BLOCK_TARGET_BYTES // row_bytes)))


def visit_order(rng: np.random.Generator, scan_shape, rows: int) -> list[tuple[int, np.ndarray]]:
    """[(block index, positions of the block in random order)], blocks in random order.

    Positions are flat scan indices (row-major); block b holds scan rows b·rows onwards.
    """
    sy, sx = scan_shape
    n_blocks = math.ceil(sy / rows)
    order = []
    for b in rng.permutation(n_blocks):
        first, stop = b * rows * sx, min((b + 1) * rows, sy) * sx
        order.append((int(b), first + rng.permutation(stop - first)))
    return order


def engine_frame(a, cal) -> np.ndarray:
    """Patterns ``a`` (n, Ky, Kx) on the stored detector → the engines' frame (n, Wy, Wx),
    C-contiguous, exactly (no interpolation): the calibrated detector centre, rounded to a
    pixel, moved to [0, 0] (FFT order) by one roll, then the two axes swapped if the
    calibration's ``transpose`` (:mod:`.frame`)."""
    shift = (-int(round(cal.detector_center[0])), -int(round(cal.detector_center[1])))
    b = np.roll(a, shift, axis=(1, 2))
    if cal.transpose:
        b = np.ascontiguousarray(b.transpose(0, 2, 1))
    return b


def amplitudes_of(block, cal, mask=None) -> np.ndarray:
    """√I of a block of raw patterns (rows, Sx, Ky, Kx) as (rows·Sx, Wy, Wx) float32 in the
    engines' frame (:func:`engine_frame`; FFT order, k = 0 at [0, 0]). Pixels where the
    detector ``mask`` (Ky, Kx; 0: dead or hot) is 0 are set to 0: they are not data."""
    ny, nx = cal.detector_shape
    b = np.asarray(block, np.float32).reshape(-1, ny, nx)
    if mask is not None:
        b = b * (mask != 0)  # a copy: the block may be the caller's array
    b = engine_frame(b, cal)
    return np.sqrt(b, out=b)


def masked_sum(raw, mask) -> float:
    """Σ of ``raw`` (..., Ky, Kx) over the pixels the detector ``mask`` keeps (float64)."""
    total = float(np.sum(raw, dtype=np.float64))  # buffered: no float64 copy
    if mask is not None:
        bad = np.nonzero(mask == 0)
        total -= float(np.sum(raw[..., bad[0], bad[1]], dtype=np.float64))
    return total


class _Source:
    """What both sources share: the geometry, the block grid, and reading blocks in a
    background thread, ``prefetch`` ahead of use."""

    prefetch = 2

    def __init__(self, ds, geom, xp, rows: int | None = None):
        self.ds, self.geom, self.xp = ds, geom, xp
        self.cal = ds.calibration
        self.rows = int(rows or block_rows(ds))
        self.scan_shape = tuple(self.cal.scan_shape)
        self.n_blocks = math.ceil(self.scan_shape[0] / self.rows)
        self.total = 0.0  # Σ I over the dataset (float64), set by the subclass
        #: the detector mask (stored frame, uint8, 0: ignored) or None, and the engines'
        #: (Wy, Wx) mask on the device (FFT order, ones where there is none)
        self.detector_mask = detector_mask(ds)
        ones = np.ones((1, *self.cal.detector_shape), np.uint8)
        m = ones if self.detector_mask is None else self.detector_mask[None]
        self.mask = xp.asarray(engine_frame(m, self.cal)[0])

    @property
    def key(self) -> str:
        """What a checkpoint must match besides data and parameters: the visiting order
        depends on the rows per block, and the fit on the detector mask."""
        key = f"rows={self.rows}"
        if self.detector_mask is not None:
            key += "|mask=" + hashlib.sha256(self.detector_mask.tobytes()).hexdigest()[:16]
        return key

    def order(self, rng):
        return visit_order(rng, self.scan_shape, self.rows)

    def _read(self, b: int, to_device) -> tuple[Block | None, float]:
        """Block b from disk, checked, and its Σ I; converted, with its ramps, and moved to
        the device by ``to_device`` (None: the sum alone)."""
        sy, sx = self.scan_shape
        r0, r1 = b * self.rows, min((b + 1) * self.rows, sy)
        raw = self.ds.read_rows(r0, r1)
        name = getattr(self.ds, "path", None) or "data"
        check_counts(raw, f"{name}: scan rows {r0}-{r1 - 1}", row_start=r0)
        intensity = masked_sum(raw, self.detector_mask)
        if to_device is None:
            return None, intensity
        amp = amplitudes_of(raw, self.cal, self.detector_mask)
        del raw
        ry, rx = ramps_2d(self.geom.frac[r0 * sx:r1 * sx], self.geom.window, np)
        return Block(slice(r0, r1), r0 * sx, *to_device(amp, ry, rx)), intensity

    def _stream(self, order, to_device):
        """((block, positions), Σ I of the block) for every (b, positions) of ``order``."""
        with ThreadPoolExecutor(1, thread_name_prefix="ptyengine-read") as pool:
            ahead = deque()
            for b, positions in order:
                ahead.append((pool.submit(self._read, b, to_device), positions))
                if len(ahead) > self.prefetch:
                    fut, pos = ahead.popleft()
                    block, intensity = fut.result()
                    yield (block, pos), intensity
            while ahead:
                fut, pos = ahead.popleft()
                block, intensity = fut.result()
                yield (block, pos), intensity

    def _all_blocks(self):
        return [(b, None) for b in range(self.n_blocks)]


class ResidentPatterns(_Source):
    """All blocks read once and kept on the device (``nbytes`` of amplitudes)."""

    streamed = False

    def __init__(self, ds, geom, xp, rows: int | None = None):
        super().__init__(ds, geom, xp, rows)

        def to_device(amp, ry, rx):
            return xp.asarray(amp), (xp.asarray(ry), xp.asarray(rx))

        self.blocks: list[Block] = []
        for (block, _), intensity in self._stream(self._all_blocks(), to_device):
            self.blocks.append(block)
            self.total += intensity

    def iterate(self, order) -> Iterator[tuple[Block, np.ndarray]]:
        for b, positions in order:
            yield self.blocks[b], positions

    def refresh_ramps(self) -> None:
        """Shift ramps from the geometry's ``frac`` again (the positions moved)."""
        sx = self.scan_shape[1]
        for block in self.blocks:
            r0, r1 = block.rows.start, block.rows.stop
            ry, rx = ramps_2d(self.geom.frac[r0 * sx:r1 * sx], self.geom.window, np)
            block.ramps = (self.xp.asarray(ry), self.xp.asarray(rx))


class StreamedPatterns(_Source):
    """Blocks read again every iteration, ``prefetch`` ahead in a background thread; a
    first pass over the data (the dataset's total intensity, needed before the first
    iteration) also checks every block."""

    streamed = True

    def __init__(self, ds, geom, xp, rows: int | None = None, prefetch: int = 2):
        super().__init__(ds, geom, xp, rows)
        self.prefetch = max(1, int(prefetch))
        self.total = float(sum(i for _, i in self._stream(self._all_blocks(), None)))

    def iterate(self, order) -> Iterator[tuple[Block, np.ndarray]]:
        xp = self.xp

        def to_device(amp, ry, rx):
            return (backend.to_device_async(amp, xp),
                    (backend.to_device_async(ry, xp), backend.to_device_async(rx, xp)))

        for item, _ in self._stream(order, to_device):
            yield item

    def refresh_ramps(self) -> None:
        """Nothing to do: each block's ramps are made from the geometry when it is read."""


def resident_bytes(cal) -> int:
    """Bytes of every amplitude and shift ramp held at once (float32, complex64)."""
    n = cal.scan_shape[0] * cal.scan_shape[1]
    wy, wx = cal.detector_shape
    return n * (wy * wx * 4 + (wy + wx) * 8)


def choose_patterns(ds, geom, xp, memory_limit: int | None = None, rows: int | None = None):
    """ResidentPatterns when the amplitudes take at most half of ``memory_limit`` bytes
    (default :func:`backend.memory_limit`; on a GPU also at most half its free memory),
    StreamedPatterns otherwise, with as many blocks read ahead (1-2) as the budget holds.
    A budget smaller than two blocks is an error that says what to change."""
    cal = ds.calibration
    limit = backend.memory_limit(memory_limit, xp)
    need = resident_bytes(cal)
    if need <= limit // 2:
        return ResidentPatterns(ds, geom, xp, rows)
    rows = int(rows or block_rows(ds))
    raw_row = math.prod(ds.shape[1:]) * np.dtype(ds.dtype).itemsize
    per_block = rows * (raw_row + resident_bytes(cal) // cal.scan_shape[0])
    if 2 * per_block > limit:
        raise PtyengineError(
            f"memory limit {io.format_bytes(limit)} holds fewer than two blocks of {rows} "
            f"scan rows ({io.format_bytes(per_block)} each, read plus amplitudes): raise "
            f"--memory-limit, or store the data with fewer scan rows per chunk "
            f"(ptyengine convert ... --rows-per-chunk N)")
    prefetch = int(min(2, limit // per_block - 1))
    return StreamedPatterns(ds, geom, xp, rows, prefetch)
