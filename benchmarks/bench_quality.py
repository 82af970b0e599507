"""Reconstruction quality against dose and defocus: iCOM, iDPC, tcBF, SSB, WDD, ePIE and ML
on the UiO-66 study.

For every dose and each of the three defocus values of the quick UiO-66 preset
(C10 = 0, 500, 1000 Å: crossover at the entrance surface, 50 nm and 100 nm above it), the
dataset is simulated (or reused when a complete dataset with the same parameter
fingerprint is already in ``--out``), reconstructed with iCOM, iDPC and ePIE, and each
phase image is compared with σ·V, the ground-truth projected potential times the
interaction constant: signed normalised cross-correlation (NCC) after band-limiting both
to k_max = 2·semiangle/λ (the information limit of the data) and registering with
|shift| ≤ 1 Å (metrics.compare_to_truth). The NCC is taken over the area that received
the full dose: the scan less its dose margin (simulate.dose_margin, the probe's radius
α·|C10| + 1 Å in the quick preset: the unit cell in the middle of the scan), and for ePIE
and ML also less the unscanned margin of the object (window//2 + min(corners) pixels).
A negative NCC means inverted contrast (e.g. iCOM out of focus). Each image is also
compared after a Gaussian blur of σ = 1 Å applied to both (``NCC(1 Å)``: the structure a
user looks for at low dose). With several ``--seeds`` each noisy dataset is simulated once
per seed (same specimen and intensities, other Poisson noise; ePIE's position order and
ML's held-out pixels follow the seed too) and the table shows mean and range.

    python benchmarks/bench_quality.py [--doses none,100,20] [--iterations 30]
        [--alpha 1 --beta 1] [--methods icom,idpc,tcbf,ssb,wdd,epie,ml] [--seeds 0,1,2]
        [--ml smoothness=3] [--out /tmp/ptyengine-quality]

Doses are in e/Å² ("none" = noise-free). Prints a Markdown table (rows dose × defocus) with
the machine and the command line; writes the numbers to
``<out>/results_d<doses>_a<α>_b<β>_i<iterations>.json`` too. Running and scoring the methods
is ptyengine/study.py's (one implementation with ``ptyengine study``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from ptyengine import backend, presets
from ptyengine.reconstruct.epie import EpieParameters
from ptyengine.reconstruct.ml import MLParameters

# the running and scoring of every method: one implementation, shared with ``ptyengine
# study`` (bench_ml_curve.py and bench_ml_positions.py import these names from here)
from ptyengine.study import NAMES, dose_border, ensure_dataset, evaluate, object_border  # noqa: F401

METHODS = ("icom", "idpc", "tcbf", "ssb", "wdd", "epie", "ml")


def parse_doses(text: str) -> list[float | None]:
    doses = []
    for item in text.split(","):
        item = item.strip().lower()
        if item in ("none", "inf", "noise-free", "noisefree"):
            doses.append(None)
        else:
            d = float(item)
            if not (math.isfinite(d) and d > 0):
                raise SystemExit(f"dose must be > 0 e/Å² or 'none', got {item!r}")
            doses.append(d)
    return doses


def dose_label(dose: float | None) -> str:
    return "noise-free" if dose is None else f"{dose:g} e/Å²"


def dataset_path(out: Path, dose: float | None, label: str, seed: int = 0) -> Path:
    sub = "dose_none" if dose is None else f"dose_{dose:g}" + (f"_seed{seed}" if seed else "")
    return out / sub / f"{label}.zarr"


def _ml_options(items) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        field = {f.name: f for f in dataclasses.fields(MLParameters)}.get(key)
        if field is None or not value:
            raise SystemExit(f"--ml takes FIELD=VALUE of MLParameters, got {item!r}")
        kind = type(field.default)
        out[key] = value if kind is str else int(value) if kind is int else float(value)
    return out


def _cell(values, fmt="{:+.3f}") -> str:
    """One value, or 'mean (min … max)' of several seeds."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(sum(values) / len(values))} ({fmt.format(min(values))} … " \
           f"{fmt.format(max(values))})"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--doses", default="none,100,20", help="comma-separated doses in e/Å²; 'none' = noise-free"
    )
    ap.add_argument("--iterations", type=int, default=30, help="ePIE iterations")
    ap.add_argument("--alpha", type=float, default=1.0, help="ePIE object step size")
    ap.add_argument("--beta", type=float, default=1.0, help="ePIE probe step size")
    ap.add_argument("--batch-size", type=int, default=1, help="ePIE batch (1 = sequential)")
    ap.add_argument("--phase-only", action="store_true", help="ePIE: constrain |O| = 1")
    ap.add_argument("--probe-update-start", type=int, default=1,
                    help="ePIE: first iteration that refines the probe")
    ap.add_argument("--ml", action="append", default=[], metavar="FIELD=VALUE",
                    help="an ML parameter other than its default, e.g. smoothness=10")
    ap.add_argument("--out", default="/tmp/ptyengine-quality", help="dataset folder")
    ap.add_argument("--seeds", default="0",
                    help="noise seeds (and ePIE/ML seeds), e.g. 0,1,2: mean and range")
    ap.add_argument("--methods", default="icom,idpc,epie")
    ap.add_argument("--device", default="cpu", help="cpu | gpu | auto (reconstructions)")
    ap.add_argument("--defoci", default=None,
                    help="only these crossover heights (nm), e.g. 50,100 [default: all]")
    args = ap.parse_args(argv)
    defoci = None if args.defoci is None else {float(v) for v in args.defoci.split(",")}
    doses = parse_doses(args.doses)
    seeds = [int(v) for v in args.seeds.split(",")]
    methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}: choose from {', '.join(METHODS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ml_options = _ml_options(args.ml)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    t_start = time.perf_counter()
    rows = []
    for dose in doses:
        for label, base in presets.uio66_defocus("quick"):
            if defoci is not None and base.defocus / 10 not in defoci:
                continue
            runs = []
            for seed in (seeds if dose is not None else seeds[:1]):
                params = dataclasses.replace(base, dose=dose, seed=seed)
                path = dataset_path(out, dose, label, seed)
                log(f"{dose_label(dose)}, {label} (C10 = {params.defocus:g} Å), seed {seed}: "
                    f"{path}")  # fmt: skip
                t_sim, reused = ensure_dataset(params, path, log)
                log(f"  dataset {'reused' if reused else f'simulated in {t_sim:.1f} s'}")
                epie_params = EpieParameters(
                    iterations=args.iterations, alpha=args.alpha, beta=args.beta,
                    batch_size=args.batch_size, seed=seed, phase_only=args.phase_only,
                    probe_update_start=args.probe_update_start)  # fmt: skip
                ml_params = MLParameters(**{"seed": seed, **ml_options})
                res = evaluate(path, methods, epie_params, args.device, log, ml_params)
                runs.append({"seed": seed, "simulation_s": t_sim, "reused": reused, **res})
            rows.append({"dose": dose, "label": label, "defocus_A": base.defocus,
                         "runs": runs})  # fmt: skip
    total = time.perf_counter() - t_start

    info = backend.describe()
    cpu = platform.processor() or platform.machine()
    print(
        f"machine: {platform.platform()}, {cpu}, {os.cpu_count()} CPUs "
        f"({info['cpu_threads']} usable), {info['cpu_fft']}; device {args.device}"
    )
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(
        f"problem: UiO-66 [110] quick preset; NCC with σ·V band-limited to 2α/λ, and after a "
        f"σ = 1 Å blur of both, registered |shift| ≤ 1 Å; ePIE {args.iterations} "
        f"iterations, α = {args.alpha:g}, β = {args.beta:g}, batch {args.batch_size}; ML "
        f"{dataclasses.asdict(MLParameters(**ml_options))}; noise seeds {seeds}"
    )
    print()
    head = ["dose (e/Å²)", "defocus"]
    for m in methods:
        head += [f"{NAMES[m]} NCC", f"{NAMES[m]} NCC(1 Å)"]
    head += [f"{NAMES[m]} s" for m in methods if m in ("epie", "ml")]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = ["none" if r["dose"] is None else f"{r['dose']:g}", f"{r['defocus_A'] / 10:g} nm"]
        for m in methods:
            cells.append(_cell([run[m]["ncc"] for run in r["runs"]]))
            cells.append(_cell([run[m]["ncc_1A"] for run in r["runs"]]))
        cells += [_cell([run[m]["seconds"] for run in r["runs"]], "{:.0f}")
                  for m in methods if m in ("epie", "ml")]  # fmt: skip
        print("| " + " | ".join(cells) + " |")
    print()
    n_runs = sum(len(r["runs"]) for r in rows)
    print(
        f"total run time {total:.0f} s "
        f"({sum(run['simulation_s'] for r in rows for run in r['runs']):.0f} s simulating, "
        f"{sum(run['reused'] for r in rows for run in r['runs'])} of {n_runs} datasets reused)"
    )
    record = {
        "command": sys.argv,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "ml": dataclasses.asdict(MLParameters(**ml_options)),
        "total_s": total,
        "rows": rows,
    }
    tag = "_".join("none" if d is None else f"{d:g}" for d in doses)
    name = (f"results_d{tag}_a{args.alpha:g}_b{args.beta:g}_i{args.iterations}_"
            f"{'-'.join(methods)}_s{'-'.join(map(str, seeds))}.json")  # fmt: skip
    (out / name).write_text(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
