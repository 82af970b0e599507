"""The dose × defocus benchmark suite (``ptyengine bench dose-defocus``): every method on a
grid of dose (noise-free and e/Å²) × defocus (crossover height above the entrance surface,
nm) on UiO-66 [110] and SrTiO3 [001], several noise seeds per noisy cell.

One noise-free dataset is simulated per crystal × defocus (:func:`dataset_parameters`,
reused by a rerun: study.ensure_dataset); each noisy cell draws Poisson counts from it
(:func:`noisy_copy`: mean intensity × dose × step², seeded by (seed, dose), so every method
of a cell sees the same counts). A cell — (crystal, dose, defocus, method, seed) — is one
independent task (:func:`run_cell`): reconstruct with the study's runner and recipes
(study.run_method; ePIE noise-free plain, with a dose the study's low-dose recipe), score
with the study's scoring (study.Truth: NCC with σ·V, NCC after a σ = 1 Å blur of both) and
the FRC resolution against σ·V (Å, threshold 1/7, metrics.compare_to_truth; bounded by
twice the image's pixel: the scan step for the direct methods, iCOM and iDPC, the object
pixel = the probe window / detector pixels for ePIE and ML), and write
one JSON under ``OUT/cells/`` atomically. A cell whose JSON holds the same key (dataset
fingerprint, method parameters, cell) is not run again: a rerun does no reconstruction
and a killed grid resumes. Tasks run in this process (``workers=1``), in worker processes
(``workers=N``) or on a Dask cluster (``cluster=SPEC``, distributed.cluster_from_spec; the
output folder must then be on a file system every worker sees).

Presets (:data:`PRESETS`):

* ``full``: UiO-66 as the published study (presets.uio66_defocus("full"): 150 × 150 ×
  30 Å, 15 phonons, 60 × 60 Å at 0.4 Å, 256 px to 50 mrad); SrTiO3 10 × 10 cells (39 Å),
  19.5 Å thick, 15 phonons, 4 × 4 cells scanned at 0.4 Å plus the dose margin, 256 px to
  50 mrad; ePIE 300 iterations noise-free, ML its default limit. GPU-sized.
* ``quick``: the same physics (300 kV, 20 mrad, the defoci, the dose margin) scaled for a
  2-core CPU: one UiO-66 orthogonal cell (20.7 × 14.65 Å) as the periodic field and one
  [110] repeat (14.65 Å) thick; SrTiO3 2 × 2 cells (7.8 Å) as the field, 4 × 4 cells
  (15.6 Å, 13 scan pixels at 1.2 Å: an FRC needs a few rings) scanned, 11.7 Å thick; static
  lattices; the detector to 24 mrad with 64 px up to 20 nm defocus (26 Å window), 96 px at
  50 nm (39 Å) and 128 px beyond (52 Å: the 40 Å probe at 100 nm fits); scan step 0.6 Å up
  to 20 nm, 1.2 Å beyond; ePIE 10 iterations noise-free (the low-dose recipe is 10 anyway);
  ML as the study runs it: its own limit (50 iterations) and held-out stopping rule. The
  limit from 12 cells run to 100 (UiO-66 and SrTiO3, 20 and 100 e/Å², 0/50/100 nm): the
  rule stopped 9 of them by iteration 59 with their best iterate by 43 (what a limit of 50
  returns too); the 3 still improving at 100 gave the same NCC(1 Å) within 0.03 at 50
  (benchmarks/RESULTS.md). Measured there: the other methods' 960 cells ~16 min on two
  idle cores; ML's seed 0 (60 cells) 52 min wall and 18.5 min CPU at load 9–11 (noise-
  free 92 s per cell, noisy 41 s, the 100 nm ones 103 s), all three seeds ~43 min of CPU.
* ``tiny``: tests (seconds): the quick crystals (SrTiO3: 2 × 2 cells scanned) at 32 px
  to 24 mrad (13 Å window: up to ~10 nm defocus), step 1.2 Å, ePIE and ML 3 iterations.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import io, presets, study
from .errors import PtyengineError
from .simulate import SimulationParameters
from .structures import UIO66_STUDY_SIGMA

CRYSTALS = ("uio66", "srtio3")
CRYSTAL_NAMES = {"uio66": "UiO-66 [110]", "srtio3": "SrTiO3 [001]"}
METHODS = study.METHODS
#: the FRC threshold against the ground truth (1/7: Rosenthal & Henderson's)
FRC_THRESHOLD = 1 / 7
#: bump when what a cell computes changes, so that old cell files are not reused
VERSION = 1
SRTIO3_A = 3.905  # Å


@dataclass(frozen=True)
class Preset:
    """A grid variant: ePIE's noise-free iterations and ML's limit (None: its default),
    and the default axes (doses: None = noise-free, e/Å²; defoci nm; seeds)."""

    name: str
    epie_iterations: int
    ml_iterations: int | None
    crystals: tuple = CRYSTALS
    doses: tuple = (None, 1000.0, 100.0, 50.0, 20.0, 10.0)
    defoci_nm: tuple = (0.0, 10.0, 20.0, 50.0, 100.0)
    methods: tuple = METHODS
    seeds: tuple = (0, 1, 2)


PRESETS = {
    "full": Preset("full", 300, None),
    "quick": Preset("quick", 10, None),
    "tiny": Preset("tiny", 3, 3, doses=(None, 100.0), defoci_nm=(0.0, 10.0),
                   methods=("icom", "epie", "ssb"), seeds=(0, 1)),
}  # fmt: skip


def preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise PtyengineError(f"unknown grid {name!r}: use {', '.join(PRESETS)}") from None


def dataset_parameters(crystal: str, grid: str, defocus_nm: float) -> SimulationParameters:
    """The noise-free simulation of ``crystal`` for preset ``grid`` with the crossover
    ``defocus_nm`` nm above the entrance surface (C10 = 10·defocus_nm Å)."""
    c10 = 10.0 * float(defocus_nm)
    if crystal not in CRYSTALS:
        raise PtyengineError(f"unknown crystal {crystal!r}: use {', '.join(CRYSTALS)}")
    if grid == "full":
        if crystal == "uio66":
            return dataclasses.replace(presets.uio66_defocus("full")[0][1], defocus=c10)
        return SimulationParameters(structure="srtio3", zone_axis=(0, 0, 1),
                                    field=(10 * SRTIO3_A,) * 2, thickness=5 * SRTIO3_A,
                                    phonons=15, scan_size=(4 * SRTIO3_A,) * 2, scan_step=0.4,
                                    scan_margin=None, max_angle=50.0, detector_pixels=256,
                                    defocus=c10)  # fmt: skip
    if grid == "quick":
        pixels = 64 if defocus_nm <= 20 else 96 if defocus_nm <= 50 else 128
        step = 0.6 if defocus_nm <= 20 else 1.2
    elif grid == "tiny":
        pixels, step = 32, 1.2
    else:
        raise PtyengineError(f"unknown grid {grid!r}: use {', '.join(PRESETS)}")
    common = dict(zone_axis=(1, 1, 0) if crystal == "uio66" else (0, 0, 1), energy=300e3,
                  semiangle=20.0, phonons=0, max_angle=24.0, detector_pixels=pixels,
                  scan_step=step, scan_margin=None, defocus=c10, slice_thickness=2.0)  # fmt: skip
    if crystal == "uio66":
        return SimulationParameters(structure="uio66", field=(20.72, 14.65), thickness=14.65,
                                    sigmas=dict(UIO66_STUDY_SIGMA), **common)  # fmt: skip
    cells = 4 if grid == "quick" else 2  # quick: enough scan-grid pixels for an FRC
    return SimulationParameters(structure="srtio3", field=(2 * SRTIO3_A,) * 2,
                                scan_size=(cells * SRTIO3_A,) * 2, thickness=3 * SRTIO3_A,
                                **common)  # fmt: skip


def dose_tag(dose: float | None) -> str:
    return study.dose_tag(dose)


def defocus_tag(defocus_nm: float) -> str:
    return presets.defocus_label(10.0 * defocus_nm)


@dataclass(frozen=True)
class Cell:
    """One task: ``crystal``, ``dose`` (e/Å², None: noise-free), ``defocus_nm``,
    ``method``, ``seed`` (the noise's, ePIE's order and ML's held-out pixels)."""

    crystal: str
    dose: float | None
    defocus_nm: float
    method: str
    seed: int

    def path(self, out) -> Path:
        return (Path(out) / "cells" / self.crystal / dose_tag(self.dose)
                / f"{defocus_tag(self.defocus_nm)}_{self.method}_s{self.seed}.json")  # fmt: skip


@dataclass
class Grid:
    """What to run: preset name and axes (see :class:`Preset`)."""

    preset: str
    crystals: Sequence[str]
    doses: Sequence[float | None]
    defoci_nm: Sequence[float]
    methods: Sequence[str]
    seeds: Sequence[int]

    def __post_init__(self):
        preset(self.preset)
        for c in self.crystals:
            if c not in CRYSTALS:
                raise PtyengineError(f"unknown crystal {c!r}: use {', '.join(CRYSTALS)}")
        for m in self.methods:
            if m not in METHODS:
                raise PtyengineError(f"unknown method {m!r}: use {', '.join(METHODS)}")
        for d in self.doses:
            if d is not None and not (math.isfinite(d) and d > 0):
                raise PtyengineError(f"dose {d!r} e/Å²: must be > 0 (none for noise-free)")
        for f in self.defoci_nm:
            if not (math.isfinite(f) and f >= 0):
                raise PtyengineError(f"defocus {f!r} nm: must be ≥ 0 (the crossover's "
                                     "height above the entrance surface)")  # fmt: skip
        for s in self.seeds:
            if int(s) < 0:
                raise PtyengineError(f"seed {s!r}: must be ≥ 0")
        if not (self.crystals and self.doses and self.defoci_nm and self.methods
                and self.seeds):  # fmt: skip
            raise PtyengineError("the grid is empty: give at least one crystal, dose, "
                                 "defocus, method and seed")  # fmt: skip

    @classmethod
    def from_preset(cls, name: str, **axes) -> Grid:
        p = preset(name)
        vals = {k: (getattr(p, k) if axes.get(k) is None else axes[k])
                for k in ("crystals", "doses", "defoci_nm", "methods", "seeds")}  # fmt: skip
        return cls(name, **{k: tuple(v) for k, v in vals.items()})

    def datasets(self) -> list[tuple[str, float]]:
        return [(c, f) for c in self.crystals for f in self.defoci_nm]

    def cells(self) -> list[Cell]:
        """Every cell; noise-free ones once, with seed 0 (there is no noise to vary)."""
        out = []
        for c in self.crystals:
            for d in self.doses:
                for f in self.defoci_nm:
                    for m in self.methods:
                        for s in ((0,) if d is None else self.seeds):
                            out.append(Cell(c, d, float(f), m, int(s)))
        return out


def dataset_path(out, crystal: str, defocus_nm: float) -> Path:
    return Path(out) / "datasets" / crystal / f"{defocus_tag(defocus_nm)}.zarr"


def plan(grid_name: str) -> study.StudyPlan:
    p = preset(grid_name)
    return study.StudyPlan(grid_name, [], p.epie_iterations, p.ml_iterations)


def method_parameters(cell: Cell, grid_name: str):
    """(ePIE parameters, ML parameters, the cell's method's parameters as a dict)."""
    pl = plan(grid_name)
    epie_p = study.epie_parameters(pl, cell.dose, cell.seed)
    ml_p = study.ml_parameters(pl, cell.seed)
    return epie_p, ml_p, study.method_parameters(cell.method, epie_p, ml_p)


def cell_key(cell: Cell, grid_name: str) -> str:
    """What a finished cell must match to be reused (hex)."""
    params = dataset_parameters(cell.crystal, grid_name, cell.defocus_nm)
    blob = json.dumps({"version": VERSION, "dataset": params.fingerprint(),
                       "cell": dataclasses.asdict(cell), "frc": FRC_THRESHOLD,
                       "method": method_parameters(cell, grid_name)[2]},
                      sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def finished(cell: Cell, out, grid_name: str) -> dict | None:
    """The record of a finished cell with the same key, else None."""
    path = cell.path(out)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("key") == cell_key(cell, grid_name) else None


def noisy_copy(data: np.ndarray, cal, dose: float, seed: int):
    """An in-memory dataset of Poisson counts with mean ``data`` × dose × step² (``data``:
    noise-free intensities per incident electron; dose e/Å²), seeded by (seed, dose)."""
    from .dataset import InMemoryDataset

    n0 = dose * cal.scan_step[0] * cal.scan_step[1]
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), round(dose * 1000)]))
    counts = rng.poisson(np.asarray(data, dtype=np.float64) * n0).astype(np.uint32)
    return InMemoryDataset(counts, dataclasses.replace(cal, dose=dose))


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)


def run_cell(out, grid_name: str, cell: Cell, device: str = "cpu") -> dict:
    """Reconstruct and score one cell (its dataset must exist) and write its JSON; returns
    the record: the cell's fields, "ncc", "ncc_1A", "frc_A" (Å; inf: never above 1/7),
    "seconds" (the reconstruction's wall time), "shift_A", "border", "units", "key"; a
    method that gave no image: NaN scores and "no_image", the reason (study.score_run)."""
    key = cell_key(cell, grid_name)
    epie_p, ml_p, mparams = method_parameters(cell, grid_name)
    with io.open_dataset(dataset_path(out, cell.crystal, cell.defocus_nm)) as ds:
        truth = study.Truth.from_dataset(ds)
        fingerprint = ds.metadata.get("fingerprint")
        if cell.dose is None:
            run = study.run_method(ds, cell.method, device, epie_p, ml_p, truth.margin)
        else:
            data = ds.read_rows(0, ds.shape[0])
            noisy = noisy_copy(data, ds.calibration, cell.dose, cell.seed)
            del data
            run = study.run_method(noisy, cell.method, device, epie_p, ml_p, truth.margin)
    scores = study.score_run(truth, run, FRC_THRESHOLD)  # no image: NaN and its reason
    record = {**dataclasses.asdict(cell), "grid": grid_name, "key": key, **scores,
              "seconds": run.seconds, "border": run.border, "units": run.units,
              "dataset_fingerprint": fingerprint, "parameters": mparams}  # fmt: skip
    _write_json(cell.path(out), record)
    return record


def _simulate(out, grid_name: str, crystal: str, defocus_nm: float) -> tuple[float, bool]:
    params = dataset_parameters(crystal, grid_name, defocus_nm)
    return study.ensure_dataset(params, dataset_path(out, crystal, defocus_nm), lambda m: None)


def _guarded(fn, *args):
    """(result, None), or (None, the error in one line) when ``fn(*args)`` raised: one
    failing cell does not stop the grid."""
    try:
        return fn(*args), None
    except Exception as exc:  # noqa: BLE001 - reported per cell, the grid goes on
        return None, " ".join(f"{type(exc).__name__}: {exc}".split())


def _worker_init(threads: int) -> None:
    """A worker process's thread counts: its share of the cores."""
    for name in ("PTYENGINE_THREADS", "PTYENGINE_FFT_THREADS", "NUMBA_NUM_THREADS",
                 "OMP_NUM_THREADS"):  # fmt: skip
        os.environ[name] = str(threads)


class _Runner:
    """Runs calls in this process, in ``workers`` processes or on a Dask client; yields
    (tag, result) as they finish."""

    def __init__(self, workers: int = 1, client=None):
        self.workers, self.client, self.pool = int(workers), client, None
        self.processes: list = []  # the pool's worker processes, once started
        if client is None and self.workers > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            threads = max(1, len(os.sched_getaffinity(0)) // self.workers)
            self.pool = ProcessPoolExecutor(self.workers,
                                            mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_worker_init, initargs=(threads,))

    def map(self, fn, calls):
        """``calls``: [(tag, args)]; yields (tag, (result, error)) of :func:`_guarded` in
        order of completion."""
        if self.client is not None:
            from dask.distributed import as_completed

            futures = {self.client.submit(_guarded, fn, *args, pure=False): tag
                       for tag, args in calls}  # fmt: skip
            for fut in as_completed(futures):
                yield futures[fut], fut.result()
        elif self.pool is not None:
            from concurrent.futures import FIRST_COMPLETED, wait
            from concurrent.futures.process import BrokenProcessPool

            pending = {self.pool.submit(_guarded, fn, *args): tag for tag, args in calls}
            self.processes = list(getattr(self.pool, "_processes", {}).values())
            try:
                while pending:  # short waits: Ctrl-C is seen at once
                    done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                    for fut in done:
                        yield pending.pop(fut), fut.result()
            except BrokenProcessPool:
                raise PtyengineError("a worker process died (killed, or out of memory?); the "
                                     "finished cells are kept: rerun to resume, with fewer "
                                     "--workers if memory ran out") from None  # fmt: skip
        else:
            for tag, args in calls:
                yield tag, _guarded(fn, *args)

    def close(self, abort: bool = False):
        """Stop the pool; ``abort``: without waiting for the running cells (their
        workers are terminated: an interrupted or failed grid)."""
        if self.pool is None:
            return
        if abort:  # ProcessPoolExecutor has no public terminate before Python 3.14
            for p in list(getattr(self.pool, "_processes", {}).values()):
                p.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)


def start_cluster(spec: str, wait: float = 60.0):
    """(cluster, client) from a distributed.cluster_from_spec spec, with at least one
    worker up within ``wait`` s; any failure is a one-line PtyengineError."""
    from .distributed import cluster_from_spec

    cluster = cluster_from_spec(spec)  # bad specs: its own one-line errors
    try:
        from dask.distributed import Client

        client = Client(cluster)
        client.wait_for_workers(1, timeout=wait)
    except Exception as exc:  # noqa: BLE001 - whatever the scheduler says, one line
        cluster.close()
        raise PtyengineError(f"--cluster {spec}: no worker started within {wait:g} s "
                             f"({type(exc).__name__}: {exc})") from None  # fmt: skip
    return cluster, client


@dataclass
class GridRun:
    """What :func:`run_grid` did: the records (grid order), cells run and reused, the
    datasets simulated, and what failed ({"crystal, defocus" or cell name: error})."""

    records: list
    ran: int
    reused: int
    simulated: int
    seconds: float
    failed: dict = dataclasses.field(default_factory=dict)


def run_grid(out, grid: Grid, workers: int = 1, client=None, device: str = "cpu",
             log: Callable[[str], None] = lambda m: None,
             stop_after: int | None = None) -> GridRun:  # fmt: skip
    """Simulate what is missing, run every unfinished cell, return every record.
    ``stop_after``: run at most that many cells, then return (a partial grid, for tests
    of resuming; the records then hold the finished ones only)."""
    t0 = time.perf_counter()
    out = Path(out)
    runner = _Runner(workers, client)
    simulated, failed, completed = 0, {}, False
    try:
        sims = [((c, f), (str(out), grid.preset, c, f)) for c, f in grid.datasets()]
        for (c, f), (done, error) in runner.map(_simulate, sims):
            if error:
                failed[f"{c}, {f:g} nm"] = error
                log(f"{CRYSTAL_NAMES[c]}, {f:g} nm: simulation failed: {error}")
                continue
            simulated += not done[1]
            log(f"{CRYSTAL_NAMES[c]}, {f:g} nm: dataset "
                + ("reused" if done[1] else f"simulated in {done[0]:.1f} s"))
        cells = grid.cells()
        unfinished = [c for c in cells if finished(c, out, grid.preset) is None]
        reused = len(cells) - len(unfinished)
        todo = [c for c in unfinished if f"{c.crystal}, {c.defocus_nm:g} nm" not in failed]
        if stop_after is not None:
            todo = todo[:stop_after]
        log(f"{len(cells)} cells: {reused} finished already, {len(todo)} to run")
        calls = [(c, (str(out), grid.preset, c, device)) for c in todo]
        ran = 0
        for i, (c, (r, error)) in enumerate(runner.map(run_cell, calls), 1):
            what = (f"[{i}/{len(todo)}] {c.crystal} {dose_tag(c.dose)} {c.defocus_nm:g} nm "
                    f"{study.NAMES[c.method]} s{c.seed}")  # fmt: skip
            if error:
                failed[c.path(out).relative_to(out).as_posix()] = error
                log(f"{what}: failed: {error}")
                continue
            ran += 1
            if r.get("no_image"):
                log(f"{what}: no image ({r['no_image']}), {r['seconds']:.1f} s")
                continue
            log(f"{what}: NCC {r['ncc']:+.3f}, NCC(1 Å) {r['ncc_1A']:+.3f}, FRC "
                f"{r['frc_A']:.2f} Å, {r['seconds']:.1f} s")
        completed = True
    finally:
        runner.close(abort=not completed)
    records = [r for r in (finished(c, out, grid.preset) for c in grid.cells()) if r]
    return GridRun(records, ran, reused, simulated,
                   time.perf_counter() - t0, failed)
