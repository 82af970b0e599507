"""Direct and iterative methods on SrTiO3 [001], noise-free, in focus and out of focus: NCC
of the phase with σ·V and after a σ = 1 Å blur (issue 16's SrTiO3 table).

Data: SrTiO3 [001], ``--cells`` × ``--cells`` unit cells (3.905 Å) scanned whole at 0.4 Å
(the field is periodic), ``--thickness`` Å thick (2 Å slices, static lattice), 300 kV,
20 mrad, 48² detector pixels to 40 mrad, noise-free, crossover at each of ``--defoci`` Å
above the entrance surface. Every method with the library's defaults (ePIE: 30 iterations;
ML: held-out stopping); scored by ``ptyengine.study`` as the UiO-66 study is (σ·V
band-limited to 2α/λ, registration within 1 Å, the unscanned border left out).

    python benchmarks/bench_direct_sto.py [--defoci 0,100] [--cells 4] [--thickness 11.7]
        [--methods icom,ssb,wdd,tcbf,epie,ml] [--out /tmp/direct_sto]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

from ptyengine.reconstruct.epie import EpieParameters
from ptyengine.simulate import SimulationParameters
from ptyengine.study import NAMES, ensure_dataset, evaluate


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--defoci", default="0,100", help="C10 in Å, comma-separated")
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--thickness", type=float, default=11.715)
    ap.add_argument("--methods", default="icom,ssb,wdd,tcbf,epie,ml")
    ap.add_argument("--out", default="/tmp/direct_sto")
    args = ap.parse_args(argv)
    methods = args.methods.split(",")
    side = 3.905 * args.cells
    print(f"machine: {platform.platform()}, {platform.machine()}; SrTiO3 [001] {args.cells}² "
          f"cells, {args.thickness} Å thick, noise-free")
    print("| defocus | " + " | ".join(f"{NAMES[m]} NCC / NCC(1 Å)" for m in methods)
          + " |\n|---|" + "---|" * len(methods))
    for c10 in (float(v) for v in args.defoci.split(",")):
        params = SimulationParameters(structure="srtio3", zone_axis=(0, 0, 1),
                                      field=(side, side), thickness=args.thickness,
                                      scan_step=0.4, scan_size=(side, side), max_angle=40.0,
                                      detector_pixels=48, defocus=c10)  # fmt: skip
        path = Path(args.out) / f"sto_c10_{c10:g}.zarr"
        ensure_dataset(params, path, print)
        t0 = time.perf_counter()
        r = evaluate(path, methods, EpieParameters(iterations=30), "cpu", lambda s: None)
        cells = " | ".join(f"{r[m]['ncc']:+.3f} / {r[m]['ncc_1A']:+.3f}" for m in methods)
        print(f"| {c10:g} Å | {cells} |  ({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
