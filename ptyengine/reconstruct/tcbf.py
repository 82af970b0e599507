"""Tilt-corrected bright field (tcBF, parallax imaging): aberrations, the scan–detector
rotation and an image from the virtual images of the bright-field pixels; one pass.

Physics. The probe is Ψ(k) = A(k) e^{−iχ(k)} (:mod:`ptyengine.physics`), centred on the
scan position r; the specimen a weak phase object t = e^{iφ}. With G(Q, k) the Fourier
transform over r of the intensity I(r, k) of detector pixel k (convention
G(Q) = Σ_r I(r) e^{−2πiQ·r}), to first order in φ and for k inside the disc,

    G(Q, k) = i φ̃(Q) A(k) [A(k−Q) e^{i(χ(k)−χ(k−Q))} − A(k+Q) e^{−i(χ(k)−χ(k+Q))}].

Expanding χ about k (exact for the quadratic χ of defocus and two-fold astigmatism, where
H = ∇∇χ is constant and χ₂(Q) = QᵀHQ/2), for A(k±Q) = 1:

    G(Q, k) = 2 φ̃(Q) sin χ₂(Q) · e^{+iQ·∇χ(k)},

i.e. the virtual image of pixel k is one image, φ filtered by 2 sin χ₂ (the defocused
bright-field transfer function), translated:

    I_k(r) = I_0(r − d(k)),    d(k) = −∇_k χ(k) / (2π)   [Å, k in 1/Å, χ in rad].

(With the angle α = λk: d = −λ ∇_α χ / (2π).) For χ = πλ[C10|k|² + C12a(k_x² − k_y²)
+ C12b·2k_x k_y] (C12a = C12 cos 2φ12, C12b = C12 sin 2φ12, Krivanek, scan frame):

    d(k) = −λ A k,   A = [[C10 + C12a, C12b], [C12b, C10 − C12a]]   ((x, y) order).

Sign check (geometry): C10 > 0 puts the crossover C10 above the specimen (physics); the
ray towards pixel k leaves the crossover at angle λk and meets the specimen at
r + λ C10 k, so I_k(r) = f(r + λ C10 k) and a feature at s appears in I_k at s − λ C10 k:
d = −λ C10 k. ``tests/test_tcbf.py`` recovers C10 = +200 Å from data simulated with the
probe of ``physics.probe`` (and +515 Å from the UiO-66 50 nm quick dataset, whose C10 is
+500 Å and whose slab centre lies 15 Å further down).

Frames. k is measured in the detector frame; the model works in the scan frame:
k_s = R(θ) S k_d (S: swap axes if ``transpose``; R(θ) turns +x towards +y, as
:func:`.icom.to_scan_frame`). The measured shifts d (scan frame, Å) are fitted by
d = B S k_d + c, B a general 2×2 matrix (linear least squares, weights = counts, one
round of rejecting outliers beyond 3 robust σ); then B = −λ A R(θ) with A symmetric gives
tan θ = (M₁₀ − M₀₁)/(M₀₀ + M₁₁), M = −B/λ, and A = M R(θ)ᵀ. θ and θ + 180° with −A fit
equally; the branch nearest the calibration's rotation is taken (so give the calibration
a rotation within ±90° of the truth; the transpose comes from the calibration). c, a
common translation, is the reference's drift and is not applied to the image.

Shifts. Groups of ``bin × bin`` pixels (:mod:`.direct`) give the images; each is
normalised to relative contrast I_g/⟨I_g⟩ − 1 and weighted by ⟨I_g⟩ (its counts). The
search and the fit work on a reduced stack of at most ``fit_samples`` samples
(:func:`fit_reduction`, :class:`FitStack`): tiles of fit_bin × fit_bin groups in k, summed
(while :data:`FIT_GROUPS` tiles remain and a tile's width Δk blurs the images by λ|C10|Δk
≤ half the period of the bright field's first transfer zero), over a central window of
the scan. Its groups are split into two interleaved halves, so that no group meets its
own noise:
1. C10 search (low dose): with the calibration's rotation and no astigmatism, C10 ±
   ``search`` Å around the calibration's maximises the mean product of the two halves'
   aligned sums (the aligned image's power without its noise), on a grid of search/20,
   then ±1 step at a fifth of it.
2. Shift fit: in ``stages`` radii growing to :data:`FIT_FRACTION`·α/λ, then
   ``refinements`` more passes, every group whose predicted shift leaves enough overlap
   (:data:`OVERLAP`) is cross-correlated with the other half's aligned sum (moved first
   by its predicted shift, zero-padded, normalised by the overlap of the tapers,
   searched within a radius of the prediction, parabolic sub-pixel peak) and the model
   refitted. The radius is 15 % of the field, then 10 % (≥ 3 rms residuals): wide
   enough that noise's peaks do not follow the prediction (the R² test below needs
   them independent of it); on a crystal whose lattice vector is shorter it can catch
   the next lattice peak (the fit's window, 16 Å square on bench_stream's data, keeps
   it shorter there).
The search's C10 replaces the calibration's only where its best score stands out of its
noise: score ≥ ``search_z`` (:data:`SEARCH_Z`) × its standard error (the spread of the
halves' pixel products; ``search_z`` in ``extra``); below, the data do not hold the
defocus and the calibration's is kept (at 0.006 counts per group and pattern, SrTiO3 at
10 e/Å², the search's maximum was noise, landed on C10 = 0 and left no image).
The shift fit is kept when it explains at least :data:`MIN_R2` of the shifts' variance
with at least :data:`MIN_GROUPS` groups;
otherwise (shifts that are noise: UiO-66 at ≤ 100 e/Å²) the search's C10 is, with the
calibration's rotation (``fit_from`` in ``extra``: "shifts", "search" or "calibration").

Image. Every sample I_g(r) belongs at specimen position r − d(k_g): samples are splatted
bilinearly (weight ⟨I_g⟩) onto a grid ``upsample`` times finer than the scan, and
divided by the splatted weights ("drizzle"; sub-pixel shifts sample the specimen at other
offsets, hence the up-sampling). ``bright_field`` is that aligned sum (≈ 2 sin χ₂ ∗ φ);
``phase`` is it with the sign of sin χ₂(Q) flipped (fitted A; mirror-extended FFT),
proportional to φ at the frequencies where sin χ₂ is not small (arbitrary units). In
focus sin χ₂ ≈ 0: the bright field holds no weak-phase contrast and tcBF measures nothing;
with C10 = C12 = 0 exactly (nothing in the data moved the calibration's in-focus probe)
sin χ₂ ≡ 0 and there is no image: ``phase`` is zero and ``extra["no_image"]`` says why.

Memory: the stack of group images, Sy·Sx·G·4 bytes (G ≈ π(α/λ)²/(dk² bin²) groups; 2
for 8/16-bit counts at bin 1; never copied to floats), the fit's stack (≤ ``fit_samples``
·4 bytes, 2 MiB by default), and while measuring shifts a batch of b padded window images
(~b·ny·nx·256 bytes, b ≤ 256 within a quarter of the budget: :func:`shift_batch`), and
a few scan-sized images (the CTF flip: ~9× the image's bytes, :func:`ctf_flip`); one
read of the data. ``bin`` = None picks the smallest bin
with at most :data:`MAX_GROUPS` groups and a stack within a quarter of the memory budget,
so memory is bounded by the budget (``--memory-limit``), not by the data.

Speed: the aligned sums (every score of the C10 search, every reference, the image) are
splats of whole images by :func:`kernels.direct.drizzle_cpu` (integer up-sampling: one
fractional offset per image, so separable taps summed once per image row; the stack
read as stored with a per-image offset and scale), over an index of the images (no
copies), split over the cores where they hold ≥ :data:`SPLIT_SAMPLES` samples; the
cross-correlations use half spectra (rfft2/irfft2). The search (49 scores) and the fit
cost a fixed amount whatever the data's size (the fit's stack); the image is one splat of
the whole stack: with the read, its cost grows with the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..backend import cpu_workers, split_map
from ..backend import memory_limit as memory_limit_bytes
from ..dataset import as_dataset
from ..errors import PtyengineError
from ..kernels.direct import drizzle_cpu
from .direct import BrightField, bright_field_groups, bright_field_stack, dataset_mask

#: most groups ``bin=None`` allows (the time of the shift measurement). The dose does not
#: enter: the C10 search uses every group at once, and on UiO-66 at 100 e/Å² bins of 1, 2
#: and 4 pixels give the same C10 (benchmarks/RESULTS.md, "Direct methods"); bins of 8+
#: blur the images (λ·C10·bin·dk) and fail.
MAX_GROUPS = 4096
#: most images cross-correlated together; fewer where the budget asks (:func:`shift_batch`)
BATCH = 256
#: the per-group fit is used when it explains at least this fraction of the shifts'
#: variance (R²); below, the shifts are noise and the C10 search's result is kept
MIN_R2 = 0.5
#: ... and comes from at least this many groups (15 noisy groups can fit by chance: UiO-66
#: 100 nm at 100 e/Å² in bins of 4 px gave C10 = 3596 Å with R² > 0.5)
MIN_GROUPS = 30
#: shifts are measured and fitted for the groups with |k| ≤ FIT_FRACTION·α/λ only: for
#: |Q| > α/λ − |k| one sideband of pixel k leaves the disc, its image is no longer a pure
#: translation, and the shifts of outer pixels come out too large (+5–8 % at 0.8 α/λ on
#: the tests' data; C10 +7 % fitted over the whole disc, within 3 % over half of it; on
#: UiO-66 50/100 nm: 515/1017 Å for the true 515/1015)
FIT_FRACTION = 0.5
#: the C10 search's best score must be at least this many standard errors (pure noise:
#: the best of its trials reached 2.6 on the quick grid's SrTiO3 at 10 e/Å², 100 nm) to
#: replace the calibration's C10
SEARCH_Z = 5.0

#: most samples (fit groups × scan positions) the C10 search and the shift fit work on
#: (``TcbfParameters.fit_samples``): their cost is ~60 splats and ~20 padded FFTs per
#: group of this stack, so it is kept to a fraction of the data (the image itself is one
#: splat of the whole stack)
FIT_SAMPLES = 1 << 19
#: fewest fit groups the binning in k leaves over the disc (a quarter lies within
#: FIT_FRACTION·α/λ, where the shifts are measured: ≥ MIN_GROUPS)
FIT_GROUPS = 200
#: fewest scan positions a side of the fit's window
FIT_SIDE = 24
#: splats of fewer samples run in the calling thread (~0.5 ms of the kernel's work: the
#: hand-off to a second thread costs as much on a loaded 2-core machine)
SPLIT_SAMPLES = 1 << 20


@dataclass
class TcbfParameters:
    """bin: detector pixels per group side (None: from the dose and memory, see the module
    docstring); upsample: output grid = scan step / upsample; stages: radii of the
    growing set of groups; refinements: passes over all groups after them; astigmatism:
    fit C12 (else C10 and the rotation only); ctf: "flip" (phase-flip by sin χ₂) or
    "none"; search: ± Å of the first search for C10 around the calibration's (0: off);
    fit_samples: most samples (groups × scan positions) the search and the shift fit use
    (:func:`fit_reduction`: groups binned in k, a central window of the scan; 0: all);
    search_z: the search's best score must stand this many standard errors out of its
    noise to replace the calibration's C10 (0: always replaces it)."""

    bin: int | None = None
    upsample: int = 1
    stages: int = 4
    refinements: int = 2
    astigmatism: bool = True
    ctf: str = "flip"
    search: float = 1000.0
    fit_samples: int = FIT_SAMPLES
    search_z: float = SEARCH_Z

    def __post_init__(self):
        if self.bin is not None and int(self.bin) < 1:
            raise PtyengineError(f"tcBF bin must be ≥ 1 detector pixel, got {self.bin}")
        if int(self.upsample) < 1 or int(self.upsample) > 8:
            raise PtyengineError(f"tcBF upsample must be 1..8, got {self.upsample}")
        if int(self.stages) < 1 or int(self.refinements) < 0:
            raise PtyengineError("tcBF stages must be ≥ 1 and refinements ≥ 0")
        if not (math.isfinite(self.search) and self.search >= 0):
            raise PtyengineError(f"tcBF search must be ≥ 0 Å, got {self.search}")
        if int(self.fit_samples) < 0:
            raise PtyengineError(f"tcBF fit_samples must be ≥ 0, got {self.fit_samples}")
        if not (math.isfinite(self.search_z) and self.search_z >= 0):
            raise PtyengineError(f"tcBF search_z must be ≥ 0, got {self.search_z}")
        if self.ctf not in ("flip", "none"):
            raise PtyengineError(f"tcBF ctf must be 'flip' or 'none', not {self.ctf!r}")


@dataclass
class TcbfResult:
    """phase: (Sy·u, Sx·u) the CTF-corrected image (arb.); bright_field: the aligned sum
    (relative contrast); aberrations: fitted {"C10", "C12" (Å), "phi12" (rad)} in the scan
    frame, physics' sign; rotation_deg, transpose: the scan–detector relation (fitted
    rotation; the calibration's transpose); shifts, model: (F, 2) measured and fitted
    (dy, dx) Å of the F fit groups (:class:`FitStack`: tiles of fit_bin × fit_bin
    groups); group_k: (F, 2) their detector-frame (k_y, k_x) 1/Å; used: (F,) those in the
    final fit; residual_A: rms of the fit's residual (Å); sampling, origin: of the image
    (Å); bin (the image's groups), counts_per_group: mean counts per group and pattern;
    extra: fit_from ("shifts" or "search"), search_C10, fit_r2, fit_bin, fit_scan (the
    fit window's positions), fit_window (r0, r1, c0, c1), C12_cartesian_A = (C12 cos 2φ12,
    C12 sin 2φ12) as fitted."""

    phase: np.ndarray
    bright_field: np.ndarray
    aberrations: dict
    rotation_deg: float
    transpose: bool
    shifts: np.ndarray
    model: np.ndarray
    group_k: np.ndarray
    used: np.ndarray
    residual_A: float
    sampling: tuple[float, float]
    origin: tuple[float, float]
    bin: int
    counts_per_group: float
    calibration_rotation: float = 0.0
    extra: dict = field(default_factory=dict)

    def summary(self) -> str:
        """One line: the fitted values and what an iterative run should start from."""
        ab = self.aberrations
        c10 = ab["C10"]
        return (f"tcBF: C10 {c10:.0f} Å ({abs(c10) / 10:.1f} nm crossover "
                f"{'above' if c10 >= 0 else 'below'} the entrance surface), C12 "
                f"{ab['C12']:.0f} Å at φ12 {ab['phi12']:.2f} rad, rotation "
                f"{signed_deg(self.rotation_deg):.2f}° (fit rms {self.residual_A:.2f} Å, "
                f"{int(self.used.sum())}/{len(self.used)} groups): start an iterative run "
                f"from --defocus {c10:.0f} and the rotation {signed_deg(self.rotation_deg):.2f}° "
                "(convert --rotation), or give it this result: --probe-from"
                + (f"; no phase image: {self.extra['no_image']}"
                   if self.extra.get("no_image") else ""))  # fmt: skip


def signed_deg(deg: float) -> float:
    """An angle in (−180, 180] degrees, 0 below 0.005° (for "0.00", not "360.00"/"-0.00")."""
    out = -((-float(deg) + 180.0) % 360.0 - 180.0)
    return 0.0 if abs(out) < 0.005 else out


# ------------------------------------------------------------------ the shift model


def _swap(k_d, transpose: bool) -> np.ndarray:
    """Detector-frame (k_y, k_x) rows → (x, y) components of S k_d."""
    k = np.asarray(k_d, dtype=np.float64)
    return k[:, [0, 1]] if transpose else k[:, [1, 0]]


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def model_shifts(k_d, aberrations, rotation_deg: float, transpose: bool, lam: float):
    """(n, 2) scan-frame (dy, dx) Å of the groups at detector-frame ``k_d`` (n, 2):
    d = −λ A R(θ) S k_d (module docstring)."""
    c10 = aberrations.get("C10", 0.0)
    c12, phi = aberrations.get("C12", 0.0), aberrations.get("phi12", 0.0)
    a, b = c12 * math.cos(2 * phi), c12 * math.sin(2 * phi)
    amat = np.array([[c10 + a, b], [b, c10 - a]])
    d_xy = -lam * _swap(k_d, transpose) @ (amat @ _rot(math.radians(rotation_deg))).T
    return d_xy[:, ::-1]


def fit_model(k_d, d, weights, lam: float, transpose: bool, prior_deg: float,
              astigmatism: bool = True):  # fmt: skip
    """(aberrations, rotation_deg, offset (dy, dx), residuals (n,)) of the weighted
    least-squares fit of d = −λ A R(θ) S k_d + c (module docstring)."""
    kt = _swap(k_d, transpose)
    x = np.column_stack([kt, np.ones(len(kt))])
    sw = np.sqrt(np.asarray(weights, dtype=np.float64))[:, None]
    coef = np.linalg.lstsq(x * sw, d[:, ::-1] * sw, rcond=None)[0]  # (3, 2), (x, y) out
    m = -coef[:2].T / lam  # d_xy = B kt, B = coef[:2].T; M = −B/λ = A R(θ)
    theta = math.atan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1])
    prior = math.radians(prior_deg)
    if abs(math.remainder(theta - prior, 2 * math.pi)) > math.pi / 2:
        theta += math.pi
    amat = m @ _rot(theta).T
    amat = (amat + amat.T) / 2
    c10 = float(np.trace(amat) / 2)
    a, b = float(amat[0, 0] - amat[1, 1]) / 2, float(amat[0, 1])
    if not astigmatism:  # C10 alone, given θ: d·(R S k) = −λ C10 |k|²
        rk = kt @ _rot(theta).T
        dd = d[:, ::-1] - coef[2]
        w = np.asarray(weights, dtype=np.float64)
        c10 = float(-(w * (dd * rk).sum(1)).sum() / (lam * (w * (rk * rk).sum(1)).sum()))
        a = b = 0.0
    ab = {"C10": c10, "C12": math.hypot(a, b), "phi12": 0.5 * math.atan2(b, a)}
    rot = math.degrees(theta) % 360.0
    offset = coef[2][::-1]
    res = d - model_shifts(k_d, ab, rot, transpose, lam) - offset
    return ab, rot, offset, np.hypot(res[:, 0], res[:, 1])


# ------------------------------------------------------------------ images and shifts


def drizzle(values, weights, shifts, step, upsample: int = 1, index=None, offsets=None,
            scales=None):  # fmt: skip
    """(num, den) on a grid ``upsample`` × finer than the scan: sample (i, j) of image g,
    as (v − o_g)·s_g, splatted bilinearly at (i, j)·upsample − d_g·upsample/step with weight
    w_g (:func:`kernels.direct.drizzle_cpu`, the images split over the cores). ``index``:
    the images g of ``values`` (n, Sy, Sx) to use (bool or int; default all);
    ``weights``, ``shifts``, ``offsets`` (default 0) and ``scales`` (default 1) are per
    image of ``values``."""
    n, sy, sx = values.shape
    u = int(upsample)
    idx = np.arange(n) if index is None else np.flatnonzero(np.asarray(index)) \
        if np.asarray(index).dtype == bool else np.asarray(index, np.int64)  # fmt: skip
    weights = np.asarray(weights, np.float64)
    shifts = np.asarray(shifts, np.float64)
    offsets = np.zeros(n) if offsets is None else np.asarray(offsets, np.float64)
    scales = np.ones(n) if scales is None else np.asarray(scales, np.float64)

    def run(sl):
        num, den = np.zeros((sy * u, sx * u)), np.zeros((sy * u, sx * u))
        drizzle_cpu(values, idx[sl], offsets, scales, weights, shifts, float(step[0]),
                    float(step[1]), u, num, den)  # fmt: skip
        return num, den

    if len(idx) * sy * sx < SPLIT_SAMPLES:  # the search's small splats: no hand-offs
        return run(slice(0, len(idx)))
    parts = split_map(run, len(idx))
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def aligned(values, weights, shifts, step, upsample: int = 1, index=None, offsets=None,
            scales=None):  # fmt: skip
    """The drizzled image (num/den; 0 where nothing landed) and its coverage den."""
    num, den = drizzle(values, weights, shifts, step, upsample, index, offsets, scales)
    if upsample > 1:  # fill the gaps between the splatted samples
        from scipy.ndimage import gaussian_filter

        num, den = gaussian_filter(num, 0.5 * upsample), gaussian_filter(den, 0.5 * upsample)
    img = np.where(den > 1e-3 * den.max(), num / np.where(den > 0, den, 1.0), 0.0)
    return img, den


def _taper(shape):
    from ..metrics import taper_window

    return taper_window(shape, "tukey", 0.3)


#: a group is measured only while its predicted shift is below this fraction of the
#: scanned field along each axis (beyond it, too little of its image overlaps the reference)
OVERLAP = 0.4


def overlapping(pred, cal) -> np.ndarray:
    """(n,) bool: predicted shifts (n, 2) Å within :data:`OVERLAP` of the field."""
    ly, lx = (n * s for n, s in zip(cal.scan_shape, cal.scan_step, strict=True))
    return (np.abs(pred[:, 0]) <= OVERLAP * ly) & (np.abs(pred[:, 1]) <= OVERLAP * lx)


def shift_batch(scan_shape, limit: int) -> int:
    """Images per batch of :func:`measure_shifts` within ``limit``/4 bytes (its arrays:
    ~256 bytes per image and scan position, on the twice-padded grid), 1..:data:`BATCH`."""
    return int(min(BATCH, max(1, limit / 4 // (256 * math.prod(scan_shape)))))


def measure_shifts(values, ref, cover, pred, radius, step, batch: int = BATCH):
    """(n, 2) (dy, dx) Å and (n,) peak heights: where each image in ``values`` best
    matches ``ref`` (on the scan grid; weighted by ``cover``), searched within ``radius``
    Å of ``pred`` (n, 2). Each image is first moved by −pred (a Fourier phase ramp on the
    zero-padded grid), so the peak sits near 0 and the parabolic sub-pixel step has
    little pixel-locking bias once the model is close."""
    import scipy.fft as sfft

    n, sy, sx = values.shape
    py_, px_ = 2 * sy, 2 * sx
    pad, w = (py_, px_), cpu_workers()
    t = _taper((sy, sx))
    tr = t * (cover > 0.3 * cover.max())
    r = (ref - (ref * tr).sum() / max(tr.sum(), 1e-12)) * tr
    # real images: half spectra (rfft2), every product Hermitian, irfft2 = ifft2(...).real
    f_ref = np.conj(sfft.rfft2(r, pad))
    f_ov = sfft.rfft2(t, pad) * np.conj(sfft.rfft2(tr, pad))
    qy = np.fft.fftfreq(py_, step[0])[:, None]
    qx = np.fft.fftfreq(px_, step[1])[None, :px_ // 2 + 1]
    # residual shift (Å) of every cc index: cc[p] = Σ_r M(r + p) R(r) peaks at p = d − pred
    sy_ = np.fft.fftfreq(py_, 1.0 / py_)[:, None] * step[0]
    sx_ = np.fft.fftfreq(px_, 1.0 / px_)[None, :] * step[1]
    near = sy_**2 + sx_**2 <= radius**2
    out = np.zeros((n, 2))
    peak = np.zeros(n)
    for g0 in range(0, n, batch):
        v = values[g0:g0 + batch]
        p = pred[g0:g0 + batch]
        m = (v - (v * t).sum((1, 2), keepdims=True) / t.sum()) * t
        ramp = (np.exp(2j * np.pi * qy[None] * p[:, 0, None, None])
                * np.exp(2j * np.pi * qx[None] * p[:, 1, None, None]))  # separable: 1-D exps
        ov = sfft.irfft2(f_ov * ramp, pad, workers=w)  # the two tapers' overlap, moved alike
        ov = np.maximum(ov, 0.25 * ov.max(axis=(1, 2), keepdims=True))
        cc = sfft.irfft2(sfft.rfft2(m, pad, workers=w) * ramp * f_ref, pad, workers=w) / ov
        cc = np.where(near[None], cc, -np.inf)
        flat = cc.reshape(len(v), -1).argmax(axis=1)
        iy, ix = np.unravel_index(flat, (py_, px_))
        rows = np.arange(len(v))
        c = cc[rows, iy, ix]
        peak[g0:g0 + batch] = c
        for axis, (lo, hi, base, q) in enumerate((
                (cc[rows, (iy - 1) % py_, ix], cc[rows, (iy + 1) % py_, ix], sy_[iy, 0], step[0]),
                (cc[rows, iy, (ix - 1) % px_], cc[rows, iy, (ix + 1) % px_], sx_[0, ix], step[1]))):
            ok = np.isfinite(lo) & np.isfinite(hi)  # a neighbour outside `near` is −inf
            lo, hi = np.where(ok, lo, c), np.where(ok, hi, c)
            curv = lo - 2 * c + hi
            ok &= curv < 0
            frac = np.where(ok, 0.5 * (lo - hi) / np.where(ok, curv, -1.0), 0.0)
            out[g0:g0 + batch, axis] = p[:, axis] + base + np.clip(frac, -0.5, 0.5) * q
    return out, peak


def ctf_flip(image, aberrations, sampling, lam):
    """``image`` with its spectrum multiplied by sign(sin χ₂(Q)) (scan-frame A, mirrored
    extension against edge artefacts). χ₂(−Q) = χ₂(Q), so the product of the real
    extension's spectrum is Hermitian: half spectra (rfft2/irfft2), the phase factor
    formed in place: 8.7× the image's bytes at its peak (32× with full complex spectra),
    scan-sized memory being what grows with the data in tcBF's last step."""
    import scipy.fft as sfft

    ny, nx = image.shape
    ext = np.block([[image, image[:, ::-1]], [image[::-1], image[::-1, ::-1]]])
    spec = sfft.rfft2(ext, workers=cpu_workers())
    del ext
    qy = np.fft.fftfreq(2 * ny, sampling[0])[:, None]
    qx = np.fft.rfftfreq(2 * nx, sampling[1])[None, :]
    c10, c12, phi = aberrations["C10"], aberrations["C12"], aberrations["phi12"]
    a, b = c12 * math.cos(2 * phi), c12 * math.sin(2 * phi)
    chi2 = (c10 + a) * qx**2 + (c10 - a) * qy**2
    chi2 += 2 * b * qx * qy
    chi2 *= math.pi * lam
    spec *= np.sign(np.sin(chi2, out=chi2), out=chi2)
    del chi2
    return sfft.irfft2(spec, (2 * ny, 2 * nx), workers=cpu_workers(), overwrite_x=True)[:ny, :nx]


def half_correlation(rel, weights, k, ab, rot, tr, cal, half, live, with_error=False):
    """How well the model (ab, rot) aligns the groups, at any dose: the product of the
    splatted sums (num_h = Σ w·rel, den_h = Σ w, h = the two interleaved halves of the
    groups) summed over the grid, Σ num₀num₁ / √(Σ den₀den₁). The halves' noise is
    independent, so its expectation is the aligned image's power weighted by the
    coverage, and its noise has the same spread wherever the groups land (a z-score: the
    mean product over the covered area instead let a few groups landing on a small area,
    at a C10 far from the truth, outscore the truth on small fields). ``with_error``:
    (score, its standard error: √Σ(p − p̄)² / √(Σ den₀den₁) over the covered pixels'
    products p = num₀num₁)."""
    d = model_shifts(k, ab, rot, tr, cal.wavelength)
    step = tuple(cal.scan_step)
    parts = [drizzle(rel, weights, d, step, index=live & (half == h)) for h in (0, 1)]
    (n0, d0), (n1, d1) = parts
    cover = float((d0 * d1).sum())
    if not cover > 0:
        return (-math.inf, math.inf) if with_error else -math.inf
    prod = n0 * n1
    value = float(prod.sum() / math.sqrt(cover))
    if not with_error:
        return value
    p = prod[d0 * d1 > 0]
    return value, float(np.sqrt(np.sum((p - p.mean()) ** 2)) / math.sqrt(cover))


def defocus_search(score, ab, rot, span: float) -> dict:
    """``ab`` with C10 replaced by the maximum of ``score`` over C10 ± ``span`` Å (grid
    of span/20, then ±1 grid step at a fifth of it: 41 + 8 scores, the fine grid's three
    points on the coarse one not scored again); ``span`` = 0: unchanged."""
    if span <= 0:
        return dict(ab)
    best = dict(ab)
    done: dict = {}
    for width, n in ((span, 20), (span / 20, 5)):
        grid = best["C10"] + np.linspace(-width, width, 2 * n + 1)
        vals = []
        for c in grid:
            key = round(float(c), 6)
            if key not in done:
                done[key] = score({**best, "C10": float(c)}, rot)
            vals.append(done[key])
        best = {**best, "C10": float(grid[int(np.argmax(vals))])}
    return best


# ------------------------------------------------------------------ the fit's stack

@dataclass
class FitStack:
    """The stack the search and the shift fit use: groups of ``fit_bin`` × ``fit_bin``
    groups (tiles in k) summed over the central ``window`` (r0, r1, c0, c1) of the scan.
    rel: (F, ny, nx) float32 relative contrast I/⟨I⟩ − 1; weights: (F,) ⟨I⟩ counts per
    position; k: (F, 2) detector-frame (k_y, k_x) 1/Å, the counts-weighted mean of the
    members'; members: (F,) one member group of each; group_of: (G,) the fit group of
    each group; cal: the calibration with the window's scan shape."""

    rel: np.ndarray
    weights: np.ndarray
    k: np.ndarray
    members: np.ndarray
    group_of: np.ndarray
    cal: object
    fit_bin: int
    window: tuple[int, int, int, int]


def fit_tiles(bf: BrightField, cal, fit_bin: int) -> np.ndarray:
    """(G,) the tile of ``fit_bin`` × ``fit_bin`` groups each group's k lies in (tiles of
    fit_bin·bin·dk centred on k = 0, as :func:`.direct.bright_field_groups`'s)."""
    size = fit_bin * bf.bin * np.asarray(cal.dk, np.float64)
    tiles = np.floor(bf.k / size + 0.5).astype(np.int64)
    return np.unique(tiles, axis=0, return_inverse=True)[1].ravel()


def fit_reduction(bf: BrightField, cal, c10: float, samples: int):
    """(fit_bin, window) for at most ``samples`` samples: the groups binned in k while at
    least :data:`FIT_GROUPS` remain and a tile's width Δk (1/Å) blurs the images by
    λ|C10|Δk ≤ a quarter of the period of the bright field's first transfer zero (Δk ≤
    1/(4·√(λ|C10|)); C10 Å, the calibration's or the search's; at half the period the
    search's peak lost 25–35 % of its height on UiO-66 100 nm at 100 e/Å²), then the scan
    cropped to a central window of at least :data:`FIT_SIDE` positions a side (or the
    scan; beyond ``samples`` if need be: the search's signal grows with the area)."""
    sy, sx = cal.scan_shape
    if samples <= 0:
        return 1, (0, sy, 0, sx)
    dk = bf.bin * max(cal.dk)
    lam_c10 = cal.wavelength * abs(c10)
    fit_bin = 1
    while bf.n_groups * sy * sx > samples * fit_bin**2:
        b = fit_bin + 1
        if lam_c10 > 0 and b * dk > 0.25 / math.sqrt(lam_c10):
            break
        if fit_tiles(bf, cal, b).max() + 1 < FIT_GROUPS:
            break
        fit_bin = b
    n_fit = int(fit_tiles(bf, cal, fit_bin).max()) + 1
    area = max(1, samples // n_fit)
    ny, nx = sy, sx
    if ny * nx > area:
        short = min(sy, sx)
        if short * short >= area:
            ny = nx = max(FIT_SIDE, math.isqrt(area))
        elif sy > sx:
            ny = max(FIT_SIDE, area // sx)
        else:
            nx = max(FIT_SIDE, area // sy)
        ny, nx = min(ny, sy), min(nx, sx)
    r0, c0 = (sy - ny) // 2, (sx - nx) // 2
    return fit_bin, (r0, r0 + ny, c0, c0 + nx)


def fit_stack(stack, means, bf: BrightField, cal, fit_bin: int, window) -> FitStack:
    """:class:`FitStack` of the stack of group images (G, Sy, Sx) (any dtype; ``means``
    (G,) their mean counts per position): one pass over the window of each group."""
    r0, r1, c0, c1 = window
    group_of = fit_tiles(bf, cal, fit_bin)
    n_fit = int(group_of.max()) + 1
    order = np.argsort(group_of, kind="stable")
    starts = np.searchsorted(group_of[order], np.arange(n_fit))
    total = np.empty((n_fit, r1 - r0, c1 - c0), np.float32)
    part = 64  # groups per gather: no float copy of the whole stack
    for f0 in range(0, n_fit, part):
        f1 = min(f0 + part, n_fit)
        g0, g1 = starts[f0], starts[f1] if f1 < n_fit else len(order)
        block = np.asarray(stack[order[g0:g1], r0:r1, c0:c1], np.float32)
        total[f0:f1] = np.add.reduceat(block, starts[f0:f1] - g0, axis=0)
    weights = total.mean(axis=(1, 2), dtype=np.float64)
    live = weights > 0
    rel = np.zeros_like(total)
    rel[live] = total[live] / weights[live, None, None].astype(np.float32) - 1.0
    w = np.asarray(means, np.float64)
    wsum = np.bincount(group_of, w, n_fit)
    k = np.stack([np.bincount(group_of, w * bf.k[:, 0], n_fit),
                  np.bincount(group_of, w * bf.k[:, 1], n_fit)], axis=1)  # fmt: skip
    plain = np.stack([np.bincount(group_of, bf.k[:, 0], n_fit),
                      np.bincount(group_of, bf.k[:, 1], n_fit)], axis=1) \
        / np.bincount(group_of, minlength=n_fit)[:, None]  # fmt: skip
    k = np.where(wsum[:, None] > 0, k / np.where(wsum > 0, wsum, 1.0)[:, None], plain)
    wcal = cal.replace(scan_shape=(r1 - r0, c1 - c0))
    return FitStack(rel, weights, k, order[starts], group_of, wcal, int(fit_bin),
                    tuple(int(v) for v in window))  # fmt: skip


# ------------------------------------------------------------------ the method


def choose_bin(cal, n_bf: int, limit: int) -> int:
    """The smallest bin with at most :data:`MAX_GROUPS` groups and a stack within
    ``limit`` / 4 bytes."""
    scan = math.prod(cal.scan_shape)
    for b in range(1, 64):
        groups = n_bf / b**2
        if groups <= MAX_GROUPS and 4 * groups * scan <= limit / 4:
            return b
    return 64


def tcbf(ds, params: TcbfParameters | None = None, device: str = "cpu",
         memory_limit=None) -> TcbfResult:  # fmt: skip
    """Tilt-corrected bright field of a dataset (anything :func:`as_dataset` takes); see
    the module docstring. Memory Sy·Sx·G·4 bytes (G groups of bin² pixels); one read."""
    params = params or TcbfParameters()
    dset = as_dataset(ds)
    try:
        cal = dset.calibration
        bf = tcbf_groups(cal, dataset_mask(dset), params, memory_limit)
        stack = bright_field_stack(dset, bf, device, memory_limit)
    finally:
        if dset is not ds:
            dset.close()
    return tcbf_from_stack(stack, bf, cal, params, memory_limit_bytes(memory_limit))


def tcbf_groups(cal, mask, params: TcbfParameters, memory_limit=None) -> BrightField:
    """The groups tcBF uses (``params.bin``, or :func:`choose_bin`); checks the scan."""
    if min(cal.scan_shape) < 4:
        raise PtyengineError(f"tcBF needs a scan of at least 4 × 4 positions, got "
                             f"{cal.scan_shape}")  # fmt: skip
    n_bf = bright_field_groups(cal, 1, mask=mask).n_groups
    b = params.bin or choose_bin(cal, n_bf, memory_limit_bytes(memory_limit))
    return bright_field_groups(cal, b, mask=mask)


def tcbf_from_stack(stack, bf: BrightField, cal, params: TcbfParameters,
                    limit: int | None = None) -> TcbfResult:  # fmt: skip
    """tcBF's fit and image from the stack of group images (:func:`tcbf` without the
    read; any dtype, not copied); ``limit``: the memory budget (bytes; None: the default)
    that sets the batches of the shift measurement. The search and the fit run on the
    :class:`FitStack` of at most ``params.fit_samples`` samples (:func:`fit_reduction`;
    made again with finer tiles where the search's C10 asks for them), the image on the
    whole stack."""
    lam, step = cal.wavelength, tuple(cal.scan_step)
    tr = bool(cal.transpose)
    means = stack.mean(axis=(1, 2), dtype=np.float64)
    live = means > 0
    ab = {k: float(cal.aberrations.get(k, 0.0)) for k in ("C10", "C12", "phi12")}
    samples = int(params.fit_samples)
    fs = fit_stack(stack, means, bf, cal, *fit_reduction(bf, cal, ab["C10"], samples))
    fit = fit_aberrations(fs, bf.k_alpha, ab, float(cal.rotation), params, limit,
                          params.search)  # fmt: skip
    fit_bin, window = fit_reduction(bf, cal, fit.searched["C10"], samples)
    if fit_bin < fs.fit_bin:  # the search's C10 blurs the tiles: finer ones, searched near it
        fs = fit_stack(stack, means, bf, cal, fit_bin, window)
        fit = fit_aberrations(fs, bf.k_alpha, fit.searched, float(cal.rotation), params,
                              limit, params.search / 20)  # fmt: skip
    ab, rot = fit.aberrations, fit.rotation
    u = int(params.upsample)
    model = model_shifts(bf.k, ab, rot, tr, lam)
    scales = np.where(live, 1.0 / np.where(live, means, 1.0), 0.0)
    image, _ = aligned(stack, means, model, step, u, index=live, offsets=means, scales=scales)
    sampling = (step[0] / u, step[1] / u)
    phase = ctf_flip(image, ab, sampling, lam) if params.ctf == "flip" else image
    counts = float(means[live].sum() / max(bf.n_groups, 1))
    ny, nx = fs.cal.scan_shape
    extra = {"fit_from": fit.source, "search_C10": fit.found["C10"],
             "search_z": fit.search_z, "fit_r2": float(fit.r2), "fit_bin": fs.fit_bin,
             "fit_scan": [int(ny), int(nx)], "fit_window": list(fs.window),
             "C12_cartesian_A": [ab["C12"] * math.cos(2 * ab["phi12"]),
                                 ab["C12"] * math.sin(2 * ab["phi12"])]}  # fmt: skip
    if params.ctf == "flip" and ab["C10"] == 0 and ab["C12"] == 0:
        extra["no_image"] = (f"in focus (C10 = C12 = 0 Å, from the {fit.source}): sin χ₂ ≡ "
                             "0, the bright field holds no weak-phase contrast")  # fmt: skip
    return TcbfResult(phase.astype(np.float32), image.astype(np.float32), ab, rot, tr,
                      fit.shifts, model_shifts(fs.k, ab, rot, tr, lam), fs.k.copy(),
                      fit.used, fit.residual, sampling, tuple(cal.scan_origin), bf.bin,
                      counts, float(cal.rotation), extra)


@dataclass
class Fit:
    """What :func:`fit_aberrations` found: aberrations, rotation (deg); shifts (F, 2) Å
    measured per fit group, used (F,) bool, residual (Å rms), r2; searched: the
    aberrations the fit started from (the search's, or the calibration's where the search's
    best score is not ``search_z`` standard errors out of its noise); found: the search's
    best; search_z: its score in standard errors (NaN without a search); source: "shifts",
    "search" or "calibration" (the module docstring)."""

    aberrations: dict
    rotation: float
    shifts: np.ndarray
    used: np.ndarray
    residual: float
    r2: float
    searched: dict
    source: str
    found: dict
    search_z: float


def fit_aberrations(fs: FitStack, k_alpha: float, ab: dict, rot: float,
                    params: TcbfParameters, limit=None, span: float = 0.0) -> Fit:  # fmt: skip
    """The C10 search (± ``span`` Å around ``ab``'s) and the staged shift fit on ``fs``,
    from the rotation ``rot`` (deg); the module docstring, steps 1–2."""
    cal = fs.cal
    batch = shift_batch(cal.scan_shape, memory_limit_bytes(limit))
    lam, step = cal.wavelength, tuple(cal.scan_step)
    rel, weights, k = fs.rel, fs.weights, fs.k
    n = len(k)
    live = weights > 0
    kabs = np.hypot(k[:, 0], k[:, 1])
    half = np.arange(n) % 2
    tr = bool(cal.transpose)
    field_a = min(cal.scan_shape[0] * step[0], cal.scan_shape[1] * step[1])

    def score(ab_, rot_):
        return half_correlation(rel, weights, k, ab_, rot_, tr, cal, half, live)

    found = defocus_search(score, ab, rot, span)
    search_z = math.nan
    if span > 0:
        best, error = half_correlation(rel, weights, k, found, rot, tr, cal, half, live,
                                       with_error=True)  # fmt: skip
        search_z = best / error if error > 0 else math.inf
    from_search = span > 0 and search_z >= params.search_z
    if from_search:  # else the data do not hold the defocus: the calibration's stays
        ab = found
    searched = (dict(ab), rot)
    radius = max(4 * max(step), 0.15 * field_a)
    fractions = list(np.linspace(1.0 / params.stages, 1.0, params.stages) * FIT_FRACTION)
    fractions += [FIT_FRACTION] * params.refinements
    shifts = np.zeros((n, 2))
    used = np.zeros(n, bool)
    resid_rms = r2 = float("nan")
    for frac in fractions:
        pred = model_shifts(k, ab, rot, tr, lam)
        inc = live & (kabs <= frac * k_alpha * 1.0001) & overlapping(pred, cal)
        if inc.sum() < 6:
            continue
        meas = np.zeros((n, 2))
        peak = np.full(n, -np.inf)
        for h in (0, 1):
            src, dst = inc & (half != h), inc & (half == h)
            if not src.any() or not dst.any():
                continue
            ref, cover = aligned(rel, weights, pred, step, index=src)
            m, p = measure_shifts(rel[dst], ref, cover, pred[dst], radius, step, batch)
            meas[dst], peak[dst] = m, p
        ok = inc & np.isfinite(peak) & (peak > 0)
        if ok.sum() < 6:
            continue
        fit = fit_model(k[ok], meas[ok], weights[ok], lam, tr, rot, params.astigmatism)
        res = fit[3]
        sigma = 1.4826 * np.median(res) + 1e-9
        keep = res <= 3 * sigma
        if keep.sum() >= 6:
            sel = np.flatnonzero(ok)[keep]
            fit = fit_model(k[sel], meas[sel], weights[sel], lam, tr, rot,
                            params.astigmatism)  # fmt: skip
            ok = np.zeros_like(ok)
            ok[sel] = True
            res = fit[3]
        ab, rot = fit[0], fit[1]
        shifts, used = meas, ok
        resid_rms = float(np.sqrt(np.average(res**2, weights=weights[ok])))
        spread = meas[ok] - np.average(meas[ok], axis=0, weights=weights[ok])
        r2 = 1 - resid_rms**2 / max(np.average((spread**2).sum(1), weights=weights[ok]), 1e-30)
        radius = max(3 * resid_rms, 2 * max(step), 0.1 * field_a)
    source = "shifts"
    if not (r2 >= MIN_R2 and used.sum() >= MIN_GROUPS):  # noise: keep the search's C10
        ab, rot = searched
        source = "search" if from_search else "calibration"
    return Fit(ab, rot, shifts, used, resid_rms, r2, searched[0], source, found,
               float(search_z))  # fmt: skip
