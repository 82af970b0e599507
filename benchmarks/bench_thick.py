"""Thick SrTiO3 or UiO-66: NCC of the summed phase with σ·V_proj for single-slice ePIE, mepie
and multislice ML started from that mepie run (issue 15).

Problem: SrTiO3 [001], ``--thicknesses`` Å thick (simulated by ptyengine's multislice with
2 Å slices, static lattice), 300 kV, 20 mrad, crossover at each of ``--defoci`` Å above the
entrance surface (0: on it), a 20 × 20 scan at 0.4 Å over one 7.81 Å cell,
``--detector-pixels`` (48: a probe window of 11.8 Å; 96: 23.6 Å) to 40 mrad; noise-free,
or Poisson counts at each ``--doses`` e/Å² (seed 0).

Methods (all from the calibration's defocus, probe refined; every method of a row on the same
data, ``--detector-pixels``):
  ePIE  single slice, ``--epie-iterations`` iterations, batch 16;
  ML1   ("ml1") single-slice ML, at most ``--ml-iterations`` iterations, library defaults
        but ``--ml-object-model``: the single-slice baseline of the Poisson likelihood;
  mepie S slices of Δz = t / S, ``--mepie-iterations`` K iterations, batch 16, flat start;
  ML    S slices, started from exactly that mepie run (``mepie_start_iterations`` K), then
        at most ``--ml-iterations`` Poisson-ML iterations (library defaults otherwise:
        C10/C12 refined, held-out stopping; ``--ml-object-model``: phase, or complex:
        a_s = −log|O_s| of mepie's slices kept and refined).
S: ``--slices`` (comma list: a sweep) or ("rule") the library's rule
(``slices.rule_slices``): S = round(t / Δz_rule), Δz_rule = λ/(2α²) (24.6 Å at 300 kV,
20 mrad: a quarter of the depth of field 2λ/α²), at most 8; RESULTS.md, "Thick
specimens", has the sweeps that chose it).
The NCC is the CLI's: summed phase against σ·V_proj band-limited to 2α/λ, scanned area.

``--structure uio66``: UiO-66 [110] as the uio66-defocus quick preset builds it
(presets.uio66_defocus: 300 kV, 20 mrad, its 41 × 44 Å field, 2 Å simulation slices) but
``--thicknesses`` thick, a static lattice, ``--detector-pixels`` (80) to 30 mrad (the
preset's angle, a 26 Å real-space window), the preset's scan of one 20.7 × 14.7 Å cell
plus the dose margin α·|C10| + 1 Å, step 0.8 Å with the crossover on the surface and
1.2 Å above it (the tiny preset's steps). Doses default to none,100 (the issue's UiO-66
dose); at a dose ePIE and mepie run phase-only (|O| = 1: their amplitude update is
biased at these counts). Methods add "mlss": multislice ML from its own single-slice
start (the default, ``single_slice_iterations`` 50), and "ml1": single-slice ML (S = 1).
Scored with study.Truth (NCC and NCC after the 1 Å blur) over the fully dosed cell
(study.object_border).

    python benchmarks/bench_thick.py [--thicknesses 200,400] [--defoci 0,100]
        [--doses none,1000] [--slices rule|4,8,16] [--methods epie,ml1,mepie,ml]
        [--detector-pixels 48] [--workdir DIR]
    python benchmarks/bench_thick.py --structure uio66 [--methods epie,mepie,ml,mlss]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

from bench_ml_multislice import memory_dataset

from ptyengine import io, metrics, physics, presets
from ptyengine.reconstruct.epie import EpieParameters, epie
from ptyengine.reconstruct.mepie import MepieParameters, mepie
from ptyengine.reconstruct.ml import MLParameters, ml
from ptyengine.reconstruct.slices import rule_slices
from ptyengine.simulate import SimulationParameters, simulate
from ptyengine.study import Truth, object_border


def _simulate(thickness, defocus, detector_pixels, tmp):
    """SrTiO3 (module docstring): (data, calibration, metadata, σV_proj, its sampling); a
    dataset already in ``tmp`` (``--workdir``) is reused."""
    sim = SimulationParameters(structure="srtio3", field=(7.81, 7.81), thickness=thickness,
                               scan_step=0.4, scan_size=(7.81, 7.81), max_angle=40.0,
                               detector_pixels=detector_pixels, defocus=defocus)  # fmt: skip
    path = os.path.join(tmp, f"sto_{thickness:g}_{defocus:g}_{detector_pixels}.zarr")
    if not os.path.exists(path):  # simulate() gives the final name only when finished
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


def _simulate_uio66(thickness, defocus, detector_pixels, tmp):
    """UiO-66 [110] as the quick preset, ``thickness`` Å, static, crossover ``defocus`` Å
    above the entrance surface: (in-memory data, calibration, metadata, Truth); a dataset
    already in ``tmp`` (``--workdir``) is reused."""
    base = presets.uio66_defocus("quick")[0][1]
    sim = dataclasses.replace(base, thickness=thickness, defocus=defocus, phonons=0,
                              scan_step=0.8 if defocus == 0 else 1.2,
                              detector_pixels=detector_pixels)  # fmt: skip
    path = os.path.join(tmp, f"uio66_{thickness:g}_{defocus:g}_{sim.fingerprint()}.zarr")
    t0 = time.perf_counter()
    if not os.path.exists(path):  # simulate() gives the final name only when finished
        simulate(sim, path)
    with io.open_dataset(path) as ds:
        data, cal, meta = ds.read_rows(0, ds.shape[0]), ds.calibration, ds.metadata
        truth = Truth.from_dataset(ds)
    print(f"simulated {thickness:g} Å, crossover {defocus:g} Å: {data.shape[:2]} positions, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return data, cal, meta, truth


def _score(res, truth):
    g = res.geometry
    r = truth.score(res.phase, g.sampling, g.object_origin, object_border(g, truth.margin))
    return f"{r['ncc']:.3f} / {r['ncc_1A']:.3f}"


def _timed(run, *args):
    t0 = time.perf_counter()
    res = run(*args)
    return res, time.perf_counter() - t0


def main_uio66(args):
    """The UiO-66 [110] table (module docstring)."""
    methods = args.methods.split(",")
    doses = args.doses if args.doses != "none,1000" else "none,100"
    tmp = args.workdir or tempfile.mkdtemp()
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| t (Å) | crossover (Å) | dose | S | ePIE | ML, S = 1 | mepie | ML from mepie | ML from "
          "single slice | ML best it. (mepie / ss start) | s (ePIE/ML1/mepie/ML/MLss) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for t in (float(v) for v in args.thicknesses.split(",")):
        for z in (float(v) for v in args.defoci.split(",")):
            data, cal, meta, truth = _simulate_uio66(t, z, args.detector_pixels or 80, tmp)
            s_list = ([rule_slices(cal.wavelength, cal.semiangle, t)] if args.slices == "rule"
                      else [int(v) for v in args.slices.split(",")])  # fmt: skip
            for dose_s in doses.split(","):
                dose = None if dose_s == "none" else float(dose_s)
                mem = memory_dataset(data, cal, meta, dose)
                common = dict(batch_size=16, phase_only=dose is not None)
                cells = dict.fromkeys(("epie", "ml1", "mepie", "ml", "mlss"), "–")
                secs = dict.fromkeys(cells, 0.0)
                best = ["–", "–"]
                if "epie" in methods:
                    res, secs["epie"] = _timed(epie, mem, EpieParameters(
                        iterations=args.epie_iterations, **common))  # fmt: skip
                    cells["epie"] = _score(res, truth)
                if "ml1" in methods:
                    res, secs["ml1"] = _timed(ml, mem, MLParameters(
                        iterations=args.ml_iterations, object_model=args.ml_object_model))
                    cells["ml1"] = _score(res, truth)
                for s in s_list:
                    ms = dict(slices=s, slice_thickness=t / s)
                    if "mepie" in methods:
                        res, secs["mepie"] = _timed(mepie, mem, MepieParameters(
                            iterations=args.mepie_iterations, **ms, **common))  # fmt: skip
                        cells["mepie"] = _score(res, truth)
                    for key, start in (("ml", args.mepie_iterations), ("mlss", 0)):
                        if key not in methods:
                            continue
                        res, secs[key] = _timed(ml, mem, MLParameters(
                            iterations=args.ml_iterations, mepie_start_iterations=start,
                            object_model=args.ml_object_model, **ms))  # fmt: skip
                        cells[key] = _score(res, truth)
                        best[key == "mlss"] = f"{res.best_iteration} of {len(res.errors)}"
                    print(f"| {t:g} | {z:g} | {dose_s} | {s} | {cells['epie']} | {cells['ml1']} | "
                          f"{cells['mepie']} | {cells['ml']} | {cells['mlss']} | "
                          f"{best[0]} / {best[1]} | "
                          f"{'/'.join(f'{v:.0f}' for v in secs.values())} |", flush=True)


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
    ap.add_argument("--structure", default="srtio3", choices=("srtio3", "uio66"))
    ap.add_argument("--detector-pixels", type=int,
                    help="pixels to 40 mrad (srtio3, default 48) or 30 mrad (uio66, 80)")
    ap.add_argument("--workdir", help="keep (and reuse) the datasets here")
    args = ap.parse_args()
    if args.structure == "uio66":
        return main_uio66(args)
    methods = args.methods.split(",")
    tmp = args.workdir or tempfile.mkdtemp()
    print(f"load average {os.getloadavg()[0]:.1f}")
    print("| t (Å) | crossover (Å) | dose | px | S | Δz (Å) | ePIE | ML, S = 1 | mepie | ML | "
          "ML best it. | ML C10 (Å) | s (ePIE/ML1/mepie/ML) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for t in (float(v) for v in args.thicknesses.split(",")):
        for z in (float(v) for v in args.defoci.split(",")):
            data, cal, meta, truth, t_sampling = _simulate(t, z, args.detector_pixels or 48,
                                                           tmp)  # fmt: skip
            k_max = 2 * cal.semiangle * 1e-3 / cal.wavelength
            s_list = ([rule_slices(cal.wavelength, cal.semiangle, t)] if args.slices == "rule"
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
                s_ncc, s_sec = "–", 0.0
                if "ml1" in methods:
                    t0 = time.perf_counter()
                    res = ml(mem, MLParameters(iterations=args.ml_iterations,
                                               object_model=args.ml_object_model))
                    s_sec = time.perf_counter() - t0
                    s_ncc = f"{_ncc(res, truth, t_sampling, k_max):.3f}"
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
                    print(f"| {t:g} | {z:g} | {dose_s} | {args.detector_pixels or 48} | {s} | "
                          f"{t / s:.4g} | {e_ncc} | {s_ncc} | {m_ncc} | {l_ncc} | {best} | {c10} | "
                          f"{e_sec:.0f}/{s_sec:.0f}/{m_sec:.0f}/{l_sec:.0f} |", flush=True)


if __name__ == "__main__":
    main()
