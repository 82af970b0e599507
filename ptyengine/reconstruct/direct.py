"""The direct methods' first step: the bright-field stack, in one streaming pass.

tcBF and SSB need, for every bright-field detector pixel k (|k| < α/λ, detector frame,
k = (p − center)·dk in 1/Å), the image I_k(r) over ALL scan positions r: the virtual
image of that pixel. The data are stored in chunks of scan rows, so one pass over the
row blocks (the reading threads of :func:`.icom.row_blocks`, as iCOM) gathers the
bright-field pixels of each block into a stack ``(G, Sy, Sx)`` float32: one image per
GROUP of pixels. Groups are square tiles of ``bin × bin`` detector pixels (tiles centred
on the disc centre; ``bin = 1``: every pixel alone), so

    memory = Sy·Sx·G·4 bytes,   G ≈ π (α/λ)² / (dk_y dk_x bin²),

plus a few row blocks in the reading threads; the dark field and the rest of the 4-D
data are never held. A ``out`` array (e.g. a ``numpy.memmap`` on disk) may receive the
stack instead of memory (SSB uses that when the stack would not fit its budget).
Detector pixels masked out (:func:`.dataset.detector_mask`) are left out of every group.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass

import numpy as np

from ..backend import get_xp, to_device_async, to_numpy
from ..dataset import check_counts, detector_mask
from ..errors import PtyengineError
from ..kernels.direct import gather_cpu
from ..kernels.moments import KERNEL_DTYPES, kernel_input
from .icom import detector_k, row_blocks


@dataclass
class BrightField:
    """Bright-field pixels in groups.

    pixels: (n,) flat detector indices (row-major on the detector), sorted by group;
    group: (n,) group of each pixel; k: (G, 2) mean detector-frame (k_y, k_x) of each
    group, 1/Å; size: (G,) pixels per group; bin: tile side in pixels; k_alpha: α/λ, 1/Å.
    """

    pixels: np.ndarray
    group: np.ndarray
    k: np.ndarray
    size: np.ndarray
    bin: int
    k_alpha: float

    @property
    def n_groups(self) -> int:
        return len(self.size)

    def subset(self, keep) -> BrightField:
        """The groups where ``keep`` (G,) bool, each with all its pixels, renumbered."""
        keep = np.asarray(keep, bool)
        new = np.cumsum(keep) - 1
        sel = keep[self.group]
        return BrightField(self.pixels[sel], new[self.group[sel]], self.k[keep],
                           self.size[keep], self.bin, self.k_alpha)  # fmt: skip

    @property
    def starts(self) -> np.ndarray:
        """(G + 1,) int64: group g's pixels are ``pixels[starts[g]:starts[g + 1]]``."""
        return np.concatenate([[0], np.cumsum(self.size)]).astype(np.int64)


def check_parameters(method: str, defocus, bin, block, block_unit: str) -> None:
    """The options SSB and WDD share: a finite ``defocus`` (Å) or None, ``bin`` ≥ 1 detector
    pixel, ``block`` ≥ 1 ``block_unit`` or None; one :class:`PtyengineError` naming it."""
    if defocus is not None and not math.isfinite(defocus):
        raise PtyengineError(f"{method} defocus must be finite (Å), got {defocus}")
    if int(bin) < 1:
        raise PtyengineError(f"{method} bin must be ≥ 1 detector pixel, got {bin}")
    if block is not None and int(block) < 1:
        raise PtyengineError(f"{method} block must be ≥ 1 {block_unit}, got {block}")


def disc_radius(cal) -> float:
    """α/λ in 1/Å: the bright-field disc's radius."""
    return cal.semiangle * 1e-3 / cal.wavelength


def check_disc_on_detector(cal) -> None:
    """Raise when the bright-field disc (radius α/λ around the calibrated centre) reaches
    beyond the detector's edge by more than half a pixel: the direct methods need all of
    it."""
    k_a = disc_radius(cal)
    for axis, n, c, d in (("k_y", cal.detector_shape[0], cal.detector_center[0], cal.dk[0]),
                          ("k_x", cal.detector_shape[1], cal.detector_center[1], cal.dk[1])):
        r = k_a / d
        if c - r < -1.0 or c + r > n:
            raise PtyengineError(
                f"the bright-field disc (radius {r:.3g} px = {cal.semiangle:g} mrad around "
                f"the centre {c:g} px along {axis}) reaches outside the {n}-pixel detector: "
                "tcBF/SSB need the whole disc; check detector_center, dk and the semi-angle")


def bright_field_groups(cal, bin: int = 1, fraction: float = 1.0, mask=None) -> BrightField:
    """The pixels with |k| < ``fraction``·α/λ (and ``mask`` ≠ 0), in ``bin``×``bin``
    tiles centred on the disc centre."""
    bin = int(bin)
    if bin < 1:
        raise PtyengineError(f"bin must be ≥ 1 detector pixel, got {bin}")
    check_disc_on_detector(cal)
    ky, kx = detector_k(cal)
    k_a = disc_radius(cal)
    inside = np.hypot(ky, kx) < fraction * k_a
    if mask is not None:
        inside &= np.asarray(mask) > 0
    if inside.sum() < 4:
        raise PtyengineError(f"the bright-field disc holds {int(inside.sum())} detector pixels "
                             f"(α/λ = {k_a:.3g} 1/Å, dk = {cal.dk[0]:.3g} 1/Å): too few for "
                             "tcBF/SSB")  # fmt: skip
    py, px = np.nonzero(inside)
    cy, cx = cal.detector_center
    ty = np.floor((py - cy) / bin + 0.5).astype(np.int64)
    tx = np.floor((px - cx) / bin + 0.5).astype(np.int64)
    _, group = np.unique(np.stack([ty, tx], axis=1), axis=0, return_inverse=True)
    group = group.ravel()
    order = np.argsort(group, kind="stable")
    pixels = (py * cal.detector_shape[1] + px)[order]
    group = group[order]
    size = np.bincount(group)
    k = np.stack([np.bincount(group, ky.ravel()[pixels]) / size,
                  np.bincount(group, kx.ravel()[pixels]) / size], axis=1)  # fmt: skip
    return BrightField(pixels, group, k, size, bin, k_a)


def bright_field_stack(ds, bf: BrightField, device: str = "cpu", memory_limit=None,
                       out=None) -> np.ndarray:  # fmt: skip
    """(G, Sy, Sx): Σ of the counts of each group's pixels at every scan position (float32;
    uint8/uint16 counts as stored where the groups are single pixels, :func:`stack_dtype`).

    One streaming pass over the row blocks of ``ds`` (validated with
    :func:`check_counts`); each block reduced in its reading thread: a gather of the
    bright-field pixels and, for ``bin`` > 1, one product with the (pixels × groups)
    indicator matrix (on the GPU for ``device="gpu"``). ``out``: an array of that shape to
    fill (default: a new one in memory).
    """
    xp = get_xp(device)
    cal = ds.calibration
    sy, sx = cal.scan_shape
    name = getattr(ds, "path", None) or "data"
    pix, onehot = (None, None) if xp is np else (xp.asarray(bf.pixels), group_matrix(bf, xp))

    if out is None:
        out = fresh_zeros((bf.n_groups, sy, sx), dataset_stack_dtype(ds, bf, device))
    stack = out
    # CPU, a stack in memory whose rows follow each other: the reading threads gather
    # straight into it (no block-sized temporary: fresh pages cost ~10 µs each on a VM)
    direct = (xp is np and isinstance(stack, np.ndarray)
              and stack.strides[1] == sx * stack.strides[2])  # fmt: skip

    def reduce(row0: int, block):
        block = to_device_async(np.asarray(block), xp)
        n = len(block)
        check_counts(block, f"{name}: scan rows {row0}:{row0 + n}", row_start=row0)
        if direct:
            gather_block(block, bf, stack[:, row0:row0 + n].reshape(bf.n_groups, n * sx))
            return n
        return gather_block(block, bf) if xp is np else reduce_block(block, pix, onehot)

    done = 0
    for row0, part in row_blocks(ds, reduce, memory_limit):
        if direct:
            done += part
            continue
        if hasattr(stack, "write"):  # a stack in a file (StackFile, wdd's MappedStack)
            stack.write(row0, part)
        else:
            stack[:, row0:row0 + part.shape[1]] = part
        done += part.shape[1]
    if done != sy:
        raise PtyengineError(f"{name}: read {done} scan rows, expected {sy}")
    return stack


def fresh_zeros(shape, dtype) -> np.ndarray:
    """A zero array of ``shape``, ``dtype`` in an anonymous private memory map of its own,
    without numpy's transparent-huge-page hint (numpy marks every array of ≥ 4 MiB
    MADV_HUGEPAGE). The stack is fresh memory written once, in the reading threads: on the
    benchmarks' VM the first touch of hinted memory cost 3–5× that of plain pages
    (0.33–0.61 against 0.10–0.16 CPU s for 195 MiB, pages the host had taken back;
    benchmarks/RESULTS.md). The system's default for plain memory stays in force.
    Freed with the array."""
    shape = tuple(int(v) for v in shape)
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < mmap.PAGESIZE or not hasattr(mmap, "MAP_PRIVATE"):  # small, or not POSIX
        return np.zeros(shape, dtype)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE)  # fileno −1: anonymous
    return np.frombuffer(buf, dtype, math.prod(shape)).reshape(shape)


def group_matrix(bf: BrightField, xp=np):
    """(pixels, groups) float32 indicator matrix on ``xp``'s device; None for bin 1."""
    if bf.n_groups == len(bf.pixels):
        return None
    oh = np.zeros((len(bf.pixels), bf.n_groups), np.float32)
    oh[np.arange(len(bf.pixels)), bf.group] = 1.0
    return xp.asarray(oh)


def gather_block(block, bf: BrightField, out=None) -> np.ndarray:
    """(G, rows, Sx): the group sums of a block (rows, Sx, Ky, Kx) on the CPU, read as
    stored (:func:`kernels.direct.gather_cpu`; equal to :func:`reduce_block`), in the
    dtype of :func:`stack_dtype`; or written into ``out`` (G, rows·Sx) (a view of the
    stack: the reading threads fill it in place)."""
    n, sx = block.shape[:2]
    flat = kernel_input(block, (math.prod(block.shape[2:]),))
    if out is None:
        out = np.empty((bf.n_groups, n * sx), stack_dtype(flat.dtype, bf))
    gather_cpu(flat, bf.pixels, bf.starts, out)
    return out.reshape(-1, n, sx)


def dataset_stack_dtype(ds, bf: BrightField, device: str = "cpu") -> np.dtype:
    """The dtype :func:`bright_field_stack` gives the stack of ``ds`` (float32 on a GPU
    and for dtypes the CPU kernels do not read as stored)."""
    native = device == "cpu" and np.dtype(ds.dtype) in KERNEL_DTYPES  # as gather_block sees it
    return stack_dtype(ds.dtype, bf) if native else np.dtype(np.float32)


def stack_dtype(dtype, bf: BrightField) -> np.dtype:
    """The stack's dtype: counts of ≤ 16 bits as they are stored where every group is one
    pixel (a copy: half the memory of float32), else float32."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu" and dtype.itemsize <= 2 and bf.n_groups == len(bf.pixels):
        return dtype
    return np.dtype(np.float32)


def reduce_block(block, pixels, onehot) -> np.ndarray:
    """(G, rows, Sx) float32 on the host: the group sums of a block (rows, Sx, Ky, Kx)
    (numpy or cupy; ``pixels``, ``onehot`` from :class:`BrightField` on its device)."""
    n, sx = block.shape[:2]
    sel = block.reshape(n * sx, -1)[:, pixels].astype(np.float32)
    if onehot is not None:
        sel = sel @ onehot
    return to_numpy(sel.T).reshape(-1, n, sx)


def stack_bytes(cal, bf: BrightField) -> int:
    """Bytes of :func:`bright_field_stack`'s result."""
    return 4 * bf.n_groups * math.prod(cal.scan_shape)


def dataset_mask(ds):
    """The dataset's detector mask (None: every pixel counts)."""
    return detector_mask(ds)


class StackFile:
    """The bright-field stack (G, Sy, Sx) in a file (``dtype``), for stacks beyond the memory
    budget: written as it is read (``write``: the (G, rows, Sx) part of each block of scan
    rows, appended: sequential writes), read back in blocks of groups (``stack[g0:g1]``:
    one contiguous read per block of scan rows). Plain file I/O, no memory map: resident
    memory is the block asked for, whatever the stack's size."""

    def __init__(self, path, n_groups: int, scan_shape, dtype=np.float32):
        self.shape = (int(n_groups), *(int(s) for s in scan_shape))
        self.dtype = np.dtype(dtype)
        self.path = path
        self._fh = open(path, "w+b")  # noqa: SIM115 - closed by close()
        self._parts: list[tuple[int, int, int]] = []  # (row0, rows, byte offset)
        self._end = 0

    def write(self, row0: int, part) -> None:
        part = np.ascontiguousarray(part, self.dtype)
        self._fh.seek(self._end)
        self._fh.write(memoryview(part).cast("B"))
        self._parts.append((int(row0), part.shape[1], self._end))
        self._end += part.nbytes

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, sl) -> np.ndarray:
        g0, g1, step = sl.indices(self.shape[0]) if isinstance(sl, slice) else (0, 0, 0)
        if step != 1:
            raise TypeError("StackFile reads contiguous slices of groups only")
        sx, size = self.shape[2], self.dtype.itemsize
        out = np.empty((g1 - g0, self.shape[1], sx), self.dtype)
        for row0, rows, offset in self._parts:
            piece = np.empty((g1 - g0, rows, sx), self.dtype)
            self._fh.seek(offset + g0 * rows * sx * size)
            self._fh.readinto(memoryview(piece).cast("B"))
            out[:, row0:row0 + rows] = piece
        return out

    def close(self) -> None:
        self._fh.close()
