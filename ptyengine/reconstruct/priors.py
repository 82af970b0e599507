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

Empirical (:func:`empirical_spectrum`): a Gaussian prior whose spectrum is estimated from
the data themselves, through a pilot reconstruction φ₁ made with the Gaussian prior above
(the two-stage "empirical Wiener" idea of Ghael, Sayeed & Baraniuk, Proc. SPIE 3169, 389
(1997): a pilot estimate designs the Wiener filter of a second pass). With
S₁(k) = |F[φ₁ − mean]|² and ν(|k|) its median over the ring |k| (the pilot's noise, where
the specimen's power is concentrated in few Fourier coefficients, as a crystal's Bragg
peaks),

    Ŝ(k) = max(S₁(k) − ν(|k|), 0) + f ν(|k|),      Λ(k) = c N / Ŝ(k)

(N the object's pixels; R(u) = ½ Σ_pixels u (Λ * u) as for the Gaussian prior, so Λ = N/S
is the prior of a Gaussian field with mean power S(k) per Fourier coefficient). The prior
is weak where the pilot found power above its noise (a crystal's reflections) and strong
elsewhere. f (``floor``) keeps a weak prior's share of every ring; c (``scale``) < 1
widens it, because the pilot is itself shrunk by its prior. Unlike the Gaussian prior it
does not scale with the dose: against the likelihood, which grows with the counts, it
fades at high dose as a Bayesian prior should. What it costs: features that are not in the
pilot's strong Fourier coefficients (a crystal's defects, its non-periodic surroundings)
are shrunk harder than by the Gaussian prior.
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
#: the empirical prior's c and f, and its rings' width in units of the object's
#: Fourier-pixel (1 / the larger field side): benchmarks/RESULTS.md, "ML, eighth part"
EMPIRICAL_SCALE = 0.3
EMPIRICAL_FLOOR = 0.1
EMPIRICAL_RING = 2.0


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


def ring_median(power: np.ndarray, sampling, width: float = EMPIRICAL_RING) -> np.ndarray:
    """ν: the median of ``power`` (FFT order) over rings of |k| ``width`` Fourier pixels
    wide (1 / the larger field side in Å), returned at every pixel."""
    ny, nx = power.shape
    ky = np.fft.fftfreq(ny, sampling[0])[:, None]
    kx = np.fft.fftfreq(nx, sampling[1])[None, :]
    dk = width / max(ny * sampling[0], nx * sampling[1])
    ring = np.floor(np.hypot(ky, kx) / dk).astype(np.int64).ravel()
    order = np.argsort(ring, kind="stable")
    cuts = np.flatnonzero(np.diff(ring[order])) + 1
    groups = np.split(power.ravel()[order], cuts)
    medians = np.array([np.median(g) for g in groups])
    labels = ring[order][np.r_[0, cuts]]
    table = np.zeros(ring.max() + 1)
    table[labels] = medians
    return table[ring].reshape(ny, nx)


def empirical_spectrum(pilot, sampling, scale: float = EMPIRICAL_SCALE,
                       floor: float = EMPIRICAL_FLOOR, xp=np):  # fmt: skip
    """Λ(k) (FFT order, float32 on ``xp``) of the empirical prior (module docstring) from a
    pilot phase ``pilot`` (rad, the object grid; host or device) on pixels of ``sampling``
    (Å): Λ = scale · N / (max(S₁ − ν, 0) + floor ν), S₁ the pilot's power spectrum, ν its
    ring median (:func:`ring_median`)."""
    u = np.asarray(pilot.get() if hasattr(pilot, "get") else pilot, dtype=np.float64)
    if u.ndim != 2 or not np.all(np.isfinite(u)):
        raise ValueError(f"the pilot phase must be one finite 2-D image, got shape {u.shape}")
    power = np.abs(np.fft.fft2(u - u.mean())) ** 2
    if not power.max() > 0:  # Λ = scale·N/(floor·0): infinite, the object pinned flat
        raise ValueError("the pilot phase is flat: it holds no spectrum to estimate")
    nu = ring_median(power, sampling)
    signal = np.maximum(power - nu, 0.0) + floor * nu
    signal = np.maximum(signal, 1e-6 * max(float(signal.max()), 1e-30))
    return xp.asarray(scale * power.size / signal, dtype=np.float32)
