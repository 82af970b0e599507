"""ML seconds per iteration against batched ePIE on the same data, in one process.

Data: the quick UiO-66 preset with the crossover 50 nm above the surface (simulated once
into ``--out``), as Poisson counts at ``--dose`` e/Å². Both run ``--iterations``
iterations after a one-iteration warm-up (kernels compiled, FFT plans made); ML without
the held-out rule so it runs them all, and without its defocus search, which is timed on
its own (seconds, once per run). ML runs twice: with its default probe refinement
(defocus and astigmatism: one FFT more per position in each pass, and the coefficients'
Fisher information every 8 iterations) and with the probe fixed. Each is the median of
``--repeats`` runs, the methods interleaved so that each repeat meets the same load.
Target (issue 14): ML within 2× of batched ePIE.

    python benchmarks/bench_ml.py [--dose 100] [--iterations 16] [--repeats 3]
        [--batch 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from ptyengine import backend, io, presets
from ptyengine.dataset import InMemoryDataset
from ptyengine.reconstruct.epie import EpieParameters, epie
from ptyengine.reconstruct.ml import MLParameters, ml
from ptyengine.simulate import simulate


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dose", type=float, default=100.0)
    ap.add_argument("--iterations", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64, help="positions per batch (both)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="/tmp/ptyengine-bench-ml")
    args = ap.parse_args(argv)
    label, params = next((lb, p) for lb, p in presets.uio66_defocus("quick")
                         if lb == "df50nm")  # fmt: skip
    path = Path(args.out) / f"{label}.zarr"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        simulate(params, str(path))
    with io.open_dataset(path) as ds:
        cal, data = ds.calibration, ds.read_rows(0, ds.shape[0])
    n0 = args.dose * cal.scan_step[0] * cal.scan_step[1]
    counts = np.random.default_rng(0).poisson(data * n0).astype(np.uint32)
    mds = InMemoryDataset(counts, dataclasses.replace(cal, dose=args.dose))
    runs = {
        "ePIE": lambda n: epie(mds, EpieParameters(iterations=n, batch_size=args.batch,
                                                   phase_only=True), device=args.device),
        "ML": lambda n: ml(mds, MLParameters(iterations=n, batch_size=args.batch, holdout=0.0,
                                             patience=10**6, defocus_search=0),
                           device=args.device),
        "ML, probe fixed": lambda n: ml(mds, MLParameters(
            iterations=n, batch_size=args.batch, holdout=0.0, defocus_search=0,
            patience=10**6, refine_probe="none"), device=args.device),
    }  # fmt: skip

    for fn in runs.values():
        fn(1)  # warm-up
    per_it = {name: [] for name in runs}
    for _ in range(args.repeats):  # interleaved: each repeat meets the same machine load
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn(args.iterations)
            per_it[name].append((time.perf_counter() - t0) / args.iterations)
    times = {name: statistics.median(v) for name, v in per_it.items()}
    for name, v in per_it.items():
        print(f"{name}: {times[name]:.3f} s/iteration (median of {args.repeats}: "
              f"{', '.join(f'{t:.3f}' for t in v)})")
    t0 = time.perf_counter()
    ml(mds, MLParameters(iterations=0, batch_size=args.batch, defocus_search=300.0),
       device=args.device)  # fmt: skip
    search = time.perf_counter() - t0
    print(f"defocus search (7 candidates × 5 iterations, then no iteration): {search:.1f} s "
          f"= {search / times['ML']:.1f} ML iterations")
    info = backend.describe()
    print(f"ML, probe fixed / batched ePIE: {times['ML, probe fixed'] / times['ePIE']:.2f}x")
    print(f"ML / batched ePIE: {times['ML'] / times['ePIE']:.2f}x  "
          f"({platform.processor() or platform.machine()}, {info['cpu_threads']} threads, "
          f"{info['cpu_fft']}; {cal.scan_shape[0] * cal.scan_shape[1]} positions, "
          f"{cal.detector_shape[0]} px detector, batch {args.batch}, device {args.device})")


if __name__ == "__main__":
    main()
