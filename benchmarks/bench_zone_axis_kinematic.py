"""Zone-axis tilt from one pattern, the Laue circle against its kinematic refinement (issue 18).

For each crystal, ``--tilts`` random misorientations (the cases of ``bench_zone_axis.py``: the
same seed, holder tilts of total φ uniform in [0, 5]°, axes at 30° and 120°), simulated by
the plane-wave multislice (:mod:`ptyengine.planewave`: every order of scattering), noise-free
and at ``--dose`` electrons per pattern, and measured by
:func:`ptyengine.hrtem.zone_axis.align` with the circle alone and with ``crystal=`` the
kinematic model (:mod:`ptyengine.hrtem.kinematic`: the crystal's projected potential, the
lattice oriented on the detected spots, thickness fitted from a start ``--model-thickness``
× the true one). ``--phonons K``: the patterns are simulated with K frozen-phonon
configurations (the library's thermal σ: Debye–Waller damping and, on a field of
``--cells`` unit cells a side, diffuse scattering) while the model stays a static lattice.
``--rotate``: each pattern is also turned by 90° (numpy's rot90, exact) with the holder
axes turned alike: the lattice search must find the turn.
Prints the error max(|Δα − truth|, |Δβ − truth|) in degrees, median / 95th percentile /
max, and how many are within 0.1°.

    python benchmarks/bench_zone_axis_kinematic.py --tilts 20
    python benchmarks/bench_zone_axis_kinematic.py --tilts 8 --rotate --model-thickness 0.7
    python benchmarks/bench_zone_axis_kinematic.py --tilts 8 --phonons 4 --cells 4 \
        --crystals "SrTiO3 [001]"
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_zone_axis import AXES, CRYSTALS, ENERGY, misoriented, stats  # noqa: E402

from ptyengine import planewave  # noqa: E402
from ptyengine.hrtem import kinematic  # noqa: E402
from ptyengine.hrtem import zone_axis as za  # noqa: E402


def error(corr, truth) -> float:
    return max(abs(corr[0] - truth[0]), abs(corr[1] - truth[1]))


def turned(p, axes):
    """The pattern turned by 90° (numpy's rot90: the pixel (y, x) goes to (n−1−x, y)) and
    the holder axes' directions on it (degrees from +x towards +y: a → a − 90°). A turn
    keeps the frame right-handed, so the corrections are the same."""
    return np.rot90(p), tuple((a - 90.0) % 360.0 for a in axes)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tilts", type=int, default=20)
    ap.add_argument("--dose", type=float, default=1e7, help="electrons per pattern")
    ap.add_argument("--seed", type=int, default=18)
    ap.add_argument("--phonons", type=int, default=0)
    ap.add_argument("--model-thickness", type=float, default=1.0,
                    help="the model's starting thickness / the true one")
    ap.add_argument("--rotate", action="store_true")
    ap.add_argument("--cells", type=int, default=1,
                    help="the field's side in unit cells (frozen phonons need several: in one "
                         "periodic cell every cell's atoms move alike)")
    ap.add_argument("--crystals", default=",".join(CRYSTALS))
    args = ap.parse_args()
    t_start, c_start = time.perf_counter(), time.process_time()
    rows = []
    for name in args.crystals.split(","):
        c = CRYSTALS[name]
        field = tuple(args.cells * v for v in c["field"])
        spec = planewave.plane_wave_specimen(c["structure"], c["zone_axis"], field=field,
                                             thickness=c["thickness"], phonons=args.phonons,
                                             k_max=c["pixels"] // 2 * c["dk"] * 1.01)  # fmt: skip
        reach = math.sqrt(2) * (c["pixels"] // 2) * c["dk"]
        model = kinematic.zolz_coefficients(c["structure"], c["zone_axis"], reach, ENERGY,
                                            thickness=args.model_thickness * c["thickness"])
        rng = np.random.default_rng(args.seed)
        errs = {}
        for i in range(args.tilts):
            phi, psi = rng.uniform(0, 5.0), rng.uniform(0, 2 * math.pi)
            truth = (phi * math.cos(psi), phi * math.sin(psi))
            tilt = planewave.tilt_from_direction(misoriented(*truth))
            line = []
            for label, dose in (("noise-free", None), ("dose", args.dose)):
                p = planewave.diffraction_pattern(spec, ENERGY, tilt, c["pixels"], c["dk"],
                                                  dose=dose, seed=args.seed + i)  # fmt: skip
                views = [(p, AXES, "")] + ([(*turned(p, AXES), ", turned")] if args.rotate
                                           else [])  # fmt: skip
                for image, axes, tag in views:
                    for method, crystal in (("circle", None), ("kinematic", model)):
                        try:
                            a = za.align(image, *axes, c["dk"], ENERGY, method="circle",
                                         crystal=crystal)  # fmt: skip
                            e = error(a.correction, truth)
                        except Exception as exc:  # a failed measurement is a result too
                            print(f"  {method} failed: {exc}")
                            e = float("nan")
                        errs.setdefault((label + tag, method), []).append(e)
                        line.append(f"{method}{tag} {e:.3f}")
            print(f"  {name} φ = {phi:.2f}°: " + ", ".join(line), flush=True)
        for (label, method), v in errs.items():
            shown = label.replace("dose", f"{args.dose:.0e} e/pattern")
            n_ok = sum(1 for x in v if x < 0.1)
            rows.append(f"| {name} | {shown} | {method} | {stats(v)} | {n_ok} of {len(v)} |")
    print(f"\n{args.tilts} tilts per crystal, φ uniform in [0, 5]°, seed {args.seed}, phonons "
          f"{args.phonons} on {args.cells}² cells, model thickness start "
          f"{args.model_thickness:g} × the true one; "
          "α/β error in degrees, median / 95th percentile / max\n")
    print("| crystal | data | estimator | α/β error | within 0.1° |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nwall {time.perf_counter() - t_start:.0f} s, "
          f"CPU {time.process_time() - c_start:.0f} s")


if __name__ == "__main__":
    main()
