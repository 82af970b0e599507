"""Wigner-distribution deconvolution (WDD) of a weak phase object, the probe's known
aberrations deconvolved; one read of the data, memory blocked over bright-field pixels and
scan frequencies.

Equations (Rodenburg & Bates, Phil. Trans. R. Soc. A 339 (1992) 521; for STEM Yang et al.,
Ultramicroscopy 151 (2015) 232 and Nat. Commun. 7 (2016) 12532). Conventions as
:mod:`.ssb`: the probe is P̃(k) = A(k) e^{−iχ(k)} (:func:`physics.chi`, C10 > 0 = crossover
above the specimen; A the aperture of :func:`physics.aperture`, an edge one detector pixel
wide), centred on the scan position r; the specimen O(x); G(k, Q) = Σ_r I(r, k) e^{−2πiQ·r}
(numpy's FFT over the scan, Q in 1/Å, scan frame) divided by I₀, the mean bright-field
intensity per pixel and pattern. Exactly (any O),

    G(k, Q) = Σ_k' f_Q(k') g_Q(k − k'),   f_Q(k) = P̃(k) P̃*(k + Q),
                                           g_Q(u) = Õ(u) Õ*(u − Q),

a convolution over the detector coordinate. Its Fourier transform over k (the detector
pixels, on a box around the bright-field disc; ρ conjugate to k) factorises into the
Wigner distributions of probe and object, H(ρ, Q) = χ_P(ρ, Q) χ_O(ρ, Q), χ_P = FFT_k f_Q,
χ_O = FFT_u g_Q. The stack holds the pixels inside the disc (less masked ones); P̃(k) is
set to 0 at the others, so that the model is zero where G is not measured (with the
aperture's edge pixels left in, the 0.05 rad grating of the tests came out 5 % high).
The deconvolution is a Wiener filter,

    χ̂_O = H χ_P* / (|χ_P|² + ε),   ε = ``epsilon`` · max|χ_P|²  (max|χ_P| = Σ_k A(k)²),

and the object is read from the u = 0 slice of its Wigner distribution (the mean of χ̂_O
over ρ), D(Q) = g_Q(0) = Õ(0) Õ*(−Q): the spectrum of O* (Õ(0) ≈ 1). For a weak phase
object O = 1 + iφ, g_Q(u) = −iΦ(Q) [δ(u) − δ(u − Q)] (Φ the FFT of φ on the scan), so
H = −iΦ (χ_P − χ_P^Q), χ_P^Q = FFT_k f_Q(k − Q), and the slice gives D = −iΦ T(Q) with the
transfer T(Q) = ⟨(χ_P − χ_P^Q) χ_P*/(|χ_P|² + ε)⟩_ρ: 1 for ε → 0 when Q lies on the
detector grid; below 1 where ε cuts in (≈ 0.48 at ε = 1e-4 for the tests' grating: the
bare slice is not in rad). WDD returns

    Φ̂(Q) = i D(Q) T*(Q) / (|T(Q)|² + τ²),   φ = Re IFFT Φ̂   (rad, zero mean),

τ = :data:`TRANSFER_FLOOR` (Φ̂ = 0 where no Q overlaps the disc: |Q| ≥ 2α/λ), scaled by
(T_m² + τ²)/T_m² with T_m = max|T| (1.0025 for T_m = 1; at low counts, where ε shrinks
every T far below τ, it keeps φ in rad), so a weak phase object gives its phase in
radians (to first order the phase of the deconvolved O, −arg(1 + IFFT(D/T))). χ_P
carries χ, so the aberrations (those of the calibration, C10 from ``defocus`` if given)
are deconvolved, not assumed away.

Wiener constant. The noise of H is flat in ρ: var H = n·SQ/I₀ for n bright-field pixels
and SQ positions; the object's Wigner distribution has power ≈ 2·SQ·σ² (σ the phase's rms,
:data:`PHASE_RMS`). Their ratio gives ε/max|χ_P|² = 1/(2 C σ²), C = n·I₀ the counts per
pattern: measured for integer data, dose × step² for data with a dose. Noise-free data
(floats without a dose) get :data:`EPSILON_FLOOR`, the floor of every default; measured
intensities stored as floats without a dose are taken for noise-free too (their counts are
unknown): give them a dose (``convert --dose``) or ``epsilon``.

Frames. G and the ρ transform live on the detector's pixel grid; χ_P is sampled on it:
pixel k_d (detector frame) has k_s = R(θ) S k_d in the scan frame (:func:`.icom.to_scan_frame`,
the calibration's rotation θ and transpose S), and f_Q(k_d) = P̃(k_s) P̃*(k_s + Q) with
Q in the scan frame. The rotation thus enters only through where P̃ is evaluated; the
u = 0 slice does not depend on the frame.

Passes and memory. One read of the 4-D data (:func:`.direct.bright_field_stack`: the
bright-field pixels, or ``bin`` × ``bin`` groups, of every pattern), into a stack of
n·Sy·(Sx + 2)·4 bytes (n pixels or groups; written to a temporary file beyond half the
memory budget, ``stack_on_disk``: a :class:`MappedStack`, whose pages are handed back to
the page cache after every block, so they do not stay resident). Then two passes over
the stack, none over the data:
(1) its FFT over the scan, in place (rfft2: the data are real, G(k, −Q) = G*(k, Q)), in
blocks of pixels (block·Sy·Sx·32 bytes); (2) blocks of ``block`` scan frequencies, each
with every pixel: the box FFTs of G, f_Q and f_Q(k − Q) (block·N_box·~200 bytes, N_box ≈
(2α/λ/dk + 3)² the box round the disc). Memory is thus scan size × block, with ``block``
set by the budget (``--memory-limit``). On a GPU (``device="gpu"``) the blocks run there.
"""

from __future__ import annotations

import math
import mmap
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import physics
from ..backend import fft2, get_xp, to_numpy
from ..backend import memory_limit as memory_limit_bytes
from ..dataset import as_dataset
from ..errors import PtyengineError
from .direct import bright_field_groups, bright_field_stack, check_parameters, dataset_mask
from .icom import to_scan_frame
from .ssb import check_trotters

#: the object's assumed phase rms (rad) in the dose-derived Wiener constant
PHASE_RMS = 0.1
#: ε/max|χ_P|² for noise-free data, and the least any default gives (edge modelling)
EPSILON_FLOOR = 1e-4
#: τ: transfers |T| below ~τ are damped, not divided by (their noise would be amplified)
TRANSFER_FLOOR = 0.05
#: bytes per element of a scan-frequency block (box FFTs and χ evaluations)
Q_BYTES = 200
#: bytes per element of a pixel block in the in-place FFT pass
PIXEL_BYTES = 32


@dataclass
class WddParameters:
    """defocus: C10 in Å of the probe (None: the calibration's); bin: bright-field pixels
    per group side (1: every pixel); epsilon: the Wiener constant relative to max|χ_P|²
    (None: from the dose, see the module docstring); block: scan frequencies deconvolved
    together (None: from the memory budget)."""

    defocus: float | None = None
    bin: int = 1
    epsilon: float | None = None
    block: int | None = None

    def __post_init__(self):
        check_parameters("WDD", self.defocus, self.bin, self.block, "scan frequency")
        if self.epsilon is not None and not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise PtyengineError(f"WDD epsilon must be > 0 (relative to max|χ_P|²), got "
                                 f"{self.epsilon}")  # fmt: skip


@dataclass
class WddResult:
    """phase: (Sy, Sx) rad, zero mean, on the scan grid; aberrations: those deconvolved
    (Å, rad; scan frame); rotation_deg, transpose: the calibration's; sampling, origin: Å;
    bin; epsilon: ε/max|χ_P|² used; epsilon_from: "given", "counts", "dose" or
    "noise-free"; counts_per_pattern: C of the default (None when unknown); transfer:
    (Sy, Sx) |T(Q)| (FFT order); stack_on_disk: whether the stack went to a temporary
    file."""

    phase: np.ndarray
    aberrations: dict
    rotation_deg: float
    transpose: bool
    sampling: tuple[float, float]
    origin: tuple[float, float]
    bin: int
    epsilon: float
    epsilon_from: str
    counts_per_pattern: float | None
    transfer: np.ndarray
    stack_on_disk: bool = False


def default_epsilon(counts_per_pattern: float | None) -> float:
    """ε/max|χ_P|² = 1/(2 C σ²) for C counts per pattern (σ = :data:`PHASE_RMS`), at least
    :data:`EPSILON_FLOOR`; the floor for noise-free data (C None)."""
    if counts_per_pattern is None:
        return EPSILON_FLOOR
    return max(EPSILON_FLOOR, 1.0 / (2.0 * counts_per_pattern * PHASE_RMS**2))


def counts_scale(ds, cal) -> tuple[str, float | None]:
    """("counts", 1) for integer data, ("dose", dose × step²) for data with a dose, else
    ("noise-free", None): how to find the counts per pattern."""
    if np.dtype(getattr(ds, "dtype", np.float32)).kind in "iu":
        return "counts", 1.0
    if cal.dose is not None:
        return "dose", cal.counts_per_pattern
    return "noise-free", None


def wdd(ds, params: WddParameters | None = None, device: str = "cpu",
        memory_limit=None) -> WddResult:  # fmt: skip
    """WDD phase (rad) of a dataset (anything :func:`as_dataset` takes); see the module
    docstring. Memory: the stack n·Sy·(Sx + 2)·4 bytes (on disk beyond half the budget)
    and block·N_box·200 bytes; one read."""
    params = params or WddParameters()
    dset = as_dataset(ds)
    try:
        cal = dset.calibration
        check_trotters(cal, "WDD")
        bf = bright_field_groups(cal, int(params.bin), mask=dataset_mask(dset))
        limit = memory_limit_bytes(memory_limit)
        sy, sx = cal.scan_shape
        shape = (bf.n_groups, sy, 2 * (sx // 2 + 1))  # room for the rfft2 in place
        source = counts_scale(dset, cal)
        with tempfile.TemporaryDirectory(prefix="ptyengine-wdd-") as tmp:
            on_disk = 4 * math.prod(shape) > limit / 2
            if on_disk:
                buf = MappedStack(Path(tmp) / "stack.npy", shape)
                bright_field_stack(dset, bf, device, memory_limit, out=buf)
            else:
                buf = np.zeros(shape, np.float32)
                bright_field_stack(dset, bf, device, memory_limit, out=buf[:, :, :sx])
            result = wdd_from_stack(buf, bf, cal, params, device, limit, source)
            if on_disk:
                buf.close()
            del buf
    finally:
        if dset is not ds:
            dset.close()
    result.stack_on_disk = on_disk
    return result


class MappedStack:
    """The stack (n, Sy, Sx + 2) float32 in a memory-mapped file, for stacks beyond the
    memory budget. A mapped file's pages count in the process's resident memory once
    touched, which grew WDD's peak with the data (1.2 GB at 2 GB of data, 6.5 GB at 16 GB:
    benchmarks/RESULTS.md); :meth:`release` hands the touched pages back to the page cache
    (MADV_DONTNEED: the file keeps what was written), after every block of rows written
    (:meth:`write`, as :func:`.direct.bright_field_stack` fills it) and every block of the
    passes that follow, so resident memory is a block's, whatever the stack's size."""

    def __init__(self, path, shape):
        self.array = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                               shape=tuple(shape))  # fmt: skip
        self.shape, self.dtype = self.array.shape, self.array.dtype

    def write(self, row0: int, part) -> None:
        """Put the (n, rows, Sx) images of a block of scan rows in place, then release."""
        self.array[:, row0:row0 + part.shape[1], :part.shape[2]] = part
        self.release()

    def release(self) -> None:
        mm = getattr(self.array, "_mmap", None)
        if mm is not None and hasattr(mm, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
            mm.madvise(mmap.MADV_DONTNEED)

    def close(self) -> None:
        self.array.flush()
        del self.array


def _release(buf) -> None:
    if isinstance(buf, MappedStack):
        buf.release()


def fft_in_place(buf, sx: int, block: int, xp) -> np.ndarray:
    """Replace the real stack ``buf[:, :, :sx]`` (n, Sy, ≥ Sx + 1 float32, or a
    :class:`MappedStack`) by its rfft2 over the scan, ``block`` pixels at a time; returns
    the complex64 view (n, Sy, Sx//2 + 1)."""
    arr = buf.array if isinstance(buf, MappedStack) else buf
    n = arr.shape[0]
    spec = arr.view(np.complex64)
    for b0 in range(0, n, block):
        sl = slice(b0, min(b0 + block, n))
        part = xp.asarray(np.asarray(arr[sl, :, :sx]))
        spec[sl] = to_numpy(xp.fft.rfft2(part).astype(np.complex64))
        _release(buf)
    return spec


def spectrum_rows(spec, r0: int, r1: int, sx: int) -> np.ndarray:
    """(n, r1 − r0, Sx) complex64: G at the scan-frequency rows r0:r1, every column, from
    the half spectrum (G(−Q) = G*(Q))."""
    sy, half = spec.shape[1], spec.shape[2]
    left = np.asarray(spec[:, r0:r1, :])
    if half == sx:
        return left
    neg = (-np.arange(r0, r1)) % sy
    cols = sx - np.arange(half, sx)
    right = np.conj(np.asarray(spec[:, neg])[:, :, cols])
    return np.concatenate([left, right], axis=2)


@dataclass
class DetectorBox:
    """The detector grid round the disc: group g sits at box index ``index[g]``; ``ky``,
    ``kx``: (N_box,) scan-frame k of every box point (1/Å); ``shape``: the box."""

    index: np.ndarray
    ky: np.ndarray
    kx: np.ndarray
    shape: tuple[int, int]


def detector_box(bf, cal) -> DetectorBox:
    """The box of tiles (``bf.bin`` pixels a side, on the groups' grid) that holds every
    group; the grid's offset (a centre between pixels) from the full tiles' mean k."""
    step = np.array(cal.dk) * bf.bin
    t = np.rint(bf.k / step).astype(np.int64)
    full = bf.size == bf.size.max()
    offset = (bf.k[full] / step - t[full]).mean(axis=0)
    lo, hi = t.min(axis=0) - 1, t.max(axis=0) + 1
    shape = (int(hi[0] - lo[0] + 1), int(hi[1] - lo[1] + 1))
    index = (t[:, 0] - lo[0]) * shape[1] + (t[:, 1] - lo[1])
    ty, tx = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1),
                         indexing="ij")  # fmt: skip
    kdy, kdx = (ty + offset[0]) * step[0], (tx + offset[1]) * step[1]
    ky, kx = to_scan_frame(kdy.ravel(), kdx.ravel(), cal.rotation, cal.transpose)
    return DetectorBox(index, ky, kx, shape)


def probe_spectrum(ky, kx, cal, ab, edge: float, xp):
    """P̃(k) = A(k) e^{−iχ(k)} at scan-frame (ky, kx) 1/Å: the aperture of
    :func:`physics.aperture` (linear edge ``edge`` 1/Å wide)."""
    k_a = cal.semiangle * 1e-3 / cal.wavelength
    amp = xp.clip((k_a - xp.sqrt(ky**2 + kx**2)) / edge + 0.5, 0.0, 1.0)
    return amp * xp.exp(-1j * physics.chi(ky, kx, cal.energy, ab, xp))


def wdd_from_stack(buf, bf, cal, params: WddParameters, device: str = "cpu",
                   limit: int = 2**30, source=("noise-free", None)) -> WddResult:  # fmt: skip
    """WDD from the stack ``buf`` (n, Sy, ≥ Sx + 1) float32 whose ``[:, :, :Sx]`` holds the
    bright-field group images (overwritten by their FFT); :func:`wdd` without the read."""
    xp = get_xp(device)
    sy, sx = cal.scan_shape
    n = bf.n_groups
    ab = dict(cal.aberrations)
    if params.defocus is not None:
        ab["C10"] = float(params.defocus)
    box = detector_box(bf, cal)
    n_box = box.shape[0] * box.shape[1]
    pix_block = max(1, int(limit / 4 // (sy * sx * PIXEL_BYTES)))
    spec = fft_in_place(buf, sx, pix_block, xp)
    means = spec[:, 0, 0].real.astype(np.float64) / (sy * sx) / bf.size  # per pixel, pattern
    k_a = bf.k_alpha
    inner = np.hypot(bf.k[:, 0], bf.k[:, 1]) < k_a - max(cal.dk) * bf.bin
    i0 = float(means[inner].mean()) if inner.any() else float(means.mean())
    if not i0 > 0:
        raise PtyengineError("the bright-field disc holds no counts: nothing for WDD")
    kind, scale = source
    counts = None if scale is None else float(scale if kind == "dose" else
                                              (means * bf.size).sum())  # fmt: skip
    if params.epsilon is not None:
        eps_rel, kind = float(params.epsilon), "given"
    else:
        eps_rel = default_epsilon(counts)
    edge = max(cal.dk) * bf.bin
    # the model is what the stack holds: the groups' pixels (G there, 0 elsewhere)
    kgy, kgx = xp.asarray(box.ky[box.index]), xp.asarray(box.kx[box.index])
    p0 = probe_spectrum(kgy, kgx, cal, ab, edge, xp)
    eps = eps_rel * float(xp.sum(xp.abs(p0) ** 2)) ** 2
    weight = xp.asarray((1.0 / (i0 * bf.size)).astype(np.float32))
    index = xp.asarray(box.index)
    qy_all = np.fft.fftfreq(sy, cal.scan_step[0])
    qx_all = np.fft.fftfreq(sx, cal.scan_step[1])
    # beyond 2α/λ (and an edge) no pixel has both k and k ± Q in the disc: Φ̂ = 0 there
    reach = (2 * k_a + 2 * edge) ** 2
    block = params.block or max(1, int(limit / 4 // (n_box * Q_BYTES)))
    rows = max(1, min(sy, block // sx))
    chunk = min(block, rows * sx)  # one FFT shape (one FFTW plan): short chunks padded
    phi = np.zeros((sy, sx), np.complex128)
    transfer = np.zeros((sy, sx))
    for r0 in range(0, sy, rows):
        r1 = min(r0 + rows, sy)
        qy = np.repeat(qy_all[r0:r1], sx)
        qx = np.tile(qx_all, r1 - r0)
        live = np.flatnonzero(qy**2 + qx**2 < reach)
        if not len(live):
            continue
        part = spectrum_rows(spec, r0, r1, sx).reshape(n, -1)
        est = np.zeros((r1 - r0) * sx, np.complex128)
        mag = np.zeros((r1 - r0) * sx)
        for c0 in range(0, len(live), chunk):
            sel = live[c0:c0 + chunk]
            pad = np.concatenate([sel, np.full(chunk - len(sel), sel[-1])])
            g = xp.asarray(part[:, pad].T) * weight
            q = (xp.asarray(qy[pad])[:, None], xp.asarray(qx[pad])[:, None])
            d, t = deconvolve(g, index, box.shape, p0, kgy, kgx, q, cal, ab, edge, eps, xp)
            d, t = d[:len(sel)], t[:len(sel)]
            est[sel] = to_numpy(1j * d * xp.conj(t) / (xp.abs(t) ** 2 + TRANSFER_FLOOR**2))
            mag[sel] = to_numpy(xp.abs(t))
        phi[r0:r1] = est.reshape(r1 - r0, sx)
        transfer[r0:r1] = mag.reshape(r1 - r0, sx)
        _release(buf)
    phi[0, 0] = 0
    # at low counts ε ≫ |χ_P|² shrinks T (and D) as 1/ε far below τ, which would leave φ
    # 1/ε² too small (1e-7 rad at 20 e/Å²): rescale so that Φ̂ = iD/T at the best-
    # transferred Q, which keeps every Q's relative weight (≈ 1 where T ≫ τ)
    t_max = float(transfer.max())
    if t_max > 0:
        phi *= (t_max**2 + TRANSFER_FLOOR**2) / t_max**2
    phase = np.fft.ifft2(phi).real.astype(np.float32)
    return WddResult(phase, ab, float(cal.rotation), bool(cal.transpose),
                     tuple(cal.scan_step), tuple(cal.scan_origin), int(params.bin), eps_rel,
                     kind, counts, transfer.astype(np.float32))  # fmt: skip


def deconvolve(g, index, shape, p0, kgy, kgx, q, cal, ab, edge, eps, xp):
    """(D, T), each (nq,): the u = 0 slice of the Wiener-deconvolved object Wigner
    distribution and the weak-phase transfer (module docstring) for the scan frequencies
    ``q`` = (qy, qx), each (nq, 1) 1/Å, from G/I₀ ``g`` (nq, n) of the groups at box
    ``index`` (scan-frame k (kgy, kgx), P̃ there ``p0``).

    Two box FFTs per frequency: χ_P = FFT f_Q gives the filter W = χ_P*/(|χ_P|² + ε), and
    ⟨FFT(x)·W⟩_ρ = Σ_k x(k) w(k) with w = FFT(W)/N_box, so D = Σ_k G w and
    T = Σ_k (f_Q(k) − f_Q(k − Q)) w, over the stack's pixels."""
    nq = g.shape[0]
    n_box = shape[0] * shape[1]
    plus = probe_spectrum(kgy + q[0], kgx + q[1], cal, ab, edge, xp)  # P̃(k + Q)
    minus = probe_spectrum(kgy - q[0], kgx - q[1], cal, ab, edge, xp)  # P̃(k − Q)
    f = (p0 * xp.conj(plus)).astype(np.complex64)
    f_q = (minus * xp.conj(p0)).astype(np.complex64)
    fbox = xp.zeros((nq, n_box), np.complex64)
    fbox[:, index] = f
    chi_p = fft2(fbox.reshape(nq, *shape))
    wiener = xp.conj(chi_p) / (xp.abs(chi_p) ** 2 + np.float32(eps))
    w = fft2(wiener).reshape(nq, n_box)[:, index] / n_box
    d = (g * w).sum(axis=1, dtype=np.complex128)
    t = ((f - f_q) * w).sum(axis=1, dtype=np.complex128)
    return d, t
