"""Zone-axis alignment from one electron-diffraction pattern (issue 18, item 1).

Pipeline: :func:`find_reflections` (background-subtracted local maxima above a noise
threshold, sub-pixel centroids) → the direct beam (the brightest reflection) →
:func:`fit_laue_circle` (the circle through the direct beam that the tilt's excited
reflections lie on, robust to outliers) or, for small tilts, :func:`fit_friedel` → the
zone axis's direction → :func:`holder_tilts` (the α and β tilts of a double-tilt holder
that bring it onto the beam).

Geometry (the exact relation used). The Ewald sphere has radius K = 1/λ and passes
through the origin of reciprocal space; its centre is −K₀. With the zone axis n at an
angle φ to the beam, the zero-order Laue zone (ZOLZ, the reciprocal-lattice plane ⊥ n
through the origin) cuts the sphere in a circle whose plane lies at distance K cos φ from
the sphere's centre, so its radius is exactly

    r = K sin φ = sin φ / λ,

it passes through the direct beam, and its centre is the projection of −K₀ onto the ZOLZ:
it lies at r along the direction in which the zone axis is tilted (the excited
reflections sit on that side). So the fitted centre c (1/Å, from the direct beam) gives
the zone axis's transverse part directly: n⊥ = λ c, |n⊥| = sin φ, n_z = cos φ. Validity
and small-angle errors: the circle lives in the ZOLZ plane, which is tilted by φ from the
detector plane, so on the detector it is foreshortened by cos φ along the tilt (an
ellipse); the simulator's paraxial tilted propagator (:mod:`ptyengine.planewave`) gives
r = tan φ/λ instead. Both are relative errors of ≲ φ²/2 in r: 0.38 % at 5°, i.e. ≤ 0.02°
in φ (the benchmark measures it). HOLZ reflections lie on other (larger) circles and are
rejected as outliers; a pattern holds ZOLZ reflections only out to its detector edge, so
the circle is fitted to the arc inside the detector.

Estimator ("circle", tilts from ~0.5°). The excitation error of reflection g for a circle
centre c is s_g = λ (g·c − |g|²/2), i.e. −λ/2 × the algebraic residual |g|² − 2 g·c of
the circle through the origin. Kinematically I_g = |F_g|² S(s_g) with the Laue function
S ∝ sinc²(π t s), whose envelope falls as 1/s². Low-order reflections are strong whatever
the tilt, so raw intensities do not mark the circle: each reflection's excitation signal is
the rank of log(I_g / envelope(|g|)), the envelope being the median intensity of the
reflections at that |g| (the structure factors' fall-off). The circle is the c that
maximises the correlation of the signal with −log(s_g² + s0²) over all reflections (a
robust fit of the algebraic residuals: a reflection far from every circle through the
origin, e.g. on a HOLZ ring, changes a rank correlation little). Candidates: the circles
through the origin and each pair of the 60 most excited reflections (RANSAC-like) and a
polar grid; the best is refined by Nelder–Mead. Where the circle's diameter spans only a
few reflection spacings (small tilts) the ranks no longer single it out.

Estimator ("friedel", tilts below ~0.5°: the residual on a second pattern). By Friedel's
law |F_g| = |F_−g|, so in the 1/s² tail log(I_g/I_−g) = 2 log|s_−g/s_g|, which for a small
centre is 8 (g·c)/|g|²: free of structure factors, thickness and wavelength. c is the
robust least-squares fit of this model to the pairs measured on both sides with
|g| ≥ 0.5 1/Å (where λ|g|²/2 ≫ 1/(π t)).

Holder. The α and β axes are given as directions on the pattern (degrees from the
detector's +x axis, the column index, towards +y, the row index); x, y and the beam z form
a right-handed frame. A tilt α > 0 is a right-handed rotation by α about the α axis; the
β axis is carried by the α tilt (the holder's rod). The tilts (Δα, Δβ) to apply solve
R_α(Δα) R_β(Δβ) n = ẑ exactly (Newton from the small-angle solution, which the two axes
need not be orthogonal for; parallel axes cannot decompose a tilt).

Units: pixels on the pattern, 1/Å in reciprocal space, degrees for tilts and axis angles
at the interface, keV/eV for the energy as named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage

from .. import physics
from ..errors import PtyengineError

#: Detection defaults: smoothing σ (pixels), background opening size (pixels), noise
#: threshold (robust σ of the background-subtracted pattern), centroid window radius.
SMOOTH_SIGMA = 1.0
BACKGROUND_SIZE = 9
THRESHOLD_SIGMA = 5.0
CENTROID_RADIUS = 2
#: Excitation error (1/Å) that keeps −log(s² + s0²) finite in the circle fit; reflections
#: within 3 s0 of a circle count as on it.
LAUE_S0 = 5e-4
#: Largest tilt (degrees) the circle search covers by default.
MAX_TILT = 6.0
#: Smallest |g| (1/Å) of the Friedel pairs used: the Laue function's 1/s² tail needs
#: |s_g| ≈ λ|g|²/2 ≫ 1/(π t) (0.5 1/Å: s ≥ 2.5e-3 1/Å at 300 kV, t ≳ 130 Å).
FRIEDEL_K_MIN = 0.5
#: Fewest Friedel pairs for the small-tilt estimator.
MIN_PAIRS = 6
#: Both reflections of a Friedel pair must hold this many × the per-pixel detection
#: threshold (integrated over the centroid window).
FRIEDEL_FLOOR = 25.0
#: The estimators of :func:`align`.
METHODS = ("circle", "friedel")
#: Fewest reflections (off the direct beam) a circle is fitted to.
MIN_REFLECTIONS = 3
#: Smallest |sin| of the angle between the α and β axes on the pattern (5.7°).
MIN_AXIS_SIN = 0.1


@dataclass
class Reflections:
    """Detected reflections: ``positions`` (N, 2) sub-pixel (y, x) pixels, ``intensities``
    (N,) background-subtracted integrated intensities, ``threshold`` the detection level
    (per pixel, in the pattern's units after smoothing) and ``noise`` its robust σ."""

    positions: np.ndarray
    intensities: np.ndarray
    threshold: float
    noise: float


@dataclass
class LaueCircle:
    """A circle through the direct beam: ``centre`` (k_y, k_x) 1/Å, ``radius`` 1/Å,
    ``inliers`` (bool per reflection: |s_g| < 3 s0 and excited), ``score`` the estimator's
    correlation with its data (0..1), ``s0`` (1/Å) the excitation error that counts as on
    the circle, ``rms`` the rms distance (1/Å) of the inliers from the circle."""

    centre: tuple[float, float]
    radius: float
    inliers: np.ndarray
    score: float
    s0: float
    rms: float


@dataclass
class Alignment:
    """The result of one pattern. Angles in degrees; ``zone_axis`` (x, y, z) is the
    zone axis's direction in the beam's frame; ``tilt`` φ and its ``direction`` on the
    pattern (degrees from +x towards +y); ``correction`` (Δα, Δβ) the holder tilts to
    apply; ``direct_beam`` (y, x) pixels; ``reflections`` in 1/Å from the direct beam."""

    tilt: float
    direction: float
    correction: tuple[float, float]
    zone_axis: np.ndarray
    circle: LaueCircle
    direct_beam: tuple[float, float]
    reflections: np.ndarray = field(repr=False)
    intensities: np.ndarray = field(repr=False)
    #: the kinematic refinement (:mod:`.kinematic`) where a crystal was given, else None;
    #: ``circle`` is then the estimator's circle, the tilts are the refinement's
    refinement: object = None


# ------------------------------------------------------------------ reading patterns


def read_pattern(path) -> np.ndarray:
    """One 2-D diffraction pattern (float64) from .png/.jpg (grey: the mean of the colour
    channels) or any format :func:`.stack.read_array` reads (.npy, .tif/.tiff, .mrc,
    .dm3/.dm4, .hspy, .emd); a stack is refused: give one pattern."""
    from .stack import read_array

    path = Path(path)
    if not path.is_file():
        raise PtyengineError(f"{path} does not exist or is not a file")
    if path.suffix.lower() in (".png", ".jpg", ".jpeg"):
        from matplotlib.image import imread

        try:
            data = imread(path)
        except Exception as exc:  # Pillow/matplotlib raise many kinds on foreign files
            raise PtyengineError(f"{path}: not a readable image "
                                 f"({type(exc).__name__}: {exc})") from None  # fmt: skip
        if data.ndim == 3:  # RGB(A) -> grey
            data = data[..., :3].mean(axis=-1)
    else:
        data, _ = read_array(path)
    data = np.squeeze(np.asarray(data))
    if data.ndim != 2:
        raise PtyengineError(f"{path}: holds an array of shape {data.shape}; a diffraction "
                             "pattern must be 2-D (one pattern, not a stack)")  # fmt: skip
    return data.astype(np.float64)


# ------------------------------------------------------------------ detection


def _check_pattern(pattern) -> np.ndarray:
    image = np.asarray(pattern, dtype=np.float64)
    if image.ndim != 2 or min(image.shape) < 16:
        raise PtyengineError(f"a diffraction pattern must be 2-D and at least 16 × 16 pixels, "
                             f"got shape {image.shape}")  # fmt: skip
    if not np.all(np.isfinite(image)):
        raise PtyengineError(f"the pattern holds {np.size(image) - np.isfinite(image).sum()} "
                             "non-finite pixels (NaN or inf); mask or replace them")
    if np.ptp(image) == 0:
        raise PtyengineError(f"the pattern is flat (every pixel is {image.flat[0]:g}): it holds "
                             "no reflections")  # fmt: skip
    return image


def background_subtracted(image: np.ndarray, smooth: float = SMOOTH_SIGMA,
                          background: int = BACKGROUND_SIZE) -> np.ndarray:
    """The pattern smoothed by a Gaussian of σ = ``smooth`` pixels minus its grey opening
    over ``background`` pixels (a white top-hat: keeps spots narrower than that, removes
    the diffuse background and the direct beam's tails)."""
    smoothed = ndimage.gaussian_filter(image, smooth) if smooth > 0 else image
    return smoothed - ndimage.grey_opening(smoothed, size=(background, background))


def _integrate(residual: np.ndarray, positions: np.ndarray, radius: int):
    """Sums of the (clipped ≥ 0) residual in (2r+1)² windows around rounded ``positions``
    and their centroids (y, x); windows are cut at the pattern's edges."""
    ny, nx = residual.shape
    offs = np.arange(-radius, radius + 1)
    iy = np.clip(np.rint(positions[:, 0]).astype(int)[:, None] + offs, 0, ny - 1)
    ix = np.clip(np.rint(positions[:, 1]).astype(int)[:, None] + offs, 0, nx - 1)
    win = np.clip(residual[iy[:, :, None], ix[:, None, :]], 0, None)
    total = win.sum(axis=(1, 2))
    safe = np.where(total > 0, total, 1.0)
    cy = (win.sum(axis=2) * iy).sum(axis=1) / safe
    cx = (win.sum(axis=1) * ix).sum(axis=1) / safe
    centroid = np.where(total[:, None] > 0, np.stack([cy, cx], axis=1), positions)
    return total, centroid


def find_reflections(pattern, threshold: float = THRESHOLD_SIGMA, min_distance: int = 2,
                     smooth: float = SMOOTH_SIGMA, background: int = BACKGROUND_SIZE,
                     radius: int = CENTROID_RADIUS) -> Reflections:
    """Reflections of a diffraction pattern with sub-pixel positions.

    Local maxima (over (2·``min_distance``+1)² pixels) of the background-subtracted pattern
    (:func:`background_subtracted`) above ``threshold`` × its robust noise σ (1.4826 × the
    median absolute deviation; at least 1e-6 of the highest peak, so a noise-free pattern's
    empty pixels are not maxima), each refined twice by the centroid of the residual in a
    (2·``radius``+1)² window around it. Raises PtyengineError for a flat pattern or one
    without reflections.
    """
    image = _check_pattern(pattern)
    residual = background_subtracted(image, smooth, background)
    med = float(np.median(residual))
    noise = 1.4826 * float(np.median(np.abs(residual - med)))
    level = max(med + threshold * noise, 1e-6 * float(residual.max()))
    if not level > 0:
        level = float(residual.max()) * 1e-6
    size = 2 * int(min_distance) + 1
    peaks = (residual == ndimage.maximum_filter(residual, size=size)) & (residual > level)
    pos = np.argwhere(peaks).astype(np.float64)
    if len(pos) == 0:
        raise PtyengineError(f"the pattern holds no reflections above the noise threshold "
                             f"({threshold:g} σ = {level:.4g} above the background)")
    for _ in range(2):
        _, pos = _integrate(residual, pos, radius)
    total, pos = _integrate(residual, pos, radius)
    keep = total > 0
    return Reflections(pos[keep], total[keep], level, noise)


# ------------------------------------------------------------------ the Laue circle


def circle_through_origin(points: np.ndarray, weights=None) -> np.ndarray:
    """Centre c (2,) of the circle |k − c| = |c| through the origin that best fits
    ``points`` (N, 2) in the algebraic sense: weighted least squares of the residuals
    |k|² − 2 k·c (= −2 s/λ, s the excitation error; ≈ 2|c| × the distance from the
    circle near it). N ≥ 2 points not all on one line through the origin."""
    pts = np.asarray(points, dtype=np.float64)
    w = np.ones(len(pts)) if weights is None else np.asarray(weights, dtype=np.float64)
    a = 2 * pts * np.sqrt(w)[:, None]
    b = (pts**2).sum(axis=1) * np.sqrt(w)
    c, *_ = np.linalg.lstsq(a, b, rcond=None)
    return c


def excitation_errors(k: np.ndarray, centres: np.ndarray, wavelength: float) -> np.ndarray:
    """s_g = λ (k·c − |k|²/2) (1/Å) of reflections ``k`` (N, 2) for circle centres
    ``centres`` (..., 2): the algebraic residual of the circle through the origin, −λ/2 ×
    (|k|² − 2 k·c), shape (..., N)."""
    c = np.asarray(centres, dtype=np.float64)
    return wavelength * (c @ k.T - 0.5 * (k**2).sum(axis=1))


def laue_scores(k, signal, centres, wavelength: float, s0: float) -> np.ndarray:
    """Pearson correlation (per centre) between the reflections' excitation ``signal``
    and the kinematic Laue function's tail −log(s_g² + s0²) (module docstring)."""
    y = signal - signal.mean()
    out = np.empty(len(centres))
    for i in range(0, len(centres), 512):
        s = excitation_errors(k, centres[i:i + 512], wavelength)
        x = -np.log(s**2 + s0**2)
        x -= x.mean(axis=1, keepdims=True)
        out[i:i + 512] = (x @ y) / np.sqrt((x**2).sum(axis=1) * (y @ y) + 1e-300)
    return out


def fit_laue_circle(k, signal, wavelength: float, max_radius: float, candidates: int = 60,
                    s0: float = LAUE_S0) -> LaueCircle:
    """The zero-order Laue circle through the direct beam from reflections ``k`` (N, 2)
    1/Å (from the direct beam) and their excitation ``signal`` (N,) (module docstring).

    Candidates (RANSAC-like, deterministic): the circles through the origin and each pair
    of the ``candidates`` most excited reflections, plus a polar grid of centres out to
    ``max_radius`` 1/Å (0.05 1/Å and 5° steps). Each is scored by the correlation of the
    signal with −log(s_g² + s0²) over all reflections, s_g the excitation error (the
    circle's algebraic residual × −λ/2), which reflections far from any circle through the
    origin (HOLZ rings, noise) cannot raise much; the best is refined by Nelder–Mead.
    s0 = 5e-4 1/Å keeps the log finite (a fitted s0 shrank to 0 on the simulated
    patterns; 2e-3 gave 0.054° instead of 0.042° median error on UiO-66). Inliers: the
    reflections with |s_g| < 3 s0 and a signal above the median.
    Raises PtyengineError with fewer than MIN_REFLECTIONS reflections.
    """
    from scipy.optimize import minimize

    k = np.asarray(k, dtype=np.float64).reshape(-1, 2)
    y = np.asarray(signal, dtype=np.float64).reshape(-1)
    if len(k) < MIN_REFLECTIONS or np.ptp(y) == 0:
        raise PtyengineError(
            f"too few reflections to fit a Laue circle: {len(k)} besides the direct beam "
            f"(with {'no' if len(k) and np.ptp(y) == 0 else 'some'} contrast), at least "
            f"{MIN_REFLECTIONS} of unequal excitation needed (a longer exposure, a lower "
            "--threshold or a larger detector range may show more)")
    top = np.argsort(-y, kind="stable")[:candidates]
    i, j = (top[ix] for ix in np.triu_indices(len(top), 1))
    a = np.stack([k[i], k[j]], axis=1) * 2
    det = a[:, 0, 0] * a[:, 1, 1] - a[:, 0, 1] * a[:, 1, 0]
    ok = np.abs(det) > 1e-9 * np.abs(a).max(axis=(1, 2)) ** 2
    a, det = a[ok], det[ok]
    b = np.stack([(k[i[ok]] ** 2).sum(1), (k[j[ok]] ** 2).sum(1)], axis=1)
    through = np.stack([(b[:, 0] * a[:, 1, 1] - b[:, 1] * a[:, 0, 1]) / det,
                        (a[:, 0, 0] * b[:, 1] - a[:, 1, 0] * b[:, 0]) / det], axis=1)
    radii = np.arange(0.05, max_radius + 1e-9, 0.05)
    angles = np.radians(np.arange(0.0, 360.0, 5.0))
    grid = (radii[:, None, None] * np.stack([np.sin(angles), np.cos(angles)], 1)).reshape(-1, 2)
    cands = np.vstack([through[np.linalg.norm(through, axis=1) <= max_radius], grid])
    scores = laue_scores(k, y, cands, wavelength, s0)
    start = cands[int(np.argmax(scores))]

    def cost(par):
        return -laue_scores(k, y, par[None, :2], wavelength, s0)[0]

    res = minimize(cost, start, method="Nelder-Mead",
                   options={"xatol": 1e-5, "fatol": 1e-8, "maxiter": 2000})  # fmt: skip
    c = res.x[:2]
    s = excitation_errors(k, c, wavelength)
    inliers = (np.abs(s) < 3 * s0) & (y > np.median(y))
    d = np.abs(np.linalg.norm(k - c, axis=1) - np.linalg.norm(c))
    rms = float(np.sqrt(np.mean(d[inliers] ** 2))) if inliers.any() else float("nan")
    return LaueCircle((float(c[0]), float(c[1])), float(np.linalg.norm(c)), inliers,
                      float(-res.fun), s0, rms)  # fmt: skip


def friedel_pairs(image, positions, centre, pixel_size, floor: float,
                  k_min: float = FRIEDEL_K_MIN):
    """Reflections g (1/Å from the direct beam, |g| ≥ ``k_min``) whose Friedel mate −g is
    also measured above ``floor`` (integrated, background-subtracted), the log ratios
    L_g = log(I(g)/I(−g)) (each pair appears twice, as g and −g) and their weights
    1/sqrt(1/I(g) + 1/I(−g)) (1/σ of L for Poisson counts: strong pairs count more)."""
    residual = background_subtracted(image)
    centre = np.asarray(centre, dtype=np.float64)
    own, _ = _integrate(residual, positions, CENTROID_RADIUS)
    mirror_pos = 2 * centre - positions
    mirror, _ = _integrate(residual, mirror_pos, CENTROID_RADIUS)
    ny, nx = image.shape
    inside = ((mirror_pos[:, 0] >= 0) & (mirror_pos[:, 0] <= ny - 1) & (mirror_pos[:, 1] >= 0)
              & (mirror_pos[:, 1] <= nx - 1))  # fmt: skip
    k = (positions - centre) * pixel_size
    keep = inside & (own > floor) & (mirror > floor) & (np.linalg.norm(k, axis=1) >= k_min)
    own, mirror = own[keep], mirror[keep]
    return k[keep], np.log(own / mirror), 1 / np.sqrt(1 / own + 1 / mirror)


def friedel_model(k, centre, wavelength: float) -> np.ndarray:
    """The kinematic log ratio log(I(g)/I(−g)) = 2 log|s_−g / s_g| of the Laue function's
    tail (I ∝ |F|²/s², |F(g)| = |F(−g)|), for a circle centre ``centre`` (1/Å)."""
    a = wavelength * (k @ np.asarray(centre, dtype=np.float64))
    b = wavelength * 0.5 * (k**2).sum(axis=1)
    return 2 * np.log(np.abs(a + b) / np.maximum(np.abs(b - a), 1e-12))


def fit_friedel(k, log_ratio, weights, wavelength: float, starts) -> tuple[np.ndarray, float]:
    """The circle centre (1/Å) that best explains the Friedel log ratios (robust least
    squares, soft-L1 with a scale of 0.5, from each of ``starts``; ``weights`` None, or
    per-pair weights normalised to a mean of 1 — on noise-free SrTiO3 and UiO-66 patterns
    the Poisson weights of :func:`friedel_pairs` doubled the error, so :func:`align` does
    not use them); returns it and its mean robust cost."""
    from scipy.optimize import least_squares

    w = 1.0 if weights is None else np.asarray(weights, dtype=np.float64) / np.mean(weights)
    best = None
    for start in starts:
        res = least_squares(lambda c: w * (friedel_model(k, c, wavelength) - log_ratio),
                            np.asarray(start, dtype=np.float64), loss="soft_l1", f_scale=0.5)
        cost = float(res.cost) / max(len(k), 1)
        if best is None or cost < best[1]:
            best = (res.x, cost)
    return best


# ------------------------------------------------------------------ the holder


def _axis(angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([math.cos(a), math.sin(a), 0.0])


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Right-handed rotation matrix by ``angle`` (radians) about the unit vector ``axis``."""
    u = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def check_axes(alpha_axis: float, beta_axis: float) -> None:
    """Refuse α and β axes (degrees on the pattern) that are (nearly) parallel."""
    if not (math.isfinite(alpha_axis) and math.isfinite(beta_axis)):
        raise PtyengineError(f"tilt axes must be finite angles in degrees, got {alpha_axis!r} "
                             f"and {beta_axis!r}")  # fmt: skip
    if abs(math.sin(math.radians(beta_axis - alpha_axis))) < MIN_AXIS_SIN:
        raise PtyengineError(
            f"the α axis ({alpha_axis:g}°) and β axis ({beta_axis:g}°) are parallel on the "
            f"pattern (they differ by {(beta_axis - alpha_axis) % 180:.3g}° modulo 180°): a "
            "tilt cannot be split between them; give the calibrated directions of both axes")


def tilt_axes_apply(zone_axis, alpha_axis: float, beta_axis: float, alpha: float,
                    beta: float) -> np.ndarray:
    """The zone axis (x, y, z) after holder tilts α, β (degrees): R_α(α) R_β(β) n."""
    ra = rotation(_axis(alpha_axis), math.radians(alpha))
    rb = rotation(_axis(beta_axis), math.radians(beta))
    return ra @ rb @ np.asarray(zone_axis, dtype=np.float64)


def holder_tilts(zone_axis, alpha_axis: float, beta_axis: float) -> tuple[float, float]:
    """The tilts (Δα, Δβ) in degrees that bring ``zone_axis`` (x, y, z) onto the beam ẑ:
    R_α(Δα) R_β(Δβ) n = ẑ (module docstring), for axes at ``alpha_axis`` and ``beta_axis``
    degrees on the pattern. Small-angle start: n⊥ + Δα (u_α × ẑ) + Δβ (u_β × ẑ) = 0."""
    check_axes(alpha_axis, beta_axis)
    n = np.asarray(zone_axis, dtype=np.float64)
    n = n / np.linalg.norm(n)
    z = np.array([0.0, 0.0, 1.0])
    m = np.stack([np.cross(_axis(alpha_axis), z)[:2], np.cross(_axis(beta_axis), z)[:2]], 1)
    x = np.linalg.solve(m, -n[:2])  # radians
    for _ in range(20):  # Newton on the transverse part of R_α R_β n
        f = tilt_axes_apply(n, alpha_axis, beta_axis, *np.degrees(x))[:2]
        if np.linalg.norm(f) < 1e-13:
            break
        h = 1e-7
        jac = np.stack([(tilt_axes_apply(n, alpha_axis, beta_axis,
                                         *np.degrees(x + h * e))[:2] - f) / h
                        for e in np.eye(2)], axis=1)  # fmt: skip
        x = x - np.linalg.solve(jac, f)
    return float(np.degrees(x[0])), float(np.degrees(x[1]))


# ------------------------------------------------------------------ one pattern


def pixel_size_from_camera(camera_length: float, detector_pixel: float, energy: float) -> float:
    """Pattern calibration (1/Å per pixel) p/(L λ) from a camera length L (mm), a physical
    detector pixel p (µm) and the beam energy (eV)."""
    if not (camera_length > 0 and detector_pixel > 0):
        raise PtyengineError(f"camera length {camera_length:g} mm and detector pixel "
                             f"{detector_pixel:g} µm must be positive")  # fmt: skip
    return (detector_pixel * 1e-6) / (camera_length * 1e-3) / physics.wavelength(energy)


def _pixel_size(pixel_size) -> np.ndarray:
    ps = np.broadcast_to(np.asarray(pixel_size, dtype=np.float64), (2,)).copy()
    if not np.all(np.isfinite(ps)) or np.any(ps <= 0):
        raise PtyengineError(f"pixel size {pixel_size!r} 1/Å must be positive")
    return ps


def align(pattern, alpha_axis: float, beta_axis: float, pixel_size, energy: float = 300e3,
          threshold: float = THRESHOLD_SIGMA, max_tilt: float = MAX_TILT,
          method: str = "circle", crystal=None) -> Alignment:
    """Measure the zone axis's tilt on one diffraction pattern and the holder tilts that
    bring it back (module docstring).

    ``pattern`` a 2-D array; ``alpha_axis``/``beta_axis`` the axes' directions on it
    (degrees from +x towards +y); ``pixel_size`` 1/Å per pixel (scalar or (dy, dx));
    ``energy`` eV; ``threshold`` the detection level in noise σ (:func:`find_reflections`);
    ``max_tilt`` (degrees) the largest tilt searched. ``method``: "circle" (the Laue
    circle fit, :func:`fit_laue_circle`; tilts from ~0.5° up) or "friedel" (the small-tilt
    estimator, :func:`fit_friedel`; tilts below ~0.5°, e.g. the residual on a second
    pattern after a correction). ``crystal``: a :class:`.kinematic.CrystalModel` (the
    specimen's structure along its zone axis) refines the estimator's circle with the
    kinematic intensities of every reflection (:func:`.kinematic.refine`).
    """
    check_axes(alpha_axis, beta_axis)
    if method not in METHODS:
        raise PtyengineError(f"method {method!r}: one of {', '.join(METHODS)}")
    ps = _pixel_size(pixel_size)
    image = _check_pattern(pattern)
    refl = find_reflections(image, threshold=threshold)
    direct = int(np.argmax(refl.intensities))
    centre = refl.positions[direct]
    k = (refl.positions - centre) * ps
    others = np.arange(len(k)) != direct
    if others.sum() < MIN_REFLECTIONS:
        raise PtyengineError(
            f"too few reflections to fit a Laue circle: {int(others.sum())} besides the direct "
            f"beam, at least {MIN_REFLECTIONS} needed")  # fmt: skip
    k, intensity = k[others], refl.intensities[others]
    spacing = _nearest_spacing(k)
    signal = excitation_signal(k, intensity, max(0.6 * spacing, 2 * float(ps.max())))
    lam = physics.wavelength(energy)
    if method == "circle":
        circle = fit_laue_circle(k, signal, lam, math.sin(math.radians(max_tilt)) / lam)
    else:
        kf, lr, _ = friedel_pairs(image, refl.positions, centre, ps,
                                   FRIEDEL_FLOOR * refl.threshold)
        if len(kf) < 2 * MIN_PAIRS:
            raise PtyengineError(
                f"too few Friedel pairs for the small-tilt estimator: {len(kf) // 2} pairs of "
                f"reflections beyond {FRIEDEL_K_MIN:g} 1/Å measured on both sides, at least "
                f"{MIN_PAIRS} needed (use the circle fit, or a longer exposure)")
        c, _ = fit_friedel(kf, lr, None, lam, [(0.0, 0.0)])
        errors = excitation_errors(k, c, lam)
        d = np.abs(np.linalg.norm(k - c, axis=1) - np.linalg.norm(c))
        inliers = (np.abs(errors) < 3 * LAUE_S0) & (signal > np.median(signal))
        rms = float(np.sqrt(np.mean(d[inliers] ** 2))) if inliers.any() else float("nan")
        circle = LaueCircle((float(c[0]), float(c[1])), float(np.linalg.norm(c)), inliers,
                            float(np.corrcoef(friedel_model(kf, c, lam), lr)[0, 1])
                            if np.linalg.norm(c) > 0 else 0.0, LAUE_S0, rms)  # fmt: skip
    cy, cx = circle.centre
    refinement = None
    if crystal is not None:
        from .kinematic import refine

        refinement = refine(image, centre, k, intensity, crystal, ps, energy, circle.centre,
                            math.sin(math.radians(max_tilt)) / lam)  # fmt: skip
        cy, cx = refinement.centre
    sin_phi = lam * math.hypot(cy, cx)
    if sin_phi >= 1:
        raise PtyengineError(f"the fitted Laue circle's radius {math.hypot(cy, cx):.4g} 1/Å "
                             "exceeds 1/λ: check --pixel-size and --energy")  # fmt: skip
    n = np.array([lam * cx, lam * cy, math.sqrt(1 - sin_phi**2)])
    return Alignment(math.degrees(math.asin(sin_phi)), math.degrees(math.atan2(cy, cx)),
                     holder_tilts(n, alpha_axis, beta_axis), n, circle,
                     (float(centre[0]), float(centre[1])), k, intensity,
                     refinement)  # fmt: skip


def radial_envelope(k: np.ndarray, intensity: np.ndarray, width: float) -> np.ndarray:
    """Each reflection's typical intensity at its |k|: the median intensity of the
    reflections within ``width`` 1/Å of that radius (the structure-factor and
    Debye–Waller fall-off with |k| that the tilt's excitation rides on)."""
    r = np.linalg.norm(k, axis=1)
    order = np.argsort(r)
    rs, vs = r[order], intensity[order]
    lo = np.searchsorted(rs, r - width, side="left")
    hi = np.searchsorted(rs, r + width, side="right")
    return np.array([np.median(vs[a:b]) for a, b in zip(lo, hi, strict=True)])


def excitation_signal(k, intensity, width: float) -> np.ndarray:
    """log(I / envelope): how much brighter each reflection is than the typical one at
    its |k| (:func:`radial_envelope`); the tilt's excitation, freed of the fall-off of
    the structure factors with |k|."""
    env = radial_envelope(k, intensity, width)
    ratio = np.log(np.clip(intensity, 1e-300, None) / np.clip(env, 1e-300, None))
    from scipy.stats import rankdata

    return rankdata(ratio) / len(ratio)


def _nearest_spacing(k: np.ndarray) -> float:
    """Median distance (1/Å) from each reflection to its nearest neighbour (the direct
    beam included)."""
    pts = np.vstack([k, [[0.0, 0.0]]])
    d = np.linalg.norm(pts[:, None, :] - pts[None, :, :], axis=-1)
    np.fill_diagonal(d, np.inf)
    return float(np.median(d.min(axis=1)))
