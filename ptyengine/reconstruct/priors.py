"""Priors on the object for the ML engine.

Gaussian: R(u) = ½ μ_s Σ_pixels |∇u|² + ½ μ_r A_px Σ_pixels u² (smoothness μ_s,
dimensionless; ridge μ_r in 1/Å², A_px the pixel area in Å²) has the spectrum Λ(k) of
:func:`prior_spectrum` (the discrete −Laplacian's eigenvalues, periodic on the grid);
:func:`band_mask` is the band limit |k| ≤ k_max applied to the search directions.

Total variation (pseudo-Huber, :func:`total_variation`):

    R_tv(u) = μ_tv Σ_pixels δ² (√(1 + |∇u|²/δ²) − 1)

with ∇ the periodic forward differences (rad per pixel) and δ = δ_Å · √(d_y d_x) (δ_Å in
rad/Å, ``tv_scale``; d the pixel size in Å). Below δ it is the smoothness ½ μ_tv |∇u|²;
above it grows as μ_tv δ |∇u|, so steps in the phase (an atom's edge against an empty
pore) cost far less than under the Gaussian prior of the same small-gradient strength:
a projected potential (sparse peaks on a flat floor) keeps its peaks while the noise
between them is flattened. Both limits are the same in Å at every pixel size. Its
gradient is μ_tv ∇ᵀ(w ∇u) with w = 1/√(1 + |∇u|²/δ²), and μ_tv Σ w |∇d|² bounds its
curvature along d from above (:func:`tv_curvature`; the Newton step uses the bound).
"""

from __future__ import annotations

import numpy as np

#: (μ_s, μ_r in 1/Å²) from FULL_PRIOR_DOSE e/Å² up (and for noise-free data)
FULL_PRIOR = (3.0, 8.0)
#: e/Å²: below it the strengths fall in proportion to the dose, which keeps the prior's weight
#: against the likelihood at its weight there (measured on the UiO-66 quick study at
#: 20 e/Å², benchmarks/RESULTS.md; at 100 e/Å² weaker strengths peaked early)
FULL_PRIOR_DOSE = 100.0
#: δ_Å (rad/Å), the phase gradient where the total variation turns from quadratic to linear
TV_SCALE = 0.15


def prior_strengths(dose: float, smoothness=None, ridge=None) -> tuple[float, float]:
    """(μ_s, μ_r): the given ones, or for ``None`` FULL_PRIOR × min(1, dose /
    FULL_PRIOR_DOSE), ``dose`` in e/Å² (the calibration's, else counts per pattern /
    scan-step area)."""
    f = min(1.0, max(dose, 0.0) / FULL_PRIOR_DOSE)
    return (FULL_PRIOR[0] * f if smoothness is None else float(smoothness),
            FULL_PRIOR[1] * f if ridge is None else float(ridge))


def _grad(u, xp):
    """Periodic forward differences of u along its last two axes (rad per pixel)."""
    return xp.roll(u, -1, -2) - u, xp.roll(u, -1, -1) - u


def _grad_adjoint(gy, gx, xp):
    """∇ᵀ of :func:`_grad`."""
    return (xp.roll(gy, 1, -2) - gy) + (xp.roll(gx, 1, -1) - gx)


def tv_delta(sampling, scale: float) -> float:
    """δ in rad per pixel for ``scale`` δ_Å (rad/Å) on pixels of ``sampling`` (Å)."""
    return float(scale) * float(np.sqrt(sampling[0] * sampling[1]))


def _tv_parts(u, delta: float, xp):
    """(∇_y u, ∇_x u, √(1 + |∇u|²/δ²), w = its inverse in float32) of
    :func:`total_variation`."""
    gy, gx = _grad(u, xp)
    root = xp.sqrt(1 + (gy * gy + gx * gx) / np.float32(delta * delta))
    return gy, gx, root, (1 / root).astype(np.float32)


def tv_weights(u, delta: float, xp):
    """w of :func:`total_variation` alone (what :func:`tv_curvature` takes)."""
    return _tv_parts(u, delta, xp)[3]


def total_variation(u, strength: float, delta: float, xp):
    """(R_tv(u), ∂R_tv/∂u, w) of the module docstring (``delta`` in rad per pixel; u of
    shape (..., Ny, Nx), every leading index (slice) alike); w the weights the curvature
    bound :func:`tv_curvature` takes."""
    gy, gx, root, w = _tv_parts(u, delta, xp)
    value = strength * delta * delta * float(xp.sum(root - 1))
    g = (np.float32(strength) * _grad_adjoint(w * gy, w * gx, xp)).astype(np.float32)
    return value, g, w


def tv_curvature(d, w, strength: float, xp) -> float:
    """μ_tv Σ w |∇d|²: an upper bound of R_tv's curvature along d at the u that gave w."""
    gy, gx = _grad(d, xp)
    return strength * float(xp.sum(w * (gy * gy + gx * gx)))


def prior_spectrum(shape, sampling, smoothness: float, ridge: float, xp):
    """Λ(k) of R (FFT order): μ_s λ_∇(k) + μ_r A_px, with
    λ_∇ = 4 sin²(π k_y d_y) + 4 sin²(π k_x d_x)
    the eigenvalues of the periodic discrete −Laplacian."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.fftfreq(shape[1])[None, :]
    lap = 4 * np.sin(np.pi * fy) ** 2 + 4 * np.sin(np.pi * fx) ** 2
    return xp.asarray(smoothness * lap + ridge * sampling[0] * sampling[1], dtype=np.float32)


def band_mask(shape, sampling, k_max: float, xp):
    ky = np.fft.fftfreq(shape[0], sampling[0])[:, None]
    kx = np.fft.fftfreq(shape[1], sampling[1])[None, :]
    return xp.asarray(np.hypot(ky, kx) <= k_max, dtype=np.float32)
