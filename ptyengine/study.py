"""Reconstruct a simulated dataset with every method and score each phase against the
ground truth: the one implementation behind ``ptyengine study`` and
``benchmarks/bench_quality.py``.

Scoring (:class:`Truth`): the signed NCC of a phase image with σ·V, the ground-truth
projected potential (V·Å) times the interaction constant σ (rad/(V·Å)), both band-limited
to k_max = 2α/λ (1/Å, the data's information limit) and registered within |shift| ≤ 1 Å
(metrics.compare_to_truth), and again after a Gaussian blur of σ = 1 Å applied to both
(``ncc_1A``). Only the fully dosed area counts: the scan less the dataset's
``scan_margin_A`` (Å, simulate.dose_margin) at each edge (:func:`dose_border`), and for
ePIE and ML also less the object's unscanned margin (:func:`object_border`). A negative NCC
is inverted contrast (iCOM out of focus).

The UiO-66 defocus study (:func:`run_study`): the three datasets of a ``presets.
uio66_defocus`` variant (crossover on the entrance surface, 50 nm and 100 nm above it),
noise-free and at each requested dose (Poisson, seeded), reconstructed with each method;
every dataset and result is reused when a finished one with the same fingerprint is
there, so a rerun does no work and a killed run continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import io, metrics, physics, presets
from .errors import PtyengineError

#: every method the study runs, in the order of the figure's rows
METHODS = ("icom", "idpc", "epie", "ml", "ssb", "wdd", "tcbf")
NAMES = {"icom": "iCOM", "idpc": "iDPC", "tcbf": "tcBF", "ssb": "SSB", "wdd": "WDD",
         "epie": "ePIE", "ml": "ML"}  # fmt: skip
#: the published study's blur for the structure a user looks for at low dose (Å)
SIGMA_LOWPASS = 1.0
#: the largest registration shift allowed when scoring (Å)
MAX_SHIFT = 1.0


def dose_border(margin: float, sampling) -> int:
    """Pixels at each edge of an image on the scan grid outside the fully dosed area
    (``margin``: the dataset's scan_margin_A, Å; ``sampling`` (dy, dx) Å)."""
    return int(round(margin / sampling[0]))


def object_border(geometry, margin: float) -> int:
    """Pixels at each edge of an ePIE/ML object outside the fully dosed area: its unscanned
    margin (window//2 + min(corners)) and the scan's dose margin (Å)."""
    return int(geometry.window[0] // 2 + geometry.corners.min()) + dose_border(
        margin, geometry.sampling)


@dataclass
class Truth:
    """σ·V of a simulated dataset (rad, the whole periodic field, pixel (0, 0) at
    ``origin``) and what scoring needs: ``sampling`` (dy, dx) Å, ``k_max`` 1/Å,
    ``margin`` (the dose margin, Å)."""

    image: np.ndarray
    sampling: tuple[float, float]
    origin: tuple[float, float]
    k_max: float
    margin: float

    @classmethod
    def from_dataset(cls, ds) -> Truth:
        if "ground_truth/potential" not in ds.arrays():
            raise PtyengineError(f"{ds.path} holds no ground_truth/potential: only simulated "
                                 "datasets can be scored")  # fmt: skip
        cal = ds.calibration
        pot, attrs = ds.read_array("ground_truth/potential")
        return cls(physics.interaction_constant(cal.energy) * pot,
                   tuple(attrs["sampling"]), tuple(attrs.get("origin", (0.0, 0.0))),
                   2 * cal.semiangle * 1e-3 / physics.wavelength(cal.energy),
                   float(ds.metadata.get("scan_margin_A", 0.0)))  # fmt: skip

    def score(self, phase, sampling, origin, border: int, frc_threshold=None) -> dict:
        """{"ncc", "ncc_1A", "shift_A"} of a phase image (see the module docstring); with
        ``frc_threshold`` also "frc_A", its FRC resolution (Å) against σ·V
        (metrics.compare_to_truth)."""
        r = metrics.compare_to_truth(phase, sampling, origin, self.image, self.sampling,
                                     self.origin, k_max=self.k_max, max_shift=MAX_SHIFT,
                                     border=border, sigma=SIGMA_LOWPASS,
                                     frc_threshold=frc_threshold)  # fmt: skip
        out = {"ncc": r["ncc"], "ncc_1A": r["ncc_lowpass"], "shift_A": r["shift_A"]}
        return out if frc_threshold is None else {**out, "frc_A": r["frc_A"]}


@dataclass
class MethodRun:
    """One reconstruction: its phase (rad; iDPC and tcBF in arbitrary units), where it
    sits (``sampling`` (dy, dx) Å, ``origin`` (y0, x0) Å of pixel (0, 0) in the field
    frame), the pixels at each edge outside the fully dosed area, wall time (s), the
    parameters used and method-specific extras."""

    method: str
    phase: np.ndarray
    sampling: tuple[float, float]
    origin: tuple[float, float]
    border: int
    seconds: float
    units: str = "rad"
    parameters: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)


def method_parameters(method: str, epie_params=None, ml_params=None) -> dict:
    """The parameters a method runs with (its dataclass's fields; {} for the direct ones
    and iCOM/iDPC, which run with their defaults: a change of those defaults, such as
    tcBF's search_z, does not re-key finished study results or grid cells)."""
    if method == "epie":
        from .reconstruct.epie import EpieParameters

        return dataclasses.asdict(epie_params or EpieParameters())
    if method == "ml":
        from .reconstruct.ml import MLParameters

        return dataclasses.asdict(ml_params or MLParameters())
    if method not in METHODS:
        raise PtyengineError(f"unknown method {method!r}: choose from {', '.join(METHODS)}")
    return {}


def image_problem(phase, border: int) -> str | None:
    """Why ``phase`` cannot be scored: non-finite or constant over the scored area (the
    image less ``border`` pixels at each edge); None when it can."""
    ny, nx = np.shape(phase)
    inner = np.asarray(phase)[border:ny - border, border:nx - border]
    if inner.size == 0:
        return f"no pixels inside the {border}-pixel border of the {ny} × {nx} image"
    bad = int((~np.isfinite(inner)).sum())
    if bad:
        return f"{bad} of the {inner.size} scored pixels are not finite"
    if float(np.ptp(inner)) == 0.0:
        return f"the phase is constant ({float(inner.flat[0]):g}) over the scored area"
    return None


def score_run(truth: Truth, run: MethodRun, frc_threshold=None) -> dict:
    """:meth:`Truth.score` of a run's phase; a run without an image (its method's stated
    reason in ``extra["no_image"]``, or :func:`image_problem`) scores NaN / inf with the
    reason in "no_image", never a silent NaN."""
    reason = run.extra.get("no_image") or image_problem(run.phase, run.border)
    if reason is None:
        return truth.score(run.phase, run.sampling, run.origin, run.border, frc_threshold)
    out = {"ncc": math.nan, "ncc_1A": math.nan, "shift_A": (0.0, 0.0),
           "no_image": f"{NAMES[run.method]}: {reason}"}  # fmt: skip
    return out if frc_threshold is None else {**out, "frc_A": math.inf}


def run_method(ds, method: str, device: str = "cpu", epie_params=None, ml_params=None,
               margin: float = 0.0) -> MethodRun:  # fmt: skip
    """Reconstruct ``ds`` with ``method`` (one of :data:`METHODS`); ``margin``: the dose
    margin (Å) that sets :attr:`MethodRun.border`."""
    from .reconstruct.epie import epie
    from .reconstruct.icom import icom, idpc
    from .reconstruct.ml import ml
    from .reconstruct.ssb import ssb
    from .reconstruct.tcbf import tcbf
    from .reconstruct.wdd import wdd

    params = method_parameters(method, epie_params, ml_params)
    t0 = time.perf_counter()
    direct = {"icom": icom, "idpc": idpc, "tcbf": tcbf, "ssb": ssb, "wdd": wdd}
    if method in direct:
        res = direct[method](ds, device=device)
        sec = time.perf_counter() - t0
        reason = (getattr(res, "extra", None) or {}).get("no_image")
        return MethodRun(method, np.asarray(res.phase), tuple(res.sampling), tuple(res.origin),
                         dose_border(margin, res.sampling), sec,
                         getattr(res, "units", "rad" if method != "tcbf" else "arb."),
                         params, {"no_image": reason} if reason else {})  # fmt: skip
    if method == "epie":
        res = epie(ds, epie_params, device=device)
        extra = {"final_error": res.errors[-1] if res.errors else None}
    else:
        res = ml(ds, ml_params, device=device)
        extra = {"best_iteration": res.best_iteration,
                 "iterations_run": res.extra["iterations_run"], "held_out": res.held_out,
                 "errors": res.errors}  # fmt: skip
    sec = time.perf_counter() - t0
    g = res.geometry
    border = object_border(g, margin)
    return MethodRun(method, np.asarray(res.phase), tuple(g.sampling), tuple(g.object_origin),
                     border, sec, "rad", params, {"border": border, **extra})  # fmt: skip


def evaluate(path: Path, methods, epie_params, device: str, log, ml_params=None) -> dict:
    """NCC of each method's phase with σ·V (see the module docstring): {method: {"ncc",
    "ncc_1A", "shift_A", "seconds", ...extras}}, methods in the order iCOM, iDPC, tcBF,
    SSB, WDD, ePIE, ML."""
    out = {}
    with io.open_dataset(path) as ds:
        truth = Truth.from_dataset(ds)
        for name in ("icom", "idpc", "tcbf", "ssb", "wdd", "epie", "ml"):
            if name in methods:
                run = run_method(ds, name, device, epie_params, ml_params, truth.margin)
                out[name] = {**run.extra, **score_run(truth, run), "seconds": run.seconds}
    for name, r in out.items():
        if r.get("no_image"):
            log(f"  {name}: no image ({r['no_image']}), {r['seconds']:.1f} s")
            continue
        log(f"  {name}: NCC {r['ncc']:+.3f}, NCC(1 Å) {r['ncc_1A']:+.3f}, shift "
            f"({r['shift_A'][0]:+.2f}, {r['shift_A'][1]:+.2f}) Å, {r['seconds']:.1f} s")
    return out


def _simulate_quietly(params, path: Path) -> None:
    from .simulate import simulate

    simulate(params, str(path), overwrite=True)


def ensure_dataset(params, path: Path, log, simulate: Callable | None = None
                   ) -> tuple[float, bool]:  # fmt: skip
    """Simulate ``params`` into ``path`` (via ``simulate(params, path)``, default: quietly)
    unless a complete dataset with the same parameter fingerprint is there already.
    Returns (seconds spent, reused?)."""
    path = Path(path)
    if path.exists():
        try:
            with io.open_dataset(path) as ds:
                same = ds.metadata.get("fingerprint") == params.fingerprint()
        except PtyengineError as exc:
            log(f"  {path}: cannot reuse ({exc}); simulating again")
            same = False
        if same:
            return 0.0, True
        log(f"  {path}: parameters differ; simulating again")
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    (simulate or _simulate_quietly)(params, path)
    return time.perf_counter() - t0, False


# ---------------------------------------------------------------- the UiO-66 study


@dataclass
class StudyPlan:
    """A variant of the UiO-66 defocus study: its datasets (label, SimulationParameters)
    and the iterations the iterative methods run noise-free (ePIE: α = β = 1, sequential,
    the probe refined, as published; ML: None = its default limit and held-out rule)."""

    preset: str
    datasets: list
    epie_iterations: int
    ml_iterations: int | None = None


#: iterations per preset: the study published 300 ePIE iterations; the quick preset runs
#: the 30 of benchmarks/bench_quality.py, the tiny one (tests) 10
_ITERATIONS = {"full": (300, None), "quick": (30, None), "tiny": (10, 10)}

#: ePIE at low dose (benchmarks/RESULTS.md, issue 3): |O| = 1, the calibrated probe kept,
#: α = 0.1, 10 iterations; plain ePIE's amplitude update collapses at tens of counts
LOW_DOSE_EPIE = dict(iterations=10, alpha=0.1, beta=0.1, phase_only=True,
                     probe_update_start=1000)  # fmt: skip


def study_plan(preset: str) -> StudyPlan:
    """The plan of ``preset`` (full, quick or tiny: presets.uio66_defocus)."""
    datasets = presets.uio66_defocus(preset)
    epie_it, ml_it = _ITERATIONS[preset]
    return StudyPlan(preset, datasets, epie_it, ml_it)


def epie_parameters(plan: StudyPlan, dose: float | None, seed: int):
    """Plain ePIE noise-free; the low-dose recipe (:data:`LOW_DOSE_EPIE`) with a dose."""
    from .reconstruct.epie import EpieParameters

    if dose is None:
        return EpieParameters(iterations=plan.epie_iterations, seed=seed)
    return EpieParameters(**LOW_DOSE_EPIE, seed=seed)


def ml_parameters(plan: StudyPlan, seed: int):
    from .reconstruct.ml import MLParameters

    limit = {} if plan.ml_iterations is None else {"iterations": plan.ml_iterations}
    return MLParameters(seed=seed, **limit)


def dose_tag(dose: float | None) -> str:
    """Folder and file tag of a dose: ``noise-free`` or ``dose100``."""
    return "noise-free" if dose is None else f"dose{dose:g}"


@dataclass
class StudyRow:
    """One (dose, defocus, method) of the study: scores, wall time (s, as measured when the
    result was made), registration shift (Å) and the files behind it."""

    dose: float | None
    defocus: float  # C10, Å
    label: str
    method: str
    ncc: float
    ncc_1A: float
    seconds: float
    shift_A: tuple[float, float]
    result: Path
    dataset: Path
    reused: bool
    no_image: str = ""  # why the method gave no image ("": it gave one)


def _run_key(fingerprint: str, method: str, parameters: dict) -> str:
    blob = json.dumps({"dataset": fingerprint, "method": method, "parameters": parameters},
                      sort_keys=True, default=str)  # fmt: skip
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _stored(path: Path, key: str) -> dict | None:
    """The study record of a finished result at ``path`` made with ``key``, else None."""
    from .results import is_result, read_result

    if not is_result(path):
        return None
    _, attrs = read_result(path)
    record = attrs.get("study") or {}
    return record if record.get("key") == key else None


def study_dataset_path(out: Path, dose: float | None, label: str) -> Path:
    return Path(out) / "datasets" / dose_tag(dose) / f"{label}.zarr"


def study_result_path(out: Path, dose: float | None, label: str, method: str) -> Path:
    return Path(out) / "results" / dose_tag(dose) / f"{label}_{method}.zarr"


def run_study(out, preset: str = "quick", doses: Sequence[float] = (),
              methods: Sequence[str] = METHODS, seed: int = 0, device: str = "cpu",
              log: Callable[[str], None] = lambda m: None, simulate: Callable | None = None,
              run_config: str | None = None) -> list[StudyRow]:  # fmt: skip
    """Simulate (or reuse) and reconstruct the study into ``out``: datasets under
    ``out/datasets/<tag>/<label>.zarr``, results under ``out/results/<tag>/<label>_<method>
    .zarr`` (tag: :func:`dose_tag`), each with its scores in the attribute ``study``.
    Noise-free first (seed 0), then each dose in e/Å² (Poisson noise seeded by ``seed``,
    which also seeds those datasets' phonons, ePIE's order and ML's held-out pixels;
    SimulationParameters has one seed for both). ``run_config``: the study command's
    configuration (TOML), stored in each result made (attribute ``run_config``). Returns
    the rows in the order dose, defocus, method."""
    from .results import write_result

    plan = study_plan(preset)
    rows = []
    for dose in (None, *doses):
        run_seed = 0 if dose is None else seed  # the noise-free rows: one specimen, whatever --seed
        for label, base in plan.datasets:
            params = dataclasses.replace(base, dose=dose, seed=run_seed)
            path = study_dataset_path(out, dose, label)
            t_sim, reused = ensure_dataset(params, path, log, simulate)
            log(f"{dose_tag(dose)} {label}: dataset "
                + ("reused" if reused else f"simulated in {t_sim:.1f} s"))
            epie_p, ml_p = epie_parameters(plan, dose, run_seed), ml_parameters(plan, run_seed)
            with io.open_dataset(path) as ds:
                truth = Truth.from_dataset(ds)
                fingerprint = ds.metadata.get("fingerprint")
                for method in methods:
                    rpath = study_result_path(out, dose, label, method)
                    key = _run_key(fingerprint, method,
                                   method_parameters(method, epie_p, ml_p))
                    record = _stored(rpath, key)
                    found = record is not None
                    if found:
                        log(f"  {NAMES[method]}: reused {rpath.name}")
                    else:
                        log(f"  {NAMES[method]}: reconstructing ...")
                        run = run_method(ds, method, device, epie_p, ml_p, truth.margin)
                        record = {"key": key, **run.extra, **score_run(truth, run),
                                  "seconds": run.seconds,
                                  "border": run.border, "units": run.units,
                                  "dose": dose, "defocus_A": params.defocus,
                                  "dataset_fingerprint": fingerprint}  # fmt: skip
                        rpath.parent.mkdir(parents=True, exist_ok=True)
                        write_result(rpath, method, {"phase": run.phase.astype(np.float32)},
                                     run.sampling, run.origin, calibration=ds.calibration,
                                     parameters=run.parameters,
                                     extra={"study": record, "ncc_to_truth": record["ncc"],
                                            **({} if run_config is None else
                                               {"run_config": run_config})})  # fmt: skip
                    log(f"  {NAMES[method]}: " + (f"no image ({record['no_image']})"
                        if record.get("no_image") else f"NCC {record['ncc']:+.3f}, NCC(1 Å) "
                        f"{record['ncc_1A']:+.3f}") + f", {record['seconds']:.1f} s")
                    rows.append(StudyRow(dose, params.defocus, label, method, record["ncc"],
                                         record["ncc_1A"], record["seconds"],
                                         tuple(record["shift_A"]), rpath, path, found,
                                         record.get("no_image") or ""))  # fmt: skip
    return rows
