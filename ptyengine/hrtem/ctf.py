"""HRTEM image formation and CTF correction of weak-phase images.

Units: lengths Å (defocus C10, Cs = C30, focal spread Δ, pixels), angles mrad, energy eV,
spatial frequencies k in 1/Å, doses e/Å² (``dose``) or e/pixel (``dose_per_pixel``).

Sign convention: the objective lens acts on the exit wave ψ as Ψ_img(k) = Ψ(k)·exp(−iχ(k))
with χ from :func:`ptyengine.physics.chi` (Krivanek names, χ ⊃ πλC10k² + ½πCsλ³k⁴), the
same exp(−iχ) as the probe. exp(−iπλC10k²) is forward Fresnel propagation by C10, so the
image shows the plane C10 *below* the exit surface: **C10 < 0 is underfocus** (a weaker
lens, focused upstream of the exit surface), the HRTEM habit. Scherzer defocus with Cs > 0
is C10 = −√(4/3 Cs λ) (:func:`scherzer_defocus`; −56.1 nm at 300 kV, Cs = 1.2 mm).

Weak-phase transfer: for ψ = exp(iσV_proj) ≈ 1 + iσV the image is, to first order,

    I(k) = δ(k) + 2σ V(k) · sin χ(k) · E_t(k) E_s(k) A(k),

so :func:`weak_phase_ctf` returns sin χ · E_t · E_s · A. At Scherzer defocus sin χ < 0
over the passband: atoms (V > 0) are dark.

Partial coherence (Kirkland, Advanced Computing in Electron Microscopy, 2nd ed. 2010,
sec. 3.3), both as envelopes on the wave (the *quasi-coherent* approximation: exact for
the linear interference with the unscattered beam, approximate for the non-linear terms
of a strong phase object):
- temporal: a Gaussian spread of defocus of rms Δ (Å) gives E_t = exp(−½(πλΔ)²k⁴);
- spatial: a Gaussian spread of illumination directions of 1/e semi-angle α (mrad) gives
  E_s = exp(−(α/(2λ))² |∇_k χ|²) (χ in rad; for round aberrations this is Kirkland's
  exp[−(πα/λ)²(Csλ³k³ + C10λk)²]).
The *information limit* is taken where E_t falls to exp(−2): k = (2/(πλΔ))^½.

Corrections of a recorded image I: phase flipping IFFT[(I − Ī)(k)·sign(H(k))] and the
Wiener filter IFFT[(I − Ī)(k)·H/(H² + 1/SNR)] with H the weak-phase CTF (envelopes
included), both ∝ V band-limited. :func:`fit_defocus` fits C10 (Cs given) to the
Thon rings of an image of an amorphous (aperiodic) specimen.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from .. import physics
from ..errors import PtyengineError
from ..metrics import taper_window

MM = 1e7  # Å per mm (Cs on the command line is in mm)


@dataclass(frozen=True)
class Optics:
    """The objective lens and illumination. energy eV; defocus = C10 Å (< 0 underfocus);
    cs = C30 Å; focal_spread Δ Å (rms); convergence α mrad (1/e semi-angle of the
    illumination spread); aperture: objective aperture semi-angle mrad (None: none);
    aberrations: further Krivanek coefficients (Å, angles rad)."""

    energy: float = 300e3
    defocus: float = 0.0
    cs: float = 0.0
    focal_spread: float = 0.0
    convergence: float = 0.0
    aperture: float | None = None
    aberrations: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("energy", "defocus", "cs", "focal_spread", "convergence"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value)):
                raise PtyengineError(f"optics: {name} must be a finite number, got {value!r}")
        if self.energy <= 0:
            raise PtyengineError(f"optics: energy must be positive (eV), got {self.energy}")
        for name in ("focal_spread", "convergence"):
            if getattr(self, name) < 0:
                raise PtyengineError(f"optics: {name} must be >= 0, got {getattr(self, name)}")
        if self.aperture is not None and not self.aperture > 0:
            raise PtyengineError(f"optics: aperture must be > 0 mrad, got {self.aperture}")

    @property
    def wavelength(self) -> float:
        return physics.wavelength(self.energy)

    def coefficients(self) -> dict[str, float]:
        """Krivanek coefficients for :func:`physics.chi` (C10 = defocus, C30 = cs)."""
        return {**self.aberrations, "C10": float(self.defocus), "C30": float(self.cs)}

    def information_limit(self) -> float:
        """k (1/Å) where the temporal envelope is exp(−2); inf without focal spread."""
        if self.focal_spread == 0:
            return math.inf
        return math.sqrt(2 / (math.pi * self.wavelength * self.focal_spread))


def scherzer_defocus(energy: float, cs: float) -> float:
    """Scherzer defocus C10 (Å) = −√(4/3 · Cs λ) for Cs (Å) > 0 (underfocus, negative)."""
    return -math.sqrt(4 / 3 * cs * physics.wavelength(energy))


def _grid(gpts, sampling):
    ky, kx = physics.spatial_frequencies(tuple(gpts), tuple(sampling))
    return np.broadcast_arrays(ky, kx)


def chi_gradient(ky, kx, optics: Optics):
    """|∇_k χ| (rad·Å) by central differences of :func:`physics.chi` (step 1e-4 1/Å)."""
    h = 1e-4
    ab, e = optics.coefficients(), optics.energy
    gy = (physics.chi(ky + h, kx, e, ab) - physics.chi(ky - h, kx, e, ab)) / (2 * h)
    gx = (physics.chi(ky, kx + h, e, ab) - physics.chi(ky, kx - h, e, ab)) / (2 * h)
    return np.hypot(gy, gx)


def temporal_envelope(k, optics: Optics):
    """E_t(k) = exp(−½(πλΔ)²k⁴) for |k| in 1/Å (Δ = optics.focal_spread, Å)."""
    k = np.asarray(k, dtype=np.float64)
    return np.exp(-0.5 * (math.pi * optics.wavelength * optics.focal_spread) ** 2 * k**4)


def spatial_envelope(ky, kx, optics: Optics):
    """E_s(k) = exp(−(α/(2λ))²|∇_k χ|²) (α = optics.convergence in mrad, as rad)."""
    if optics.convergence == 0:
        return np.ones(np.broadcast(ky, kx).shape)
    q = optics.convergence * 1e-3 / (2 * optics.wavelength)
    return np.exp(-(q**2) * chi_gradient(ky, kx, optics) ** 2)


def aperture_mask(k, optics: Optics):
    """Objective aperture: 1 for λ|k| below optics.aperture (mrad), else 0."""
    if optics.aperture is None:
        return np.ones_like(np.asarray(k, dtype=np.float64))
    return (np.asarray(k) * optics.wavelength <= optics.aperture * 1e-3).astype(np.float64)


def envelope(ky, kx, optics: Optics):
    """E_t · E_s · A at (ky, kx) in 1/Å."""
    k = np.hypot(ky, kx)
    return temporal_envelope(k, optics) * spatial_envelope(ky, kx, optics) * aperture_mask(
        k, optics)


def weak_phase_ctf(gpts, sampling, optics: Optics) -> np.ndarray:
    """sin χ(k) · E_t E_s A on the FFT-ordered (ny, nx) grid of ``sampling`` (dy, dx) Å."""
    ky, kx = _grid(gpts, sampling)
    chi = physics.chi(ky, kx, optics.energy, optics.coefficients())
    return np.sin(chi) * envelope(ky, kx, optics)


def wave_transfer(gpts, sampling, optics: Optics) -> np.ndarray:
    """exp(−iχ(k)) · E_t E_s A (complex128, FFT order): the quasi-coherent transfer."""
    ky, kx = _grid(gpts, sampling)
    chi = physics.chi(ky, kx, optics.energy, optics.coefficients())
    return np.exp(-1j * chi) * envelope(ky, kx, optics)


def exit_wave_image(exit_wave, sampling, optics: Optics) -> np.ndarray:
    """Noise-free image |IFFT[Ψ·exp(−iχ)·E_t E_s A]|² (float64, (ny, nx)) of any exit wave
    ``exit_wave`` (ny, nx) sampled at ``sampling`` (dy, dx) Å, on its own (periodic) grid;
    a vacuum wave of modulus 1 gives 1 everywhere."""
    psi = np.asarray(exit_wave)
    if psi.ndim != 2:
        raise PtyengineError(f"exit wave must be a 2D (y, x) array, got shape {psi.shape}")
    if not np.all(np.isfinite(psi)):
        raise PtyengineError("exit wave holds NaN or infinite values")
    t = wave_transfer(psi.shape, sampling, optics)
    return np.abs(np.fft.ifft2(np.fft.fft2(psi.astype(np.complex128)) * t)) ** 2


def camera_frames(image, sampling, pixel: float, shape, shifts=None,
                  dose_per_pixel: float | None = None, seed: int = 0) -> np.ndarray:
    """Frames (N, ny, nx) float32 recorded by a camera of pixel ``pixel`` (Å) and ``shape``
    (ny, nx) from a periodic noise-free ``image`` (sampling (dy, dx) Å, vacuum = 1).

    Each camera pixel integrates the image over its area: the image's Fourier series
    Σ_g I_g exp(2πi g·r) (g on the image's periodic grid) times the pixel's box transfer
    sinc(g_y p) sinc(g_x p), evaluated at the pixel centres ((j + ½)p − d) for the frame's
    shift d = ``shifts[i]`` (pixels, (dy, dx): the content moves by +d; exact for any
    sub-pixel shift and any frame size). ``dose_per_pixel`` (e/pixel) gives Poisson counts
    of mean intensity × dose (seeded per frame by (seed, frame)); None gives intensities.
    """
    image = np.asarray(image, dtype=np.float64)
    shifts = np.zeros((1, 2)) if shifts is None else np.asarray(shifts, dtype=np.float64)
    if shifts.ndim != 2 or shifts.shape[1] != 2:
        raise PtyengineError(f"shifts must be (N, 2) pixels (dy, dx), got shape {shifts.shape}")
    ny, nx = (int(v) for v in shape)
    coef = np.fft.fft2(image) / image.size
    gy = np.fft.fftfreq(image.shape[0], sampling[0])
    gx = np.fft.fftfreq(image.shape[1], sampling[1])
    coef = coef * np.sinc(gy * pixel)[:, None] * np.sinc(gx * pixel)[None, :]
    keep_y, keep_x = np.abs(coef).max(axis=1) > 0, np.abs(coef).max(axis=0) > 0
    coef, gy, gx = coef[keep_y][:, keep_x], gy[keep_y], gx[keep_x]
    yc, xc = (np.arange(ny) + 0.5) * pixel, (np.arange(nx) + 0.5) * pixel
    out = np.empty((len(shifts), ny, nx), np.float32)
    for i, (dy, dx) in enumerate(shifts):
        ey = np.exp(2j * np.pi * np.outer(yc - dy * pixel, gy))
        ex = np.exp(2j * np.pi * np.outer(xc - dx * pixel, gx))
        frame = np.clip((ey @ coef @ ex.T).real, 0, None)
        if dose_per_pixel is not None:
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x4872, i]))
            frame = rng.poisson(frame * dose_per_pixel)
        out[i] = frame
    return out


def _centred(image) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2:
        raise PtyengineError(f"image must be 2D (y, x), got shape {img.shape}")
    if not np.all(np.isfinite(img)):
        raise PtyengineError("image holds NaN or infinite values")
    if np.ptp(img) == 0:
        raise PtyengineError("image is constant: it holds no signal to correct")
    return img, np.fft.fft2(img - img.mean())


def phase_flip(image, pixel: float, optics: Optics) -> np.ndarray:
    """Phase-flipped image IFFT[(I − Ī)·sign(sin χ · E)] (∝ +V where the CTF is not 0)."""
    img, spec = _centred(image)
    h = weak_phase_ctf(img.shape, (pixel, pixel), optics)
    return np.fft.ifft2(spec * np.sign(h)).real


def wiener_filter(image, pixel: float, optics: Optics, snr: float) -> np.ndarray:
    """Wiener-filtered image IFFT[(I − Ī)·H/(H² + 1/SNR)], H = sin χ·E_t E_s A; ``snr``
    is the signal-to-noise power ratio (larger: closer to a plain inverse)."""
    if not (math.isfinite(snr) and snr > 0):
        raise PtyengineError(f"Wiener SNR must be a positive number, got {snr}")
    img, spec = _centred(image)
    h = weak_phase_ctf(img.shape, (pixel, pixel), optics)
    return np.fft.ifft2(spec * h / (h * h + 1 / snr)).real


# --------------------------------------------------------------- Thon-ring defocus fit


def power_spectrum(image) -> np.ndarray:
    """|FFT[(I − Ī)·w]|² of a 2-D image with a Hann window w (FFT order)."""
    img = np.asarray(image, dtype=np.float64)
    return np.abs(np.fft.fft2((img - img.mean()) * taper_window(img.shape, "hann"))) ** 2


def radial_profile(image, pixel: float, n_bins: int | None = None, power=None):
    """Rotational average of the power spectrum of ``image`` (Hann-windowed, mean removed;
    ``power``: that spectrum when already computed): (k centres 1/Å, power) over
    0 < k ≤ Nyquist in bins of one Fourier pixel."""
    p = power_spectrum(image) if power is None else power
    ky, kx = _grid(p.shape, (pixel, pixel))
    k = np.hypot(ky, kx)
    k_nyq = 0.5 / pixel
    n_bins = n_bins or min(p.shape) // 2
    edges = np.linspace(0, k_nyq, n_bins + 1)
    idx = np.digitize(k.ravel(), edges) - 1
    ok = (idx >= 0) & (idx < n_bins)
    sums = np.bincount(idx[ok], p.ravel()[ok], n_bins)
    counts = np.bincount(idx[ok], minlength=n_bins)
    return 0.5 * (edges[1:] + edges[:-1]), sums / np.maximum(counts, 1)


@dataclass
class DefocusFit:
    """Result of :func:`fit_defocus`: defocus C10 and cs C30 (as given) in Å, the score
    (weighted correlation of the background-flattened Thon profile with sin²χ·E²) and the
    k band (1/Å) used."""

    defocus: float
    cs: float
    score: float
    k_range: tuple[float, float]


def _smooth(values, width: int = 9):
    """Running mean over ``width`` bins (edges extended)."""
    pad = width // 2
    ext = np.pad(values, pad, mode="edge")
    return np.convolve(ext, np.ones(width) / width, mode="valid")


#: Largest share of the band's power that sharp peaks may hold for a Thon-ring fit.
MAX_SPOT_FRACTION = 0.5


def lattice_power_fraction(image, pixel: float, k_range, power=None) -> float:
    """Share of the (Hann-windowed) power spectrum in ``k_range`` (1/Å) held by pixels
    above 10 × the median of their ring one Fourier pixel wide: ~0 for the smooth Thon
    rings of an amorphous specimen (exponential speckle exceeds 10 × its median with
    probability 2^-10), most of it for a crystal's lattice reflections. ``power``: the
    spectrum (:func:`power_spectrum`) when already computed."""
    from .drift import ring_background, ring_index

    p = power_spectrum(image) if power is None else power
    ky, kx = _grid(p.shape, (pixel, pixel))
    k = np.hypot(ky, kx)
    band = (k >= k_range[0]) & (k <= k_range[1]) & (ring_index(p.shape) > 0)
    spots = band & (p > 10 * ring_background(p))
    total = p[band].sum()
    return float(p[spots].sum() / total) if total > 0 else 0.0


def fit_defocus(image, pixel: float, optics: Optics, defocus_range=(-20000.0, 0.0),
                k_range=None) -> DefocusFit:
    """Fit C10 (Å) to the Thon rings of ``image`` (pixel Å), Cs and the envelopes given.

    The rotational average P of the power spectrum (Hann window, bins one Fourier pixel
    wide), as (P − P̄)/P̄ with P̄ its running mean over 9 bins (the smooth background), is
    correlated with M − M̄ for the model M = sin²χ(k)·E², binned exactly as the data are
    (averaged over the pixels of each bin: rings finer than a bin wash out in both), each
    bin weighted by its pixel count (the speckle of a single image falls as 1/√n), over
    ``k_range`` (default 0.05 1/Å to 0.9 × min(Nyquist, information limit)). A grid search
    over ``defocus_range`` (steps of a quarter ring at the band's top) is refined by a
    bounded scalar minimiser. sin²χ is even in C10 for Cs = 0, so the sign comes from
    ``defocus_range`` (underfocus, C10 < 0, by default). Measured on simulated amorphous
    weak-phase images (256², 0.4 Å, 50 e/pixel; tests/test_hrtem_ctf.py): −1213 Å for
    −1234 Å (Cs 1.2 mm) and −809 Å for −800 Å (Cs 2 mm), 1–2 %. Cs is not fitted: a joint
    (C10, Cs) fit tried during development returned 1.5 mm for 1.2 mm and 0.5 mm for 2 mm.
    An image whose band holds more than half its power in sharp peaks
    (:func:`lattice_power_fraction`: a crystal) is refused: its rotational average shows
    reflections, not rings.
    """
    from scipy import optimize

    img = np.asarray(image, dtype=np.float64)
    power = power_spectrum(img)  # one FFT for the profile and the crystal check
    k, prof = radial_profile(img, pixel, power=power)
    lo, hi = k_range or (0.05, 0.9 * min(0.5 / pixel, optics.information_limit()))
    spot = lattice_power_fraction(img, pixel, (lo, hi), power=power)
    if spot > MAX_SPOT_FRACTION:
        raise PtyengineError(
            f"{100 * spot:.0f} % of the power spectrum between {lo:.3g} and {hi:.3g} 1/Å is in "
            "sharp lattice reflections: Thon rings need an amorphous (non-periodic) area; "
            "crop one, or give --defocus")
    sel = (k >= lo) & (k <= hi)
    if sel.sum() < 12:
        raise PtyengineError(f"the k band {lo:.3g}-{hi:.3g} 1/Å holds {sel.sum()} profile "
                             "bins; a larger image or a finer pixel is needed to fit defocus")
    background = _smooth(prof)
    target = ((prof - background) / np.maximum(background, 1e-300))[sel]

    # the model is binned exactly as the data are: sin²χ·E² at each distinct |k| of the
    # grid, averaged over the pixels of each bin (rings finer than a bin wash out in both)
    ky, kx = _grid(img.shape, (pixel, pixel))
    k2, inverse = np.unique(np.round((ky**2 + kx**2).ravel(), 12), return_inverse=True)
    kk = np.sqrt(k2)
    edges = np.linspace(0, 0.5 / pixel, len(k) + 1)
    idx = np.clip(np.digitize(kk, edges) - 1, -1, len(k))
    counts = np.bincount(inverse.ravel(), minlength=len(kk)).astype(float)
    ok = (idx >= 0) & (idx < len(k))
    per_bin = np.maximum(np.bincount(idx[ok], counts[ok], len(k)), 1)

    wt = per_bin[sel] / per_bin[sel].sum()  # bins weighted by their pixels (speckle ∝ 1/√n)
    tc = target - np.sum(wt * target)

    def score(c10, cs):
        o = replace(optics, defocus=float(c10), cs=float(cs))
        ch = physics.chi(kk[ok], np.zeros(ok.sum()), o.energy, o.coefficients())
        m2 = np.sin(ch) ** 2 * envelope(kk[ok], np.zeros(ok.sum()), o) ** 2
        model = np.bincount(idx[ok], m2 * counts[ok], len(k)) / per_bin
        m = (model - _smooth(model))[sel]
        mc = m - np.sum(wt * m)
        return float(np.sum(wt * mc * tc) / np.sqrt(np.sum(wt * mc * mc) * np.sum(wt * tc * tc)))

    lam = optics.wavelength
    step = 0.25 / (lam * hi**2)  # a quarter of a ring at the band's top
    grid = np.arange(defocus_range[0], defocus_range[1] + step, step)
    _, d0 = max((score(d, optics.cs), d) for d in grid)
    res = optimize.minimize_scalar(lambda d: -score(d, optics.cs),
                                   bounds=(d0 - step, d0 + step), method="bounded",
                                   options={"xatol": 0.5})
    d, c = float(res.x), float(optics.cs)
    return DefocusFit(d, c, score(d, c), (float(lo), float(hi)))
