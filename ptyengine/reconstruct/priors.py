"""Gaussian priors on the object for the ML engine, in Fourier space on the object grid.

R(u) = ½ μ_s Σ_pixels |∇u|² + ½ μ_r A_px Σ_pixels u² (smoothness μ_s, dimensionless;
ridge μ_r in 1/Å², A_px the pixel area in Å²) has the spectrum Λ(k) of
:func:`prior_spectrum` (the discrete −Laplacian's eigenvalues, periodic on the grid);
:func:`band_mask` is the band limit |k| ≤ k_max applied to the search directions.
"""

from __future__ import annotations

import numpy as np

#: (μ_s, μ_r in 1/Å²) from FULL_PRIOR_DOSE e/Å² up (and for noise-free data)
FULL_PRIOR = (3.0, 8.0)
#: e/Å²: below it the strengths fall in proportion to the dose, which keeps the prior's weight
#: against the likelihood at its weight there (measured on the UiO-66 quick study at
#: 20 e/Å², benchmarks/RESULTS.md; at 100 e/Å² weaker strengths peaked early)
FULL_PRIOR_DOSE = 100.0


def prior_strengths(dose: float, smoothness=None, ridge=None) -> tuple[float, float]:
    """(μ_s, μ_r): the given ones, or for ``None`` FULL_PRIOR × min(1, dose /
    FULL_PRIOR_DOSE), ``dose`` in e/Å² (the calibration's, else counts per pattern /
    scan-step area)."""
    f = min(1.0, max(dose, 0.0) / FULL_PRIOR_DOSE)
    return (FULL_PRIOR[0] * f if smoothness is None else float(smoothness),
            FULL_PRIOR[1] * f if ridge is None else float(ridge))


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
