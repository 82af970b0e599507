"""What an ML run returns (:class:`MLResult`) and how it is read off the final state: the
held-out rule's best iterate (or the last), the probe (modes) and aberrations refined,
the positions, and a record of how the run went (``extra``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import backend
from . import positions as pos
from .epie import PtychoGeometry
from .ml_parameters import MLParameters, refines_positions
from .probe_coefficients import refined_aberrations


@dataclass
class MLResult:
    object: np.ndarray  # complex (Ny, Nx) = exp(iφ − a)
    phase: np.ndarray  # φ (Ny, Nx) in rad, not wrapped
    probe: np.ndarray  # complex (Wy, Wx), real space, centred at (Wy//2, Wx//2)
    errors: list[float]  # fitted half-deviance per count, one per iteration
    held_out: list[float]  # held-out half-deviance per held-out count, one per iteration
    best_iteration: int
    geometry: PtychoGeometry
    parameters: MLParameters
    calibration: object
    extra: dict = field(default_factory=dict)
    reconstruction_frame: dict | None = None  # rotated data: see frame.present
    slice_phase: np.ndarray | None = None  # multislice: φ_s (S, Ny, Nx) in rad; phase = Σ_s φ_s
    positions: np.ndarray | None = None  # (N, 2) Å, scan frame: where the fit put each pattern
    probe_modes: np.ndarray | None = None  # pixel probe: (M, Wy, Wx) complex, real space



def assemble(eng, state, params: MLParameters, start_positions, search, single, mep,
             use_best: bool) -> MLResult:  # fmt: skip
    """The result of the run that left ``state`` on the engine ``eng``: its best iterate
    by the held-out rule (``use_best``) or its last; ``start_positions`` (Å, scan frame),
    and the defocus ``search``, ``single``-slice and ``mep``ie starts (or None) it had."""
    a, xp = state.arrays, eng.xp
    geom, cal = eng.geometry, eng.cal
    sc = backend.to_numpy(a["scalars"])
    phi = a["best_phase"] if use_best else a["phase"]
    ab = a["best_absorption"] if use_best else a["absorption"]
    v = a["best_coeffs"] if use_best else a["coeffs"]
    coeffs = backend.to_numpy(v) if eng.pm.kind == "coefficients" else np.zeros(0)
    best = int(sc[3]) if use_best else state.iteration
    eng.set_positions(backend.to_numpy(a["best_positions"] if use_best else a["positions"]))
    refined_positions = pos.scan_positions(geom)
    obj = backend.to_numpy(xp.exp(1j * phi - ab).astype(np.complex64))
    eng.set_coefficients(coeffs if eng.pm.kind == "coefficients" else v)
    probe = backend.to_numpy(xp.fft.ifft2(eng.probe_k))
    probe_modes, refined = None, eng.pm.refined(coeffs if eng.pm.kind == "coefficients" else v)
    if eng.pm.kind == "pixels":  # the modes, strongest first; ``probe`` is the strongest
        probe_modes = backend.to_numpy(xp.fft.ifft2(v)).astype(np.complex64)
        probe = probe_modes[0]
    held = [float(v) for v in backend.to_numpy(a["held"])]
    stopped = "iteration limit"
    if state.iteration < params.iterations:
        stopped = "held-out likelihood" if params.holdout else "converged"
    extra = {"streamed": eng.patterns.streamed, "counts_per_pattern": eng.counts_per_pattern,
             "counts_per_bright_field_pixel": eng.per_bf_pixel, "count_scale": eng.cscale,
             "object_model": "complex" if eng.complex_object else "phase",
             "stopped_by": stopped, "iterations_run": state.iteration,
             "aberrations": refined_aberrations(cal, tuple(refined), list(refined.values())),
             "refined": refined,
             "start_defocus": float(backend.to_numpy(a["origin_defocus"])[0]),
             "prior": {"smoothness": eng.params.smoothness, "ridge": eng.params.ridge,
                       "tv": eng.params.tv, "tv_scale": eng.params.tv_scale},
             "probe_model": eng.pm.kind,
             "probe_mode_powers": eng.pm.powers(v) if eng.pm.kind == "pixels" else [1.0],
             "defocus_search": (search.describe() if search else single.extra["defocus_search"]
                                if single else None),  # fmt: skip
             "mepie_start": None if mep is None else {
                 "iterations": len(mep.errors), "fitted": getattr(eng, "mepie_fit", None)},
             "single_slice_start": None if single is None else {
                 "iterations": len(single.errors), "best_iteration": single.best_iteration,
                 "refined": single.extra["refined"]},
             "positions": pos.summary(start_positions, refined_positions,
                                      backend.to_numpy(a["position_log"]),
                                      refines_positions(params))}
    phase, slice_phase = backend.to_numpy(phi).astype(np.float32), None
    if eng.props is not None:  # multislice: the projected phase, and every slice's
        slice_phase, phase = phase, phase.sum(axis=0)
        extra.update(slice_positions_A=eng.props.positions,
                     slice_thicknesses_A=list(eng.props.thicknesses))  # fmt: skip
    return MLResult(obj, phase, probe, [float(e) for e in state.errors], held, best, geom,
                    params, cal, extra, slice_phase=slice_phase,
                    positions=refined_positions, probe_modes=probe_modes)  # fmt: skip
