"""Where an ML run starts (:mod:`.ml`): the slices from a single-slice run, and the free
pixel probe from a run that refines its aberration coefficients.

Both are short ML runs of their own (their own defocus search, refinement and held-out
stopping rule) in the reconstruction frame, whose object and probe become the start.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .probe_coefficients import coefficient_basis


def single_slice_start(run_ml, ds, params, xp, data_id, memory_limit, report,
                       positions=None):  # fmt: skip
    """S > 1 with ``single_slice_iterations``: the single-slice ML result (reconstruction
    frame; ``run_ml`` is :func:`.ml._ml`) that starts the slices, else None."""
    k = params.single_slice_iterations
    if params.slices == 1 or k == 0:
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
