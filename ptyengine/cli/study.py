"""``ptyengine study``: the UiO-66 defocus study as one command (simulate, reconstruct with
every method, score, figure, table)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from .runconfig import current_run_config, run_config

STUDIES = ("uio66-defocus",)
PRESETS = ("quick", "full", "tiny")


def _doses(values) -> list[float]:
    from ..errors import PtyengineError

    out = []
    for text in values:
        for item in str(text).split(","):
            try:
                d = float(item)
            except ValueError:
                d = float("nan")
            if not (d > 0 and d != float("inf")):
                raise PtyengineError(f"--dose takes a dose in e/Å² > 0 (omit it for the "
                                     f"noise-free rows only), got {item.strip()!r}")  # fmt: skip
            out.append(d)
    return list(dict.fromkeys(out))


def _methods(values) -> list[str]:
    from ..errors import PtyengineError
    from ..study import METHODS

    if not values:
        return list(METHODS)
    out = []
    for text in values:
        for item in str(text).split(","):
            m = item.strip().lower()
            if m not in METHODS:
                raise PtyengineError(f"unknown method {m!r} for --methods: choose from "
                                     f"{', '.join(METHODS)}")  # fmt: skip
            out.append(m)
    return list(dict.fromkeys(out))


@run_config
@click.command()
@click.argument("name", metavar="STUDY")
@click.option("--preset", default="quick", show_default=True,
              help="quick: the scaled study on a 2-core CPU (~14 min noise-free); full: the "
                   "published parameters (GPU-sized; ~1 day on a 2-core CPU, estimated); "
                   "tiny: seconds, for tests.")
@click.option("--dose", "doses", multiple=True, metavar="D",
              help="Add rows at dose D e/Å² (Poisson noise, seeded by --seed); repeat or "
                   "separate by commas. The noise-free rows are always made.")
@click.option("--methods", "methods", multiple=True, metavar="LIST",
              help="Comma-separated methods [default: icom,idpc,epie,ml,ssb,tcbf, every one "
                   "the engine has]; the figure's rows follow this order.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the noisy rows: their Poisson noise (and frozen phonons), ePIE's "
                   "order and ML's held-out pixels. The noise-free rows always use 0.")
@click.option("-o", "--output", type=click.Path(), required=True,
              help="Directory for the datasets, results, figure and tables; what it holds "
                   "already (same parameters) is reused.")
@click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu",
              show_default=True)
@click.option("--resume/--restart", default=True, show_default=True,
              help="Continue a dataset whose simulation was interrupted (its .partial, same "
                   "parameters), or simulate it afresh. Finished datasets and results are "
                   "reused either way.")
def study(name, preset, doses, methods, seed, output, device, resume):
    """Run a published study end to end. STUDY: uio66-defocus — UiO-66 [110], 300 kV,
    20 mrad, the probe's crossover on the entrance surface, 50 nm and 100 nm above it.

    \b
    Each dataset is reconstructed by iCOM, iDPC, ePIE (noise-free: α = β = 1, the probe
    refined, as published; with --dose the low-dose recipe: |O| = 1, calibrated probe,
    α = 0.1, 10 iterations), ML (its defaults), SSB and tcBF; each phase is scored by
    its NCC with σ·V on the fully dosed cell, band-limited to 2α/λ and after a 1 Å blur.
    Writes into OUTPUT: figure_noise-free.png (and figure_doseD.png): a row per method,
    a column per defocus, the structure model on the first in-focus panel, NCC in each
    panel; ncc.csv and ncc.md (dose, defocus, method, NCC, NCC(1 Å), seconds);
    ground_truth.png and ground_truth.npy (σ·V, rad); datasets/ and results/, reused by a
    rerun (a rerun of a finished study does no work).

    \b
    Presets (ptyengine/presets.py):
      full   the published parameters: a 150 × 150 × 30 Å model, 15 frozen phonons, a
             60 × 60 Å scan at 0.4 Å (22,500 patterns of 256²), ePIE 300 iterations.
             GPU-sized; on the 2-core CPU ~21-27 h of CPU time noise-free (~1 day of
             wall time), estimated, not run: each method and the simulation timed on
             16 × 16 of the 100 nm dataset's positions and one phonon configuration,
             scaled by positions × configurations × iterations (benchmarks/RESULTS.md):
             simulation 4.2 h at 100 nm (less in focus: a smaller probe window), ePIE
             3.2 h per dataset, ML 0.7-1.6 h per dataset, the direct methods minutes.
      quick  the same physics, scaled: kept are 300 kV, 20 mrad, the three defoci, the
             3 nm thickness in 2 Å slices and the thermal σ; scaled are the model (41 ×
             44 Å, 2 × 3 cells), the phonons (2), the detector (160 px to 30 mrad), the
             scan (one unit cell plus the probe's radius; 0.6 Å step in focus, 1.2 Å out
             of focus) and ePIE's iterations (30): ~14 min noise-free on a 2-core CPU.
      tiny   one cell, 14.65 Å thick, static lattice, 128 px to 24 mrad, no dose margin:
             ~30 s; for tests.

    \b
    Example:
      ptyengine study uio66-defocus --preset quick -o study/
      ptyengine study uio66-defocus --preset quick --dose 100 --methods icom,epie,ml -o study/
    """
    from .. import study as lib
    from ..errors import PtyengineError
    from ..simulate import check_resumable
    from ..study_report import study_figure, truth_outputs, write_tables
    from .simulate import _run_simulation

    if name not in STUDIES:
        raise PtyengineError(f"unknown study {name!r}; known: {', '.join(STUDIES)}")
    if preset not in PRESETS:
        raise PtyengineError(f"unknown preset {preset!r} for {name}: use "
                             f"{', '.join(PRESETS)}")  # fmt: skip
    dose_list, method_list = _doses(doses), _methods(methods)
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise PtyengineError(f"-o {output} exists and is not a directory")
    t0 = time.perf_counter()

    def log(msg):
        click.echo(msg, err=True)

    def simulate(params, path):
        go_on = resume and Path(f"{path}.partial").exists()
        if go_on:
            try:
                check_resumable(params, path)
            except PtyengineError:  # a partial of other parameters: nothing to continue
                go_on = False
        _run_simulation(params, path, device, overwrite=True, resume=go_on, batch_size=None)

    rows = lib.run_study(out, preset, dose_list, method_list, seed, device, log, simulate,
                         run_config=current_run_config())
    total = time.perf_counter() - t0
    command = "ptyengine " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["study"] else (
        f"ptyengine study {name} --preset {preset}"
        + "".join(f" --dose {d:g}" for d in dose_list)
        + f" --methods {','.join(method_list)} --seed {seed} -o {output}")
    header = [f"# UiO-66 defocus study, {preset} preset",
              "",
              f"Command: `{command}`; this run {total:.0f} s (reused parts count 0 s; "
              "`seconds` is each reconstruction's time when it was made).",
              "NCC of each phase with σ·V on the fully dosed cell, band-limited to 2α/λ and "
              "registered within 1 Å; NCC(1 Å) after a σ = 1 Å blur of both."]  # fmt: skip
    written = list(write_tables(rows, out, header))
    for dose in (None, *dose_list):
        mine = [r for r in rows if r.dose == dose]
        what = "noise-free" if dose is None else f"{dose:g} e/Å² (seed {seed})"
        written.append(study_figure(out / f"figure_{lib.dose_tag(dose)}.png", mine,
                                    method_list,
                                    f"UiO-66 [110], {preset} preset, {what}: phase by method "
                                    "and defocus (NCC with σ·V on the cell)"))  # fmt: skip
    written += truth_outputs(rows[0].dataset, out, "ground truth σ·V (rad), UiO-66 [110]")
    for path in written:
        log(f"wrote {path}")
    click.echo(Path(out / "ncc.md").read_text())
    log(f"study done in {time.perf_counter() - t0:.1f} s ({sum(r.reused for r in rows)} of "
        f"{len(rows)} reconstructions reused)")
