"""Where an ML run starts (:mod:`.ml`): the slices from a single-slice run or from a
mepie run, and the free pixel probe from a run that refines its aberration coefficients.

The single-slice and coefficient starts are short ML runs of their own (their own defocus
search, refinement and held-out stopping rule), the mepie start K iterations of
:mod:`.mepie` on the same slices; all in the reconstruction frame, whose object and probe
become the start.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from ..errors import PtyengineError
from .probe_coefficients import coefficient_basis
from .probe_model import Pixels

#: mepie's batch for the start: the setting measured on thick SrTiO3 (benchmarks/RESULTS.md)
MEPIE_START_BATCH = 16


def single_slice_start(run_ml, ds, params, xp, data_id, memory_limit, report,
                       positions=None):  # fmt: skip
    """S > 1 with ``single_slice_iterations``: the single-slice ML result (reconstruction
    frame; ``run_ml`` is :func:`.ml._ml`) that starts the slices, else None."""
    k = params.single_slice_iterations
    if params.slices == 1 or k == 0 or params.mepie_start_iterations:
        return None
    single = dataclasses.replace(params, slices=1, slice_thickness=None, iterations=k,
                                 single_slice_iterations=0, refine_positions="off")  # fmt: skip
    res = run_ml(ds, single, xp, None, 0, False, None, data_id, memory_limit, report,
                 positions)  # fmt: skip
    if report:
        report(f"single-slice start: {len(res.errors)} iterations, the result of iteration "
               f"{res.best_iteration}" + "".join(f", {n} {v:.1f} Å"
                                                 for n, v in res.extra["refined"].items()))
    return res


def pilot(run_ml, ds, params, xp, data_id, memory_limit, report, positions=None,
          patterns=None):  # fmt: skip
    """The empirical prior's pilot (:func:`.priors.empirical_spectrum`): a run of
    ``params`` with the Gaussian prior (the reconstruction frame; ``run_ml`` is
    :func:`.ml._ml`) on the run's own pattern source ``patterns`` (the same geometry: the
    data are not read or held twice); None where its phase is flat (its start won)."""
    first = dataclasses.replace(params, prior="gaussian")
    res = run_ml(ds, first, xp, None, 0, False, None, data_id, memory_limit, report,
                 positions, patterns)  # fmt: skip
    if report:
        report(f"empirical prior: pilot of {len(res.errors)} iterations, the result of "
               f"iteration {res.best_iteration}")
    if not np.ptp(res.phase) > 0:  # its flat start won: no spectrum to estimate
        if report:
            report("empirical prior: the pilot's phase is flat; the Gaussian prior stays")
        return None
    return res


def start_from_single(eng, state, single, xp) -> None:
    """Slices from the single-slice result: φ_s = φ/S, a_s = a/S, and the probe, its
    defocus moved from the single-slice plane to the first slice's entrance by z̄, the
    mean of the slices' entrance depths: C10 − z̄ for the coefficients; the pixel modes
    multiplied by exp(i z̄ χ_C10)."""
    n_s = eng.shape[0]
    z_mean = float(np.mean(eng.props.positions))
    c10 = single.extra["refined"].get("C10", single.extra["start_defocus"])
    eng.start_at(c10 - z_mean)
    if eng.pm.kind == "pixels":
        dchi = coefficient_basis(eng.cal, ("C10",), xp)[0]
        c = (xp.fft.fft2(xp.asarray(single.probe_modes)) *
             xp.exp(1j * z_mean * dchi)).astype(np.complex64)  # fmt: skip
    else:
        c = np.array([single.extra["refined"][n] for n in eng.names], dtype=np.float64)
        if len(c):
            c[0] = eng.c0[0]
    _take(eng, state, xp, c, single.phase / n_s,
          -np.log(np.abs(single.object)) / n_s if eng.complex_object else None)


def mepie_start(ds, params, xp, data_id, memory_limit, report, positions=None):
    """S > 1 with ``mepie_start_iterations`` K > 0: the result of K mepie iterations on the
    same slices (batch MEPIE_START_BATCH, the probe's pixels refined, the defocus search and
    seed of ``params``; reconstruction frame), else None."""
    k = params.mepie_start_iterations
    if params.slices == 1 or k == 0:
        return None
    if positions is not None:
        raise PtyengineError("--mepie-start-iterations: mepie takes the calibration's scan "
                             "grid, not measured --positions; use --single-slice-iterations")
    from .epie import _epie
    from .mepie import MepieParameters, _slices

    mp = MepieParameters(iterations=k, batch_size=MEPIE_START_BATCH, defocus=params.defocus,
                         defocus_search=params.defocus_search,
                         defocus_step=params.defocus_step, seed=params.seed,
                         margin=params.margin, slices=params.slices,
                         slice_thickness=params.slice_thickness)  # fmt: skip
    with warnings.catch_warnings():  # ePIE's low-count bias: ML's likelihood follows
        warnings.filterwarnings("ignore", message="only .* counts per bright-field pixel")
        res = _epie(ds, mp, xp, None, 0, False, None, data_id, memory_limit, _slices(mp),
                    report=report)  # fmt: skip
    if report:
        report(f"mepie start: {k} iterations, error {res.errors[-1]:.3g}" if res.errors
               else "mepie start: 0 iterations")  # fmt: skip
    return res


def start_from_mepie(eng, state, run, xp) -> None:
    """Slices and probe from the mepie result ``run``: φ_s = arg O_s (a_s = −log|O_s| for
    the complex model), the probe of the wave entering slice 0 as ML's. The coefficient
    probe takes C10 and C12 fitted to mepie's refined pixel probe (the weighted
    least-squares phase fit of :meth:`.probe_model.Pixels.refined`, from mepie's starting
    defocus); the pixel probe takes mepie's probe itself, scaled from data units to
    counts."""
    cal = eng.cal
    d0 = run.extra.get("start_defocus", run.parameters.defocus)
    eng.start_at(d0)
    mepie_k = xp.fft.fft2(xp.asarray(run.probe)) * np.float32(np.sqrt(eng.cscale))
    fit = Pixels(cal, 1, xp)
    fit.start(eng.probe0, None, eng.start_defocus)
    fitted = fit.refined(mepie_k[None])
    eng.mepie_fit = fitted
    if eng.pm.kind == "pixels":
        eng.pm.start(mepie_k.astype(np.complex64), None, None,
                     reference=list(fitted.values()))  # fmt: skip
        c = eng.pm.initial()
    else:
        c = np.array([fitted.get(n, 0.0) for n in eng.names], dtype=np.float64)
    obj = xp.asarray(run.object)
    _take(eng, state, xp, c, xp.angle(obj),
          -xp.log(xp.abs(obj).clip(1e-6)) if eng.complex_object else None)


def coefficient_start(run_ml, ds, params, xp, data_id, memory_limit, report,
                      positions=None):  # fmt: skip
    """The pixel probe with ``pixel_start_iterations`` K > 0 on one slice: the
    result of a run of at most K iterations that refines C10 and C12 instead (it moves a
    wrong defocus in a few iterations, which the pixels alone do not: from 30 Å off they
    stayed within 3 Å of the start in 30 iterations), else None."""
    k = params.pixel_start_iterations
    if params.slices > 1 or k == 0:
        return None
    first = dataclasses.replace(params, refine_probe="aberrations", probe_modes=1,
                                iterations=k, pixel_start_iterations=0)  # fmt: skip
    res = run_ml(ds, first, xp, None, 0, False, None, data_id, memory_limit, report,
                 positions)  # fmt: skip
    if report:
        report(f"aberration start of the pixel probe: {len(res.errors)} iterations, "
               + ", ".join(f"{n} {v:.1f} Å" for n, v in res.extra["refined"].items()))
    return res


def start_pixels_from(eng, state, first, xp) -> None:
    """The pixel probe from the coefficient run ``first``: mode 0 its probe, the weak
    further modes round it (:class:`.probe_model.Pixels`), the object its object, the
    positions its positions."""
    eng.start_at(first.extra["refined"]["C10"])
    eng.pm.start(xp.fft.fft2(xp.asarray(first.probe)).astype(np.complex64), None, None,
                 reference=list(first.extra["refined"].values()))  # fmt: skip
    absorption = -np.log(np.abs(first.object)) if eng.complex_object else None
    _take(eng, state, xp, eng.pm.initial(), first.phase, absorption)


def _take(eng, state, xp, probe, phase, absorption) -> None:
    a = state.arrays
    for name in ("coeffs", "prev_coeffs", "best_coeffs"):
        a[name] = xp.asarray(probe).copy()
    a["phase"][...] = xp.asarray(phase)
    if absorption is not None:
        a["absorption"][...] = xp.asarray(absorption)
