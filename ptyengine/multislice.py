"""Multislice propagation of batches of STEM probes through a sliced specimen.

The specimen is a stack of transmission functions t_s = exp(i σ V_s) on a periodic field
grid (the crystal is periodic laterally). A probe is not propagated over the whole field:
each probe position gets a window of W × W pixels cut (with periodic wrap) from every slice,
big enough to hold the probe, its defocus spread and its scattering through the slab
(:func:`window_size`). All positions of a batch go through all slices at once:

    ψ ← ψ · t_s[window]        (transmission)
    ψ ← IFFT[ FFT[ψ] · P ]     (Fresnel propagation to the next slice, band-limited)

and the diffraction intensity is |FFT[ψ_exit]|² inside the anti-aliasing aperture, binned
onto the detector grid by exact pixel-area overlap (:func:`rebin_matrix`), which conserves
the number of electrons. Everything is written against ``xp`` (numpy or cupy).
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


def window_size(
    sampling, energy, semiangle, defocus, thickness, max_angle, detector_fov=0.0, margin=2.0
) -> int:
    """Window width W (pixels) for one probe position.

    The beam envelope reaches a radius max(|C10|, |C10 + t|)·α inside the slab (geometric
    cone through a crossover at z = -C10), scattering to the detector's largest angle
    spreads it by t·θ_max more, and ``margin`` Å holds the probe's tails. The window is
    also at least the real-space field of view of the detector (``detector_fov`` Å =
    1/dk_det), so its Fourier pixels are no coarser than the detector's.
    """
    alpha, theta = semiangle * 1e-3, max_angle * 1e-3
    radius = max(abs(defocus), abs(defocus + thickness)) * alpha + thickness * theta + margin
    width = max(2 * radius, detector_fov)
    return smooth_size(math.ceil(width / min(sampling)))


def rebin_matrix(n_src: int, d_src: float, n_det: int, d_det: float, xp=np, dtype=np.float32):
    """(n_det, n_src) overlap matrix from FFT-ordered bins onto a centred detector axis.

    Source bin i covers [f_i - d_src/2, f_i + d_src/2) with f_i = fftfreq(n_src, ·)[i];
    detector pixel j covers [(j - n_det//2 - 1/2) d_det, (j - n_det//2 + 1/2) d_det).
    Entry (j, i) is the fraction of bin i that falls in pixel j, so intensity is conserved
    for every bin inside the detector.
    """
    f = np.fft.fftfreq(n_src) * n_src * d_src
    lo, hi = f - d_src / 2, f + d_src / 2
    c = (np.arange(n_det) - n_det // 2) * d_det
    dlo, dhi = c - d_det / 2, c + d_det / 2
    overlap = np.clip(np.minimum(hi[None, :], dhi[:, None]) - np.maximum(lo[None, :], dlo[:, None]),
                      0, None)  # fmt: skip
    return xp.asarray(overlap / d_src, dtype=dtype)


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
    mask: object  # (W, W) anti-aliasing aperture (0/1, real) applied to the intensity
    rebin_y: object  # (n_det_y, W)
    rebin_x: object  # (n_det_x, W)
    sampling: tuple[float, float]
    width: int

    @classmethod
    def build(cls, width, sampling, energy, semiangle, aberrations, slice_thicknesses,
              detector_shape, dk, xp=np, dtype=np.complex64):  # fmt: skip
        gpts = (width, width)
        probe_k = physics.probe(gpts, sampling, energy, semiangle, aberrations, xp=xp,
                                dtype=dtype, fourier=True)  # fmt: skip
        props = xp.stack([physics.fresnel_propagator(gpts, sampling, energy, dz, xp, dtype)
                          for dz in slice_thicknesses])  # fmt: skip
        real = np.float64 if dtype == np.complex128 else np.float32
        mask = physics.antialias_mask(gpts, sampling, xp=xp).astype(real)
        ry = rebin_matrix(width, 1 / (width * sampling[0]), detector_shape[0], dk[0], xp, real)
        rx = rebin_matrix(width, 1 / (width * sampling[1]), detector_shape[1], dk[1], xp, real)
        return cls(probe_k, props, mask, ry, rx, tuple(sampling), width)

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
        for s in range(n_slices):
            kernels.window_multiply(psi, slab.padded[s], wrapped)
            if s < n_slices - 1:
                backend.fft2(psi, out=psi)
                kernels.broadcast_multiply(psi, self.propagators[s])
                backend.ifft2(psi, out=psi)
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
        w = self.width
        psi, _ = self.exit_waves(transmissions, positions, xp)
        backend.fft2(psi, out=psi)
        intensity = xp.empty(psi.shape, dtype=self.mask.dtype)
        kernels.masked_intensity(psi, self.mask, 1.0 / (w * w), intensity)
        return self.rebin_y @ intensity @ self.rebin_x.T
