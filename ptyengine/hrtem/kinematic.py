"""The zone-axis tilt refined by a kinematic model of every reflection's intensity (issue 18).

The Laue-circle estimator (:mod:`.zone_axis`) locates the circle from which reflections are
bright; a reflection's intensity also says how far it lies from the circle, once its
structure factor is known. For a crystal of thickness t, tilted so that the zero-order Laue
zone reflection g has the excitation error s_g = λ (g·c − |g|²/2) (c the circle's centre,
1/Å from the direct beam: :func:`.zone_axis.excitation_errors`), single (kinematic)
scattering gives

    I_g = A |U_g|² sin²(π s_g t) / (π s_g)²

with U_g the Fourier coefficient of the projected potential per unit thickness,
σ V_g (rad/Å; σ the interaction constant), and A a scale (electrons, detector gain, the
share of a spot the integration window holds). The crystal's structure and zone axis give
U_g (:func:`zolz_coefficients`: the simulator's own Kirkland potential, projected); the
reflections' pixel positions on the pattern follow from the lattice's in-plane rotation
(and a possible mirror) on the detector, found from the detected spots
(:func:`orient_lattice`). Then c, t and A are fitted to the integrated intensities of
every lattice point inside the detector, bright or not (:func:`refine`): robust least
squares (soft-L1) on √I, which makes Poisson counts' variance nearly uniform, from the
circle's centre and the best centres of a global grid, with three thicknesses around the
given one; a Debye–Waller factor e^{−B|g|²/2} is fitted too (thermal vibration damps the
Bragg beams, increasingly with |g|, where a static model of the structure does not).

What it assumes: the specimen scatters mostly once along the beam (thin or light; the
dynamical interaction of strong beams changes intensities by tens of per cent, which the
robust loss and the many weak reflections absorb: benchmarks/RESULTS.md measures it on
patterns simulated by multislice, i.e. with all orders of scattering), a uniform
thickness, the detector's pixel size (``pixel_size``) known, and the crystal known. What it
does not model: the higher-order Laue zones (their reflections lie off the ZOLZ lattice
points and are not integrated), thermal diffuse scattering, a beam stop.

Units: 1/Å in reciprocal space, Å for thicknesses, degrees for angles at the interface.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .. import physics
from ..errors import PtyengineError
from .zone_axis import _integrate, background_subtracted, excitation_errors

#: Rotation search step (degrees) of :func:`orient_lattice`; orientations within this
#: fraction of the best position score are all tried by the kinematic fit.
ORIENT_STEP = 0.5
ORIENT_KEEP = 0.97
#: Å²: the largest Debye–Waller exponent b of :func:`fit` (I_g × exp(−b|g|²), b = B/2 with
#: B = 8π²⟨u²⟩: 5 Å² is an rms displacement of 0.36 Å, beyond any crystal at room
#: temperature).
MAX_B = 5.0
#: Å: the least depth of whole lattice repeats :func:`zolz_coefficients` projects.
MODEL_DEPTH = 20.0
#: Thickness starts of :func:`refine`, as multiples of the given thickness.
THICKNESS_STARTS = (0.6, 1.0, 1.6)
#: Fewest lattice points inside the detector for a fit.
MIN_POINTS = 8
#: Centres of the global grid search (:func:`grid_starts`) that start a local fit, and the
#: centres scored per vectorised chunk.
GRID_STARTS = 3
GRID_CHUNK = 256


@dataclass
class CrystalModel:
    """The zero-order Laue zone of a crystal along a zone axis: ``g`` (N, 2) its reciprocal
    lattice points (k_y, k_x) 1/Å in the simulator's frame of the projected cell, ``u2``
    (N,) |U_g|² (rad²/Å²), ``thickness`` the thickness (Å) the fit starts from, and
    ``name`` for messages."""

    g: np.ndarray
    u2: np.ndarray
    thickness: float
    name: str


@dataclass
class Refinement:
    """The fitted circle ``centre`` (k_y, k_x) 1/Å, ``thickness`` t (Å), ``scale`` A, the
    lattice's ``rotation`` (degrees) and ``mirror`` on the pattern, ``points`` integrated,
    ``cost`` (the robust loss per point, in units of √counts²) and the Debye–Waller
    ``debye_waller`` B (Å²)."""

    centre: tuple[float, float]
    thickness: float
    scale: float
    rotation: float
    mirror: bool
    points: int
    cost: float
    debye_waller: float = 0.0  # B (Å²) of the fitted damping e^{−B|g|²/2}


def zolz_coefficients(structure: str, zone_axis, k_max: float, energy: float = 300e3,
                      thickness: float = 100.0, slice_thickness: float = 2.0) -> CrystalModel:
    """|U_g|² of every ZOLZ reflection with |g| ≤ ``k_max`` 1/Å of ``structure`` (a builtin
    name or a structure file, as the simulator takes) along ``zone_axis`` at ``energy`` eV:
    the phases of the simulator's slices of one projected cell, summed (σ V_proj, rad),
    Fourier-transformed and divided by the depth (rad/Å). The depth is a whole number of
    the lattice's repeats along the zone axis, at least MODEL_DEPTH Å (a partial repeat
    would weight the atoms at some depths more than others); a layer (a 2-D structure) is
    projected once over ``thickness``. ``thickness`` is also where the fit starts."""
    from ..planewave import plane_wave_specimen
    from ..structures import load_structure, orthogonal_cell

    if not (math.isfinite(thickness) and thickness > 0):
        raise PtyengineError(f"the crystal's thickness must be positive Å, got {thickness}")
    atoms = load_structure(structure)
    depth = float(thickness)
    if atoms.pbc[2]:
        repeat = float(orthogonal_cell(atoms, tuple(zone_axis)).cell.lengths()[2])
        depth = repeat * math.ceil(MODEL_DEPTH / repeat)
    spec = plane_wave_specimen(structure=structure, zone_axis=tuple(zone_axis),
                               field=(1.0, 1.0), thickness=depth, energy=energy,
                               k_max=k_max * 1.01, slice_thickness=slice_thickness)  # fmt: skip
    t = np.asarray(spec.transmissions[0])
    phase = np.angle(t).sum(axis=0)
    ny, nx = phase.shape
    u = np.fft.fft2(phase) / (ny * nx * depth)
    ky, kx = np.meshgrid(np.fft.fftfreq(ny, spec.sampling[0]),
                         np.fft.fftfreq(nx, spec.sampling[1]), indexing="ij")  # fmt: skip
    keep = (np.hypot(ky, kx) <= k_max) & ((ky != 0) | (kx != 0))
    g = np.stack([ky[keep], kx[keep]], axis=1)
    name = f"{structure} [{''.join(str(int(v)) for v in zone_axis)}]"
    return CrystalModel(g, np.abs(u[keep]) ** 2, float(thickness), name)


def _rotate(g: np.ndarray, angle: float, mirror: bool) -> np.ndarray:
    """g (N, 2) (y, x) mirrored (x → −x) if ``mirror``, then rotated by ``angle`` rad."""
    gy, gx = g[:, 0], -g[:, 1] if mirror else g[:, 1]
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([s * gx + c * gy, c * gx - s * gy], axis=1)


def orient_lattice(k_obs: np.ndarray, weights: np.ndarray, g: np.ndarray,
                   step: float = ORIENT_STEP) -> list[tuple[float, bool, float]]:
    """The lattice's in-plane orientations on the pattern that put its points on the
    detected reflections ``k_obs`` (N, 2) 1/Å (from the direct beam; ``weights`` their
    intensities): the score Σ w·exp(−d²/2σ²) (d the distance to the nearest rotated
    lattice point, σ a quarter of the lattice's shortest spacing) over rotations in steps of
    ``step`` degrees and both handednesses, each local best refined to 0.01°. Returns
    (rotation rad, mirror, score) of those within ORIENT_KEEP of the best, best first
    (a symmetric lattice gives several)."""
    from scipy.optimize import minimize_scalar

    reach = float(np.linalg.norm(k_obs, axis=1).max()) * 1.05
    lattice = g[np.linalg.norm(g, axis=1) <= reach]
    if len(lattice) < MIN_POINTS:
        raise PtyengineError(
            f"the detected reflections reach {reach:.3g} 1/Å, which holds {len(lattice)} "
            f"reflections of the crystal (at least {MIN_POINTS} needed): check the pixel "
            "size, the energy and the crystal")  # fmt: skip
    spacing = float(np.linalg.norm(g, axis=1).min())
    sigma = 0.25 * spacing
    w = np.sqrt(np.clip(weights, 0, None))
    w = w / max(float(w.sum()), 1e-300)

    def score(angle, mirror):
        d, _ = cKDTree(_rotate(lattice, angle, mirror)).query(k_obs)
        return float(np.sum(w * np.exp(-0.5 * (d / sigma) ** 2)))

    angles = np.radians(np.arange(0.0, 360.0, step))
    found = []
    for mirror in (False, True):
        s = np.array([score(a, mirror) for a in angles])
        peaks = np.flatnonzero((s >= np.roll(s, 1)) & (s >= np.roll(s, -1)))
        for i in peaks[np.argsort(-s[peaks])][:8]:
            h = math.radians(step)
            r = minimize_scalar(lambda a, m=mirror: -score(a, m), bounds=(angles[i] - h,
                                angles[i] + h), method="bounded", options={"xatol": 1e-4})
            found.append((float(r.x) % (2 * math.pi), mirror, -float(r.fun)))
    best = max(f[2] for f in found)
    keep = sorted((f for f in found if f[2] >= ORIENT_KEEP * best), key=lambda f: -f[2])
    return keep


def predicted(g, u2, centre, thickness: float, wavelength: float) -> np.ndarray:
    """|U_g|² sin²(π s_g t)/(π s_g)² for the circle ``centre`` (1/Å) and thickness t (Å)."""
    s = excitation_errors(g, np.asarray(centre, dtype=np.float64), wavelength)
    return u2 * (thickness * np.sinc(s * thickness)) ** 2


def _roots(measured):
    """(√I clipped at 0, the soft-L1 scale: the median √I of the bright points)."""
    root = np.sqrt(np.clip(measured, 0, None))
    bright = root[root > 0]
    return root, float(np.median(bright)) if len(bright) else 1.0


def _soft_l1(r, scale: float):
    """The soft-L1 loss Σ 2 f² (√(1 + (r/f)²) − 1) over the last axis (scipy's, × 2)."""
    return 2 * scale**2 * np.sum(np.sqrt(1 + (r / scale) ** 2) - 1, axis=-1)


def grid_starts(g, u2, root, wavelength: float, thickness: float, max_radius: float,
                scale: float, count: int = GRID_STARTS) -> list[np.ndarray]:
    """The ``count`` best circle centres of a square grid out to ``max_radius`` 1/Å, each
    scored by the robust loss at its best scale A (closed form on √I). The grid's step,
    0.5/(λ t |g|_max), is half the shift of the circle that moves the outermost reflection
    by one rocking-curve width 1/t."""
    step = 0.5 / (wavelength * thickness * float(np.linalg.norm(g, axis=1).max()))
    axis = np.arange(-max_radius, max_radius + step / 2, step)
    cy, cx = np.meshgrid(axis, axis, indexing="ij")
    keep = np.hypot(cy, cx) <= max_radius
    centres = np.stack([cy[keep], cx[keep]], axis=1)
    costs = np.empty(len(centres))
    for i in range(0, len(centres), GRID_CHUNK):
        s = excitation_errors(g, centres[i:i + GRID_CHUNK], wavelength)
        sp = np.sqrt(u2) * np.abs(thickness * np.sinc(s * thickness))  # √predicted
        a = (sp @ root) / np.maximum((sp * sp).sum(axis=1), 1e-300)  # √A, least squares
        costs[i:i + GRID_CHUNK] = _soft_l1(a[:, None] * sp - root, scale)
    return [centres[j] for j in np.argsort(costs)[:count]]


def fit(g, u2, measured, wavelength: float, starts, thickness0: float):
    """(centre, t, A, cost per point, b) minimising Σ ρ(√(A·predicted·e^{−b|g|²}) −
    √measured), ρ soft-L1 at the median √measured of the bright points, from each circle
    centre of ``starts`` ((2,) or (K, 2) 1/Å) with each of THICKNESS_STARTS ×
    ``thickness0``. b (Å², 0 to MAX_B, from 0) is a Debye–Waller factor: thermal
    vibration damps the Bragg intensities by e^{−B|g|²/2} (B = 8π²⟨u²⟩), which a static
    model of the structure lacks."""
    from scipy.optimize import least_squares

    root, scale = _roots(measured)
    g2 = (g**2).sum(axis=1)
    lower = [-np.inf, -np.inf, -np.inf, -np.inf, 0.0]
    upper = [np.inf, np.inf, np.inf, np.inf, MAX_B]
    best = None
    for c0 in np.atleast_2d(np.asarray(starts, dtype=np.float64)):
        for f in THICKNESS_STARTS:
            p0 = predicted(g, u2, c0, f * thickness0, wavelength)
            a0 = (float(root @ np.sqrt(p0)) / max(float(p0.sum()), 1e-300)) ** 2
            x0 = np.r_[c0, f * thickness0, math.log(max(a0, 1e-300)), 0.0]

            def resid(q):
                p = predicted(g, u2, q[:2], abs(q[2]), wavelength) * np.exp(-q[4] * g2)
                return np.sqrt(math.exp(q[3]) * p) - root

            r = least_squares(resid, x0, loss="soft_l1", f_scale=scale, bounds=(lower, upper))
            if best is None or r.cost < best.cost:
                best = r
    q = best.x
    return ((float(q[0]), float(q[1])), abs(float(q[2])), math.exp(q[3]),
            best.cost / len(root), float(q[4]))  # fmt: skip


def refine(image: np.ndarray, direct_beam, k_obs: np.ndarray, weights: np.ndarray,
           crystal: CrystalModel, pixel_size: np.ndarray, energy: float, centre0,
           max_radius: float, radius: int = 2) -> Refinement:
    """The kinematic refinement (module docstring) of the circle ``centre0`` (1/Å) of one
    pattern ``image``: the lattice oriented on the detected reflections ``k_obs`` (1/Å from
    ``direct_beam``, (y, x) pixels; ``weights`` their intensities), every lattice point
    inside the detector integrated, then c, t and A fitted from ``centre0`` and from the
    best centres of a grid out to ``max_radius`` 1/Å (the largest tilt's circle); of the
    orientations :func:`orient_lattice` keeps, the one that fits best (the grid is
    searched on the first, the best placed)."""
    lam = physics.wavelength(energy)
    ny, nx = image.shape
    ps = np.asarray(pixel_size, dtype=np.float64)
    beam = np.asarray(direct_beam, dtype=np.float64)
    residual = background_subtracted(image)  # integrated at every orientation's points
    best = None
    starts = None
    for angle, mirror, _ in orient_lattice(k_obs, weights, crystal.g):
        g = _rotate(crystal.g, angle, mirror)
        pix = beam + g / ps
        inside = ((pix[:, 0] >= radius) & (pix[:, 0] <= ny - 1 - radius)
                  & (pix[:, 1] >= radius) & (pix[:, 1] <= nx - 1 - radius))  # fmt: skip
        if inside.sum() < MIN_POINTS:
            continue
        measured, _ = _integrate(residual, pix[inside], radius)
        if starts is None:  # the grid, once: the first orientation places the lattice best
            root, scale = _roots(measured)
            starts = [np.asarray(centre0, dtype=np.float64),
                      *grid_starts(g[inside], crystal.u2[inside], root, lam,
                                   crystal.thickness, max_radius, scale)]  # fmt: skip
        c, t, a, cost, b = fit(g[inside], crystal.u2[inside], measured, lam, starts,
                               crystal.thickness)  # fmt: skip
        if best is None or cost < best.cost:
            best = Refinement(c, t, a, math.degrees(angle), mirror, int(inside.sum()), cost,
                              2 * b)  # fmt: skip
    if best is None:
        raise PtyengineError(f"fewer than {MIN_POINTS} reflections of {crystal.name} fall on "
                             "the pattern: check --pixel-size, --energy and the crystal")
    return best
