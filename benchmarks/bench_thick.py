"""Thick SrTiO3: NCC of the summed phase with σ·V_proj for single-slice ePIE, mepie and
multislice ML started from that mepie run (issue 15).

Problem: SrTiO3 [001], ``--thicknesses`` Å thick (simulated by ptyengine's multislice with
2 Å slices, static lattice), 300 kV, 20 mrad, crossover at each of ``--defoci`` Å above the
entrance surface (0: on it), a 20 × 20 scan at 0.4 Å over one 7.81 Å cell, 48² pixels to
40 mrad; noise-free, or Poisson counts at each ``--doses`` e/Å² (seed 0).

Methods (all from the calibration's defocus, probe refined):
  ePIE  single slice, ``--epie-iterations`` iterations, batch 16;
  mepie S slices of Δz = t / S, ``--mepie-iterations`` K iterations, batch 16, flat start;
  ML    S slices, started from exactly that mepie run (``mepie_start_iterations`` K), then
        at most ``--ml-iterations`` Poisson-ML iterations (library defaults otherwise:
        C10/C12 refined, held-out stopping; ``--ml-object-model``: phase, or complex:
        a_s = −log|O_s| of mepie's slices kept and refined).
S: ``--slices`` (comma list: a sweep) or ("rule") S = round(t / Δz_rule), Δz_rule =
λ/(2α²) (24.6 Å at 300 kV, 20 mrad: a quarter of the depth of field 2λ/α²; RESULTS.md,
"Thick specimens", has the sweep that chose it).
The NCC is the CLI's: summed phase against σ·V_proj band-limited to 2α/λ, scanned area.

    python benchmarks/bench_thick.py [--thicknesses 200,400] [--defoci 0,100]
        [--doses none,1000] [--slices rule|4,8,16] [--methods epie,mepie,ml]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from bench_ml_multislice import memory_dataset

from ptyengine import io, metrics, physics
from ptyengine.reconstruct.epie import EpieParameters, epie
from ptyengine.reconstruct.mepie import MepieParameters, mepie
from ptyengine.reconstruct.ml import MLParameters, ml
from ptyengine.simulate import SimulationParameters, simulate


def _simulate(thickness, defocus, tmp):
    sim = SimulationParameters(structure="srtio3", field=(7.81, 7.81), thickness=thickness,
                               scan_step=0.4, scan_size=(7.81, 7.81), max_angle=40.0,
                               detector_pixels=48, defocus=defocus)  # fmt: skip
    path = os.path.join(tmp, f"sto_{thickness:g}_{defocus:g}.zarr")
    simulate(sim, path)
    with io.open_dataset(path) as ds:
        data, cal, meta = ds.read_rows(0, ds.shape[0]), ds.calibration, ds.metadata
        pot, attrs = ds.read_array("ground_truth/potential")
    return data, cal, meta, physics.interaction_constant(cal.energy) * pot, attrs["sampling"]


def _ncc(res, truth, t_sampling, k_max):
    g = res.geometry
    return metrics.compare_to_truth(res.phase, g.sampling, g.object_origin, truth, t_sampling,
                                    k_max=k_max, max_shift=1.0,
                                    border=g.window[0] // 2 + int(g.corners.min()))["ncc"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--thicknesses", default="200,400")
    ap.add_argument("--defoci", default="0,100")
    ap.add_argument("--doses", default="none,1000")
    ap.add_argument("--slices", default="rule")
    ap.add_argument("--methods", default="epie,mepie,ml")
    ap.add_argument("--epie-iterations", type=int, default=30)
    ap.add_argument("--mepie-iterations", type=int, default=30)
    ap.add_argument("--ml-iterations", type=int, default=40)
    ap.add_argument("--ml-object-model", default="phase", help="phase or complex")
    args = ap.parse_args()
    methods = args.methods.split(",")
    tmp = tempfile.mkdtemp()
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| t (Å) | crossover (Å) | dose | S | Δz (Å) | ePIE | mepie | ML | ML best it. "
          "| ML C10 (Å) | s (ePIE/mepie/ML) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for t in (float(v) for v in args.thicknesses.split(",")):
        for z in (float(v) for v in args.defoci.split(",")):
            data, cal, meta, truth, t_sampling = _simulate(t, z, tmp)
            k_max = 2 * cal.semiangle * 1e-3 / cal.wavelength
            dz_rule = cal.wavelength / (2 * (cal.semiangle * 1e-3) ** 2)
            s_list = ([max(1, round(t / dz_rule))] if args.slices == "rule"
                      else [int(v) for v in args.slices.split(",")])  # fmt: skip
            for dose_s in args.doses.split(","):
                mem = memory_dataset(data, cal, meta, None if dose_s == "none" else float(dose_s))
                e_ncc, e_sec = "–", 0.0
                if "epie" in methods:
                    t0 = time.perf_counter()
                    res = epie(mem, EpieParameters(iterations=args.epie_iterations,
                                                   batch_size=16))  # fmt: skip
                    e_sec = time.perf_counter() - t0
                    e_ncc = f"{_ncc(res, truth, t_sampling, k_max):.3f}"
                for s in s_list:
                    m_ncc = l_ncc = best = c10 = "–"
                    m_sec = l_sec = 0.0
                    if "mepie" in methods:
                        t0 = time.perf_counter()
                        res = mepie(mem, MepieParameters(
                            slices=s, slice_thickness=t / s, iterations=args.mepie_iterations,
                            batch_size=16))  # fmt: skip
                        m_sec, m_ncc = (time.perf_counter() - t0,
                                        f"{_ncc(res, truth, t_sampling, k_max):.3f}")
                    if "ml" in methods:
                        t0 = time.perf_counter()
                        res = ml(mem, MLParameters(
                            slices=s, slice_thickness=t / s, iterations=args.ml_iterations,
                            mepie_start_iterations=args.mepie_iterations,
                            object_model=args.ml_object_model))  # fmt: skip
                        l_sec, l_ncc = (time.perf_counter() - t0,
                                        f"{_ncc(res, truth, t_sampling, k_max):.3f}")
                        best = f"{res.best_iteration} of {len(res.errors)}"
                        c10 = f"{res.extra['refined'].get('C10', float('nan')):.1f}"
                    print(f"| {t:g} | {z:g} | {dose_s} | {s} | {t / s:.4g} | {e_ncc} | {m_ncc} "
                          f"| {l_ncc} | {best} | {c10} | {e_sec:.0f}/{m_sec:.0f}/{l_sec:.0f} |",
                          flush=True)


if __name__ == "__main__":
    main()
