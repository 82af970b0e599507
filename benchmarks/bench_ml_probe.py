"""ML's probe models on partially coherent data: the aberration probe (C10, C12), the free
pixel probe, and the pixel probe in M incoherent modes, across dose.

Data: SrTiO3 [001] one unit cell thick (7.8 Å square field, 0.4 Å steps, 300 kV, 20 mrad,
48² detector pixels to 40 mrad), simulated at C10 = 150 − s, 150 and 150 + s Å and
averaged with weights ¼, ½, ¼: a focal spread of ±s Å (``--spread``; 0: coherent). For each
dose (``none``: the noise-free intensities; else Poisson counts at that many e/Å², noise
seed 0) and each probe model, ML with the library's defaults otherwise (held-out stopping,
at most ``--iterations``). Printed per run: NCC of the phase with σ·V (band-limited to
2α/λ, registered within 1 Å, the unscanned border left out), the last fitted and the
best held-out half-deviance per count, the result's iteration and the run's length, the
modes' shares of the counts, seconds, and the counts per bright-field pixel.

    python benchmarks/bench_ml_probe.py [--spread 40] [--doses none,100000,10000,1000]
        [--models aberrations,pixels,pixels3] [--iterations 60] [--out /tmp/ml_probe]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import numpy as np
from bench_ml_multislice import memory_dataset
from bench_quality import parse_doses

from ptyengine import io, metrics, physics
from ptyengine.reconstruct.ml import MLParameters, ml
from ptyengine.simulate import SimulationParameters, simulate

THIN = SimulationParameters(structure="srtio3", zone_axis=(0, 0, 1), field=(7.81, 7.81),
                            thickness=3.905, scan_step=0.4, scan_size=(7.81, 7.81),
                            max_angle=40.0, detector_pixels=48, defocus=150.0)


def partially_coherent(out: Path, spread: float):
    """(intensities, calibration, σ·V, its sampling): the focal-spread mean (docstring)."""
    mean, weights = None, {150.0 - spread: 0.25, 150.0: 0.5, 150.0 + spread: 0.25}
    if spread == 0:
        weights = {150.0: 1.0}
    for c10, w in weights.items():
        path = out / f"sto_c10_{c10:g}.zarr"
        if not path.exists():
            simulate(dataclasses.replace(THIN, defocus=c10), str(path))
        with io.open_dataset(path) as ds:
            part = w * ds.read_rows(0, ds.shape[0]).astype(np.float64)
            mean = part if mean is None else mean + part
            cal = ds.calibration
            pot, attrs = ds.read_array("ground_truth/potential")
    return mean, cal, physics.interaction_constant(cal.energy) * pot, attrs["sampling"]


MODELS = {"aberrations": dict(refine_probe="aberrations"),
          "pixels": dict(refine_probe="pixels"),
          **{f"pixels{m}": dict(refine_probe="pixels", probe_modes=m) for m in range(2, 9)}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spread", type=float, default=40.0, help="Å: the focal spread ±s")
    ap.add_argument("--doses", default="none,100000,10000,1000")
    ap.add_argument("--models", default="aberrations,pixels,pixels3")
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--out", default="/tmp/ml_probe")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mean, cal, truth, t_sampling = partially_coherent(out, args.spread)
    k_max = 2 * cal.semiangle * 1e-3 / cal.wavelength
    print("| dose (e/Å²) | probe | NCC | fitted D/count | held-out D/count | result / run "
          "| mode shares | s | counts per BF pixel |\n|---|---|---|---|---|---|---|---|---|")
    for dose in parse_doses(args.doses):
        ds = memory_dataset(mean if dose else mean.astype(np.float32), cal,
                            {"simulation": {"dose": None}}, dose)  # fmt: skip
        for name in args.models.split(","):
            t0 = time.perf_counter()
            res = ml(ds, MLParameters(iterations=args.iterations, **MODELS[name]))
            sec = time.perf_counter() - t0
            g = res.geometry
            ncc = metrics.compare_to_truth(
                res.phase, g.sampling, g.object_origin, truth, t_sampling, k_max=k_max,
                max_shift=1.0, border=g.window[0] // 2 + int(g.corners.min()))["ncc"]
            shares = " / ".join(f"{p:.2f}" for p in res.extra["probe_mode_powers"])
            print(f"| {'none' if dose is None else f'{dose:g}'} | {name} | {ncc:.3f} | "
                  f"{res.errors[-1]:.4g} | {min(res.held_out):.4g} | {res.best_iteration} / "
                  f"{len(res.errors)} | {shares} | {sec:.1f} | "
                  f"{res.extra['counts_per_bright_field_pixel']:.3g} |", flush=True)


if __name__ == "__main__":
    main()
