"""Plane-wave (TEM) mode of the simulator: the exit wave of a crystal tilted off its zone
axis and its electron-diffraction pattern.

The specimen is the 4D-STEM simulator's (:func:`simulate.build_specimen`: Kirkland slices,
frozen-phonon configurations, transmission functions band-limited to 2/3 of Nyquist) and
the propagation is its multislice loop (:func:`multislice.propagate`); only the incident
wave (ψ = 1 on the periodic field) and the propagators differ.

Tilt and sign convention
------------------------
A crystal tilt ``tilt = (θ_y, θ_x)`` (mrad) means that the crystal's zone axis points
along (tan θ_x, tan θ_y, 1) in the beam's frame (the beam travels along +z; x, y are the
field's, i.e. the detector's, axes). The multislice keeps the slices perpendicular to the
zone axis and propagates with Kirkland's tilted propagator (Advanced Computing in Electron
Microscopy, 2nd ed., 2010, §6.6; the paraxial wave equation of a wave whose carrier
exp(2πi K₀·r) is tilted by −θ in the crystal frame):

    P(k, dz) = exp(−iπλ dz |k|²) · exp(+2πi dz (k_x tan θ_x + k_y tan θ_y)),

the first factor being :func:`physics.fresnel_propagator` (band limit included), the second
the tilt. The wave's Fourier coordinate k is the scattering vector relative to the direct
beam, so the pattern has the direct beam at k = 0. Beam g accumulates the phase
2π dz s_g per slice with the excitation error

    s_g = g·tanθ − λ|g|²/2,

which vanishes on the (zero-order) Laue circle |g − tanθ/λ| = |tanθ|/λ: a circle through
the direct beam whose centre lies at +tanθ/λ, **on the side towards which the zone axis is
tilted** (tests/test_planewave.py::test_tilt_sign). The exact Ewald-sphere geometry gives
the radius sin φ/λ (φ the angle between beam and zone axis, :mod:`ptyengine.hrtem.zone_axis`);
this paraxial propagator gives tan φ/λ, larger by 1/cos φ (0.38 % at 5°, i.e. +0.019° in φ).

Validity: the slices are projected along the zone axis, while the tilted wave moves
sideways by dz·tan θ within a slice (0.17 Å for dz = 2 Å at 87 mrad = 5°): keep
dz·tan θ below the sampling's resolution, or thin the slices, for high-angle detail.
:data:`MAX_TILT` (100 mrad) bounds the tilt. The Laue circle's reflections that a fit
needs lie within the detector, which must lie inside the field's band limit (2/3 of
Nyquist): :func:`plane_wave_specimen` picks the sampling from the detector's reach.
At 5° (87 mrad) the Laue circle's radius is sin φ/λ = 4.4 1/Å at 300 kV, so a detector
holds an arc of it, not the whole circle: the benchmark (benchmarks/bench_zone_axis.py)
uses SrTiO3 [001] to 5.12 1/Å (pixel 0.065 Å, 64² per 3.905 Å cell) and UiO-66 [110] to
2.56 1/Å (pixel 0.13 Å), 2 Å slices (dz·tan θ ≤ 0.17 Å, at most 2.7 pixels of 0.065 Å
at 5°), one unit cell laterally (a static lattice's exit wave has the cell's period; frozen
phonons, whose diffuse scattering needs a larger field, are not used there).

Units: Å, 1/Å, mrad, eV; intensities are fractions of the incident electrons (a noise-free
pattern sums to the fraction that reaches the detector), counts with a dose.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.special import ndtr

from . import backend, physics
from .errors import PtyengineError
from .multislice import propagate

#: Largest crystal tilt (mrad, per component and in total) the tilted propagator is used for.
MAX_TILT = 100.0


def check_tilt(tilt) -> tuple[float, float]:
    """(θ_y, θ_x) in mrad as floats; raises for non-finite values or |θ| > MAX_TILT."""
    try:
        ty, tx = (float(v) for v in tilt)
    except (TypeError, ValueError):
        raise PtyengineError(f"tilt must be two numbers (θ_y, θ_x) in mrad, got {tilt!r}") from None
    if not (math.isfinite(ty) and math.isfinite(tx)) or math.hypot(ty, tx) > MAX_TILT:
        raise PtyengineError(f"tilt ({ty:g}, {tx:g}) mrad must be finite and at most "
                             f"{MAX_TILT:g} mrad off the zone axis (the tilted propagator is "
                             "paraxial)")  # fmt: skip
    return ty, tx


def zone_axis_direction(tilt) -> np.ndarray:
    """Unit vector (x, y, z) of the zone axis in the beam's frame for a tilt (θ_y, θ_x) mrad."""
    ty, tx = check_tilt(tilt)
    n = np.array([math.tan(tx * 1e-3), math.tan(ty * 1e-3), 1.0])
    return n / np.linalg.norm(n)


def tilt_from_direction(n) -> tuple[float, float]:
    """The tilt (θ_y, θ_x) in mrad whose zone axis is the direction n = (x, y, z), z > 0."""
    x, y, z = (float(v) for v in n)
    if not z > 0:
        raise PtyengineError(f"zone-axis direction {tuple(n)} must point along +z (the beam)")
    return math.atan(y / z) * 1e3, math.atan(x / z) * 1e3


def laue_circle(energy: float, tilt) -> tuple[tuple[float, float], float]:
    """Centre (k_y, k_x) and radius (1/Å) of this simulator's zero-order Laue circle:
    centre tanθ/λ, radius |tanθ|/λ (paraxial; see the module docstring)."""
    ty, tx = check_tilt(tilt)
    lam = physics.wavelength(energy)
    cy, cx = math.tan(ty * 1e-3) / lam, math.tan(tx * 1e-3) / lam
    return (cy, cx), math.hypot(cy, cx)


def tilted_propagator(gpts, sampling, energy, dz: float, tilt=(0.0, 0.0), xp=np,
                      dtype=np.complex64):  # fmt: skip
    """P(k, dz) = exp(−iπλ dz|k|²) exp(2πi dz (k_x tan θ_x + k_y tan θ_y)), band-limited
    (FFT order; gpts (ny, nx), sampling (dy, dx) Å, dz Å, tilt (θ_y, θ_x) mrad)."""
    ty, tx = check_tilt(tilt)
    p = physics.fresnel_propagator(gpts, sampling, energy, dz, xp, dtype)
    if ty == 0 and tx == 0:
        return p
    ky, kx = physics.spatial_frequencies(gpts, sampling, xp)
    ramp = xp.exp(2j * math.pi * dz * (kx * math.tan(tx * 1e-3) + ky * math.tan(ty * 1e-3)))
    return (p * ramp).astype(dtype)


def exit_waves(specimen, energy: float, tilt=(0.0, 0.0), xp=np) -> list:
    """Exit waves (ny, nx) complex, one per frozen-phonon configuration of ``specimen``
    (a :class:`simulate.Specimen`), of a plane wave ψ = 1 through the slab tilted by
    ``tilt`` (θ_y, θ_x) mrad at ``energy`` eV. |ψ|² = 1 per pixel at the entrance."""
    tilt = check_tilt(tilt)
    t0 = specimen.transmissions[0]
    gpts, dtype = t0.shape[-2:], t0.dtype
    props = xp.stack([tilted_propagator(gpts, specimen.sampling, energy, dz, tilt, xp, dtype)
                      for dz in specimen.slice_thicknesses])  # fmt: skip
    waves = []
    for t in specimen.transmissions:
        t = xp.asarray(t)
        psi = xp.ones((1, *gpts), dtype=dtype)
        propagate(psi, t.shape[0], lambda s, t=t, psi=psi: xp.multiply(psi, t[s], out=psi),
                  props)  # ψ ← ψ·t_s in place
        waves.append(psi[0])
    return waves


def far_field(specimen, energy: float, tilt=(0.0, 0.0), xp=np) -> np.ndarray:
    """The mean over configurations of |Ψ(k)|² on the field's Fourier grid (FFT order,
    k = fftfreq(n, d) 1/Å), float64 on the host. Normalised so that it sums to Σ|ψ|²/N,
    the fraction of electrons kept (1 without scattering beyond the band limit)."""
    total = None
    for psi in exit_waves(specimen, energy, tilt, xp):
        far = backend.fft2(psi)
        far = (far.real**2 + far.imag**2).astype(np.float64)
        total = far if total is None else total + far
    n = total.shape[0] * total.shape[1]
    return backend.to_numpy(total) / (n * n * len(specimen.transmissions))


def detector_weights(n_field: int, sampling: float, n_det: int, dk: float,
                     sigma: float) -> np.ndarray:  # fmt: skip
    """(n_det, n_field) weights that spread each Fourier-grid point k_m = fftfreq(n, d)[m]
    (1/Å) over the detector pixels (centre (j − n_det//2)·dk, width dk): the integral over
    pixel j of a normalised Gaussian of σ = ``sigma`` 1/Å centred at k_m (σ = 0: all of it
    in the pixel that holds k_m). A point's weights sum to 1 where the detector holds it."""
    k = np.fft.fftfreq(n_field, sampling)
    centres = (np.arange(n_det) - n_det // 2) * dk
    lo, hi = centres[:, None] - dk / 2 - k[None, :], centres[:, None] + dk / 2 - k[None, :]
    if sigma > 0:
        return ndtr(hi / sigma) - ndtr(lo / sigma)
    return ((lo <= 0) & (hi > 0)).astype(np.float64)


def diffraction_pattern(specimen, energy: float, tilt=(0.0, 0.0), detector_pixels: int = 256,
                        dk: float = 0.02, spot_sigma: float | None = None,
                        dose: float | None = None, seed: int = 0, xp=np) -> np.ndarray:
    """The electron-diffraction pattern (float32, ``detector_pixels`` square) of a plane
    wave through ``specimen`` tilted by ``tilt`` (θ_y, θ_x) mrad, at ``energy`` eV.

    Pixel (i, j) records k = ((i, j) − n//2)·``dk`` (1/Å per pixel; from a camera length L
    and a physical pixel p: dk = p/(L λ)), so the direct beam sits at the centre pixel
    (n//2, n//2). Frozen phonons: the incoherent mean of |FFT ψ|² over configurations. A
    periodic field's far field is a comb of beams on its Fourier grid; each is spread into
    a Gaussian spot of σ = ``spot_sigma`` 1/Å (beam divergence and detector blur; None: one
    detector pixel, 0: each beam in one pixel) integrated over the pixels. Noise-free
    intensities are fractions of the incident electrons; with ``dose`` (electrons per
    pattern) they are Poisson counts with that mean total, seeded by ``seed`` (no beam
    stop, no saturation: float counts). The detector must lie inside the field's band
    limit (2/3 of its Nyquist frequency): beams beyond it are not simulated.
    """
    n = int(detector_pixels)
    if n < 4 or not (math.isfinite(dk) and dk > 0):
        raise PtyengineError(f"detector of {detector_pixels} pixels of {dk} 1/Å: it needs at "
                             "least 4 pixels of a positive size")  # fmt: skip
    k_lim = physics.band_limit(specimen.sampling)
    reach = n // 2 * dk
    if reach > k_lim * (1 + 1e-9):
        raise PtyengineError(
            f"the detector reaches {reach:.4g} 1/Å but the field's sampling "
            f"{max(specimen.sampling):.4g} Å band-limits the simulation at {k_lim:.4g} 1/Å; "
            f"use a sampling of at most {1 / (3 * reach):.4g} Å (or a smaller detector)")
    sigma = dk if spot_sigma is None else float(spot_sigma)
    if not (math.isfinite(sigma) and sigma >= 0):
        raise PtyengineError(f"spot sigma = {spot_sigma!r} 1/Å must be a number ≥ 0")
    intensity = far_field(specimen, energy, tilt, xp)
    ny, nx = intensity.shape
    wy = detector_weights(ny, specimen.sampling[0], n, dk, sigma)
    wx = detector_weights(nx, specimen.sampling[1], n, dk, sigma)
    pattern = wy @ intensity @ wx.T
    if dose is not None:
        if not (math.isfinite(dose) and dose > 0):
            raise PtyengineError(f"dose = {dose!r} electrons per pattern must be positive")
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xD1FF]))
        pattern = rng.poisson(np.clip(pattern, 0, None) * dose)
    return pattern.astype(np.float32)


def plane_wave_specimen(structure: str = "srtio3", zone_axis=(0, 0, 1),
                        field=(15.0, 15.0), thickness: float = 50.0, energy: float = 300e3,
                        k_max: float = 2.5, slice_thickness: float = 2.0, phonons: int = 0,
                        sigmas=None, seed: int = 0, sampling: float | None = None, xp=np):
    """The simulator's specimen (:func:`simulate.build_specimen`) for a plane-wave run:
    ``structure`` along ``zone_axis``, ``field`` (Ly, Lx) Å (rounded to whole cells; one
    cell suffices for a static lattice, whose exit wave is periodic with it),
    ``thickness`` Å in slices of ``slice_thickness`` Å, and a sampling fine enough for
    frequencies up to ``k_max`` 1/Å inside the 2/3 band limit (pixel ≤ 1/(3 k_max), or
    ``sampling`` when given; a detector of n pixels of dk needs k_max ≥ n//2·dk)."""
    from .simulate import SimulationParameters, build_specimen

    lam = physics.wavelength(energy)
    params = SimulationParameters(
        structure=structure, zone_axis=tuple(zone_axis), field=tuple(field),
        thickness=thickness, energy=energy, semiangle=0.1, max_angle=k_max * lam * 1e3,
        slice_thickness=slice_thickness, phonons=phonons, sigmas=sigmas, seed=seed,
        sampling=sampling)  # fmt: skip
    params.check()
    return build_specimen(params, xp)
