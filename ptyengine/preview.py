"""Quick looks at a dataset: virtual detector images, mean pattern, PNG previews.

Everything streams over scan-row blocks, so it works on datasets larger than memory.
PNG files are written atomically (to a temporary name, then renamed).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def detector_angles(cal) -> np.ndarray:
    """Scattering angle (mrad) of every detector pixel, from the calibration."""
    ny, nx = cal.detector_shape
    ky = (np.arange(ny) - cal.detector_center[0]) * cal.dk[0]
    kx = (np.arange(nx) - cal.detector_center[1]) * cal.dk[1]
    return np.hypot(ky[:, None], kx[None, :]) * cal.wavelength * 1e3


def virtual_images(ds, detectors: dict[str, tuple[float, float]]):
    """Images (scan_y, scan_x) of annular detectors {name: (inner, outer) mrad}, plus the
    mean diffraction pattern; one pass over the data."""
    cal = ds.calibration
    angle = detector_angles(cal)
    masks = {n: ((angle >= lo) & (angle < hi)).astype(np.float64) for n, (lo, hi) in
             detectors.items()}  # fmt: skip
    out = {n: np.zeros(cal.scan_shape) for n in detectors}
    mean = np.zeros(cal.detector_shape)
    for row0, block in ds.iter_row_blocks():
        block = np.asarray(block, dtype=np.float64)
        rows = slice(row0, row0 + block.shape[0])
        for n, m in masks.items():
            out[n][rows] = np.tensordot(block, m, axes=([2, 3], [0, 1]))
        mean += block.sum(axis=(0, 1))
    return out, mean / (cal.scan_shape[0] * cal.scan_shape[1])


def unwrap_phase(phase) -> np.ndarray:
    """The phase (rad) with its 2π jumps removed: least-squares unwrapping (Ghiglia &
    Romero, J. Opt. Soc. Am. A 11, 107 (1994)) and then the congruence step.

    The wrapped neighbour differences W(Δφ) (W: into [−π, π)) give ρ = ∇·W(∇φ); the
    least-squares φ_ls solves ∇²φ_ls = ρ with Neumann boundaries, diagonal in the DCT-II
    basis: φ̂_ls(i, j) = ρ̂(i, j) / (2 cos(πi/M) + 2 cos(πj/N) − 4). Adding to ``phase``
    the multiple of 2π nearest to φ_ls − phase keeps every pixel's wrapped value: where
    the true phase changes by less than π between neighbours the result is it, up to one
    constant 2π k (chosen so that the median lies in [−π, π))."""
    from scipy.fft import dctn, idctn

    phi = np.asarray(phase, dtype=np.float64)
    if phi.ndim != 2 or min(phi.shape) < 2:
        return phi.copy()

    def wrap(a):
        return (a + np.pi) % (2 * np.pi) - np.pi

    dy = np.zeros_like(phi)
    dx = np.zeros_like(phi)
    dy[:-1] = wrap(np.diff(phi, axis=0))
    dx[:, :-1] = wrap(np.diff(phi, axis=1))
    rho = dy.copy()
    rho[1:] -= dy[:-1]
    rho += dx
    rho[:, 1:] -= dx[:, :-1]
    m, n = phi.shape
    denom = (2 * np.cos(np.pi * np.arange(m) / m)[:, None]
             + 2 * np.cos(np.pi * np.arange(n) / n)[None, :] - 4)  # fmt: skip
    denom[0, 0] = 1.0
    rho_hat = dctn(rho, type=2, norm="ortho")
    sol = rho_hat / denom
    sol[0, 0] = 0.0
    ls = idctn(sol, type=2, norm="ortho")
    out = phi + 2 * np.pi * np.round((ls - phi) / (2 * np.pi))
    return out - 2 * np.pi * np.floor((np.median(out) + np.pi) / (2 * np.pi))


def display_phase(phase) -> tuple[np.ndarray, str]:
    """(image, what was done) for a phase preview: unwrapped (:func:`unwrap_phase`) when
    any two neighbours differ by more than π (the phase has wrapped), else as it is."""
    phi = np.asarray(phase, dtype=np.float64)
    jumps = any(np.any(np.abs(np.diff(phi, axis=a)) > np.pi) for a in (0, 1)
                if phi.shape[a] > 1)  # fmt: skip
    if phi.ndim == 2 and jumps:
        return unwrap_phase(phi), "unwrapped"
    return phi, "not wrapped"


def truth_like(ds, shape, sampling, origin):
    """σ·V (rad) of the dataset's ground truth over the area of an image of ``shape``
    pixels ``sampling`` Å apart whose pixel (0, 0) sits at ``origin`` Å (specimen frame),
    on the truth's own grid (periodic); (image, its sampling) or None without a truth."""
    from .physics import interaction_constant

    if "ground_truth/potential" not in ds.arrays():
        return None
    pot, attrs = ds.read_array("ground_truth/potential")
    ty, tx = (float(v) for v in attrs["sampling"])
    t0 = attrs.get("origin", (0.0, 0.0))
    y0 = int(round((origin[0] - t0[0]) / ty))
    x0 = int(round((origin[1] - t0[1]) / tx))
    h = max(1, int(round(shape[0] * sampling[0] / ty)))
    w = max(1, int(round(shape[1] * sampling[1] / tx)))
    yy = np.arange(y0, y0 + h) % pot.shape[0]
    xx = np.arange(x0, x0 + w) % pot.shape[1]
    sigma = interaction_constant(ds.calibration.energy)
    return sigma * np.asarray(pot)[np.ix_(yy, xx)], (ty, tx)


def ground_truth_window(ds):
    """Ground-truth projected potential cropped to the scanned area, or None."""
    if "ground_truth/potential" not in ds.arrays():
        return None
    pot, attrs = ds.read_array("ground_truth/potential")
    cal = ds.calibration
    dy, dx = attrs["sampling"]
    y0 = int(round(cal.scan_origin[0] / dy))
    x0 = int(round(cal.scan_origin[1] / dx))
    h = int(round(cal.scan_shape[0] * cal.scan_step[0] / dy))
    w = int(round(cal.scan_shape[1] * cal.scan_step[1] / dx))
    yy = np.arange(y0, y0 + h) % pot.shape[0]
    xx = np.arange(x0, x0 + w) % pot.shape[1]
    return pot[np.ix_(yy, xx)]


def save_figure(fig, path) -> Path:
    """Save a matplotlib figure atomically as PNG (a failed write leaves no temporary
    file, and an ``OSError`` becomes one :class:`PtyengineError` naming ``path``)."""
    from .errors import atomic_file

    path = Path(path)
    with atomic_file(path, ".tmp.png") as tmp:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    return path


#: a scale bar is the longest 1, 2 or 5 × 10^n Å that is at most this part of the image
SCALE_BAR_FRACTION = 0.25


def scale_bar_length(width: float) -> float:
    """The scale bar for an image ``width`` wide (Å, or any unit): the longest 1, 2 or 5 × 10^n Å
    at most SCALE_BAR_FRACTION of it."""
    if not (np.isfinite(width) and width > 0):
        raise ValueError(f"image width must be positive, got {width}")
    top = width * SCALE_BAR_FRACTION
    exp = np.floor(np.log10(top))
    best = 10.0**exp
    for m in (2.0, 5.0, 10.0):
        if m * 10.0**exp <= top * (1 + 1e-9):
            best = m * 10.0**exp
    return float(best)


def draw_image(ax, img, sampling=None, unit: str | None = None, cmap: str = "gray",
               vmin=None, vmax=None, bar_unit: str = "Å"):
    """``img`` on ``ax`` in physical units: extent in Å from ``sampling`` (dy, dx) Å with
    a white scale bar (:func:`scale_bar_length`) in the lower left, and a colour bar
    labelled ``unit`` (rad, V·Å, arb.) when ``unit`` is given; axes hidden. ``bar_unit``:
    the unit of ``sampling`` and the bar (mrad for a diffraction pattern)."""
    img = np.asarray(img)
    ax.set_axis_off()
    if sampling is None:
        im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax)
    else:
        dy, dx = (float(v) for v in sampling)
        h, w = img.shape[0] * dy, img.shape[1] * dx
        im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, extent=(0, w, h, 0))
        bar = scale_bar_length(w)
        x0, y0 = 0.05 * w, 0.93 * h
        from matplotlib.patches import Rectangle

        ax.add_patch(Rectangle((x0, y0), bar, 0.025 * h, facecolor="white",
                               edgecolor="black", lw=0.5))  # fmt: skip
        ax.text(x0 + bar / 2, y0 - 0.02 * h, f"{bar:g} {bar_unit}", color="white", ha="center",
                va="bottom", fontsize=8, fontweight="bold")
    if unit is not None:
        cb = ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        cb.set_label(unit, fontsize=8)
        cb.ax.tick_params(labelsize=7)
    return im


def image_png(path, img, sampling, title: str, unit: str | None = "rad") -> Path:
    """One image with its scale bar (Å) and colour bar (``unit``), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    draw_image(ax, img, sampling, unit)
    ax.set_title(title, fontsize=9)
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def dataset_preview(ds, png_path, title: str | None = None) -> Path:
    """Mean pattern (mrad scale), virtual BF and ADF images and the ground truth (Å scale
    bars), side by side."""
    from .results import preview_png

    cal = ds.calibration
    a = cal.semiangle
    imgs, mean = virtual_images(ds, {"BF": (0, 0.5 * a), "ADF": (1.1 * a, 1e9)})
    truth = ground_truth_window(ds)
    scan = {"sampling": cal.scan_step, "unit": "arb."}
    panels = [("mean pattern (log)", np.log1p(mean / max(mean.max(), 1e-30) * 1e4),
               {"sampling": cal.detector_angle_per_pixel, "bar_unit": "mrad",
                "unit": "log(1 + 10⁴ I/max)"}),
              (f"virtual BF < {0.5 * a:g} mrad", imgs["BF"], scan),
              (f"virtual ADF > {1.1 * a:g} mrad", imgs["ADF"], scan)]  # fmt: skip
    if truth is not None:
        _, attrs = ds.read_array("ground_truth/potential")
        panels.append(("ground truth V (scanned area)", truth,
                       {"sampling": tuple(attrs["sampling"]), "unit": "V·Å"}))
    return preview_png(png_path, panels, title=title)
