"""Drift correction of a dose-fractionated HRTEM stack with the amplitude filter.

Units: shifts and trajectories in pixels (dy, dx); frame i's content is moved by +d_i
relative to the specimen (so aligning shifts frame i by −d_i); spatial frequencies in
cycles/pixel.

Amplitude filter (the low-dose HRTEM technique of issue 18): a drifting crystal moves each
frame's lattice fringes, which changes only the *phases* of its Fourier transform; the
lattice reflections stay at the same pixels. So

1. F_i = FFT[(frame_i − mean)·w] (w a Tukey edge taper against the frame edge's streaks),
   A = Σ_i |F_i| (the sum of the amplitudes: at a reflection the signal adds up ∝ N, while
   the background's scatter about its mean grows only ∝ √N);
2. background B(|k|) = median of A on rings one Fourier pixel wide; its scatter
   σ = B·√(4/π − 1)/√N, that of a sum of N Rayleigh-distributed amplitudes (the modulus
   of random-phase noise) of mean B/N — from the statistics rather than from the ring's
   MAD, which the lattice's own leakage inflates on the short rings of small frames;
   keep the pixels with A − B > k·σ
   (``threshold`` = k, default 4: ~2 noise pixels of a 256² frame pass by chance) and
   |k| ≥ 2 pixels; a stack where no more pixels pass than pure noise would
   (n·Q(k) + 5√(n·Q(k)) + 3, :func:`chance_pixels`) is refused as showing no lattice;
3. filtered frame i = IFFT[mask · A/N · exp(i arg F_i)]: the strong, shared amplitudes with
   the frame's own phases, i.e. the lattice of that frame at its position, almost free of
   the shot noise of the 99 % of Fourier pixels that carry none.

Trajectory (:func:`estimate_drift`): cross-correlation of each filtered frame with a
reference, evaluated as a DFT of the cross-power spectrum on the search window only (the
filter leaves a few dozen Fourier pixels, so no FFT is needed): integer steps, then steps of
1/20 px around the best, then a 3-point parabola (the upsampled-DFT idea of Guizar-Sicairos,
Thurman & Fienup, Opt. Lett. 33 (2008) 156). A first pass goes through the frames in order
against the running sum of those already aligned, predicting each frame at its predecessor's
shift and searching only ±``max_step`` pixels around it (a lattice correlates with itself at
every lattice vector: an unrestricted search may hop by one); ``iterations`` further passes
register every frame against the sum of all the others (leave-one-out, so a frame's own
noise does not pull the reference to it), again around its last estimate. Shifts are
reported relative to the mean over the stack (the absolute position is arbitrary).
``smooth`` fits a polynomial of ``degree`` in the frame index to each coordinate, robustly
(Tukey bisquare, iteratively reweighted), and replaces the measured shifts by it.

:func:`align` runs this on the filtered frames and, for comparison, the same procedure on
the raw frames (no filter: all Fourier pixels of the tapered frames), shifts the ORIGINAL
frames by −d_i (Fourier shift: periodic, so up to max|d| pixels at each edge wrap round)
and sums them.

Measured (benchmarks/RESULTS.md, "HRTEM"): UiO-66 [110], 120 frames of 256² at 0.033
e/pixel: 0.13–0.23 px rms with the smooth fit, 0.71–1.01 px frame by frame (each frame's
~2200 electrons), raw cross-correlation 10–20 px.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import PtyengineError
from ..metrics import shift_image, taper_window

#: Relative scatter std/mean of a Rayleigh-distributed amplitude, √(4/π − 1).
RAYLEIGH = math.sqrt(4 / math.pi - 1)


@dataclass
class FilterResult:
    """The amplitude filter: filtered frames (N, ny, nx) float32, the mask (ny, nx) bool
    (FFT order), the summed amplitude A and its ring background B (both (ny, nx))."""

    frames: np.ndarray
    mask: np.ndarray
    amplitude: np.ndarray
    background: np.ndarray
    spectra: np.ndarray  # (N, ny, nx) complex: mask · A/N · exp(i arg F_i)


def ring_index(shape) -> np.ndarray:
    """Integer ring number round(|k| in Fourier pixels) on the FFT grid of ``shape``."""
    ny, nx = shape
    fy = np.fft.fftfreq(ny)[:, None] * max(ny, nx)
    fx = np.fft.fftfreq(nx)[None, :] * max(ny, nx)
    return np.rint(np.hypot(fy, fx)).astype(int)


def ring_background(amplitude) -> np.ndarray:
    """Median of ``amplitude`` on each ring of :func:`ring_index`, mapped back onto the
    grid."""
    rings = ring_index(amplitude.shape)
    flat, a = rings.ravel(), amplitude.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(flat.max() + 2))
    med = np.zeros(flat.max() + 1)
    for r in range(flat.max() + 1):
        vals = a[order[bounds[r]:bounds[r + 1]]]
        if len(vals):
            med[r] = np.median(vals)
    return med[rings]


def chance_pixels(n_pixels: int, threshold: float) -> float:
    """Fourier pixels of pure noise expected above ``threshold`` σ: n·Q(threshold), Q the
    Gaussian tail (the sum of N Rayleigh amplitudes is near-Gaussian for N ≳ 10)."""
    return n_pixels * 0.5 * math.erfc(threshold / math.sqrt(2))


def amplitude_filter(frames, threshold: float = 4.0, min_radius: int = 2,
                     window: str | None = "tukey") -> FilterResult:
    """The amplitude filter (module docstring) of ``frames`` (N, ny, nx)."""
    frames = np.asarray(frames, dtype=np.float64)
    if not (math.isfinite(threshold) and threshold > 0):
        raise PtyengineError(f"threshold must be a positive number of σ, got {threshold}")
    spectra = spectra_of(frames, window)
    amp = np.abs(spectra).sum(axis=0)
    bg = ring_background(amp)
    sig = bg * RAYLEIGH / math.sqrt(len(frames))
    mask = (amp - bg > threshold * np.maximum(sig, 1e-30)) & (ring_index(amp.shape)
                                                              >= min_radius)
    kept = int(mask.sum())
    chance = chance_pixels(int(np.sum(ring_index(amp.shape) >= min_radius)), threshold)
    if kept <= chance + 5 * math.sqrt(chance) + 3:
        raise PtyengineError(
            f"the amplitude filter kept {kept} Fourier pixels at {threshold:g} σ above the ring "
            f"background, no more than pure noise would (~{chance:.1f}): the stack shows no "
            "lattice reflections (lower --threshold, or use more frames)")
    combined = np.exp(1j * np.angle(spectra)) * (mask * amp / len(frames))
    filtered = np.fft.ifft2(combined).real.astype(np.float32)
    return FilterResult(filtered, mask, amp, bg, combined)


def _relative(shifts) -> np.ndarray:
    return shifts - shifts.mean(axis=0)


def _peak(cross, fy, fx, centre, half: float, step: float):
    """Shift d (px) near ``centre`` maximising Re Σ_k cross(k) exp(2πi k·d): a matrix DFT
    on the grid centre ± half in steps ``step`` (only the rows/columns of k that hold
    signal), then a 3-point parabola per axis."""
    m = int(round(half / step))
    offs = np.arange(-m, m + 1) * step
    ey = np.exp(2j * np.pi * np.outer(centre[0] + offs, fy))
    ex = np.exp(2j * np.pi * np.outer(fx, centre[1] + offs))
    cc = (ey @ cross @ ex).real
    jy, jx = np.unravel_index(np.argmax(cc), cc.shape)
    out = np.array([centre[0] + offs[jy], centre[1] + offs[jx]])
    for axis, (line, j) in enumerate(((cc[:, jx], jy), (cc[jy, :], jx))):
        if 0 < j < len(line) - 1:
            a, b, c = line[j - 1:j + 2]
            if a - 2 * b + c < 0:
                out[axis] += step * float(np.clip(0.5 * (a - c) / (a - 2 * b + c), -0.5, 0.5))
    return out


def spectra_of(frames, window: str | None = "tukey") -> np.ndarray:
    """FFT[(frame − mean)·taper] of each frame (N, ny, nx) complex128."""
    frames = np.asarray(frames, dtype=np.float64)
    w = taper_window(frames.shape[1:], window)
    return np.fft.fft2((frames - frames.mean(axis=(1, 2), keepdims=True)) * w)


def estimate_drift(spectra, iterations: int = 3, max_step: float = 3.0,
                   upsample: int = 20) -> np.ndarray:
    """Drift (N, 2) pixels from the frames' ``spectra`` (N, ny, nx) (:func:`spectra_of`, or
    :attr:`FilterResult.spectra`) by cross-correlation (module docstring): a sequential
    pass against the running sum, then ``iterations`` leave-one-out passes, each search
    ±``max_step`` px around the prediction, at 1/``upsample`` px (plus a parabola). The
    correlation is evaluated directly as a DFT of the cross-power spectrum over the search
    window (no FFT), restricted to the Fourier rows/columns that carry signal (the filter
    keeps a few dozen pixels). Mean-free."""
    spectra = np.asarray(spectra)
    n, shape = len(spectra), spectra.shape[1:]
    used = np.abs(spectra).sum(axis=0) > 0
    rows, cols = np.flatnonzero(used.any(axis=1)), np.flatnonzero(used.any(axis=0))
    sub = spectra[:, rows][:, :, cols]
    fy, fx = np.fft.fftfreq(shape[0])[rows], np.fft.fftfreq(shape[1])[cols]
    ramp_y = lambda d: np.exp(2j * np.pi * fy * d)  # noqa: E731
    ramp_x = lambda d: np.exp(2j * np.pi * fx * d)  # noqa: E731

    def aligned(i, d):
        return sub[i] * ramp_y(d[0])[:, None] * ramp_x(d[1])[None, :]

    def measure(ref, i, guess):
        cross = np.conj(ref) * sub[i]
        coarse = _peak(cross, fy, fx, guess, max_step, 1.0)
        fine = _peak(cross, fy, fx, np.round(coarse), 1.0, 1.0 / upsample)
        return fine

    d = np.zeros((n, 2))
    running = sub[0].copy()
    for i in range(1, n):
        d[i] = measure(running, i, d[i - 1])
        running += aligned(i, d[i])
    for _ in range(iterations):
        al = np.array([aligned(i, d[i]) for i in range(n)])
        total = al.sum(axis=0)
        d = _relative(np.array([measure(total - al[i], i, d[i]) for i in range(n)]))
    return _relative(d)


def smooth_trajectory(shifts, degree: int = 3, iterations: int = 10) -> np.ndarray:
    """Robust polynomial fit (degree ``degree`` in the frame index; Tukey bisquare weights
    with c = 4.685 × the residuals' MAD-σ, ``iterations`` reweightings) of each coordinate
    of ``shifts`` (N, 2); returns the fitted (N, 2)."""
    shifts = np.asarray(shifts, dtype=np.float64)
    n = len(shifts)
    deg = min(degree, n - 1)
    t = np.linspace(-1, 1, n)
    basis = np.vander(t, deg + 1)
    out = np.empty_like(shifts)
    for axis in range(2):
        y, wts = shifts[:, axis], np.ones(n)
        for _ in range(iterations):
            coef = np.linalg.lstsq(basis * wts[:, None], y * wts, rcond=None)[0]
            r = y - basis @ coef
            s = 1.4826 * np.median(np.abs(r - np.median(r)))
            if s == 0:
                break
            u = r / (4.685 * s)
            wts = np.sqrt(np.clip(1 - u * u, 0, None) ** 2)
        out[:, axis] = basis @ coef
    return out


def apply_drift(frames, shifts) -> np.ndarray:
    """Σ_i frame_i shifted by −shifts[i] (Fourier shift, periodic), float64 (ny, nx)."""
    total = np.zeros(np.shape(frames)[1:])
    for f, s in zip(frames, shifts, strict=True):
        total += shift_image(np.asarray(f, dtype=np.float64), -np.asarray(s))
    return total


def rms_error(shifts, truth) -> float:
    """rms (px) of the 2-D difference of two trajectories after removing their mean
    offset (the absolute position is arbitrary)."""
    e = _relative(np.asarray(shifts, float)) - _relative(np.asarray(truth, float))
    return float(np.sqrt(np.mean(np.sum(e * e, axis=1))))


@dataclass
class AlignResult:
    """:func:`align`: the aligned sum (ny, nx), the trajectory used (N, 2) px, the measured
    one before smoothing, the raw cross-correlation's trajectory (None unless compared),
    the filter mask, and the number of Fourier pixels it kept."""

    total: np.ndarray
    shifts: np.ndarray
    measured: np.ndarray
    raw_shifts: np.ndarray | None
    mask: np.ndarray
    kept: int


def align(frames, threshold: float = 4.0, smooth: bool = False, degree: int = 3,
          iterations: int = 3, max_step: float = 3.0, compare_raw: bool = True,
          log=None) -> AlignResult:
    """Amplitude-filter drift correction of ``frames`` (N, ny, nx): filter, trajectory,
    optional smooth fit, shift and sum of the original frames; with ``compare_raw`` also
    the same trajectory estimate on the unfiltered frames (windowed correlation)."""
    log = log or (lambda msg: None)
    frames = np.asarray(frames, dtype=np.float64)
    filt = amplitude_filter(frames, threshold)
    kept = int(filt.mask.sum())
    log(f"amplitude filter: {kept} Fourier pixels above {threshold:g} σ of the ring "
        "background")
    measured = estimate_drift(filt.spectra, iterations, max_step)
    shifts = smooth_trajectory(measured, degree) if smooth else measured
    raw = None
    if compare_raw:
        log("raw cross-correlation for comparison")
        raw = estimate_drift(spectra_of(frames), iterations, max_step)
    return AlignResult(apply_drift(frames, shifts), shifts, measured, raw, filt.mask, kept)
