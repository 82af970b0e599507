"""The full UiO-66 study preset's CPU time, estimated (issue 17): each dataset simulated on a
fraction (16 × 16 of its 150 × 150 positions, 1 of its 15 phonon configurations) and each
method timed on it (CPU time of this process); benchmarks/RESULTS.md scales the parts.

    python benchmarks/bench_full_estimate.py [--out DIR] [df100nm df0nm ...]
"""
import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from ptyengine import io, presets, study
from ptyengine import simulate as sim
from ptyengine.reconstruct.epie import EpieParameters
from ptyengine.reconstruct.ml import MLParameters

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--out", default="/tmp/ptyengine-full-fraction")
ap.add_argument("labels", nargs="*", default=["df100nm", "df0nm"])
args = ap.parse_args()
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
labels = args.labels
res = {}
for label, base in presets.uio66_defocus("full"):
    if label not in labels:
        continue
    p = dataclasses.replace(base, phonons=1, scan_size=(6.4, 6.4))
    r = {}
    c0, w0 = time.process_time(), time.perf_counter()
    spec = sim.build_specimen(p, np)
    r["build_1config_cpu"] = time.process_time() - c0
    r["build_1config_wall"] = time.perf_counter() - w0
    r["field_px"] = list(spec.potential.shape)
    r["slices"] = len(spec.slice_thicknesses)
    r["window"] = sim.window_for(p, spec.sampling, spec.potential.shape)
    del spec
    path = out / f"{label}.zarr"
    c0, w0 = time.process_time(), time.perf_counter()
    info = sim.simulate(p, str(path), overwrite=True)
    r["simulate_cpu"], r["simulate_wall"] = time.process_time() - c0, time.perf_counter() - w0
    r["scan"] = list(info["scan_shape"])
    print(label, r, flush=True)
    with io.open_dataset(path) as ds:
        truth = study.Truth.from_dataset(ds)
        ml_params = MLParameters(iterations=3, pixel_start_iterations=0)
        for method, kw in (("icom", {}), ("idpc", {}), ("ssb", {}), ("wdd", {}), ("tcbf", {}),
                           ("epie", {"epie_params": EpieParameters(iterations=3)}),
                           ("ml", {"ml_params": ml_params})):
            m = "ml" if method.startswith("ml") else method
            c0 = time.process_time()
            run = study.run_method(ds, m, "cpu", kw.get("epie_params"), kw.get("ml_params"),
                                   truth.margin)  # fmt: skip
            r[method] = {"cpu": time.process_time() - c0, "wall": run.seconds}
            if m == "ml":
                r[method].update(iterations_run=run.extra.get("iterations_run"),
                                 best=run.extra.get("best_iteration"))  # fmt: skip
            print(label, method, r[method], flush=True)
    res[label] = r
    (out / f"full_estimate_{label}.json").write_text(json.dumps(r, indent=1))
