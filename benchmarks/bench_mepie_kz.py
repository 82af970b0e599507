"""mepie with and without the k_z (missing-wedge) filter: NCC of the slices and of their sum.

Problems: (1) the two-layer specimen of tests/test_multislice_ptycho.py (two random phase
layers 80 Å apart, noise-free, 300 kV, 25 mrad, 16 × 16 positions), mepie with S = 2
slices (80, 1) Å and S = 4 slices (80/3 ×3, 1) Å (the middle two should stay empty),
phase-only, probe fixed; per-slice NCC with each layer, and NCC of the summed phase with
the layers' sum. (2) SrTiO3 [001] ``--thickness`` Å, crossover ``--defocus`` Å above (as
benchmarks/bench_ml_multislice.py), mepie with S = ``--slices`` of
thickness / S, batch 16, the probe refined, started from ``--start`` single-slice
iterations: NCC of the summed phase with σ·V_proj (the CLI's comparison) and the mean
NCC of each slice with σ·V_proj (a crystal along [001]: every slice alike); noise-free,
or Poisson counts at ``--dose`` e/Å². For every β in ``--betas`` (0: no filter), applied
after every iteration.

    python benchmarks/bench_mepie_kz.py [--betas 0,5,10,20,40] [--thickness 100]
        [--slices 4] [--iterations 20] [--dose 1000] [--start 5]
        [--skip-sto] [--skip-layers]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from test_multislice_ptycho import GAP, _layer_ncc, two_layer_dataset  # noqa: E402

from ptyengine import io, metrics, physics  # noqa: E402
from ptyengine.dataset import InMemoryDataset  # noqa: E402
from ptyengine.reconstruct.mepie import MepieParameters, mepie  # noqa: E402
from ptyengine.simulate import SimulationParameters, simulate  # noqa: E402


def two_layers(betas, iterations, tmp):
    path, truth = two_layer_dataset(os.path.join(tmp, "two.zarr"))
    total = truth.sum(axis=0)[None]
    print("| S | β | slice 0 × layer 0 | slice S−1 × layer 1 | off-diagonal max | "
          "middle slices rms / end slices rms | Σφ × Σ layers | s |")
    print("|---|---|---|---|---|---|---|---|")
    for dz in [(GAP, 1.0), (GAP / 3,) * 3 + (1.0,)]:
        for beta in betas:
            t0 = time.perf_counter()
            res = mepie(path, MepieParameters(slices=len(dz), slice_thickness=dz,
                                              iterations=iterations, batch_size=16,
                                              phase_only=True, probe_update_start=10**6,
                                              kz_filter=beta))  # fmt: skip
            sec = time.perf_counter() - t0
            ncc = _layer_ncc(res, truth)
            off = max(abs(ncc[0, 1]), abs(ncc[-1, 0]))
            inner = res.slice_phase[:, 30:-30, 30:-30]
            inner = inner - inner.mean(axis=(1, 2), keepdims=True)
            rms = np.sqrt((inner**2).mean(axis=(1, 2)))
            mid = f"{rms[1:-1].mean() / rms[[0, -1]].mean():.3f}" if len(dz) > 2 else "–"

            class _Sum:  # the summed phase as a one-slice result for _layer_ncc
                geometry, slice_phase = res.geometry, res.phase[None]

            tot = _layer_ncc(_Sum, total)[0, 0]
            print(f"| {len(dz)} | {beta:g} | {ncc[0, 0]:.3f} | {ncc[-1, 1]:.3f} | {off:.3f} | "
                  f"{mid} | {tot:.3f} | {sec:.1f} |", flush=True)


def srtio3(betas, thickness, defocus, slices, iterations, tmp, dose=None, start=5):
    sim = SimulationParameters(structure="srtio3", field=(7.81, 7.81), thickness=thickness,
                               scan_step=0.4, scan_size=(7.81, 7.81), max_angle=40.0,
                               detector_pixels=48, defocus=defocus)  # fmt: skip
    path = os.path.join(tmp, "sto.zarr")
    t0 = time.perf_counter()
    simulate(sim, path)
    noise = "noise-free" if dose is None else f"{dose:g} e/Å²"
    print(f"\nSrTiO3 [001] {thickness:g} Å, crossover {defocus:g} Å above, {noise}, "
          f"simulated in {time.perf_counter() - t0:.1f} s; mepie S = {slices}, "
          f"Δz = {thickness / slices:g} Å, {iterations} iterations after {start} "
          "single-slice ones")
    with io.open_dataset(path) as ds:
        cal, data, meta = ds.calibration, ds.read_rows(0, ds.shape[0]), ds.metadata
        pot, attrs = ds.read_array("ground_truth/potential")
    if dose is not None:  # Poisson counts at ``dose`` e/Å²
        n0 = dose * cal.scan_step[0] * cal.scan_step[1]
        data = np.random.default_rng(0).poisson(data.astype(np.float64) * n0)
        data, cal = data.astype(np.uint32), dataclasses.replace(cal, dose=dose)
    mem = InMemoryDataset(data, cal)
    mem.metadata = meta
    truth = physics.interaction_constant(cal.energy) * pot
    k_max = 2 * cal.semiangle * 1e-3 / cal.wavelength
    print("| β | NCC Σφ_s | mean NCC of φ_s | s |")
    print("|---|---|---|---|")
    for beta in betas:
        t0 = time.perf_counter()
        res = mepie(mem, MepieParameters(slices=slices, slice_thickness=thickness / slices,
                                          iterations=iterations, batch_size=16,
                                          single_slice_iterations=start, kz_filter=beta))
        sec = time.perf_counter() - t0
        g = res.geometry
        border = g.window[0] // 2 + int(g.corners.min())

        def ncc(image, g=g, border=border):
            return metrics.compare_to_truth(image, g.sampling, g.object_origin, truth,
                                            attrs["sampling"], k_max=k_max, max_shift=1.0,
                                            border=border)["ncc"]  # fmt: skip

        per = np.mean([ncc(p) for p in res.slice_phase])
        print(f"| {beta:g} | {ncc(res.phase):.3f} | {per:.3f} | {sec:.1f} |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--betas", default="0,5,10,20,40")
    ap.add_argument("--thickness", type=float, default=100.0)
    ap.add_argument("--defocus", type=float, default=100.0)
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=20)
    ap.add_argument("--start", type=int, default=5, help="single-slice iterations first")
    ap.add_argument("--dose", type=float, help="e/Å² (default: noise-free)")
    ap.add_argument("--skip-sto", action="store_true")
    ap.add_argument("--skip-layers", action="store_true")
    args = ap.parse_args()
    betas = [float(b) for b in args.betas.split(",")]
    tmp = tempfile.mkdtemp()
    print(f"load average {os.getloadavg()[0]:.1f}")
    if not args.skip_layers:
        two_layers(betas, args.iterations, tmp)
    if not args.skip_sto:
        srtio3(betas, args.thickness, args.defocus, args.slices, args.iterations, tmp,
               args.dose, args.start)


if __name__ == "__main__":
    main()
