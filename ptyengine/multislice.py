"""Multislice propagation of batches of STEM probes through a sliced specimen.

The specimen is a stack of transmission functions t_s = exp(i σ V_s) on a periodic field
grid (the crystal is periodic laterally). A probe is not propagated over the whole field:
each probe position gets a window of W × W pixels cut (with periodic wrap) from every slice,
big enough to hold the probe, its defocus spread and its scattering through the slab
(:func:`window_size`). All positions of a batch go through all slices at once:

    ψ ← ψ · t_s[window]        (transmission)
    ψ ← IFFT[ FFT[ψ] · P ]     (Fresnel propagation to the next slice, band-limited)

and the detector records the far field of the exit wave by the detector rule below.
Everything is written against ``xp`` (numpy or cupy).

Detector rule (``oversampling`` m, default 1). The exit wave ψ of a W-pixel window
(sampling d) has the far field Ψ(k) = Σ_x ψ(x) exp(−2πi k·x), a continuous function of k
(exact for a wave that fits in the window, which :func:`window_size` ensures). A detector
pixel of size dk_det records the intensity density |Ψ(k)|² / (W² dk_w²) (dk_w = 1/(W d),
the window's own Fourier pixel) taken at m × m points evenly spread over the pixel (at its
centre for m = 1), averaged and multiplied by the pixel area. The points are evaluated
exactly by Fourier interpolation of the window's FFT (:func:`interpolation_matrix`), so
the same rule holds whether or not dk_det equals dk_w and the patterns change smoothly with
the detector pixel (when dk_det = dk_w and m = 1 this is the window's FFT grid itself).
The window's width still matters where the far field has sharp edges: the probe of a sharp
aperture has tails that a W-pixel window cuts, and off the window's grid the cut shows at
the disc edge (vacuum, 20 mrad, 64 px: 3.9 % per pattern between 320- and 324-px windows of
0.0488 Å). Hence the window stays the field itself where the field holds the probe
(:func:`window_size`), and equal windows give equal edges. m = 1 is point sampling; a
larger m approaches the integral over the pixel area (what a real detector records; use
it when the pattern has structure finer than a pixel, e.g. a coarse detector under a
large window). Intensity outside the anti-aliasing band limit (2/3 of the window's
Nyquist) is zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import backend, physics
from .kernels import windows as kernels
from .shift import shifted_waves

# FFT-friendly sizes (2^a 3^b 5^c 7^d) are fast in FFTW and cuFFT alike.
_SMOOTH = sorted(
    2**a * 3**b * 5**c * 7**d
    for a in range(14) for b in range(8) for c in range(5) for d in range(4)
    if 2**a * 3**b * 5**c * 7**d <= 8192
)  # fmt: skip


def smooth_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c 7^d ≥ n (and even, so the probe centre is a pixel)."""
    for s in _SMOOTH:
        if s >= n and s % 2 == 0:
            return s
    return n + n % 2


def transmission_functions(potentials, energy: float, sampling, xp=np, dtype=np.complex64):
    """t_s = exp(i σ V_s) band-limited to 2/3 of Nyquist; V in V·Å, shape (n, ny, nx)."""
    sigma = physics.interaction_constant(energy)
    v = xp.asarray(potentials)
    t = xp.exp(1j * sigma * v.astype(np.float64 if dtype == np.complex128 else np.float32))
    t = t.astype(dtype, copy=False)
    mask = physics.antialias_mask(v.shape[-2:], sampling, xp=xp)
    return backend.ifft2(backend.fft2(t) * mask).astype(dtype, copy=False)


#: Relative distance from an integer within which a size is that integer, not the next one
#: up (1/dk = 15.620000000000001 Å on a 15.62 Å field must give the field's pixel count).
SIZE_TOLERANCE = 1e-9


def ceil_size(x: float) -> int:
    """ceil(x), except that x within a relative SIZE_TOLERANCE of an integer gives it."""
    nearest = round(x)
    if abs(x - nearest) <= SIZE_TOLERANCE * max(abs(x), 1.0):
        return int(nearest)
    return math.ceil(x)


def window_size(
    sampling, energy, semiangle, defocus, thickness, max_angle, detector_fov=0.0, margin=2.0,
    field_pixels=None,
) -> int:
    """Window width W (pixels) for one probe position.

    The beam envelope reaches a radius max(|C10|, |C10 + t|)·α inside the slab (geometric
    cone through a crossover at z = -C10), scattering to the detector's largest angle
    spreads it by t·θ_max more, and ``margin`` Å holds the probe's tails. The window is
    also at least the real-space field of view of the detector (``detector_fov`` Å =
    1/dk_det), so its Fourier pixels are no coarser than the detector's, except that it
    never exceeds a periodic field (``field_pixels`` (ny, nx)) that holds the probe: the
    field's exit wave then holds the whole wave, the detector rule (module docstring)
    interpolates it exactly at any detector pixel, and a wider window would only repeat
    the field. Pixel counts within a relative 1e-9 of an integer are rounded to it
    (:func:`ceil_size`), then made FFT-friendly (:func:`smooth_size`).
    """
    alpha, theta = semiangle * 1e-3, max_angle * 1e-3
    radius = max(abs(defocus), abs(defocus + thickness)) * alpha + thickness * theta + margin
    d = min(sampling)
    probe = ceil_size(2 * radius / d)
    width = smooth_size(max(probe, ceil_size(detector_fov / d)))
    if field_pixels is not None and probe <= min(field_pixels):
        width = min(width, min(int(n) for n in field_pixels))
    return width


def detector_points(n_det: int, d_det: float, oversampling: int = 1) -> np.ndarray:
    """Spatial frequencies (1/Å) of the m points per pixel along one detector axis.

    Pixel j is centred at (j − n_det//2)·d_det; its m points sit at the centres of m equal
    sub-intervals. Returns (n_det·m,) float64, the m points of pixel 0 first.
    """
    centres = (np.arange(n_det) - n_det // 2) * d_det
    offsets = ((np.arange(oversampling) + 0.5) / oversampling - 0.5) * d_det
    return (centres[:, None] + offsets[None, :]).ravel()


def interpolation_matrix(width: int, sampling: float, k, xp=np, dtype=np.complex64):
    """(len(k), W) matrix E with (E @ fft(ψ))[j] = Σ_x ψ[x] exp(−2πi k_j x d).

    The far field of a W-pixel wave (x = 0..W−1, sampling d Å) at arbitrary frequencies
    k (1/Å), from its FFT: exact Fourier (Dirichlet) interpolation. At k_j = m/(W d) the
    row is the unit vector of FFT bin m.
    """
    k = np.asarray(k, dtype=np.float64)
    phase = np.outer(k * sampling, np.arange(width))
    phase -= np.floor(phase)  # k·x modulo 1, in float64
    direct = np.exp(-2j * np.pi * phase)  # (n, W): ψ -> Ψ(k)
    # E = direct @ IDFT (IDFT[x, m] = exp(2πi m x / W) / W): one inverse FFT along each row
    return xp.asarray(np.fft.ifft(direct, axis=1), dtype=dtype)


def propagate(psi, n_slices: int, transmit, propagators):
    """The multislice loop, in place on a batch of waves ``psi`` (B, ny, nx): for each
    slice s, ``transmit(s)`` multiplies ψ by slice s's transmission function, then (except
    after the last slice) ψ ← IFFT[FFT[ψ] · propagators[s]]. The one propagation code of
    the STEM simulator (:meth:`ProbeWindow.exit_waves`) and the plane-wave (TEM) mode
    (:mod:`ptyengine.planewave`, whose propagators carry the crystal tilt)."""
    for s in range(n_slices):
        transmit(s)
        if s < n_slices - 1:
            backend.fft2(psi, out=psi)
            kernels.broadcast_multiply(psi, propagators[s])
            backend.ifft2(psi, out=psi)
    return psi


@dataclass
class PaddedSlices:
    """Transmission functions (n_slices, ny + W, nx + W) of a periodic field of shape
    ``field_shape``, extended periodically so a W-wide window never wraps."""

    padded: object
    field_shape: tuple[int, int]


@dataclass
class ProbeWindow:
    """Everything fixed for one (probe, window, detector) geometry, built once per run."""

    probe_k: object  # (W, W) Fourier-space probe centred at (W//2, W//2), Σ|ψ|² = 1
    propagators: object  # (n_slices, W, W) Fresnel propagators (band-limited)
    mask: object  # (W_y', W_x') anti-aliasing aperture (0/1) on the band-limited rows/cols
    interp_y: object  # (n_det_y·m, W_y') detector points from those FFT rows (scaled)
    interp_x: object  # (n_det_x·m, W_x')
    sampling: tuple[float, float]
    width: int
    detector_mask: object = None  # (n_det_y·m, n_det_x·m): 0 beyond the band limit, else 1
    oversampling: int = 1
    rows: object = None  # FFT rows (W_y',) inside the band limit (None: all W)
    cols: object = None  # FFT columns (W_x',)

    @classmethod
    def build(cls, width, sampling, energy, semiangle, aberrations, slice_thicknesses,
              detector_shape, dk, xp=np, dtype=np.complex64, oversampling: int = 1):  # fmt: skip
        """Probe, propagators and detector rule (module docstring) for a W-pixel window.

        ``detector_shape`` (n_y, n_x) pixels of ``dk`` (dk_y, dk_x) 1/Å, centred at
        (n_y//2, n_x//2); ``oversampling`` m ≥ 1 points per pixel and axis.
        """
        gpts = (width, width)
        m = int(oversampling)
        if m < 1:
            raise ValueError(f"detector oversampling must be >= 1, got {oversampling}")
        probe_k = physics.probe(gpts, sampling, energy, semiangle, aberrations, xp=xp,
                                dtype=dtype, fourier=True)  # fmt: skip
        props = xp.stack([physics.fresnel_propagator(gpts, sampling, energy, dz, xp, dtype)
                          for dz in slice_thicknesses])  # fmt: skip
        real = np.float64 if dtype == np.complex128 else np.float32
        k_lim = physics.band_limit(sampling)
        # only FFT rows / columns inside the band limit carry anything after the mask
        keep = [np.nonzero(np.abs(np.fft.fftfreq(width, d)) < k_lim)[0] for d in sampling]
        mask = physics.antialias_mask(gpts, sampling).astype(real)[np.ix_(*keep)]
        points = [detector_points(n, d, m) for n, d in zip(detector_shape, dk, strict=True)]
        interp = []
        for k, d, d_det, idx in zip(points, sampling, dk, keep, strict=True):
            # density × pixel area / m points, per axis |Ψ|²·(dk_det/dk_w)/(W m) = |Ψ|²·dk_det d/m
            scale = math.sqrt(d_det * d / m)
            full = interpolation_matrix(width, d, k, np, np.complex128) * scale
            interp.append(xp.asarray(full[:, idx], dtype=dtype))
        inside = points[0][:, None] ** 2 + points[1][None, :] ** 2 < k_lim**2
        return cls(probe_k, props, xp.asarray(mask), interp[0], interp[1], tuple(sampling),
                   width, xp.asarray(inside, dtype=real), m, xp.asarray(keep[0]),
                   xp.asarray(keep[1]))  # fmt: skip

    def probes_at(self, positions, xp=np):
        """Probe windows for positions (B, 2) in Å of the field; returns (ψ, corner pixels).

        The window's corner is the integer pixel floor(p/d) - W//2; the sub-pixel remainder
        is applied exactly as a Fourier phase ramp on the probe.
        """
        w = self.width
        pos_px = np.asarray(positions, dtype=np.float64) / np.asarray(self.sampling)
        corner = np.floor(pos_px).astype(np.int64)
        return shifted_waves(self.probe_k, pos_px - corner, xp), corner - w // 2

    def prepare(self, transmissions, xp=np) -> PaddedSlices:
        """The slices of one configuration, periodically extended by the window width so
        that every window is a plain sub-array (no wrap-around inside the hot loop)."""
        if isinstance(transmissions, PaddedSlices):
            return transmissions
        w = self.width
        _, ny, nx = transmissions.shape
        reps = (1, -(-(ny + w) // ny), -(-(nx + w) // nx))
        padded = xp.tile(transmissions, reps)[:, :ny + w, :nx + w]
        return PaddedSlices(xp.ascontiguousarray(padded), (ny, nx))

    def exit_waves(self, transmissions, positions, xp=np):
        """Exit waves (B, W, W) in real space and their window corners (B, 2) in pixels.

        ``transmissions`` is the (n_slices, ny, nx) stack of one frozen-phonon configuration
        (or its :meth:`prepare`-d form); windows wrap round the periodic field.
        """
        slab = self.prepare(transmissions, xp)
        ny, nx = slab.field_shape
        n_slices = slab.padded.shape[0]
        psi, corner = self.probes_at(positions, xp)
        wrapped = xp.asarray(corner % np.array([ny, nx]))
        propagate(psi, n_slices, lambda s: kernels.window_multiply(psi, slab.padded[s], wrapped),
                  self.propagators)  # fmt: skip
        return psi, corner

    def diffraction(self, transmissions, positions, xp=np):
        """Detector intensities (B, n_det_y, n_det_x) for probes at ``positions`` (Å).

        Intensities are normalised so that a pattern sums to the fraction of electrons
        that reach the detector (1 for a probe that is not scattered out of it). On the
        CPU the batch is split over the cores (backend.split_map).
        """
        positions = np.asarray(positions, dtype=np.float64)
        transmissions = self.prepare(transmissions, xp)
        parts = backend.split_map(
            lambda part: self._diffraction(transmissions, positions[part], xp), len(positions), xp)
        return parts[0] if len(parts) == 1 else xp.concatenate(parts)

    def _diffraction(self, transmissions, positions, xp):
        m = self.oversampling
        psi, _ = self.exit_waves(transmissions, positions, xp)
        backend.fft2(psi, out=psi)
        if self.rows is not None:  # the band-limited block of the far field (a copy)
            psi = psi[:, self.rows[:, None], self.cols[None, :]]
        psi *= self.mask
        b, wy, wx = psi.shape
        ny, nx = self.interp_y.shape[0], self.interp_x.shape[0]
        far = (psi.reshape(b * wy, wx) @ self.interp_x.T).reshape(b, wy, nx)
        far = self.interp_y @ far  # (B, n_y·m, n_x·m): Ψ at the detector points
        intensity = far.real**2 + far.imag**2
        if self.detector_mask is not None:
            intensity *= self.detector_mask
        if m > 1:
            intensity = intensity.reshape(b, ny // m, m, nx // m, m).sum(axis=(2, 4))
        return intensity
