"""NCC against iterations for ML, and where its held-out rule stops (issue 14).

For each defocus of the quick UiO-66 preset at ``--dose`` (datasets as made by
bench_quality.py, reused from ``--out``), ML runs one iteration at a time from its own
checkpoint (a resumed run equals an uninterrupted one), so the phase of every iterate is
scored against the ground truth: NCC band-limited to 2α/λ and after a 1 Å blur. The rule
is applied as the engine applies it (MLParameters defaults: the latest iterate within
HELD_TOLERANCE of the best held-out deviance; stop after ``patience`` iterations without
one), and the table shows the iterate it returns against the best NCC of the whole run.

    python benchmarks/bench_ml_curve.py [--dose 100] [--iterations 40] [--seed 0]
        [--ml ridge=2 --ml smoothness=10]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

from ptyengine import io, metrics, physics, presets
from ptyengine.reconstruct import ml as mlmod

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import _ml_options, dataset_path, ensure_dataset, object_border  # noqa: E402


def rule(held, patience: int, tolerance: float):
    """(returned iterate, iterations run) of the engine's held-out rule on the curve
    ``held`` (held-out half-deviance totals), one value per iterate: the latest fitted
    iterate (from 1 on) within ``tolerance`` of the best held-out value is kept; the run
    stops after ``patience`` iterations without one (L's convergence rule applies only
    without held-out pixels)."""
    best_value, best = np.inf, 0
    for k, h in enumerate(held):
        if k > 0:  # the flat start is no candidate
            best_value = min(best_value, h)
            if h <= best_value + tolerance:
                best = k
        if k - best >= patience:
            return best, k + 1
    return best, len(held)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dose", type=float, default=100.0)
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/ptyengine-quality")
    ap.add_argument("--ml", action="append", default=[], metavar="FIELD=VALUE",
                    help="an ML parameter other than its default, e.g. ridge=2")
    args = ap.parse_args(argv)
    defaults = mlmod.MLParameters(**_ml_options(args.ml))
    marks = [k for k in (1, 2, 5, 10, 20, 30, 40, 60, 80) if k <= args.iterations]
    print(f"ML at {args.dose:g} e/Å², noise seed {args.seed}, defaults except iterations"
          f"{' and ' + ', '.join(args.ml) if args.ml else ''}; "
          f"NCC(1 Å) of the iterate after k iterations")
    print("| defocus | " + " | ".join(f"k={k}" for k in marks) +
          " | best NCC(1 Å) (k) | rule: returns k, stops after | its NCC(1 Å) |")
    print("|" + "---|" * (len(marks) + 4))
    for label, base in presets.uio66_defocus("quick"):
        params = dataclasses.replace(base, dose=args.dose, seed=args.seed)
        path = dataset_path(Path(args.out), args.dose, label, args.seed)
        ensure_dataset(params, path, lambda m: print(m, file=sys.stderr))
        with io.open_dataset(path) as ds:
            cal = ds.calibration
            pot, attrs = ds.read_array("ground_truth/potential")
            margin = float(ds.metadata.get("scan_margin_A", 0.0))
        truth = physics.interaction_constant(cal.energy) * pot
        k_max = 2 * cal.semiangle * 1e-3 / cal.wavelength
        p = dataclasses.replace(defaults, iterations=0, seed=args.seed,
                                patience=args.iterations + 1)  # fmt: skip
        scores, held = [], []
        with tempfile.TemporaryDirectory() as tmp:
            ck = str(Path(tmp) / "ck.npz")
            for k in range(1, args.iterations + 1):
                res = mlmod.ml(path, dataclasses.replace(p, iterations=k), checkpoint=ck,
                               checkpoint_every=1, resume=k > 1)  # fmt: skip
                with np.load(ck) as f:
                    phase = f["phase"]
                g = res.geometry
                r = metrics.compare_to_truth(phase, g.sampling, g.object_origin, truth,
                                             attrs["sampling"], k_max=k_max, max_shift=1.0,
                                             sigma=1.0,
                                             border=object_border(g, margin))
                scores.append(r["ncc_lowpass"])
            held_counts = res.extra["counts_per_pattern"] * len(g.corners) * p.holdout
            held = [h * held_counts for h in res.held_out]
        returned, stopped = rule(held, defaults.patience, mlmod.HELD_TOLERANCE)
        best = int(np.argmax(scores))
        # scores[k-1] is the iterate after k iterations; held[k] was measured on it
        chosen = scores[returned - 1] if returned > 0 else float("nan")  # 0: flat start
        cells = " | ".join(f"{scores[k - 1]:+.3f}" for k in marks)
        print(f"| {base.defocus / 10:g} nm | {cells} | {scores[best]:+.3f} ({best + 1}) | "
              f"{returned}, {stopped} | {chosen:+.3f} |", flush=True)


if __name__ == "__main__":
    main()
