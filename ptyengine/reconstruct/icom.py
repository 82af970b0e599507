"""iCOM and iDPC: phase images from the centre of mass of each diffraction pattern.

Physics (Lazić, Bosch & Lazar, Ultramicroscopy 160 (2016)). For a thin phase object
t(r) = exp(iφ(r)), φ = σ V_proj, and a probe P(r - r_p), the centre of mass of the
diffraction pattern (k-space, 1/Å; FFT convention exp(-2πi k·r), so a phase ramp
2π k0·r moves the pattern to +k0) is exactly

    ⟨k⟩(r_p) = (1/2π) (|P|² ⋆ ∇φ)(r_p),

provided the detector collects every scattered electron. Hence ``2π⟨k⟩`` is the
probe-intensity-blurred phase gradient (rad/Å), and the iCOM image is
``integrate_gradient(2π⟨k⟩_y, 2π⟨k⟩_x, scan_step)`` in radians: σ·V blurred by |P|².

Frames. The centre of mass is measured in the DETECTOR frame, k = (p - center)·dk. Vectors
are taken to the SCAN frame (y = scan rows, x = scan columns) by :func:`to_scan_frame`:
first swap the components if ``transpose``, then rotate by θ = ``rotation`` with

    x' = x cos θ - y sin θ,    y' = x sin θ + y cos θ,

i.e. θ > 0 turns the +x axis towards +y (counter-clockwise in a right-handed x-y plane,
which looks clockwise on a screen whose rows run downwards). :func:`to_detector_frame` is
the inverse; :func:`find_rotation` returns (θ, transpose) in this same convention.

A detector mask (:func:`ptyengine.dataset.detector_mask`: dead and hot pixels) leaves its
pixels out of every sum: the centre of mass is then Σ m I k / Σ m I (by weighted sums, not
the faster projections).

Everything streams over scan-row blocks: one pass for iCOM and iDPC with a known rotation
(two for iDPC with ``rotation='auto'``), never the whole dataset in memory. Each block is
reduced to a few numbers per pattern in the thread that read and decompressed it, by
numba kernels that read the stored counts directly (the centre of mass from the two
projections of each pattern, one pass over the block); on the CPU that keeps iCOM close
to the speed of reading alone (benchmarks/RESULTS.md, "Streaming iCOM over Zarr").
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.fft
from scipy.optimize import minimize_scalar

from .. import io
from ..backend import get_xp, to_device_async, to_numpy, xp_of
from ..backend import memory_limit as memory_limit_bytes
from ..dataset import as_dataset, check_counts, detector_mask
from ..errors import PtyengineError
from ..kernels import moments as km

#: Coarse grid (degrees) that :func:`find_rotation` scans before refining.
ROTATION_GRID = np.arange(0.0, 360.0, 1.0)


@dataclass
class IComResult:
    """A phase image and the fields it came from.

    phase: (Sy, Sx) image, rad for iCOM (zero mean); com_y, com_x: the scan-frame field
    that was integrated (iCOM: centre of mass in 1/Å; iDPC: dimensionless DPC signals);
    rotation_deg, transpose: the scan–detector relation used; rotation_found: whether
    :func:`find_rotation` chose it; sampling: (dy, dx) Å = the scan step; origin: (y0, x0)
    Å of pixel (0, 0) = the scan origin; n_empty: patterns with zero counts (set to 0);
    method: "icom" or "idpc"; units of ``phase``.
    """

    phase: np.ndarray
    com_y: np.ndarray
    com_x: np.ndarray
    rotation_deg: float
    transpose: bool
    rotation_found: bool
    sampling: tuple[float, float]
    origin: tuple[float, float]
    n_empty: int = 0
    method: str = "icom"
    units: str = "rad"


# ------------------------------------------------------------------ streaming moments


def detector_k(cal):
    """Detector-frame (ky, kx) in 1/Å of every pixel, as (Ky, Kx) arrays."""
    ky = (np.arange(cal.detector_shape[0]) - cal.detector_center[0]) * cal.dk[0]
    kx = (np.arange(cal.detector_shape[1]) - cal.detector_center[1]) * cal.dk[1]
    return np.broadcast_arrays(ky[:, None], kx[None, :])


#: threads that read, decompress and reduce row blocks of an io.Dataset (see row_blocks)
READ_WORKERS = 2


def detector_projections(block):
    """(rows, cols) of every pattern in ``block`` (..., Ky, Kx), numpy or cupy:
    rows (n, Ky) = Σ over k_x, cols (n, Kx) = Σ over k_y (int64 for integer counts on the
    CPU, else float64)."""
    if not isinstance(block, np.ndarray):
        flat = block.reshape(-1, *block.shape[-2:])
        return flat.sum(axis=2, dtype=np.float64), flat.sum(axis=1, dtype=np.float64)
    flat = km.kernel_input(block, block.shape[-2:])
    acc = np.int64 if flat.dtype.kind in "iu" else np.float64
    rows = np.zeros(flat.shape[:2], acc)
    cols = np.zeros((flat.shape[0], flat.shape[2]), acc)
    km.projections_cpu(flat, rows, cols)
    return rows, cols


def com_moments(block, ky, kx):
    """(3, n_patterns) float64: Σ I, Σ I·k_y, Σ I·k_x of every pattern in ``block``.

    ky (Ky,), kx (Kx,): detector-frame k in 1/Å on the block's device. Computed from the
    pattern's two projections (:func:`detector_projections`), since k_y depends on the
    pixel row only and k_x on the column only: one cheap pass over the counts.
    """
    rows, cols = detector_projections(block)
    rows, cols = rows.astype(np.float64), cols.astype(np.float64)
    return xp_of(rows).stack([rows.sum(axis=1), rows @ ky, cols @ kx])


def block_moments(block, w):
    """(n_weights, n_patterns) float64 weighted sums of the patterns of one block.

    block: (..., Ky, Kx) numpy or cupy array; w: (n_weights, Ky·Kx) float64 weights on the
    same device. CPU: :func:`kernels.moments.weighted_sums_cpu` (no float copy of the
    block); GPU: one float64 matrix product.
    """
    if not isinstance(block, np.ndarray):
        return (block.reshape(-1, w.shape[1]).astype(np.float64) @ w.T).T
    out = np.empty((w.shape[0], block.size // w.shape[1]))
    km.weighted_sums_cpu(km.kernel_input(block, (w.shape[1],)), w, out)
    return out


def reader_threads(ds, memory_limit=None) -> int:
    """Reading threads (at most READ_WORKERS) whose blocks fit ``memory_limit`` bytes
    (:func:`backend.memory_limit`): each holds up to three blocks of raw data at a time
    (zarr's decompressed chunk, the block handed out, a converted copy)."""
    if memory_limit is None:
        return READ_WORKERS
    limit = memory_limit_bytes(memory_limit)
    block = io.chunk_shape(ds.data)[0] * math.prod(ds.shape[1:]) * ds.dtype.itemsize
    threads = min(READ_WORKERS, limit // (3 * block))
    if threads < 1:
        raise PtyengineError(
            f"memory limit {io.format_bytes(limit)} is below three blocks of "
            f"{io.chunk_shape(ds.data)[0]} scan rows ({io.format_bytes(block)} each): raise "
            f"--memory-limit, or store the data with fewer scan rows per chunk "
            f"(ptyengine convert ... --rows-per-chunk N)")
    return int(threads)


def row_blocks(ds, transform=None, memory_limit=None):
    """``(row_start, block)`` of ``ds`` as the streaming reductions read it, or
    ``(row_start, transform(row_start, block))``.

    An :class:`io.Dataset` is read one chunk of scan rows per block (its default), by
    :func:`reader_threads` threads reading, decompressing and transforming blocks ahead:
    the reduction runs in the thread that decompressed the block, right after, and the
    threads share the cores. Other datasets: their own ``iter_row_blocks()``,
    ``transform`` in the caller's thread.
    """
    if isinstance(ds, io.Dataset):
        workers = reader_threads(ds, memory_limit)
        return ds.iter_row_blocks(prefetch=max(2, workers), workers=workers,
                                  transform=transform)  # fmt: skip
    blocks = ds.iter_row_blocks()
    return blocks if transform is None else ((r, transform(r, b)) for r, b in blocks)


def _stream(ds, reduce, n_out: int, device: str, memory_limit=None):
    """(n_out, Sy, Sx) float64 per-pattern reductions, one streaming pass.

    Each block is moved to ``device`` (on a GPU through pinned memory on a copy stream of
    the reading thread: :func:`backend.to_device_async`), validated with
    :func:`check_counts` and reduced by ``reduce(block) -> (n_out, n_patterns)`` in the
    reading threads (:func:`row_blocks`).
    """
    xp = get_xp(device)
    sy, sx = ds.calibration.scan_shape
    name = getattr(ds, "path", None) or "data"

    def block_sums(row0: int, block) -> np.ndarray:
        block = to_device_async(np.asarray(block), xp)
        n = block.shape[0]
        check_counts(block, f"{name}: scan rows {row0}:{row0 + n}", row_start=row0)
        return to_numpy(reduce(block)).reshape(n_out, n, sx)

    out = np.zeros((n_out, sy, sx))
    done = 0
    for row0, sums in row_blocks(ds, block_sums, memory_limit):
        out[:, row0:row0 + sums.shape[1]] = sums
        done += sums.shape[1]
    if done != sy:
        raise PtyengineError(f"{name}: read {done} scan rows, expected {sy}")
    return out


def _moments(ds, weights, device: str = "cpu", memory_limit=None):
    """Σ_k I(r, k) w_n(k) for every pattern and weight (Ky, Kx): (n_weights, Sy, Sx)."""
    w = get_xp(device).asarray(np.stack([np.ravel(v) for v in weights]).astype(np.float64))
    return _stream(ds, lambda block: block_moments(block, w), len(weights), device,
                   memory_limit)  # fmt: skip


def normalise_moments(moments):
    """moments[1:] / moments[0] per pattern (0 where the pattern is empty), n_empty."""
    total = moments[0]
    empty = ~(total > 0)
    safe = np.where(empty, 1.0, total)
    return [np.where(empty, 0.0, m / safe) for m in moments[1:]], int(empty.sum())


def _center_of_mass(ds, device="cpu", memory_limit=None):
    mask = detector_mask(ds)
    if mask is not None:  # Σ m I, Σ m I k_y, Σ m I k_x: the masked pixels left out
        ky, kx = detector_k(ds.calibration)
        m = mask.astype(np.float64)
        (com_y, com_x), n_empty = normalise_moments(_moments(ds, [m, m * ky, m * kx], device,
                                                             memory_limit))  # fmt: skip
        return com_y, com_x, n_empty
    xp = get_xp(device)
    ky, kx = detector_k(ds.calibration)
    ky, kx = xp.asarray(ky[:, 0]), xp.asarray(kx[0])  # k_y by pixel row, k_x by column
    moments = _stream(ds, lambda block: com_moments(block, ky, kx), 3, device, memory_limit)
    (com_y, com_x), n_empty = normalise_moments(moments)
    return com_y, com_x, n_empty


def center_of_mass(ds, device: str = "cpu"):
    """(com_y, com_x): centre of mass (1/Å) of every pattern, images of shape scan_shape.

    DETECTOR frame, relative to the calibrated centre: k = (p - center)·dk, normalised by
    each pattern's total counts; one streaming pass. Patterns with no counts get COM 0 and
    a warning (:func:`icom` reports their number as ``n_empty``). ``ds``: anything
    :func:`ptyengine.dataset.as_dataset` accepts.
    """
    dset = as_dataset(ds)
    try:
        com_y, com_x, n_empty = _center_of_mass(dset, device)
    finally:
        if dset is not ds:
            dset.close()
    if n_empty:
        warnings.warn(f"{n_empty} diffraction pattern(s) hold no counts; their centre of "
                      "mass is set to 0", stacklevel=2)  # fmt: skip
    return com_y, com_x


# ------------------------------------------------------------------ frames and rotation


def to_scan_frame(vy, vx, rotation_deg: float, transpose: bool):
    """Detector-frame vector components -> scan-frame (vy', vx').

    First swap (vy, vx) if ``transpose``; then rotate by θ = ``rotation_deg``:
    x' = x cos θ - y sin θ, y' = x sin θ + y cos θ (θ > 0 turns +x towards +y).
    """
    if transpose:
        vy, vx = vx, vy
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    return vx * s + vy * c, vx * c - vy * s


def to_detector_frame(vy, vx, rotation_deg: float, transpose: bool):
    """The inverse of :func:`to_scan_frame`: rotate by -θ, then swap if ``transpose``."""
    c, s = math.cos(math.radians(rotation_deg)), math.sin(math.radians(rotation_deg))
    y, x = vy * c - vx * s, vx * c + vy * s
    return (x, y) if transpose else (y, x)


def _pair(step) -> tuple[float, float]:
    dy, dx = (step, step) if np.ndim(step) == 0 else step
    return float(dy), float(dx)


def _curl_div(vy, vx, step):
    """Curl (∂x vy - ∂y vx) and divergence by central differences, border excluded."""
    dy, dx = _pair(step)
    vy_y, vy_x = np.gradient(vy, dy, dx)
    vx_y, vx_x = np.gradient(vx, dy, dx)
    inner = (slice(1, -1) if vy.shape[0] > 2 else slice(None),
             slice(1, -1) if vy.shape[1] > 2 else slice(None))  # fmt: skip
    return (vy_x - vx_y)[inner], (vy_y + vx_x)[inner]


def find_rotation(com_y, com_x, step, candidates=None, transposes=(False, True),
                  high_pass: float | None = None) -> tuple[float, bool]:  # fmt: skip
    """(rotation_deg in [0, 360), transpose) that make the scan-frame COM field curl-free.

    ``com_y, com_x``: detector-frame field (any units); ``step``: scan step(s) in Å;
    ``candidates``: coarse angles in degrees (default 0..359 in 1° steps), refined to
    0.01° by a bounded scalar minimiser (±1° around the best candidate) of the mean
    squared curl (central differences, the border excluded, so a non-periodic scan gives
    no wrap-around jumps). Rotating a field by θ gives curl' = cos θ·curl + sin θ·div, so
    the objective is evaluated exactly from curl and div of the unrotated field; among
    ``transposes`` the one with the smaller curl, relative to curl² + div², wins.

    The curl cannot tell θ from θ + 180° (the field changes sign). The sign is chosen so
    that the integrated phase has larger positive than negative excursions: with p_top /
    p_bot the means of its top / bottom 1 % and m its median, p_top + p_bot - 2 m > 0. That
    suits atoms in a thin specimen with a focused probe (sharp positive peaks of σ V on a
    flat background). It can pick the wrong sign where that picture fails: phase
    distributions symmetric about their median (a pure sinusoid, noise-dominated data),
    strong dynamical scattering or defocus contrast reversals. Give ``rotation`` explicitly
    there.
    """
    vy, vx = np.asarray(com_y, dtype=np.float64), np.asarray(com_x, dtype=np.float64)
    grid = ROTATION_GRID if candidates is None else np.asarray(candidates, dtype=float)
    if min(vy.shape) < 3:
        raise PtyengineError(f"find_rotation needs a scan of at least 3 × 3, got {vy.shape}")
    best = None
    for transpose in transposes:
        curl, div = _curl_div(*(to_scan_frame(vy, vx, 0.0, bool(transpose))), step)
        a, b, d = np.mean(curl * curl), np.mean(curl * div), np.mean(div * div)
        norm = a + d if a + d > 0 else 1.0

        def objective(theta, a=a, b=b, d=d, norm=norm):
            t = np.radians(theta)
            return (np.cos(t) ** 2 * a + 2 * np.cos(t) * np.sin(t) * b
                    + np.sin(t) ** 2 * d) / norm  # fmt: skip

        theta0 = float(grid[np.argmin(objective(grid))])
        res = minimize_scalar(objective, bounds=(theta0 - 1, theta0 + 1), method="bounded",
                              options={"xatol": 1e-3})  # fmt: skip
        theta, value = (float(res.x), float(res.fun)) if res.fun <= objective(theta0) else (
            theta0, float(objective(theta0)))  # fmt: skip
        if best is None or value < best[2]:
            best = (theta, bool(transpose), value)
    theta, transpose, _ = best
    gy, gx = to_scan_frame(vy, vx, theta, transpose)
    phase = integrate_gradient(gy, gx, step, high_pass).ravel()
    n = max(1, phase.size // 100)
    srt = np.sort(phase)
    if srt[-n:].mean() + srt[:n].mean() - 2 * np.median(phase) < 0:
        theta += 180.0
    return round(theta % 360.0, 4) % 360.0, transpose


# ------------------------------------------------------------------ integration


def default_high_pass(shape, step) -> float:
    """Default k_hp (1/Å): 1/(2 L), L the larger side of the scanned field.

    That is the lowest frequency of the mirror-extended field, which it halves; phase
    features of period L keep 80 %, L/2 94 %, L/4 98.5 % of their amplitude.
    """
    dy, dx = _pair(step)
    return 1.0 / (2.0 * max(shape[0] * dy, shape[1] * dx))


def _sine_coefficients(a, axis: int) -> np.ndarray:
    """S[k] = 2 Σ_m a[m] sin(πk(2m+1)/(2n)), k = 0..n-1 along ``axis`` (S[0] = 0).

    With the DCT-II's C[k] = 2 Σ_m a[m] cos(πk(2m+1)/(2n)), these are the FFT of the
    mirrored sequence of length 2n (half-sample symmetric): e^{iπk/2n}·C[k] for the even
    extension, -i·e^{iπk/2n}·S[k] for the odd one (scipy's DST-II, shifted by one index).
    """
    s = np.roll(scipy.fft.dst(a, type=2, axis=axis), 1, axis=axis)
    s[(slice(None),) * axis + (0,)] = 0.0
    return s


def integrate_gradient(gy, gx, step, high_pass: float | None = None) -> np.ndarray:
    """Phase (rad, zero mean) whose gradient is (gy, gx) rad/Å, by Fourier integration.

    Φ(k) = (k_y G_y + k_x G_x) / (2πi (|k|² + k_hp²)), with k_hp = ``high_pass`` in 1/Å
    (None: :func:`default_high_pass`; 0: none), on the field extended to twice its size by
    mirroring the PHASE (even, half-sample symmetric extension), i.e. the gradient
    component normal to each mirror line changes sign and the tangential one does not:
    the extended field is periodic with no jump in the phase at the edges (only a kink),
    so the result has no wrap-around artefacts; the result is cropped back. The FFTs of
    the mirrored fields are taken as the DCT-II / shifted DST-II of the unextended ones
    (:func:`_sine_coefficients`; their Nyquist terms only feed the discarded imaginary
    part), which gives the same numbers in ~1/8 of the memory: arrays of the scan's size.
    """
    gy, gx = np.asarray(gy, dtype=np.float64), np.asarray(gx, dtype=np.float64)
    if gy.shape != gx.shape or gy.ndim != 2:
        raise PtyengineError(f"gradient images must be 2-D and alike, got {gy.shape}, {gx.shape}")
    if not (np.isfinite(gy).all() and np.isfinite(gx).all()):
        raise PtyengineError("gradient images hold NaN or inf")
    dy, dx = _pair(step)
    ny, nx = gy.shape
    k_hp = default_high_pass(gy.shape, (dy, dx)) if high_pass is None else float(high_pass)
    if not (math.isfinite(k_hp) and k_hp >= 0):
        raise PtyengineError(f"high_pass must be ≥ 0 (1/Å), got {high_pass}")
    ky = (np.arange(ny) / (2 * ny * dy))[:, None]  # the non-negative frequencies of 2n
    kx = (np.arange(nx) / (2 * nx * dx))[None, :]
    spec = scipy.fft.dct(_sine_coefficients(gy, 0), type=2, axis=1)  # gy: odd in y
    spec *= ky
    spec += kx * _sine_coefficients(scipy.fft.dct(gx, type=2, axis=0), 1)  # gx: odd in x
    # G = -i·(this spec) in FFT terms, so Φ = k·G / (2πi(…)) = -spec / (2π(…)): real
    denom = -2 * np.pi * (ky**2 + kx**2 + k_hp**2)
    denom[0, 0] = 1.0
    spec /= denom
    spec[0, 0] = 0.0
    phase = scipy.fft.idctn(spec, type=2)
    return phase - phase.mean()


# ------------------------------------------------------------------ iCOM / iDPC


def resolve_rotation(rotation, transpose, cal, com=None, high_pass=None):
    """(rotation_deg, transpose, found): see :func:`icom` for the meaning of the arguments."""
    if rotation is None or (isinstance(rotation, str) and rotation == "calibration"):
        return cal.rotation, cal.transpose if transpose is None else bool(transpose), False
    if isinstance(rotation, str):
        if rotation != "auto":
            raise PtyengineError(f"rotation must be a number (deg), 'calibration' or 'auto', "
                                 f"not {rotation!r}")  # fmt: skip
        tr = (False, True) if transpose is None else (bool(transpose),)
        rot, tr = find_rotation(com[0], com[1], cal.scan_step, transposes=tr, high_pass=high_pass)
        return rot, tr, True
    try:
        rot = float(rotation)
    except (TypeError, ValueError):
        raise PtyengineError(f"rotation must be a number (deg), 'calibration' or 'auto', "
                             f"not {rotation!r}") from None  # fmt: skip
    if not math.isfinite(rot):
        raise PtyengineError(f"rotation must be finite, got {rotation}")
    return rot, cal.transpose if transpose is None else bool(transpose), False


def icom(ds, rotation=None, transpose=None, high_pass=None, device: str = "cpu",
         memory_limit=None) -> IComResult:  # fmt: skip
    """Integrated centre-of-mass phase (rad) of a dataset; one streaming pass.

    rotation: None or "calibration" -> the calibration's rotation and transpose; "auto" ->
    :func:`find_rotation` on the measured field; a number (deg) -> that rotation.
    transpose: None -> the calibration's (with "auto": search both); True/False -> that.
    high_pass: k_hp in 1/Å for :func:`integrate_gradient` (None: its default).
    memory_limit: bytes (or e.g. "2GB") the reading threads may hold (:func:`reader_threads`).
    phase = integrate_gradient(2π⟨k⟩_scan) ≈ σ V_proj blurred by the probe intensity.
    """
    dset = as_dataset(ds)
    try:
        cal = dset.calibration
        com_y, com_x, n_empty = _center_of_mass(dset, device, memory_limit)
    finally:
        if dset is not ds:
            dset.close()
    rot, tr, found = resolve_rotation(rotation, transpose, cal, (com_y, com_x), high_pass)
    sy, sx = to_scan_frame(com_y, com_x, rot, tr)
    phase = integrate_gradient(2 * np.pi * sy, 2 * np.pi * sx, cal.scan_step, high_pass)
    return IComResult(phase, sy, sx, rot, tr, found, cal.scan_step, cal.scan_origin, n_empty)


def idpc(ds, rotation=None, transpose=None, high_pass=None, outer: float = 1.0,
         inner: float = 0.0, device: str = "cpu", memory_limit=None) -> IComResult:  # fmt: skip
    """Integrated DPC from a virtual four-quadrant detector; one streaming pass.

    The quadrants are split along the SCAN-frame x and y axes (turned into the detector
    frame with the rotation/transpose chosen as in :func:`icom`; "auto" costs one more
    pass, for the centre of mass) and span inner·α .. outer·α, α the calibrated
    convergence semi-angle. DPC signals (right - left, bottom - top) / total, "bottom"
    being +y (increasing scan row), are integrated like iCOM after scaling by
    2π · π k_α / 4 (k_α = α/λ): for a uniform bright-field disc shifted rigidly by δ
    (small), DPC = 4δ/(π k_α), so the phase is then in rad. Otherwise (a structured disc, a
    focused probe on atoms) the DPC signal is not linear in ⟨k⟩ and ``phase`` is in
    arbitrary, roughly-radian units; ``com_y, com_x`` hold the raw DPC signals.
    """
    dset = as_dataset(ds)
    try:
        cal = dset.calibration
        com = _center_of_mass(dset, device, memory_limit)[:2] if rotation == "auto" else None
        rot, tr, found = resolve_rotation(rotation, transpose, cal, com, high_pass)
        ky, kx = detector_k(cal)
        k_alpha = cal.semiangle * 1e-3 / cal.wavelength
        k = np.hypot(ky, kx)
        mask = ((k < outer * k_alpha) & (k >= inner * k_alpha)).astype(np.float64)
        if not mask.any():
            raise PtyengineError(f"the virtual DPC detector ({inner:g}..{outer:g} × "
                                 f"{cal.semiangle:g} mrad) covers no detector pixel")
        ks_y, ks_x = to_scan_frame(ky, kx, rot, tr)
        if (bad := detector_mask(dset)) is not None:  # dead and hot pixels left out
            mask = mask * bad
        weights = [mask, mask * np.sign(ks_y), mask * np.sign(ks_x)]
        (dpc_y, dpc_x), n_empty = normalise_moments(_moments(dset, weights, device,
                                                             memory_limit))  # fmt: skip
    finally:
        if dset is not ds:
            dset.close()
    scale = 2 * np.pi * np.pi * k_alpha / 4
    phase = integrate_gradient(scale * dpc_y, scale * dpc_x, cal.scan_step, high_pass)
    return IComResult(phase, dpc_y, dpc_x, rot, tr, found, cal.scan_step, cal.scan_origin,
                      n_empty, method="idpc", units="arb. (rad for a rigid disc shift)")
