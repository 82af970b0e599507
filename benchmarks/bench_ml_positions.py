"""ML's scan-position refinement on the UiO-66 quick study: NCC with and without it, from
exact or displaced positions, noise-free and with Poisson counts.

Data: one dataset of ``python -m ptyengine simulate uio66-defocus --preset quick -o DIR``
(e.g. DIR/df50nm.zarr: crossover 50 nm above the surface; noise-free). For each dose
(``none``: the noise-free intensities; else Poisson counts at that many e/Å², noise seed
0) and each case ``START-MODE`` (START: ``exact``, the calibration's grid, or ``disp``,
the grid displaced by seeded random offsets of ``--rms`` Å rms, independent, per scan row
or a drift (``--errors``); MODE: the
``refine_positions`` value off / auto / on), ML with the library's defaults reconstructs
from those positions. Printed per run: NCC and NCC(1 Å) of the phase with σ·V (as
benchmarks/bench_quality.py scores ML: band-limited to 2α/λ, registered within 1 Å, over
the fully dosed area), the rms error of the returned positions from the grid (the global
translation removed), the result's iteration, seconds, and each position update's rms step.

    python benchmarks/bench_ml_positions.py /tmp/pos_data/df50nm.zarr \\
        [--doses none,1000,100,20] [--cases exact-off,disp-off,disp-auto,exact-auto]
        [--rms 0.3] [--ml position_sigma=0.3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
from bench_quality import _ml_options, object_border, parse_doses

from ptyengine import io, metrics, physics
from ptyengine.dataset import InMemoryDataset
from ptyengine.reconstruct.epie import scan_grid
from ptyengine.reconstruct.ml import MLParameters, ml


def position_error(p, truth) -> float:
    """rms distance (Å) of positions ``p`` from ``truth``, the common translation removed."""
    e = np.asarray(p) - truth
    e -= e.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(e**2, axis=1))))


def displacements(kind: str, scan_shape, rms: float, seed: int = 0) -> np.ndarray:
    """(N, 2) Å seeded displacements of a row-major raster of ``scan_shape``, ``rms`` Å rms
    once their mean and linear part are removed (which the data cannot see): ``iid``
    independent per position; ``rows`` one per scan row; ``drift`` a random walk in
    acquisition time smoothed over a tenth of the scan."""
    rng = np.random.default_rng(seed)
    ny, nx = scan_shape
    if kind == "iid":
        d = rng.normal(0.0, 1.0, (ny * nx, 2))
    elif kind == "rows":
        d = np.repeat(rng.normal(0.0, 1.0, (ny, 2)), nx, axis=0)
    else:
        walk = np.cumsum(rng.normal(0.0, 1.0, (ny * nx, 2)), axis=0)
        w = max(ny * nx // 10, 1)
        kernel = np.exp(-0.5 * (np.arange(-3 * w, 3 * w + 1) / w) ** 2)
        d = np.stack([np.convolve(walk[:, a], kernel / kernel.sum(), mode="same")
                      for a in (0, 1)], axis=1)  # fmt: skip
    i, j = np.divmod(np.arange(ny * nx), nx)
    x = np.column_stack([np.ones(ny * nx), i, j])
    d -= x @ np.linalg.lstsq(x, d, rcond=None)[0]
    return d * rms / np.sqrt(np.mean(np.sum(d**2, axis=1)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--doses", default="none,100,20")
    ap.add_argument("--cases", default="exact-off,disp-off,disp-auto,exact-auto")
    ap.add_argument("--rms", type=float, default=0.3, help="Å: the displacements' rms")
    ap.add_argument("--errors", default="iid", choices=["iid", "rows", "drift"],
                    help="the displacements: independent per position, one per scan row "
                         "(flyback jitter), or a smooth random walk in time")
    ap.add_argument("--ml", nargs="*", default=[], help="MLParameters overrides, k=v")
    args = ap.parse_args(argv)
    options = _ml_options(args.ml)
    with io.open_dataset(args.data) as ds:
        cal = ds.calibration
        data = ds.read_rows(0, ds.shape[0])
        pot, attrs = ds.read_array("ground_truth/potential")
        truth = physics.interaction_constant(cal.energy) * pot
        margin = float(ds.metadata.get("scan_margin_A", 0.0))
        k_max = 2 * cal.semiangle * 1e-3 / physics.wavelength(cal.energy)
        grid = scan_grid(cal)
        start = {"exact": grid, "disp": grid + displacements(args.errors, cal.scan_shape,
                                                             args.rms)}  # fmt: skip
        for dose in parse_doses(args.doses):
            src = ds
            if dose is not None:
                n0 = dose * cal.scan_step[0] * cal.scan_step[1]
                counts = np.random.default_rng(0).poisson(data.astype(np.float64) * n0)
                src = InMemoryDataset(counts.astype(np.uint32),
                                      dataclasses.replace(cal, dose=dose))  # fmt: skip
            for case in args.cases.split(","):
                where, mode = case.split("-")
                params = MLParameters(**{**options, "refine_positions": mode})
                t0 = time.perf_counter()
                res = ml(src, params, positions=start[where])
                sec = time.perf_counter() - t0
                g = res.geometry
                r = metrics.compare_to_truth(res.phase, g.sampling, g.object_origin, truth,
                                             attrs["sampling"], attrs.get("origin", (0.0, 0.0)),
                                             k_max=k_max, max_shift=1.0,
                                             border=object_border(g, margin), sigma=1.0)
                print(json.dumps({
                    "dose": dose, "case": case, "ncc": round(r["ncc"], 4),
                    "ncc_1A": round(r["ncc_lowpass"], 4),
                    "start_error_A": round(position_error(start[where], grid), 4),
                    "error_A": round(position_error(res.positions, grid), 4),
                    "result_iteration": res.best_iteration, "seconds": round(sec, 1),
                    "updates_rms_A": [round(v, 3) for v in
                                      res.extra["positions"]["update_rms_A"]],
                    "correlated_crb_A": [None if v is None else round(v, 3) for v in
                                         res.extra["positions"]["correlated_cramer_rao_A"]]}),
                      flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
