"""What ``ptyengine bench dose-defocus`` writes from the cell records (bench.run_grid):
``cells.csv`` (one row per crystal/dose/defocus/method/seed), ``summary.csv`` (mean and
standard deviation over the seeds), one heat map per metric and crystal
(``heatmap_<crystal>_<metric>.png``: a panel per method, dose rows × defocus columns, the
value in each cell, the best method's cell outlined, and a last panel naming the best
method) and ``summary.md`` (the best method per cell and the whole table). Files are
written atomically.

Best: the highest seed-mean NCC / NCC(1 Å), the smallest FRC resolution (Å) and wall time
(s). An FRC resolution of inf (the FRC never reaches 1/7 significantly, e.g. inverted
contrast) counts as worst.

A cell whose method gave no image (its record's "no_image": the reason, study.score_run)
has no scores: cells.csv leaves them empty and gives the reason in "note"; the means are
over the seeds with an image, and a method/cell with none is "no image" in the tables
(never best), its reasons listed in summary.md.
"""

from __future__ import annotations

import csv
import io as _io
import math
from pathlib import Path

import numpy as np

from .bench import CRYSTAL_NAMES
from .errors import atomic_file
from .study import NAMES
from .study_report import _write_text

#: metric: (title, unit, higher is better)
METRICS = {"ncc": ("NCC", "", True), "ncc_1A": ("NCC(1 Å)", "", True),
           "frc_A": ("FRC resolution", "Å", False),
           "seconds": ("wall time", "s", False)}  # fmt: skip
CELL_COLUMNS = ["crystal", "dose", "defocus_nm", "method", "seed", "ncc", "ncc_1A", "frc_A",
                "seconds", "shift_y_A", "shift_x_A", "note"]  # fmt: skip


def _dose(d) -> str:
    return "none" if d is None else f"{d:g}"


def _csv(path: Path, columns, rows) -> Path:
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    w.writerows(rows)
    with atomic_file(path) as tmp:
        tmp.write_text(buf.getvalue())
    return path


def _g(v: float) -> str:
    return f"{v:.4g}" if math.isfinite(v) else ("inf" if v > 0 else "nan")


def _short(v: float) -> str:
    """A heat-map cell's number: 2 decimals below 10, else whole."""
    if not math.isfinite(v):
        return "inf" if v > 0 else ""
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.0f}"


def write_cells(records, out: Path) -> Path:
    rows = []
    for r in records:
        none = bool(r.get("no_image"))
        scores = ["", "", ""] if none else [_g(r["ncc"]), _g(r["ncc_1A"]), _g(r["frc_A"])]
        rows.append([r["crystal"], _dose(r["dose"]), f"{r['defocus_nm']:g}", r["method"],
                     r["seed"], *scores, f"{r['seconds']:.3f}", f"{r['shift_A'][0]:.3f}",
                     f"{r['shift_A'][1]:.3f}", r.get("no_image") or ""])  # fmt: skip
    return _csv(out / "cells.csv", CELL_COLUMNS, rows)


def summarise(records) -> dict:
    """{(crystal, dose, defocus_nm, method): {metric: (mean, std over the seeds with an
    image), "n": those seeds, "no_image": [(seed, reason)] of the others}}; std is 0 for
    one seed (the noise-free cells); no seed with an image: every metric (nan, nan)."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["crystal"], r["dose"], r["defocus_nm"], r["method"]), []).append(r)
    out = {}
    for key, every in groups.items():
        rs = [r for r in every if not r.get("no_image")]
        s = {"n": len(rs), "no_image": [(r["seed"], r["no_image"]) for r in every
                                         if r.get("no_image")]}  # fmt: skip
        for m in METRICS:
            v = np.array([r[m] for r in rs], dtype=np.float64)
            if not rs:
                s[m] = (float("nan"), float("nan"))
            elif np.isinf(v).any():
                s[m] = (float(np.inf), float("nan"))
            else:
                s[m] = (float(v.mean()), float(v.std()))
        out[key] = s
    return out


def best(summary: dict, crystal, dose, defocus, methods, metric: str):
    """(method, mean) of the best method of a cell by ``metric`` (None when none has it)."""
    higher = METRICS[metric][2]
    cand = [(m, summary[(crystal, dose, defocus, m)][metric][0]) for m in methods
            if summary.get((crystal, dose, defocus, m), {}).get("n")]  # fmt: skip
    cand = [(m, v) for m, v in cand if not math.isnan(v)]
    if not cand:
        return None
    key = (lambda mv: -mv[1]) if higher else (lambda mv: mv[1])
    m, v = min(cand, key=key)
    return None if (not higher and math.isinf(v)) else (m, v)


def write_summary_csv(summary, out: Path) -> Path:
    cols = ["crystal", "dose", "defocus_nm", "method", "seeds"]
    for m in METRICS:
        cols += [f"{m}_mean", f"{m}_std"]
    cols.append("seeds_without_image")
    rows = []
    for (c, d, f, meth), s in summary.items():
        row = [c, _dose(d), f"{f:g}", meth, s["n"]]
        for m in METRICS:
            row += [_g(s[m][0]), _g(s[m][1])] if s["n"] else ["", ""]
        rows.append([*row, len(s["no_image"])])
    return _csv(out / "summary.csv", cols, rows)


def _axes(records):
    crystals = list(dict.fromkeys(r["crystal"] for r in records))
    doses = list(dict.fromkeys(r["dose"] for r in records))
    doses.sort(key=lambda d: -np.inf if d is None else -d)  # noise-free, then high to low
    defoci = sorted({r["defocus_nm"] for r in records})
    methods = list(dict.fromkeys(r["method"] for r in records))
    return crystals, doses, defoci, methods


def heatmap(summary, crystal, doses, defoci, methods, metric: str, path: Path,
            title: str) -> Path:  # fmt: skip
    """A panel per method (dose rows × defocus columns, seed mean in each cell, the best
    method's cell outlined in green) and a last panel: the best value and method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label, unit, higher = METRICS[metric]
    grid = np.full((len(methods), len(doses), len(defoci)), np.nan)
    for i, m in enumerate(methods):
        for a, d in enumerate(doses):
            for b, f in enumerate(defoci):
                s = summary.get((crystal, d, f, m))
                if s is not None:
                    grid[i, a, b] = s[metric][0]
    finite = grid[np.isfinite(grid)]
    if metric.startswith("ncc"):
        vmin, vmax, cmap = -1.0, 1.0, "RdBu_r"
    else:
        vmin = float(finite.min()) if finite.size else 0.0
        vmax = float(finite.max()) if finite.size else 1.0
        cmap = "viridis_r"
    shown = np.where(np.isfinite(grid), grid, np.nan)
    n = len(methods) + 1
    fig, axes = plt.subplots(1, n, figsize=(1.1 + 0.55 * len(defoci) * n, 0.9 + 0.42 * len(doses)),
                             squeeze=False, sharey=True)  # fmt: skip
    winners = {}
    for a, d in enumerate(doses):
        for b, f in enumerate(defoci):
            w = best(summary, crystal, d, f, methods, metric)
            if w:
                winners[a, b] = w
    for i, ax in enumerate(axes[0]):
        if i < len(methods):
            img, name = shown[i], NAMES[methods[i]]
        else:
            img = np.full((len(doses), len(defoci)), np.nan)
            for (a, b), (_, v) in winners.items():
                img[a, b] = v
            name = "best"
        im = ax.imshow(img, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(defoci)), [f"{f:g}" for f in defoci], fontsize=7)
        ax.set_yticks(range(len(doses)), [_dose(d) if d else "none" for d in doses],
                      fontsize=7)  # fmt: skip
        ax.set_xlabel("defocus (nm)", fontsize=7)
        for a in range(len(doses)):
            for b in range(len(defoci)):
                v = img[a, b]
                w = winners.get((a, b))
                if i == len(methods):
                    text = f"{NAMES[w[0]]}\n{_short(w[1])}" if w else "—"
                else:
                    s = summary.get((crystal, doses[a], defoci[b], methods[i]))
                    text = ("no\nimage" if s and not s["n"] else
                            _short(grid[i, a, b]) if not np.isnan(grid[i, a, b]) else "")
                    if w and w[0] == methods[i]:
                        ax.add_patch(plt.Rectangle((b - 0.5, a - 0.5), 1, 1, fill=False,
                                                   edgecolor="lime", linewidth=2.2))  # fmt: skip
                dark = np.isfinite(v) and (abs(v) > 0.6 if metric.startswith("ncc")
                                           else v < vmin + 0.3 * (vmax - vmin))  # fmt: skip
                ax.text(b, a, text, ha="center", va="center", fontsize=6,
                        color="w" if dark else "k")
    axes[0][0].set_ylabel("dose (e/Å²)", fontsize=7)
    fig.colorbar(im, ax=list(axes[0]), fraction=0.02, pad=0.01,
                 label=f"{label}{f' ({unit})' if unit else ''}")  # fmt: skip
    fig.suptitle(title, fontsize=9, y=1.0 + 0.25 / fig.get_figheight())
    try:
        with atomic_file(path, ".tmp.png") as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def _pm(mean: float, std: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "inf" if mean > 0 else "—"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std > 0 else "")


def summary_markdown(summary, records, header: list[str]) -> str:
    crystals, doses, defoci, methods = _axes(records)
    lines = [*header, ""]
    for c in crystals:
        for metric in ("ncc_1A", "ncc", "frc_A"):
            label, unit, _ = METRICS[metric]
            lines += [f"## {CRYSTAL_NAMES[c]}: best method by {label}"
                      + (f" ({unit})" if unit else ""), "",
                      "| dose (e/Å²) | " + " | ".join(f"{f:g} nm" for f in defoci) + " |",
                      "|---|" + "---|" * len(defoci)]  # fmt: skip
            for d in doses:
                cells = []
                for f in defoci:
                    w = best(summary, c, d, f, methods, metric)
                    s = summary.get((c, d, f, w[0])) if w else None
                    cells.append(f"{NAMES[w[0]]} {_pm(*s[metric], 2)}" if w else "—")
                lines.append(f"| {_dose(d)} | " + " | ".join(cells) + " |")
            lines.append("")
    lines += ["## All cells (mean ± std over the seeds)", "",
              "| crystal | dose (e/Å²) | defocus (nm) | method | seeds | NCC | NCC(1 Å) | "
              "FRC (Å) | time (s) |", "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in crystals:
        for d in doses:
            for f in defoci:
                for m in methods:
                    s = summary.get((c, d, f, m))
                    if s and not s["n"]:
                        t = sum(r["seconds"] for r in records if (r["crystal"], r["dose"],
                                r["defocus_nm"], r["method"]) == (c, d, f, m))  # fmt: skip
                        lines.append(f"| {c} | {_dose(d)} | {f:g} | {NAMES[m]} | 0 | no image "
                                     f"| no image | — | {t / len(s['no_image']):.1f} |")
                    elif s:
                        lines.append(f"| {c} | {_dose(d)} | {f:g} | {NAMES[m]} | {s['n']} | "
                                     f"{_pm(*s['ncc'])} | {_pm(*s['ncc_1A'])} | "
                                     f"{_pm(*s['frc_A'], 2)} | "
                                     f"{_pm(*s['seconds'], 1)} |")  # fmt: skip
    missing = [(key, seed, why) for key, s in summary.items() for seed, why in s["no_image"]]
    if missing:
        lines += ["", "## Cells without an image", "",
                  "Not in the means above (the seeds column counts the seeds with an image):",
                  ""]  # fmt: skip
        lines += [f"- {c}, {_dose(d)} e/Å², {f:g} nm, {NAMES[m]}, seed {seed}: {why}"
                  for (c, d, f, m), seed, why in missing]
    return "\n".join(lines) + "\n"


def write_report(records, out: Path, header: list[str]) -> list[Path]:
    """Every output file of the grid's ``records`` into ``out``; returns their paths."""
    out = Path(out)
    summary = summarise(records)
    written = [write_cells(records, out), write_summary_csv(summary, out)]
    crystals, doses, defoci, methods = _axes(records)
    for c in crystals:
        for metric, (label, unit, _) in METRICS.items():
            written.append(heatmap(summary, c, doses, defoci, methods, metric,
                                   out / f"heatmap_{c}_{metric}.png",
                                   f"{CRYSTAL_NAMES[c]}: {label}{f' ({unit})' if unit else ''}"
                                   ", seed mean; green box / last panel: best method"))  # fmt: skip
    written.append(_write_text(out / "summary.md", summary_markdown(summary, records, header)))
    return written
