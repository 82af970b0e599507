"""Electron-optical physics: wavelength, interaction constant, aberrations, probe, propagator.

Units: lengths in Å, angles in mrad at the interfaces (radians inside formulas), energies
in eV, spatial frequencies k in 1/Å (k = 1/d, scattering angle α = λ|k|).

Sign convention (the one place it is stated; every module and the CLI follow it)
--------------------------------------------------------------------------------
A wave component exp(2πi(k·r + k_z z)) travels along +z (from the probe-forming lens
towards and through the specimen). Free-space propagation by a distance dz multiplies the
Fourier-space wave by the Fresnel propagator

    P(k, dz) = exp(-i π λ dz |k|²).

The probe at the entrance surface (z = 0) is Ψ(k) = A(k) exp(-i χ(k)), with the aberration
function in Krivanek's notation (the coefficient names abTEM also uses),

    χ(α, φ) = (2π/λ) Σ_nm C_nm α^(n+1)/(n+1) cos(m (φ - φ_nm)),   so  χ ⊃ π λ C10 |k|².

Hence a probe with defocus C10 = Δf equals a crossover propagated forward by Δf: **C10 > 0
puts the probe crossover a distance C10 above (upstream of) the entrance surface**, and
C10 < 0 puts it a distance |C10| inside/below it. "Focused 50 nm above the upper surface"
(UiO-66 study) is C10 = +500 Å. The CLI's ``--defocus`` is this C10. The test
``test_physics.py::test_defocus_sign`` proves it by propagating the probe in vacuum.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .errors import PtyengineError

# CODATA 2018 (exact where SI defines them)
PLANCK = 6.62607015e-34  # J s
ELECTRON_MASS = 9.1093837015e-31  # kg
ELEMENTARY_CHARGE = 1.602176634e-19  # C
SPEED_OF_LIGHT = 299792458.0  # m/s

#: Aberration coefficients understood by :func:`aberration_function` (Å; angles φ in rad).
ABERRATION_ORDERS = {
    "C10": (1, 0), "C12": (1, 2),
    "C21": (2, 1), "C23": (2, 3),
    "C30": (3, 0), "C32": (3, 2), "C34": (3, 4),
    "C41": (4, 1), "C43": (4, 3), "C45": (4, 5),
    "C50": (5, 0), "C52": (5, 2), "C54": (5, 4), "C56": (5, 6),
}  # fmt: skip
ABERRATION_ANGLES = {f"phi{name[1:]}" for name, (_, m) in ABERRATION_ORDERS.items() if m}


def wavelength(energy: float) -> float:
    """Relativistic electron wavelength in Å for a kinetic energy in eV.

    λ = h / sqrt(2 m0 e E (1 + e E / (2 m0 c²)));  0.0196875 Å at 300 keV.
    """
    if not energy > 0:
        raise PtyengineError(f"beam energy must be positive (eV), got {energy}")
    e_joule = ELEMENTARY_CHARGE * energy
    mc2 = ELECTRON_MASS * SPEED_OF_LIGHT**2
    p = math.sqrt(2 * ELECTRON_MASS * e_joule * (1 + e_joule / (2 * mc2)))
    return PLANCK / p * 1e10


def interaction_constant(energy: float) -> float:
    """Relativistic interaction constant σ in rad/(V·Å): transmission t = exp(i σ V_proj).

    σ = 2π m e λ / h² with the relativistic mass m = γ m0 (Kirkland 2010, eq. 5.6);
    6.5262e-4 rad/(V·Å) at 300 keV.
    """
    lam = wavelength(energy) * 1e-10
    gamma = 1 + ELEMENTARY_CHARGE * energy / (ELECTRON_MASS * SPEED_OF_LIGHT**2)
    sigma = 2 * math.pi * gamma * ELECTRON_MASS * ELEMENTARY_CHARGE * lam / PLANCK**2
    return sigma * 1e-10  # rad/(V m) -> rad/(V Å)


def spatial_frequencies(gpts: tuple[int, int], sampling: tuple[float, float], xp=np):
    """FFT-ordered frequencies (ky[:, None], kx[None, :]) in 1/Å for a grid (ny, nx)."""
    ky = xp.asarray(np.fft.fftfreq(gpts[0], sampling[0]))
    kx = xp.asarray(np.fft.fftfreq(gpts[1], sampling[1]))
    return ky[:, None], kx[None, :]


def band_limit(sampling: tuple[float, float], fraction: float = 2 / 3) -> float:
    """Largest |k| (1/Å) kept by the anti-aliasing aperture: ``fraction`` of Nyquist."""
    return fraction / (2 * max(sampling))


def antialias_mask(gpts, sampling, fraction: float = 2 / 3, xp=np):
    """Boolean Fourier mask |k| < fraction × Nyquist (hard edge, so mask² = mask)."""
    ky, kx = spatial_frequencies(gpts, sampling, xp)
    return ky**2 + kx**2 < band_limit(sampling, fraction) ** 2


def check_aberrations(aberrations: Mapping[str, float]) -> dict[str, float]:
    """Validated copy of an aberration dict; unknown names or non-finite values raise."""
    out = {}
    for name, value in dict(aberrations or {}).items():
        if name not in ABERRATION_ORDERS and name not in ABERRATION_ANGLES:
            known = ", ".join(list(ABERRATION_ORDERS) + sorted(ABERRATION_ANGLES))
            raise PtyengineError(f"unknown aberration {name!r}; known: {known}")
        value = float(value)
        if not math.isfinite(value):
            raise PtyengineError(f"aberration {name} must be finite, got {value}")
        out[name] = value
    return out


def chi(ky, kx, energy, aberrations: Mapping[str, float], xp=np):
    """χ(k) in radians at spatial frequencies (ky, kx) in 1/Å (arrays of any shape;
    Krivanek notation, see the module docstring)."""
    ab = check_aberrations(aberrations)
    lam = wavelength(energy)
    alpha2 = lam**2 * (ky**2 + kx**2)
    used = [(name, n, m) for name, (n, m) in ABERRATION_ORDERS.items() if ab.get(name, 0.0)]
    alpha = xp.sqrt(alpha2) if any(n % 2 == 0 for _, n, _ in used) else None
    phi = xp.arctan2(ky, kx) if any(m for _, _, m in used) else None
    out = xp.zeros(alpha2.shape, dtype=np.float64)
    for name, n, m in used:  # α^(n+1) from α² where n + 1 is even (no square root)
        power = alpha2 ** ((n + 1) // 2) if n % 2 else alpha * alpha2 ** (n // 2)
        term = ab[name] * power / (n + 1)
        if m:
            term = term * xp.cos(m * (phi - ab.get(f"phi{n}{m}", 0.0)))
        out = out + term
    return (2 * math.pi / lam) * out


def aberration_function(gpts, sampling, energy, aberrations: Mapping[str, float], xp=np):
    """χ(k) in radians on the FFT-ordered grid (Krivanek notation, see module docstring)."""
    ky, kx = spatial_frequencies(gpts, sampling, xp)
    ky, kx = xp.broadcast_arrays(ky, kx)
    return chi(ky, kx, energy, aberrations, xp)


def aperture(gpts, sampling, energy, semiangle: float, xp=np):
    """Probe-forming aperture A(k) in [0, 1] with an edge one Fourier pixel wide.

    A hard edge on a discrete grid makes a jagged, aliased aperture whose area jumps as the
    sampling changes; the linear ramp across one pixel keeps the area right.
    """
    lam = wavelength(energy)
    ky, kx = spatial_frequencies(gpts, sampling, xp)
    k = xp.sqrt(ky**2 + kx**2)
    k_ap = semiangle * 1e-3 / lam
    dk = max(1 / (gpts[0] * sampling[0]), 1 / (gpts[1] * sampling[1]))
    return xp.clip((k_ap - k) / dk + 0.5, 0.0, 1.0)


def check_sampling(sampling, energy, semiangle, fraction: float = 2 / 3) -> None:
    """Raise when the grid cannot carry the aperture inside the anti-aliasing band limit."""
    k_ap = semiangle * 1e-3 / wavelength(energy)
    k_lim = band_limit(sampling, fraction)
    if k_ap > k_lim:
        need = fraction / (2 * k_ap)
        raise PtyengineError(
            f"sampling {max(sampling):.4g} Å is too coarse for a {semiangle:g} mrad aperture at "
            f"{energy / 1e3:g} kV: the aperture reaches {k_ap:.3g} 1/Å but the band limit is "
            f"{k_lim:.3g} 1/Å; use a sampling of at most {need:.4g} Å"
        )


def probe(
    gpts,
    sampling,
    energy,
    semiangle,
    aberrations=None,
    position=None,
    xp=np,
    dtype=np.complex64,
    fourier: bool = False,
    band_fraction: float = 2 / 3,
):
    """The STEM probe at the entrance surface on a (ny, nx) grid.

    Parameters are in Å, eV and mrad. ``position`` (y, x) in Å places the crossover axis;
    by default the probe sits at the grid centre (ny//2, nx//2). The real-space probe is
    normalised to Σ|ψ|² = 1. With ``fourier=True`` the FFT-ordered Ψ(k) is returned
    instead (then Σ|Ψ|² = N by Parseval). The aperture must lie inside ``band_fraction`` of
    Nyquist: 2/3 for multislice (anti-aliasing), up to 1 for a probe that is not propagated.
    """
    check_sampling(sampling, energy, semiangle, band_fraction)
    ab = aberrations or {}
    amp = aperture(gpts, sampling, energy, semiangle, xp)
    chi = aberration_function(gpts, sampling, energy, ab, xp)
    if position is None:
        position = (gpts[0] // 2 * sampling[0], gpts[1] // 2 * sampling[1])
    ky, kx = spatial_frequencies(gpts, sampling, xp)
    phase = -chi - 2 * math.pi * (ky * position[0] + kx * position[1])
    psi_k = (amp * xp.exp(1j * phase)).astype(dtype)
    n = gpts[0] * gpts[1]
    norm = float(xp.sqrt(xp.sum(xp.abs(psi_k) ** 2) / n))
    if norm == 0:
        raise PtyengineError(
            f"the {semiangle:g} mrad aperture holds no Fourier pixel on a grid of {gpts} "
            f"at {sampling} Å: enlarge the grid"
        )
    psi_k /= norm
    if fourier:
        return psi_k
    return xp.fft.ifft2(psi_k).astype(dtype)


def fresnel_propagator(gpts, sampling, energy, dz: float, xp=np, dtype=np.complex64,
                       fraction: float = 2 / 3):
    """Fresnel propagator P(k, dz) = exp(-iπλ dz |k|²) × anti-aliasing mask (FFT order).

    The hard-edged mask at ``fraction`` of Nyquist (2/3 by default) prevents aliasing of
    the product with the transmission function; because mask² = mask, two half steps equal
    one full step exactly.
    """
    lam = wavelength(energy)
    ky, kx = spatial_frequencies(gpts, sampling, xp)
    k2 = ky**2 + kx**2
    p = xp.exp(-1j * math.pi * lam * dz * k2)
    return (p * (k2 < band_limit(sampling, fraction) ** 2)).astype(dtype)
