"""Multislice ML on a thick crystal: NCC of the summed phase with σ·V_proj for S slices.

Problem: SrTiO3 [001], ``--thickness`` Å thick (simulated by ptyengine's multislice with
2 Å slices, static lattice), 300 kV, 20 mrad, crossover ``--defocus`` Å above the
entrance surface, a 20 × 20 scan at 0.4 Å over one 7.81 Å cell, 48² pixels to 40 mrad;
noise-free, or Poisson counts at each ``--doses`` e/Å². ML (the library's defaults, the
probe's defocus searched and refined with the object) with S = 1 (the single-slice model)
and S > 1 slices of Δz = thickness / S (``--slices``). The NCC is the CLI's: the summed
phase against σ·V_proj band-limited to 2α/λ, over the scanned area.

    python benchmarks/bench_ml_multislice.py [--thickness 200] [--defocus 100]
        [--slices 1,2,4,8] [--doses none,1000] [--iterations 40]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import numpy as np

from ptyengine import io, metrics, physics
from ptyengine.dataset import InMemoryDataset
from ptyengine.reconstruct.ml import MLParameters, ml
from ptyengine.simulate import SimulationParameters, simulate


def memory_dataset(data, cal, meta, dose):
    """The intensities ``data`` in memory, noise-free (``dose`` None) or as Poisson counts
    at ``dose`` e/Å² (noise seed 0), with the dataset's ``meta``data."""
    if dose is None:
        mem = InMemoryDataset(data, cal)
    else:
        n0 = dose * cal.scan_step[0] * cal.scan_step[1]
        counts = np.random.default_rng(0).poisson(data.astype(np.float64) * n0)
        mem = InMemoryDataset(counts.astype(np.uint32), dataclasses.replace(cal, dose=dose))
    mem.metadata = meta
    return mem


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--thickness", type=float, default=200.0)
    ap.add_argument("--defocus", type=float, default=100.0)
    ap.add_argument("--slices", default="1,2,4,8")
    ap.add_argument("--doses", default="none,1000")
    ap.add_argument("--iterations", type=int, default=40)
    args = ap.parse_args()
    sim = SimulationParameters(structure="srtio3", field=(7.81, 7.81), thickness=args.thickness,
                               scan_step=0.4, scan_size=(7.81, 7.81), max_angle=40.0,
                               detector_pixels=48, defocus=args.defocus)
    tmp = tempfile.mkdtemp()
    path = os.path.join(tmp, "sto.zarr")
    t0 = time.perf_counter()
    simulate(sim, path)
    print(f"SrTiO3 [001] {args.thickness:g} Å, crossover {args.defocus:g} Å above, simulated "
          f"in {time.perf_counter() - t0:.1f} s")
    with io.open_dataset(path) as ds:
        data, cal, meta = ds.read_rows(0, ds.shape[0]), ds.calibration, ds.metadata
        pot, attrs = ds.read_array("ground_truth/potential")
    truth = physics.interaction_constant(cal.energy) * pot
    k_max = 2 * cal.semiangle * 1e-3 / cal.wavelength
    print("| dose (e/Å²) | S | Δz (Å) | NCC of Σφ_s | iterations (best) | C10 (Å) | s/iteration |")
    print("|---|---|---|---|---|---|---|")
    for dose_s in args.doses.split(","):
        dose = None if dose_s == "none" else float(dose_s)
        mem = memory_dataset(data, cal, meta, dose)
        for s in (int(v) for v in args.slices.split(",")):
            params = MLParameters(iterations=args.iterations, slices=s,
                                  slice_thickness=args.thickness / s)
            t0 = time.perf_counter()
            res = ml(mem, params)
            sec = (time.perf_counter() - t0) / max(len(res.errors), 1)
            g = res.geometry
            ncc = metrics.compare_to_truth(res.phase, g.sampling, g.object_origin, truth,
                                           attrs["sampling"], k_max=k_max, max_shift=1.0,
                                           border=g.window[0] // 2 + int(g.corners.min()))
            print(f"| {dose_s} | {s} | {args.thickness / s:g} | {ncc['ncc']:.3f} | "
                  f"{len(res.errors)} ({res.best_iteration}) | "
                  f"{res.extra['refined'].get('C10', float('nan')):.1f} | {sec:.2f} |",
                  flush=True)


if __name__ == "__main__":
    main()
