"""Single-sideband (SSB) ptychography of a weak phase object, correcting the probe's
known aberrations; one read of the data, memory blocked over bright-field pixels.

Equations (Pennycook et al., Ultramicroscopy 151 (2015) 160; Yang et al., ibid. 232 and
180 (2017) 173). The probe is Ψ(k) = A(k) e^{−iχ(k)} (:mod:`ptyengine.physics`: χ from
:func:`physics.chi`, C10 > 0 = crossover above the specimen), A the aperture |k| < α/λ,
centred on the scan position r; the specimen t = e^{iφ} ≈ 1 + iφ. The Fourier transform
over the scan positions (G(Q) = Σ_r I(r) e^{−2πiQ·r}, numpy's FFT, Q in 1/Å on the scan's
frequency grid) of the intensity of bright-field pixel k is, to first order in φ,

    G(Q, k) / I₀ = i Φ(Q) [A(k−Q) e^{i(χ(k) − χ(k−Q))} − A(k+Q) e^{−i(χ(k) − χ(k+Q))}],

Φ = FFT of φ sampled on the scan, I₀ the mean bright-field intensity per pixel and
pattern (the mean over the pixels inside the disc). In the "trotters" — the
double-overlap regions where k and exactly one of k−Q, k+Q lie in the disc (clear of its
edge by :data:`EDGE` pixels) — one term survives, and each pixel gives Φ(Q) on its own:

    left  (|k−Q| < α/λ ≤ |k+Q|):  Φ = −i (G/I₀) e^{−i(χ(k) − χ(k−Q))}
    right (|k+Q| < α/λ ≤ |k−Q|):  Φ = +i (G/I₀) e^{+i(χ(k) − χ(k+Q))}

SSB averages these over the trotter pixels of each Q (Φ = 0 where a Q has none: |Q| ≥
2α/λ, and at Q = 0) and returns φ = IFFT(Φ) in radians, zero mean, on the scan grid. The
triple-overlap region (both terms) is left out: there the two terms interfere through χ
and, in focus, cancel. The probe's aberrations are thus removed exactly, as far as they
are known: the calibration's (Å, angles rad, scan frame), with C10 replaced by
``defocus`` if given.

Frames. Pixel k is measured in the detector frame; it enters χ and the trotter masks in
the scan frame, k_s = R(θ) S k_d (:func:`.icom.to_scan_frame` with the calibration's
rotation θ and transpose S), as Q is the scan's frequency.

Memory and speed. The bright-field stack (:mod:`.direct`, one read of the data) of n
pixels (or ``bin`` × ``bin`` groups) is n·Sy·Sx·4 bytes (2 for 8/16-bit counts and
single pixels: kept as stored); beyond half of the memory budget it goes to a temporary
file (:class:`.direct.StackFile`, ``stack_on_disk``; plain file I/O, so resident memory
does not grow with it). It is then transformed ``block`` pixels at a time (from
``memory_limit``: block·Sy·Sx·16 bytes ≤ budget/4, so memory in use is scan size × block
whatever the data's size). On the CPU each block is split over the cores; a part takes
the real FFT over the scan (rfft2; rows of a large prime length as a DFT-matrix product:
:func:`scan_rfft2`) of 16 pixels at a time and sums their trotters with
:func:`kernels.direct.trotter_sums_cpu` on half of the Q grid (Φ(−Q) = Φ*(Q) exactly
gives the rest), visiting for each pixel k only the Q within α/λ of ±k, with the
aberration phases e^{iχ(k ∓ Q)} from forward differences along each row of Q. On a GPU
(``device="gpu"``) the blocks run there as array code (:func:`trotter_sums_xp`,
block·Sy·Sx·96 bytes). On Dask the blocks of pixels are tasks
(:func:`ptyengine.distributed.ssb_dask`).
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import physics
from ..backend import fft2, get_xp, single_blas, split_map, to_numpy
from ..backend import memory_limit as memory_limit_bytes
from ..dataset import as_dataset
from ..errors import PtyengineError
from ..kernels.direct import chi_terms, mirror_half, trotter_sums_cpu
from .direct import (
    StackFile,
    bright_field_groups,
    bright_field_stack,
    check_parameters,
    dataset_mask,
    dataset_stack_dtype,
    stack_bytes,
)
from .icom import to_scan_frame

#: pixels whose k, k − Q or k + Q lies within EDGE detector pixels of the disc's edge are
#: left out of the trotters (their aperture is partly lit: the estimate would be biased
#: low; the 0.05 rad grating of the tests comes out 7 % low with them, 1 % without)
EDGE = 1.0
#: pixels per rfft2 on the CPU (the spectra of a few pixels stay in cache for the trotter
#: kernel), and at most this many bytes of them per thread (memory independent of the scan)
FFT_PIXELS = 16
FFT_BYTES = 4 << 20
#: scan rows of Sx ≤ DFT_MAX_X positions whose length has a prime factor ≥ DFT_MIN_PRIME
#: are transformed along x as a product with the DFT matrix (:func:`scan_rfft2`)
DFT_MIN_PRIME = 17
DFT_MAX_X = 256


@dataclass
class SsbParameters:
    """defocus: C10 in Å of the probe (None: the calibration's); bin: bright-field pixels
    per group side (1: every pixel); block: pixels transformed together (None: from the
    memory budget)."""

    defocus: float | None = None
    bin: int = 1
    block: int | None = None

    def __post_init__(self):
        check_parameters("SSB", self.defocus, self.bin, self.block, "pixel")


@dataclass
class SsbResult:
    """phase: (Sy, Sx) rad, zero mean, on the scan grid; aberrations: those corrected
    (Å, rad; scan frame); rotation_deg, transpose: the calibration's; sampling, origin: Å;
    bin; trotter_pixels: (Sy, Sx) number of trotter pixels per Q (FFT order);
    stack_on_disk: whether the stack went to a temporary file."""

    phase: np.ndarray
    aberrations: dict
    rotation_deg: float
    transpose: bool
    sampling: tuple[float, float]
    origin: tuple[float, float]
    bin: int
    trotter_pixels: np.ndarray
    stack_on_disk: bool = False


def check_trotters(cal, method: str = "SSB") -> None:
    """Raise when no non-zero frequency of the scan lies below 2α/λ (no trotter: nothing
    for ``method`` to transfer)."""
    k_a = cal.semiangle * 1e-3 / cal.wavelength
    sy, sx = cal.scan_shape
    q_min = min(1 / (sy * cal.scan_step[0]) if sy > 1 else math.inf,
                1 / (sx * cal.scan_step[1]) if sx > 1 else math.inf)  # fmt: skip
    if not q_min < 2 * k_a:
        field = 1 / (2 * k_a)
        raise PtyengineError(
            f"the scan of {sy} × {sx} positions at {cal.scan_step[0]:g} Å is too small for "
            f"{method}'s trotters: its lowest frequency {q_min:.3g} 1/Å is not below 2α/λ = "
            f"{2 * k_a:.3g} 1/Å; scan a field larger than {field:.3g} Å along both axes")


def ssb(ds, params: SsbParameters | None = None, device: str = "cpu",
        memory_limit=None) -> SsbResult:  # fmt: skip
    """SSB phase (rad) of a dataset (anything :func:`as_dataset` takes); see the module
    docstring. Memory: the stack n·Sy·Sx·4 bytes (in a file beyond half the budget) and
    block·Sy·Sx·16 bytes (96 on a GPU); one read."""
    params = params or SsbParameters()
    dset = as_dataset(ds)
    try:
        cal = dset.calibration
        check_trotters(cal)
        bf = ssb_groups(cal, int(params.bin), dataset_mask(dset))
        limit = memory_limit_bytes(memory_limit)
        with tempfile.TemporaryDirectory(prefix="ptyengine-ssb-") as tmp:
            on_disk = stack_bytes(cal, bf) > limit / 2
            out = StackFile(Path(tmp) / "stack", bf.n_groups, cal.scan_shape,
                            dataset_stack_dtype(dset, bf, device)) if on_disk else None
            try:
                stack = bright_field_stack(dset, bf, device, memory_limit, out=out)
                result = ssb_from_stack(stack, bf.k, cal, params, device, limit)
            finally:
                if out is not None:
                    out.close()
            del stack
    finally:
        if dset is not ds:
            dset.close()
    result.stack_on_disk = on_disk
    return result


def ssb_groups(cal, bin: int, mask=None):
    """The bright-field groups SSB uses: those whose k lies inside α/λ − :data:`EDGE`
    pixels (the others enter no trotter sum and no I₀: they are not read into the stack)."""
    bf = bright_field_groups(cal, bin, mask=mask)
    keep = np.hypot(bf.k[:, 0], bf.k[:, 1]) < bf.k_alpha - EDGE * max(cal.dk)
    if not keep.any():
        raise PtyengineError("the bright-field disc is too small for SSB (no pixel inside "
                             f"{bf.k_alpha - EDGE * max(cal.dk):.3g} 1/Å)")  # fmt: skip
    return bf.subset(keep)


def ssb_from_stack(stack, k_d, cal, params: SsbParameters, device: str = "cpu",
                   limit: int = 2**30) -> SsbResult:  # fmt: skip
    """SSB from the bright-field stack (n, Sy, Sx) of pixels (groups) at detector-frame
    k_d (n, 2) 1/Å (:func:`ssb` without the read); ``stack[a:b]`` is read block by block
    (an array, or a :class:`.direct.StackFile`)."""
    xp = get_xp(device)
    ab, terms = ssb_terms(k_d, cal, params)
    block = params.block or pixel_block(cal, limit, xp)
    num, count, dc = trotter_pass(stack, terms, block, xp)
    return ssb_result(num, count, dc, ab, cal, params)


def ssb_terms(k_d, cal, params: SsbParameters):
    """(the aberrations corrected, :class:`TrotterTerms`) of the pixels at ``k_d``."""
    ab = dict(cal.aberrations)
    if params.defocus is not None:
        ab["C10"] = float(params.defocus)
    terms = trotter_terms(k_d, cal, ab)
    if not terms.use.any():
        raise PtyengineError("the bright-field disc is too small for SSB (no pixel inside "
                             f"{math.sqrt(terms.lo):.3g} 1/Å)")  # fmt: skip
    return ab, terms


def pixel_block(cal, limit: int, xp=np) -> int:
    """Pixels transformed together within ``limit``/4 bytes: block·Sy·Sx·16 bytes on the
    CPU (the block read, its spectra), 96 on a GPU (the array code's masks)."""
    return max(1, int(limit / 4 // (math.prod(cal.scan_shape) * (16 if xp is np else 96))))


def ssb_result(num, count, dc, ab, cal, params: SsbParameters) -> SsbResult:
    """The phase from :func:`trotter_pass`'s sums (num, count, dc)."""
    sy, sx = cal.scan_shape
    i0 = dc / (sy * sx)  # the mean bright-field intensity per inner pixel and pattern
    if not i0 > 0:
        raise PtyengineError("the bright-field disc holds no counts: nothing for SSB")
    spec = num  # in place: scan-sized arrays are the memory that grows with the scan
    spec /= np.maximum(count, 1) * i0
    spec[0, 0] = 0
    phase = np.fft.ifft2(spec).real.astype(np.float32)
    return SsbResult(phase, ab, float(cal.rotation), bool(cal.transpose),
                     tuple(cal.scan_step), tuple(cal.scan_origin), int(params.bin),
                     count.astype(np.int32, copy=False))  # fmt: skip


@dataclass
class TrotterTerms:
    """What the trotter sums need of the pixels: scan-frame k (ky, kx) 1/Å (n,); use (n,)
    pixels inside α/λ − edge; qy (Sy,), qx (Sx,) 1/Å (fftfreq order); lo, hi: (α/λ ∓
    edge)² 1/Å²; ab, energy: the χ corrected (eV); step_x: the scan step along x (Å)."""

    ky: np.ndarray
    kx: np.ndarray
    use: np.ndarray
    qy: np.ndarray
    qx: np.ndarray
    lo: float
    hi: float
    ab: dict
    energy: float
    step_x: float

    def subset(self, sl: slice) -> TrotterTerms:
        """The terms of the pixels ``sl`` only."""
        return dataclasses.replace(self, ky=self.ky[sl], kx=self.kx[sl], use=self.use[sl])


def trotter_terms(k_d, cal, ab) -> TrotterTerms:
    """:class:`TrotterTerms` of the pixels at detector-frame ``k_d`` (n, 2) 1/Å."""
    k_a = cal.semiangle * 1e-3 / cal.wavelength
    edge = EDGE * max(cal.dk)  # pixels this close to the disc's edge are half lit
    ksy, ksx = to_scan_frame(k_d[:, 0], k_d[:, 1], cal.rotation, cal.transpose)
    use = np.hypot(k_d[:, 0], k_d[:, 1]) < k_a - edge
    return TrotterTerms(np.asarray(ksy, np.float64), np.asarray(ksx, np.float64), use,
                        np.fft.fftfreq(cal.scan_shape[0], cal.scan_step[0]),
                        np.fft.fftfreq(cal.scan_shape[1], cal.scan_step[1]),
                        (k_a - edge) ** 2, (k_a + edge) ** 2, ab, cal.energy,
                        float(cal.scan_step[1]))  # fmt: skip


def largest_prime_factor(n: int) -> int:
    """The largest prime factor of ``n`` ≥ 1 (1 for 1)."""
    n, p, out = int(n), 2, 1
    while p * p <= n:
        while n % p == 0:
            out, n = p, n // p
        p += 1
    return max(out, n)


def scan_rfft2(shape):
    """f(images (b, Sy, Sx), any real dtype) → (b, Sy, Sx//2 + 1) complex64, their rfft2
    over the scan (numpy's convention and layout), for scans of ``shape``. pocketfft
    (scipy.fft, one thread) in general; where Sx ≤ :data:`DFT_MAX_X` has a prime factor
    ≥ :data:`DFT_MIN_PRIME` (pocketfft's generic radix pass costs O(p) per point) the
    transform along x is a float32 matrix product with the (Sx, Sx//2 + 1) DFT matrix
    (BLAS), then pocketfft along y: the same transform within float32 rounding, at half
    the cost on UiO-66's 52 × 47 scan (3.1 against 6.1 ns per point; 2.6–2.8× at Sx =
    97–127; slower at smooth lengths such as 48, 128, 256: benchmarks/RESULTS.md)."""
    import scipy.fft as sfft

    sy, sx = (int(v) for v in shape)
    if sx > DFT_MAX_X or largest_prime_factor(sx) < DFT_MIN_PRIME:
        return lambda a: sfft.rfft2(np.asarray(a, np.float32), axes=(-2, -1))
    h = sx // 2 + 1
    arg = 2 * np.pi * np.outer(np.arange(sx), np.arange(h)) / sx
    w = np.concatenate([np.cos(arg), -np.sin(arg)], axis=1).astype(np.float32)  # (Sx, 2h)

    def dft(a):
        b = len(a)
        x = (np.asarray(a, np.float32).reshape(b * sy, sx) @ w).reshape(b, sy, 2 * h)
        z = np.empty((b, sy, h), np.complex64)
        z.real, z.imag = x[..., :h], x[..., h:]
        return sfft.fft(z, axis=-2, overwrite_x=True)

    return dft


def trotter_pass(stack, t: TrotterTerms, block: int, xp=np):
    """(num (Sy, Sx) complex128, count (Sy, Sx) int32, dc): the trotter sums Σ of the estimates
    of Φ(Q)·I₀ and their number per Q over every pixel of ``stack`` (n, Sy, Sx), read
    ``block`` pixels at a time, and Σ_r I over the pixels in use, divided by their number.
    CPU: each block's rfft2 and :func:`kernels.direct.trotter_sums_cpu`, the block split
    over the cores (:func:`split_map`); GPU: :func:`trotter_sums_xp` on the full FFT."""
    sy, sx = len(t.qy), len(t.qx)
    n = len(t.ky)
    coef = chi_terms(t.ab, physics.wavelength(t.energy))
    dqx = 1.0 / (sx * t.step_x)
    # pixels per rfft2: FFT_PIXELS, fewer where their spectra would pass FFT_BYTES
    per_fft = int(max(1, min(FFT_PIXELS, FFT_BYTES // (12 * sy * sx))))
    transform = scan_rfft2((sy, sx))
    sums: dict = {}  # one (num, count, [dc]) per thread, kept over the blocks
    for b0 in range(0, n, block):
        b1 = min(b0 + block, n)
        part = np.asarray(stack[b0:b1])  # a view of a stack in memory
        if xp is np:
            def run(sl, part=part, b0=b0):
                nm, ct, d = sums.setdefault(threading.get_ident(), (
                    np.zeros((sy, sx), np.complex128), np.zeros((sy, sx), np.int32), [0.0]))
                for c0 in range(sl.start, sl.stop, per_fft):
                    c1 = min(c0 + per_fft, sl.stop)
                    half = transform(part[c0:c1])
                    idx = slice(b0 + c0, b0 + c1)
                    trotter_sums_cpu(half, t.ky[idx], t.kx[idx], t.use[idx], t.qy, t.qx,
                                     dqx, t.lo, t.hi, *coef, nm, ct)  # fmt: skip
                    d[0] += float(half[t.use[idx], 0, 0].real.sum(dtype=np.float64))

            # the DFT products' GEMMs in one thread each, also where split_map runs a
            # single part itself (OpenBLAS's threads on these small products: 8–20× the
            # wall time at a load of 10 on 2 cores)
            with single_blas():
                split_map(run, b1 - b0)
        else:
            g = fft2(xp.asarray(part, np.float32).astype(np.complex64))
            sl = slice(b0, b1)
            nm, ct = trotter_sums_xp(g, t, sl, xp)
            acc = sums.setdefault(0, (np.zeros((sy, sx), np.complex128),
                                      np.zeros((sy, sx), np.int32), [0.0]))  # fmt: skip
            acc[0][...] += to_numpy(nm)
            acc[1][...] += to_numpy(ct).astype(np.int32)
            acc[2][0] += float(g[xp.asarray(t.use[sl]), 0, 0].real.sum())
        del part
    parts = list(sums.values())
    num, count = parts[0][0], parts[0][1]
    for nm, ct, _ in parts[1:]:
        num += nm
        count += ct
    if xp is np:
        mirror_half(num, count)
    return num, count, sum(p[2][0] for p in parts) / max(int(t.use.sum()), 1)


def trotter_sums_xp(g, t: TrotterTerms, sl: slice, xp):
    """(num, count) (Sy, Sx) of the pixels ``sl`` of ``t`` from their full FFTs ``g``
    (b, Sy, Sx) complex: array code against ``xp`` (a GPU's path; the twin of
    :func:`kernels.direct.trotter_sums_cpu`)."""
    sy, sx = len(t.qy), len(t.qx)
    qy1, qx1 = xp.asarray(t.qy), xp.asarray(t.qx)
    qy, qx = qy1[None, :, None], qx1[None, None, :]
    kby, kbx = xp.asarray(t.ky[sl]), xp.asarray(t.kx[sl])
    chi0 = physics.chi(kby, kbx, t.energy, t.ab, xp)
    here = xp.asarray(t.use[sl])[:, None, None]
    ky, kx = kby[:, None, None], kbx[:, None, None]
    minus = (ky - qy) ** 2 + (kx - qx) ** 2
    plus = (ky + qy) ** 2 + (kx + qx) ** 2
    num_re, num_im = xp.zeros(sy * sx), xp.zeros(sy * sx)
    count = xp.zeros(sy * sx)
    # left (sign −1): Φ = −i G e^{−i(χ(k) − χ(k−Q))}; right (+1): Φ = i G e^{i(χ(k) − χ(k+Q))}
    for sign, mask in ((-1, here & (minus < t.lo) & (plus > t.hi)),
                       (1, here & (plus < t.lo) & (minus > t.hi))):  # fmt: skip
        b, iy, ix = xp.nonzero(mask)
        d = chi0[b] - physics.chi(kby[b] + sign * qy1[iy], kbx[b] + sign * qx1[ix],
                                  t.energy, t.ab, xp)  # fmt: skip
        val = g[b, iy, ix] * (sign * 1j) * xp.exp(sign * 1j * d)
        flat = iy * sx + ix
        if not flat.size:  # no trotter on this side (pixels at k ≈ 0): cupy's bincount
            continue  # takes max(flat) and refuses an empty array, numpy's gives zeros
        num_re += xp.bincount(flat, val.real, sy * sx)
        num_im += xp.bincount(flat, val.imag, sy * sx)
        count += xp.bincount(flat, minlength=sy * sx)
    return (num_re + 1j * num_im).reshape(sy, sx), count.reshape(sy, sx)
