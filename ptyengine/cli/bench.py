"""``ptyengine bench``: the dose × defocus benchmark suite as one command (ptyengine.bench)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

SUITES = ("dose-defocus",)


def _items(values, name: str) -> list[str] | None:
    """Comma-separated items of a repeatable option (None when not given)."""
    if not values:
        return None
    out = [s.strip() for text in values for s in str(text).split(",") if s.strip()]
    if not out:
        from ..errors import PtyengineError

        raise PtyengineError(f"{name} is empty")
    return list(dict.fromkeys(out))


def _numbers(values, name: str, what: str, allow_none: bool = False, kind=float):
    from ..errors import PtyengineError

    items = _items(values, name)
    if items is None:
        return None
    out = []
    for item in items:
        if allow_none and item.lower() in ("none", "noise-free", "inf"):
            out.append(None)
            continue
        try:
            out.append(kind(item))
        except ValueError:
            raise PtyengineError(f"{name}: {item!r} is not {what}") from None
    return out


@click.command()
@click.argument("suite", metavar="SUITE")
@click.option("-o", "--output", type=click.Path(), required=True,
              help="Directory for the datasets, the cells (cells/…json), tables and heat "
                   "maps; finished cells there are reused.")
@click.option("--grid", "grid_name", default="quick", show_default=True,
              help="Preset: quick (2-core CPU), full (the published parameters, GPU-sized), "
                   "tiny (tests).")
@click.option("--crystals", multiple=True, metavar="LIST",
              help="uio66,srtio3 [default: both].")
@click.option("--doses", multiple=True, metavar="LIST",
              help="e/Å², 'none' for noise-free [default: none,1000,100,50,20,10].")
@click.option("--defoci", multiple=True, metavar="LIST",
              help="Crossover height above the entrance surface, nm [default: 0,10,20,50,100].")
@click.option("--methods", multiple=True, metavar="LIST",
              help="icom,idpc,epie,ml,ssb,wdd,tcbf [default: all].")
@click.option("--seeds", multiple=True, metavar="LIST",
              help="Noise seeds of each noisy cell [default: 0,1,2]; noise-free cells run "
                   "once (seed 0).")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Cells in parallel in this many processes (each with its share of the "
                   "cores).")
@click.option("--cluster", metavar="SPEC",
              help="Run the cells on Dask instead: local, local:N, slurm:OPTIONS, "
                   "pbs:OPTIONS (as ptyengine.distributed; -o on a shared file system).")
@click.option("--cluster-wait", type=click.FloatRange(min=0, min_open=True), default=120.0,
              show_default=True, help="Seconds to wait for the cluster's first worker.")
@click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu",
              show_default=True)
def bench(suite, output, grid_name, crystals, doses, defoci, methods, seeds, workers,
          cluster, cluster_wait, device):  # fmt: skip
    """Run a benchmark suite. SUITE: dose-defocus — every method on dose × defocus on
    UiO-66 [110] and SrTiO3 [001] (300 kV, 20 mrad), several noise seeds per noisy cell.

    \b
    One noise-free dataset per crystal × defocus is simulated (reused by a rerun); each
    noisy cell draws Poisson counts from it, seeded by (seed, dose). Each cell (crystal,
    dose, defocus, method, seed) is reconstructed as `ptyengine study` does (ePIE
    noise-free plain, with a dose its low-dose recipe) and scored against σ·V: NCC, NCC
    after a σ = 1 Å blur of both, FRC resolution (Å, threshold 1/7; inf: never reached;
    never below twice the image's pixel: the scan step for iCOM, iDPC, SSB, WDD and tcBF,
    the object pixel for ePIE and ML), wall time (s). Each finished cell is one JSON
    under OUTPUT/cells/, written atomically: a rerun skips finished cells, a killed grid
    resumes where it stopped.
    Writes into OUTPUT: cells.csv, summary.csv (mean and std over the seeds),
    heatmap_<crystal>_<metric>.png (a panel per method, dose rows × defocus columns, the
    best method per cell outlined and named in the last panel) and summary.md.

    \b
    Grids (ptyengine/bench.py):
      full   UiO-66 as the published study (150 × 150 × 30 Å, 15 phonons, 60 × 60 Å
             at 0.4 Å, 256 px to 50 mrad), SrTiO3 10 × 10 cells, 19.5 Å thick, 15
             phonons, 4 × 4 cells at 0.4 Å; ePIE 300 iterations. GPU-sized.
      quick  the same physics, scaled: one UiO-66 cell (20.7 × 14.65 Å), 14.65 Å thick;
             SrTiO3 4 × 4 cells scanned, 11.7 Å thick; static lattices; detector to 24 mrad,
             64 px up to 20 nm, 96 px at 50 nm, 128 px at 100 nm (the probe fits);
             step 0.6 Å up to 20 nm, 1.2 Å beyond; the scan covers the dose margin
             (α·C10 + 1 Å); ePIE 10 iterations noise-free; ML its own limit (50) and
             held-out stopping rule, as the study. Measured (benchmarks/RESULTS.md):
             the other methods' 960 cells ~16 min on 2 idle cores (tcBF is half of
             it); ML's 160 cells ~43 min of CPU more (seed 0's 60: 52 min wall,
             18.5 min CPU, at load 9-11; the 100 nm cells cost most).
      tiny   32 px to 24 mrad, step 1.2 Å, 3 iterations; default axes none,100 e/Å² ×
             0,10 nm × icom,epie,ssb × seeds 0,1. Seconds; for tests.

    \b
    Example:
      ptyengine bench dose-defocus --grid quick --workers 2 -o bench/
      ptyengine bench dose-defocus --grid full --cluster slurm:cores=8,jobs=16 -o /scratch/b
    """
    from .. import bench as lib
    from ..bench_report import write_report
    from ..errors import PtyengineError

    if suite not in SUITES:
        raise PtyengineError(f"unknown suite {suite!r}; known: {', '.join(SUITES)}")
    lib.preset(grid_name)
    grid = lib.Grid.from_preset(
        grid_name, crystals=_items(crystals, "--crystals"),
        doses=_numbers(doses, "--doses", "a dose in e/Å² or none", allow_none=True),
        defoci_nm=_numbers(defoci, "--defoci", "a defocus in nm"),
        methods=[m.lower() for m in _items(methods, "--methods") or []] or None,
        seeds=_numbers(seeds, "--seeds", "a whole number ≥ 0", kind=int))  # fmt: skip
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise PtyengineError(f"-o {output} exists and is not a directory")
    if cluster and workers > 1:
        raise PtyengineError("--workers and --cluster exclude each other: the cluster's "
                             "workers run the cells")  # fmt: skip

    def log(msg):
        click.echo(msg, err=True)

    t0 = time.perf_counter()
    client = dask_cluster = None
    if cluster:
        dask_cluster, client = lib.start_cluster(cluster, cluster_wait)
    try:
        run = lib.run_grid(out, grid, workers, client, device, log)
    except KeyboardInterrupt:
        kept = len(list((out / "cells").rglob("*.json"))) if out.is_dir() else 0
        click.echo(f"interrupted; kept {kept} finished cell(s) under {out / 'cells'} (re-run "
                   "the same command to resume)", err=True)  # fmt: skip
        sys.exit(130)
    finally:
        if client is not None:
            client.close()
            dask_cluster.close()
    total = time.perf_counter() - t0
    command = ("ptyengine " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["bench"]
               else f"ptyengine bench {suite} --grid {grid_name} -o {output}")  # fmt: skip
    header = [f"# Dose × defocus benchmark, {grid_name} grid", "",
              f"Command: `{command}`; this run {total:.0f} s ({run.ran} cells run, "
              f"{run.reused} reused, {run.simulated} datasets simulated; `time` is each "
              "reconstruction's wall time when it was made).",
              "Scores against σ·V on the fully dosed area: NCC (band-limited to 2α/λ, "
              "registered within 1 Å), NCC(1 Å) after a σ = 1 Å blur of both, FRC "
              "resolution (Å) at 1/7 (inf: never reached). Noise-free cells: one run."]  # fmt: skip
    if not run.records:
        raise PtyengineError(f"no cell finished: {next(iter(run.failed.values()), '')}")
    for path in write_report(run.records, out, header):
        log(f"wrote {path}")
    click.echo((out / "summary.md").read_text())
    log(f"bench done in {total:.1f} s ({run.ran} cells run, {run.reused} reused)")
    if run.failed:
        first, error = next(iter(run.failed.items()))
        raise PtyengineError(f"{len(run.failed)} cell(s) or dataset(s) failed and are not "
                             f"in the tables (first: {first}: {error}); a rerun retries "
                             "them")  # fmt: skip
