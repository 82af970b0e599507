"""Image-quality metrics for reconstructions: registration, correlation to ground truth, FRC.

Conventions: images are ``(y, x)`` arrays; samplings ``(dy, dx)`` and origins ``(y0, x0)``
are in Å; spatial frequencies k in 1/Å; shifts returned by :func:`register_shift` and taken
by :func:`shift_image` are in pixels, ``(dy, dx)``. A shift ``s`` moves image content by
``+s``: ``shift_image(f, s)(r) = f(r - s)``.

Frames: the ground-truth projected potential of a simulated dataset covers the whole
periodic field with pixel (0, 0) at field coordinate (0, 0) (``truth_origin=(0, 0)``); an
image whose pixel (0, 0) sits at the first scan position has ``image_origin =
calibration.scan_origin`` (see ``preview.ground_truth_window``). Everything runs on the CPU
in float64; CuPy inputs are copied to the host.
"""

from __future__ import annotations

import math

import numpy as np

from .backend import to_numpy
from .errors import PtyengineError

HALFBIT = "halfbit"


def _pair(value, name: str, positive: bool = True) -> tuple[float, float]:
    v = np.broadcast_to(np.asarray(value, dtype=np.float64), (2,))
    if not np.all(np.isfinite(v)) or (positive and np.any(v <= 0)):
        raise PtyengineError(f"{name} must be finite{' and > 0' if positive else ''}, got {value}")
    return float(v[0]), float(v[1])


def _image(a, name: str, real: bool = True) -> np.ndarray:
    a = to_numpy(a)
    if a.ndim != 2:
        raise PtyengineError(f"{name} must be a 2D (y, x) image, got shape {a.shape}")
    if real and np.iscomplexobj(a):
        raise PtyengineError(f"{name} is complex: pass its phase or real part")
    return a.astype(np.complex128 if np.iscomplexobj(a) else np.float64)


def taper_window(shape, kind: str | None = "tukey", alpha: float = 0.25) -> np.ndarray:
    """Separable 2D edge taper: ``"tukey"`` (cosine edges over ``alpha/2`` of each side),
    ``"hann"`` or ``None`` (all ones). Used against the wrap-around edge of non-periodic
    images in registration and FRC."""
    if kind is None:
        return np.ones(shape)
    if kind not in ("tukey", "hann"):
        raise PtyengineError(f"unknown window {kind!r}: use 'tukey', 'hann' or None")
    a = 1.0 if kind == "hann" else alpha
    w1 = []
    for n in shape:
        t = np.linspace(0.0, 1.0, n)
        w = np.ones(n)
        if a > 0:
            edge = np.minimum(t, 1.0 - t) < a / 2
            w[edge] = 0.5 * (1 - np.cos(2 * np.pi * np.minimum(t, 1.0 - t)[edge] / a))
        w1.append(w)
    return np.outer(w1[0], w1[1])


def shift_image(image, shift) -> np.ndarray:
    """``image`` translated by ``shift = (dy, dx)`` pixels (content moves by +shift) with a
    Fourier phase ramp, i.e. periodic (wrap-around) and band-limited. Real in, real out (an
    even-sized axis' Nyquist component is then scaled by cos(π·shift))."""
    img = _image(image, "image", real=False)
    sy, sx = _pair(shift, "shift", positive=False)
    fy = np.fft.fftfreq(img.shape[0])[:, None]
    fx = np.fft.fftfreq(img.shape[1])[None, :]
    out = np.fft.ifft2(np.fft.fft2(img) * np.exp(-2j * np.pi * (fy * sy + fx * sx)))
    return out if np.iscomplexobj(image) else out.real


def register_shift(reference, moving, upsample: int = 20, window: str | None = "tukey",
                   max_shift=None, allow_inversion: bool = False) -> tuple[float, float]:
    """Sub-pixel shift ``(dy, dx)`` in pixels that aligns ``moving`` onto ``reference``:
    ``shift_image(moving, s) ≈ reference`` (so if ``moving = shift_image(reference, d)``
    the result is ``-d``).

    Cross-correlation in Fourier space; the integer peak is refined by a matrix-multiply
    DFT of the cross-power spectrum on a grid of step 1/``upsample`` pixels over ±0.75 px
    around it (Guizar-Sicairos, Thurman & Fienup, Opt. Lett. 33 (2008) 156), then by a
    3-point parabola through the upsampled maximum. ``upsample=1`` gives integer shifts.
    Both images are mean-subtracted and multiplied by ``window`` (see :func:`taper_window`;
    ``None`` for periodic images). ``max_shift`` (pixels, scalar or (y, x)) restricts the
    search to |shift| ≤ max_shift. With ``allow_inversion`` the peak of |correlation| is
    used, so an image with inverted contrast still registers (its correlation is a trough).
    """
    ref, mov = _image(reference, "reference", False), _image(moving, "moving", False)
    if ref.shape != mov.shape:
        raise PtyengineError(f"images differ in shape: {ref.shape} vs {mov.shape}")
    lim = (np.inf, np.inf) if max_shift is None else _pair(max_shift, "max_shift")
    w = taper_window(ref.shape, window)
    f_ref = np.conj(np.fft.fft2((ref - ref.mean()) * w))
    spec = np.fft.fft2((mov - mov.mean()) * w) * f_ref
    cc = np.fft.ifft2(spec).real  # cc[r] = sum_x ref(x) mov(x + r): peaks at -shift
    sy = -np.fft.fftfreq(ref.shape[0], 1.0 / ref.shape[0])[:, None]  # shift of each pixel
    sx = -np.fft.fftfreq(ref.shape[1], 1.0 / ref.shape[1])[None, :]
    allowed = (np.abs(sy) <= lim[0]) & (np.abs(sx) <= lim[1])
    score = np.where(allowed, np.abs(cc) if allow_inversion else cc, -np.inf)
    iy, ix = np.unravel_index(np.argmax(score), cc.shape)
    shift = np.array([sy[iy, 0], sx[0, ix]])
    if upsample <= 1:
        return float(shift[0]), float(shift[1])
    sign = -1.0 if allow_inversion and cc[iy, ix] < 0 else 1.0
    # The taper weights the overlap, which pulls a large shift towards 0; a second pass on
    # the pre-aligned image measures only a small residual, where that bias vanishes.
    for n_pass in range(2):
        if n_pass:
            moved = shift_image(mov, shift)
            spec = np.fft.fft2((moved - moved.mean()) * w) * f_ref
        base = shift if n_pass else np.zeros(2)  # already applied to ``moved``
        shift = base + _refine_peak(spec, shift - base, base, upsample, sign, lim)
    return float(shift[0]), float(shift[1])


def _refine_peak(spec, shift, base, upsample, sign, lim) -> np.ndarray:
    """Shift (pixels) maximising sign·cc near ``shift``, on a 1/upsample grid (matrix DFT
    of the cross-power spectrum ``spec``) refined by a 3-point parabola per axis; only
    shifts with |base + shift| <= lim count."""
    m = int(math.ceil(1.5 * upsample)) | 1  # odd, so ``shift`` itself is a grid point
    offs = (np.arange(m) - m // 2) / upsample
    ry, rx = shift[0] + offs, shift[1] + offs
    ey = np.exp(-2j * np.pi * np.outer(ry, np.fft.fftfreq(spec.shape[0])))
    ex = np.exp(-2j * np.pi * np.outer(rx, np.fft.fftfreq(spec.shape[1])))
    up = sign * (ey @ spec @ ex.T).real
    out_y = np.abs(base[0] + ry) > lim[0] + 1e-9
    out_x = np.abs(base[1] + rx) > lim[1] + 1e-9
    up[out_y[:, None] | out_x[None, :]] = -np.inf
    jy, jx = np.unravel_index(np.argmax(up), up.shape)
    out = np.empty(2)
    for axis, (r, line, j) in enumerate(((ry, up[:, jx], jy), (rx, up[jy, :], jx))):
        d = 0.0
        if 0 < j < m - 1 and np.all(np.isfinite(line[j - 1:j + 2])):
            a, b, c = line[j - 1], line[j], line[j + 1]
            if a - 2 * b + c < 0:
                d = float(np.clip(0.5 * (a - c) / (a - 2 * b + c), -0.5, 0.5))
        out[axis] = r[j] + d / upsample
    return out


def _lowpass(k, k_max: float, edge: float, sigma: float | None = None) -> np.ndarray:
    """Raised-cosine low-pass weights: 1 below (1-edge)·k_max, 0 above k_max; with
    ``sigma`` (Å) times the Gaussian exp(−2π²σ²k²) of a real-space blur of rms σ."""
    if np.isfinite(k_max):
        k0 = (1.0 - edge) * k_max
        t = np.clip((k - k0) / max(k_max - k0, 1e-300), 0.0, 1.0)
        w = np.where(k >= k_max, 0.0, 0.5 * (1 + np.cos(np.pi * t)))
    else:
        w = np.ones_like(k)
    return w if not sigma else w * np.exp(-2 * np.pi**2 * sigma**2 * k**2)


def band_limit(image, sampling, k_max, edge: float = 0.1, periodic: bool = False,
               sigma: float | None = None) -> np.ndarray:  # fmt: skip
    """``image`` low-passed to |k| ≤ ``k_max`` (1/Å; ``None`` or inf: no band limit)
    with a raised-cosine edge from (1 - ``edge``)·k_max to k_max, and with ``sigma`` (Å)
    blurred by a Gaussian of that rms. ``sampling`` (dy, dx) Å. Non-periodic images (the
    default) are mirror-extended to twice their size before the FFT so the wrap-around
    edge does not ring; ``periodic=True`` filters them as they are."""
    img = _image(image, "image", real=False)
    dy, dx = _pair(sampling, "sampling")
    if (k_max is None or np.isinf(k_max)) and not sigma:
        return img.copy()
    if k_max is None or np.isinf(k_max):
        k_max = np.inf
    if not k_max > 0:
        raise PtyengineError(f"k_max must be > 0 (1/Å), got {k_max}")
    ny, nx = img.shape
    ext = img if periodic else np.pad(img, ((0, ny), (0, nx)), mode="symmetric")
    ky = np.fft.fftfreq(ext.shape[0], dy)[:, None]
    kx = np.fft.fftfreq(ext.shape[1], dx)[None, :]
    w = _lowpass(np.hypot(ky, kx), k_max, edge, sigma)
    out = np.fft.ifft2(np.fft.fft2(ext) * w)[:ny, :nx]
    return out if np.iscomplexobj(img) else out.real


def ncc(a, b, mask=None) -> float:
    """Pearson correlation coefficient of two real images (optionally over ``mask``):
    mean-subtracted and normalised, in [-1, 1], signed. NaN if either is constant."""
    a, b = _image(a, "a"), _image(b, "b")
    if a.shape != b.shape:
        raise PtyengineError(f"images differ in shape: {a.shape} vs {b.shape}")
    if mask is not None:
        mask = np.asarray(to_numpy(mask), dtype=bool)
        a, b = a[mask], b[mask]
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(np.sum(a * a)) * float(np.sum(b * b)))
    return float(np.sum(a * b) / den) if den > 0 else float("nan")


def truth_on_grid(truth, truth_sampling, truth_origin, grid_shape, grid_sampling,
                  grid_origin, k_max=None, edge: float = 0.1) -> np.ndarray:
    """The periodic ground-truth image resampled onto another grid, by evaluating its
    Fourier series (band-limited trigonometric, i.e. periodic-sinc, interpolation).

    ``truth`` covers one period of the field with pixel (0, 0) at ``truth_origin``; the
    target grid has ``grid_shape`` pixels with pixel (0, 0) at ``grid_origin``; samplings
    (dy, dx) and origins (y0, x0) in Å, all in the field frame. Truth frequencies beyond
    the target grid's Nyquist frequency along either axis are dropped (an ideal anti-alias
    low-pass when the target is coarser); with ``k_max`` (1/Å) the result is further
    low-passed as by :func:`band_limit` (exactly, since the truth is periodic).
    Content below both Nyquist limits is reproduced exactly at any position.
    Cost ~ grid pixels × kept frequencies per axis (separable matrix products).
    """
    gdy, gdx = _pair(grid_sampling, "grid_sampling")
    series = _truth_series(truth, truth_sampling, truth_origin, (gdy, gdx), k_max, edge)
    return _evaluate(series, grid_shape, (gdy, gdx), grid_origin)


def _truth_series(truth, sampling, origin, grid_sampling, k_max, edge, sigma=None):
    """Fourier coefficients of the periodic truth kept for ``grid_sampling`` (see
    :func:`truth_on_grid`): (coefficients, ky, kx, origin, complex?)."""
    t = _image(truth, "truth", real=False)
    tdy, tdx = _pair(sampling, "truth_sampling")
    k_lim = np.inf if k_max is None else float(k_max)
    if not k_lim > 0:
        raise PtyengineError(f"k_max must be > 0 (1/Å), got {k_max}")
    ky = np.fft.fftfreq(t.shape[0], tdy)
    kx = np.fft.fftfreq(t.shape[1], tdx)
    keep_y = np.abs(ky) <= (1 + 1e-9) * min(0.5 / grid_sampling[0], k_lim)
    keep_x = np.abs(kx) <= (1 + 1e-9) * min(0.5 / grid_sampling[1], k_lim)
    ky, kx = ky[keep_y], kx[keep_x]
    coef = (np.fft.fft2(t) / t.size)[np.ix_(keep_y, keep_x)]
    if np.isfinite(k_lim) or sigma:
        coef = coef * _lowpass(np.hypot(ky[:, None], kx[None, :]), k_lim, edge, sigma)
    return coef, ky, kx, _pair(origin, "truth_origin", positive=False), np.iscomplexobj(t)


def _evaluate(series, shape, sampling, origin) -> np.ndarray:
    coef, ky, kx, (ty0, tx0), is_complex = series
    gny, gnx = (int(n) for n in shape)
    if gny < 1 or gnx < 1:
        raise PtyengineError(f"grid_shape must be positive, got {shape}")
    gy0, gx0 = _pair(origin, "grid_origin", positive=False)
    y = gy0 + sampling[0] * np.arange(gny) - ty0
    x = gx0 + sampling[1] * np.arange(gnx) - tx0
    out = np.exp(2j * np.pi * np.outer(y, ky)) @ coef @ np.exp(2j * np.pi * np.outer(kx, x))
    return out if is_complex else out.real


def compare_to_truth(image, image_sampling, image_origin, truth, truth_sampling,
                     truth_origin=(0.0, 0.0), k_max=None, register: bool = True,
                     max_shift=None, border: int = 0, sigma: float | None = None,
                     frc_threshold=None) -> dict:
    """Signed Pearson correlation of a real image (e.g. a reconstructed phase) with the
    ground truth, after bringing the truth onto the image grid.

    Both are band-limited to ``k_max`` (1/Å, the data's information limit; ``None``: none
    beyond the image grid's Nyquist) — the truth exactly in its periodic frame, the image
    with mirror extension (:func:`band_limit`). With ``register``, the sub-pixel
    displacement of the image relative to the truth (|shift| ≤ ``max_shift`` Å if given,
    scalar or (y, x))
    is found with :func:`register_shift` (inverted contrast allowed) and the truth is
    re-evaluated at the displaced positions (no wrap-around). The NCC is taken over the
    image minus ``border`` pixels on each side; inverted contrast gives a negative value.

    With ``sigma`` (Å) the NCC is also taken after a Gaussian blur of that rms applied to
    both (at the same registration): the structure a user looks for at low dose, where
    the finest detail is noise (DESIGN.md: σ = 1 Å).

    Returns {"ncc": float, "shift_A": (dy, dx) with image(r) ≈ truth(r - shift_A),
    "k_max": the band limit used (1/Å; the image's Nyquist frequency min(1/2dy, 1/2dx)
    when ``k_max`` is None)}, and with ``sigma`` also "ncc_lowpass" and "sigma_A".

    With ``frc_threshold`` (``"halfbit"`` or a number such as 1/7) also "frc_A": the
    resolution (Å) of the image against the truth (:func:`frc_resolution` over the same
    pixels, at the same registration), the image as it is and the truth cut only by the
    image grid's Nyquist frequency (not by ``k_max``: the FRC finds where the image stops
    following the truth), taken where the FRC drops below for good (``crossing="last"``:
    SSB and tcBF transfer little at the lowest frequencies). Signed: inverted contrast
    never reaches the threshold (inf).
    """
    img = _image(image, "image")
    dy, dx = _pair(image_sampling, "image_sampling")
    oy, ox = _pair(image_origin, "image_origin", positive=False)
    border = int(border)
    if border < 0 or 2 * border >= min(img.shape):
        raise PtyengineError(f"border={border} leaves no pixels of a {img.shape} image")
    img_b = band_limit(img, (dy, dx), k_max)

    series = _truth_series(truth, truth_sampling, truth_origin, (dy, dx), k_max, 0.1)

    def truth_at(shift_a):
        return _evaluate(series, img.shape, (dy, dx), (oy - shift_a[0], ox - shift_a[1]))

    shift = (0.0, 0.0)
    t_b = truth_at(shift)
    if register:
        lim = None if max_shift is None else np.divide(_pair(max_shift, "max_shift"), (dy, dx))
        s = register_shift(img_b, t_b, max_shift=lim, allow_inversion=True)
        shift = (s[0] * dy, s[1] * dx)
        t_b = truth_at(shift)
    inner = (slice(border, img.shape[0] - border), slice(border, img.shape[1] - border))
    k_used = min(0.5 / dy, 0.5 / dx) if k_max is None else float(k_max)
    out = {"ncc": ncc(img_b[inner], t_b[inner]), "shift_A": shift, "k_max": k_used}
    if sigma:
        img_g = band_limit(img, (dy, dx), k_max, sigma=sigma)
        series_g = _truth_series(truth, truth_sampling, truth_origin, (dy, dx), k_max, 0.1,
                                 sigma)  # fmt: skip
        t_g = _evaluate(series_g, img.shape, (dy, dx), (oy - shift[0], ox - shift[1]))
        out.update(ncc_lowpass=ncc(img_g[inner], t_g[inner]), sigma_A=float(sigma))
    if frc_threshold is not None:
        series_f = _truth_series(truth, truth_sampling, truth_origin, (dy, dx), None, 0.1)
        t_f = _evaluate(series_f, img.shape, (dy, dx), (oy - shift[0], ox - shift[1]))
        out["frc_A"] = frc_resolution(img[inner], t_f[inner], (dy, dx), frc_threshold,
                                      crossing="last")
    return out


def _frc_rings(a, b, sampling, n_bins, window):
    a, b = _image(a, "a"), _image(b, "b")
    if a.shape != b.shape:
        raise PtyengineError(f"images differ in shape: {a.shape} vs {b.shape}")
    dy, dx = _pair(sampling, "sampling")
    w = taper_window(a.shape, window)
    fa = np.fft.fft2((a - a.mean()) * w)
    fb = np.fft.fft2((b - b.mean()) * w)
    k = np.hypot(np.fft.fftfreq(a.shape[0], dy)[:, None], np.fft.fftfreq(a.shape[1], dx)[None, :])
    k_nyq = min(0.5 / dy, 0.5 / dx)
    if n_bins is None:
        n_bins = max(1, int(k_nyq / max(1 / (a.shape[0] * dy), 1 / (a.shape[1] * dx))))
    ring = np.rint(k / k_nyq * n_bins).astype(np.int64).ravel() - 1  # ring i: k ≈ (i+1)·dk
    use = (ring >= 0) & (ring < n_bins)
    ring = ring[use]

    def total(v):
        return np.bincount(ring, weights=v.ravel()[use], minlength=n_bins)

    num = total((fa * np.conj(fb)).real)
    den = np.sqrt(total(np.abs(fa) ** 2) * total(np.abs(fb) ** 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(den > 0, num / den, np.nan)
    centres = np.arange(1, n_bins + 1) * k_nyq / n_bins
    return centres, values, np.bincount(ring, minlength=n_bins), k_nyq


def frc(a, b, sampling, n_bins=None, window: str | None = "tukey"):
    """Fourier ring correlation of two real images of the same object (e.g. from two
    halves of the data). Returns ``(k, frc)``: ring centres k_i = i·Δk (1/Å), i = 1 …
    n_bins, up to the Nyquist frequency min(1/2dy, 1/2dx), each ring holding the pixels
    with |k| within ±Δk/2, and the FRC per ring (NaN for an empty ring); k = 0 is left out.
    Images are mean-subtracted and tapered by ``window`` first. Default Δk: the coarser
    Fourier pixel, max(1/(ny·dy), 1/(nx·dx))."""
    k, values, _, _ = _frc_rings(a, b, sampling, n_bins, window)
    return k, values


def frc_resolution(a, b, sampling, threshold=HALFBIT, n_bins=None,
                   window: str | None = "tukey", crossing: str = "first") -> float:
    """Resolution (Å) = 1/k where the FRC first drops below ``threshold``: ``"halfbit"``
    (van Heel & Schatz, J. Struct. Biol. 151 (2005) 250: T = (0.2071 + 1.9102/√n) /
    (1.2071 + 0.9102/√n), n pixels in the ring, not corrected for the taper) or a fixed
    value such as 1/7. The crossing is interpolated linearly between rings. Returns the
    Nyquist resolution 1/k_nyq = 2·max(dy, dx) when the FRC never drops below the threshold
    (a bound: the sampling limits it), and ``np.inf`` when it is below from the first ring.
    ``crossing="last"``: where it drops below for good, for images that lack the lowest
    frequencies (SSB, tcBF) compared with a ground truth: the crossing after the last
    ring that is at or above the threshold and significant (FRC ≥ 3·√(2/n), three
    standard deviations of the FRC of unrelated images, n pixels in the ring); inf when
    no ring is.
    """
    k, values, n, k_nyq = _frc_rings(a, b, sampling, n_bins, window)
    if isinstance(threshold, str):
        if threshold != HALFBIT:
            raise PtyengineError(f"unknown threshold {threshold!r}: use 'halfbit' or a number")
        rn = np.sqrt(np.maximum(n, 1))
        thr = (0.2071 + 1.9102 / rn) / (1.2071 + 0.9102 / rn)
    else:
        thr = np.full(k.shape, float(threshold))
    ok = np.isfinite(values)
    k, d = k[ok], values[ok] - thr[ok]
    significant = values[ok] >= 3 * np.sqrt(2 / np.maximum(n[ok], 1))
    if crossing not in ("first", "last"):
        raise PtyengineError(f"unknown crossing {crossing!r}: use 'first' or 'last'")
    below = np.flatnonzero(d < 0)
    if crossing == "last":
        above = np.flatnonzero((d >= 0) & significant)
        if above.size == 0:
            return float(np.inf)
        below = below[below > above[-1]]
    if below.size == 0:
        return 1.0 / k_nyq
    i = int(below[0])
    if i == 0:
        return float(np.inf)
    k_cross = k[i - 1] + (k[i] - k[i - 1]) * d[i - 1] / (d[i - 1] - d[i])
    return float(1.0 / k_cross)
