"""mepie: multislice ePIE (3PIE; Maiden, Humphry & Rodenburg, JOSA A 29, 1606 (2012)).

The multislice forward model of :mod:`.forward` with ePIE's update rule, run by ePIE's own
sweep (:mod:`.epie`): the specimen is S transmission slices O_0 … O_{S−1}, slice s of
thickness Δz_s (Å), the wave propagated by Δz_s from slice s to slice s + 1 by the
simulator's Fresnel propagator. For each batch of positions, with ψ_s the wave incident
on slice s and Δφ_s the exit-wave correction propagated back to slice s
(:mod:`.forward`'s adjoint):

    O_s += (α/S) Σ_j conj(ψ_{s,j}) Δφ_{s,j} / max Σ_j |ψ_{s,j}|²   every slice
    P   += β Σ_j conj(O_0) Δψ_{0,j} / max Σ_j |O_0[window_j]|²     the probe (entrance)

With S = 1 this is ePIE, the same arithmetic (tests/test_multislice_ptycho.py checks
equality to float precision). The slice step is α/S, not 3PIE's α: all S slices are
corrected from the same exit-wave residual, and each step alone would remove it where the
wave is brightest, so together they overshoot S-fold. Measured (benchmarks/bench_mepie.py's
synthetic weak-phase object, 256 positions, batch 64, β = 1): α = 1 per slice diverges
for S = 4 (error 3.6e-3, 6.4e-3, 1.9e3, ... over the first iterations) and α = 0.5 for
S = 8; α/S falls steadily for S = 2, 4, 8 (S = 4: 4.9e-3 → 5.4e-4 in 8 iterations).

Slices start flat (O_s = 1), or (``single_slice_iterations`` K > 0) from K iterations of
single-slice ePIE: O_s = |O|^(1/S) exp(i arg(O)/S), the probe as it left them (the K
iterations are not counted in ``iterations`` nor in the error history; a resumed run
continues from its checkpoint and skips them). ``phase_only`` holds every slice to
|O_s| = 1. ``kz_filter`` β > 0 applies the k_z (missing-wedge) filter of
:mod:`.depth_filter` to the slices after every ``kz_every``-th iteration: a depth
regulariser that keeps the projected phase. The result's
``object`` is (S, Ny, Nx); its ``phase`` the sum of the slices' phases (the projected
phase), ``slice_phase`` each one's, and ``extra`` the entrance depth of every slice below
the first (``slice_positions_A``) and its thickness.

The slice options and the propagators' band limit: :mod:`.slices`.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import slices as sl
from .depth_filter import check_kz_filter, kz_filter
from .epie import EpieParameters, EpieResult, _epie
from .frame import present
from .iterative import opened


@dataclass
class MepieParameters(EpieParameters):
    """ePIE's parameters, and the slices: ``slices`` S ≥ 1; ``slice_thickness`` Δz in Å,
    one value for every slice or a list of S (None: the dataset's recorded specimen
    thickness / S); ``single_slice_iterations`` K: the slices start flat (K = 0), or as
    the S-th root of the object of K single-slice ePIE iterations (same parameters),
    which also give the starting probe; ``kz_filter`` β ≥ 0 (dimensionless, 0: off): the
    k_z (missing-wedge) filter of :mod:`.depth_filter` applied to the slices after every
    ``kz_every``-th iteration."""

    slices: int = 2
    slice_thickness: float | tuple[float, ...] | None = None
    single_slice_iterations: int = 0  # ePIE iterations whose object starts the slices
    kz_filter: float = 0.0  # β of the k_z filter; 0: off
    kz_every: int = 1  # iterations between applications of the k_z filter

    def __post_init__(self):
        super().__post_init__()
        self.slices, self.slice_thickness = sl.check_slices(self.slices, self.slice_thickness)
        self.single_slice_iterations = sl.check_single_slice_iterations(
            self.single_slice_iterations)
        self.kz_filter, self.kz_every = check_kz_filter(self.kz_filter, self.kz_every)

    def thicknesses(self, recorded: float | None = None) -> tuple[float, ...]:
        """Δz_s (Å) of every slice; ``recorded``: the dataset's specimen thickness (Å)."""
        return sl.thicknesses(self.slices, self.slice_thickness, recorded)


def _slices(params: MepieParameters):
    def build(ds, geom, xp):
        return sl.propagators_for(ds, geom, xp, params.slices, params.slice_thickness)

    return build


def _regulariser(params: MepieParameters):
    """After iteration k (0-based) with (k + 1) a multiple of ``kz_every``: the k_z filter
    on the slices (None when off)."""
    if params.kz_filter == 0:
        return None

    def make(geom, props, xp):
        positions = props.positions

        def apply(obj, iteration):
            if (iteration + 1) % params.kz_every == 0:
                kz_filter(obj, positions, geom.sampling, params.kz_filter, xp)
                if params.phase_only:  # |O| = 1 to float precision, as the steps leave it
                    obj /= xp.abs(obj).clip(1e-12)

        return apply

    return make


def mepie(
    data,
    params: MepieParameters | None = None,
    device: str = "cpu",
    checkpoint: str | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress=None,
    data_id: str = "",
    memory_limit: int | None = None,
    report=None,
) -> EpieResult:
    """Reconstruct S object slices and the probe from a calibrated dataset by multislice
    ePIE; arguments, streaming, checkpoints and resume as for :func:`.epie.epie`."""
    params = params or MepieParameters()
    with opened(data, device) as (ds, xp):
        return present(_epie(ds, params, xp, checkpoint, checkpoint_every, resume, progress,
                             data_id, memory_limit, _slices(params), report=report,
                             regulariser=_regulariser(params)))  # fmt: skip
