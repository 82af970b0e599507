"""What ``ptyengine study`` writes: the NCC table (CSV and Markdown), the figure laid out
like the published one (a row per method, a column per defocus, the projected structure
model on the in-focus panel of the first row, a scale bar in Å, a colour bar per row, the
NCC in each panel) and the ground-truth σ·V image. Every file is written atomically
(a temporary name, then a rename).

Each panel shows the fully dosed area of its dataset (the scan less the dose margin, in
the field frame, Å): the area the NCC is taken over.
"""

from __future__ import annotations

import csv
import functools
import io as _io
import math
from pathlib import Path

import numpy as np

from . import io, metrics
from .errors import atomic_file
from .study import NAMES, StudyRow, Truth

TABLE_COLUMNS = ["dose", "defocus_nm", "method", "ncc", "ncc_1A", "seconds", "note"]
#: marker (size pt², colour) of each element in the structure overlay; H is left out
ATOM_STYLE = {"Zr": (26, "#00d5ff"), "O": (5, "#ff3030"), "C": (4, "#ffd000"),
              "Sr": (26, "#00d5ff"), "Ti": (18, "#7cff4d")}  # fmt: skip


def _save_png(fig, path: Path, dpi: int = 110) -> Path:
    """``fig`` as a 256-colour PNG: the greys and the marks' colours (grey images with a
    few coloured marks lose nothing visible; ~3/4 of the bytes of an RGBA PNG), written
    atomically."""
    from PIL import Image

    buf = _io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    buf.seek(0)
    marks = [tuple(int(c[i:i + 2], 16) for i in (1, 3, 5)) for _, c in ATOM_STYLE.values()]
    marks = list(dict.fromkeys([*marks, (255, 140, 0), (31, 119, 180)]))  # other elements
    greys = [(v, v, v) for v in np.linspace(0, 255, 256 - len(marks)).round().astype(int)]
    palette = np.array(greys + marks, dtype=np.int32)
    rgb = np.asarray(Image.open(buf).convert("RGB"), dtype=np.int32)
    # grey pixels: the nearest grey level directly; the few others: the nearest colour
    index = np.rint(rgb[..., 0] * (len(greys) - 1) / 255).astype(np.uint8)
    other = np.flatnonzero(~((rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])))
    flat, pixels = index.reshape(-1), rgb.reshape(-1, 3)
    for b0 in range(0, other.size, 8192):
        sel = other[b0:b0 + 8192]
        flat[sel] = ((pixels[sel, None, :] - palette[None]) ** 2).sum(axis=-1).argmin(axis=-1)
    image = Image.fromarray(index, mode="P")
    image.putpalette(palette.astype(np.uint8).ravel().tolist())
    with atomic_file(path, ".tmp.png") as tmp:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        image.save(tmp, format="PNG", optimize=True)
    return Path(path)


def _write_text(path: Path, text: str) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(text)
    return path


def _dose_cell(dose: float | None) -> str:
    return "none" if dose is None else f"{dose:g}"


def write_tables(rows: list[StudyRow], out: Path, header: list[str]) -> tuple[Path, Path]:
    """``out/ncc.csv`` (columns :data:`TABLE_COLUMNS`; dose "none" when noise-free, e/Å²
    otherwise; defocus in nm above the entrance surface; seconds of the reconstruction;
    a method that gave no image: empty scores and the reason in "note") and ``out/ncc.md``
    (the same rows under ``header`` lines; "no image" and the reason)."""
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(TABLE_COLUMNS)
    for r in rows:
        scores = ["", ""] if r.no_image else [f"{r.ncc:.4f}", f"{r.ncc_1A:.4f}"]
        w.writerow([_dose_cell(r.dose), f"{r.defocus / 10:g}", r.method, *scores,
                    f"{r.seconds:.2f}", r.no_image])  # fmt: skip
    lines = [*header, "", "| dose (e/Å²) | defocus | method | NCC | NCC(1 Å) | seconds |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        scores = (f"no image ({r.no_image}) | —" if r.no_image
                  else f"{r.ncc:+.3f} | {r.ncc_1A:+.3f}")  # fmt: skip
        lines.append(f"| {_dose_cell(r.dose)} | {r.defocus / 10:g} nm | {NAMES[r.method]} | "
                     f"{scores} | {r.seconds:.1f} |")  # fmt: skip
    return (_write_text(out / "ncc.csv", buf.getvalue()),
            _write_text(out / "ncc.md", "\n".join(lines) + "\n"))


def dosed_area(ds) -> tuple[float, float, float, float]:
    """(y0, y1, x0, x1) Å in the field frame: the scan less the dose margin."""
    cal = ds.calibration
    m = float(ds.metadata.get("scan_margin_A", 0.0))
    (oy, ox), (ny, nx), (sy, sx) = cal.scan_origin, cal.scan_shape, cal.scan_step
    return oy + m, oy + (ny - 1) * sy - m, ox + m, ox + (nx - 1) * sx - m


@functools.lru_cache(maxsize=4)
def _slab(structure: str, zone_axis, field, thickness: float):
    """The simulated slab without H (structures.build_specimen), built once per process."""
    from . import structures

    return structures.build_specimen(structures.load_structure(structure), zone_axis,
                                     size=field, thickness=thickness, hydrogen=False)


def structure_model(ds, area) -> dict[str, np.ndarray]:
    """{element: (N, 2) projected (y, x) Å} of the simulated specimen's atoms inside
    ``area`` (periodic images included), from the dataset's simulation parameters; H
    left out. Empty when the dataset does not record them."""
    sim = ds.metadata.get("simulation") or {}
    try:
        slab = _slab(str(sim["structure"]), tuple(sim["zone_axis"]), tuple(sim["field"]),
                     float(sim["thickness"]))
    except (KeyError, TypeError):
        return {}
    ly, lx = float(slab.cell.array[1, 1]), float(slab.cell.array[0, 0])
    yx = np.asarray(slab.positions)[:, [1, 0]]
    symbols = np.array(slab.get_chemical_symbols())
    y0, y1, x0, x1 = area
    out = {}
    for el in sorted(set(symbols)):
        base = np.unique(np.round(yx[symbols == el] % (ly, lx), 2), axis=0)
        tiles = []
        for ty in range(math.floor((y0 - 2) / ly), math.floor((y1 + 2) / ly) + 1):
            for tx in range(math.floor((x0 - 2) / lx), math.floor((x1 + 2) / lx) + 1):
                p = base + (ty * ly, tx * lx)
                tiles.append(p[(p[:, 0] >= y0) & (p[:, 0] <= y1) & (p[:, 1] >= x0)
                               & (p[:, 1] <= x1)])  # fmt: skip
        out[el] = np.concatenate(tiles)
    return out


def _crop(image, sampling, origin, area):
    """The pixels of ``image`` that overlap ``area`` (so that they cover it) and their
    imshow extent (Å), less their mean."""
    (dy, dx), (oy, ox) = sampling, origin
    y0, y1, x0, x1 = area
    i0 = max(0, math.floor((y0 - oy) / dy + 0.5))
    i1 = max(i0 + 1, math.ceil((y1 - oy) / dy - 0.5) + 1)
    j0 = max(0, math.floor((x0 - ox) / dx + 0.5))
    j1 = max(j0 + 1, math.ceil((x1 - ox) / dx - 0.5) + 1)
    sub = np.asarray(image, dtype=np.float64)[i0:i1, j0:j1]
    extent = (ox + (j0 - 0.5) * dx, ox + (j1 - 0.5) * dx, oy + (i1 - 0.5) * dy,
              oy + (i0 - 0.5) * dy)  # fmt: skip
    return sub - sub.mean(), extent


def _scale_bar(ax, area):
    y0, y1, x0, x1 = area
    width = x1 - x0
    length = max(v for v in (1, 2, 5, 10, 20, 50, 100) if v <= max(width / 3, 1))
    ya, xa = y1 - 0.06 * (y1 - y0), x0 + 0.06 * width
    ax.plot([xa, xa + length], [ya, ya], color="white", lw=3, solid_capstyle="butt")
    ax.text(xa + length / 2, ya - 0.03 * (y1 - y0), f"{length:g} Å", color="white",
            ha="center", va="bottom", fontsize=7, fontweight="bold")  # fmt: skip


def _overlay(ax, atoms, shift=(0.0, 0.0)):
    for el, yx in atoms.items():
        size, colour = ATOM_STYLE.get(el, (5, "#ff8c00"))
        ax.scatter(yx[:, 1] + shift[1], yx[:, 0] + shift[0], s=size, facecolors="none",
                   edgecolors=colour, linewidths=0.7, label=el)  # fmt: skip


def _units(record_units: str) -> str:
    return "rad" if str(record_units).startswith("rad") else "arb."


def study_figure(path, rows: list[StudyRow], methods, title: str) -> Path:
    """The figure of one dose's rows: a row per method, a column per defocus."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    from .results import read_result

    defoci = sorted({r.defocus for r in rows})
    cell = {(r.method, r.defocus): r for r in rows}
    areas, atoms = {}, {}
    for df in defoci:
        any_row = next(r for r in rows if r.defocus == df)
        with io.open_dataset(any_row.dataset) as ds:
            areas[df] = dosed_area(ds)
            if df == defoci[0]:
                atoms = structure_model(ds, areas[df])
    y0, y1, x0, x1 = areas[defoci[0]]
    aspect = (y1 - y0) / max(x1 - x0, 1e-9)
    w = 1.55
    fig, axes = plt.subplots(len(methods), len(defoci), squeeze=False, layout="constrained",
                             figsize=(w * 1.3 * len(defoci) + 0.3,
                                      w * aspect * len(methods) + 1.0))  # fmt: skip
    for i, method in enumerate(methods):
        for j, df in enumerate(defoci):
            ax, r = axes[i, j], cell[(method, df)]
            arrays, attrs = read_result(r.result)
            units = _units((attrs.get("study") or {}).get("units", "rad"))
            img, extent = _crop(arrays["phase"], attrs["sampling"], attrs["origin"], areas[df])
            lo, hi = np.percentile(img, [1, 99]) if img.size else (-1, 1)
            im = ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, extent=extent,
                           interpolation="bilinear")  # fmt: skip
            ya, yb, xa, xb = areas[df]
            ax.set_xlim(xa, xb)
            ax.set_ylim(yb, ya)
            ax.set_xticks([])
            ax.set_yticks([])
            label = ("no image" if r.no_image
                     else f"NCC {r.ncc:+.2f}\n1 Å: {r.ncc_1A:+.2f}")  # fmt: skip
            ax.text(0.03, 0.97, label, transform=ax.transAxes,
                    ha="left", va="top", fontsize=6.5, color="white",
                    bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.5, "lw": 0})  # fmt: skip
            if i == 0:
                ax.set_title(f"{df / 10:g} nm" + (" (crossover on\nthe entrance surface)"
                             if df == 0 else " above\nthe entrance surface"), fontsize=7.5)
            if j == 0:
                ax.set_ylabel(NAMES[method], fontsize=9)
                _scale_bar(ax, areas[df])
            if i == 0 and j == 0 and atoms:
                _overlay(ax, atoms, r.shift_A)
            cb = fig.colorbar(im, ax=ax, fraction=0.07, pad=0.02, aspect=30)
            cb.ax.tick_params(labelsize=5, length=2, pad=1)
            cb.locator = ticker.MaxNLocator(4)
            cb.update_ticks()
            if j == len(defoci) - 1:
                cb.set_label(units, fontsize=6, labelpad=1)
    if atoms:
        handles = axes[0, 0].collections
        fig.legend(handles, [h.get_label() for h in handles], loc="outside lower center",
                   ncol=len(handles), fontsize=7, frameon=False, markerscale=1.5,
                   title="structure model (projected; on the first panel)",
                   title_fontsize=7)  # fmt: skip
    fig.suptitle(title, fontsize=8)
    out = _save_png(fig, path, dpi=100)
    plt.close(fig)
    return out


def truth_outputs(dataset, out: Path, title: str) -> tuple[Path, Path]:
    """``out/ground_truth.npy`` (σ·V in rad over the whole periodic field of ``dataset``,
    whose ``ground_truth/potential`` attributes give its sampling and origin) and
    ``out/ground_truth.png`` (σ·V over the in-focus dataset's fully dosed area with the
    structure model, a scale bar and a colour bar in rad)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with io.open_dataset(dataset) as ds:
        truth = Truth.from_dataset(ds)
        area = dosed_area(ds)
        atoms = structure_model(ds, area)
    npy = out / "ground_truth.npy"
    with atomic_file(npy, ".tmp.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, truth.image.astype(np.float32))
    y0, y1, x0, x1 = area
    d = truth.sampling
    shape = (max(1, int(round((y1 - y0) / d[0])) + 1), max(1, int(round((x1 - x0) / d[1])) + 1))
    img = metrics.truth_on_grid(truth.image, truth.sampling, truth.origin, shape, d, (y0, x0))
    aspect = (y1 - y0) / max(x1 - x0, 1e-9)
    fig, ax = plt.subplots(figsize=(3.2, 3.2 * aspect + 0.5))
    im = ax.imshow(img, cmap="gray", extent=(x0 - d[1] / 2, x0 + (shape[1] - 0.5) * d[1],
                                             y0 + (shape[0] - 0.5) * d[0], y0 - d[0] / 2))
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_xticks([])
    ax.set_yticks([])
    _overlay(ax, atoms)
    _scale_bar(ax, area)
    if atoms:
        ax.legend(loc="upper right", fontsize=6, framealpha=0.6, markerscale=1.5)
    fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02).set_label("σ·V (rad)", fontsize=7)
    ax.set_title(title, fontsize=8)
    png = _save_png(fig, out / "ground_truth.png")
    plt.close(fig)
    return npy, png
