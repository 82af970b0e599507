"""Estimate an unknown global defocus from the data: a short search on the Poisson likelihood.

The calibration's defocus is often known only to tens of nanometres (a focus setting read
off the microscope, a crossover height guessed for a beam-sensitive specimen), and the
single-slice model's effective defocus differs from the entrance-surface value by about half
the specimen thickness. ML refines C10 with the object (:mod:`.ml`), but from a start far
from the truth that is slow: the object first grows structure that fits the wrong probe.

So before the reconstruction, for each candidate C10 on a grid c₀ + m·Δ (m = −M … M) the
ML engine runs a few iterations (``iterations``, default 5) with that probe fixed, from a
flat object, on the central part of the scan (at most ``positions``: whole blocks of rows
nearest the centre), with 10 % of the detector pixels held out, and records the held-out
half-deviance D(C10) of the last iterate. A wrong probe leaves structure the object cannot
explain at every position at once, so D is lowest near the data's defocus. The fitted
objective would not do: a larger probe illuminates more object pixels outside the scan,
free parameters that fit noise, so the fitted likelihood falls with |C10| whatever the
data (measured on a 40-atom amorphous slab scanned over 8 × 8 Å: monotonic in C10 from
−100 to +900 Å; the held-out deviance has its minimum at 396 Å for a true 402 Å).
The estimate is the vertex of the parabola through the lowest D and its two neighbours,
kept inside that bracket; a minimum on the edge of the grid is reported as such (the true
defocus may lie outside the range searched) and not extrapolated. Where no candidate beats
the start by ``SIGNIFICANCE`` (2 half-deviance units: a chance fluctuation is ~1), the data
cannot tell the defoci apart and the start is kept.

Measured on the UiO-66 quick data at 100 nm (single-slice defocus ≈ 1015 Å), started 20 nm
off on either side, two noise seeds: 997 / 997 Å and 1038 / 1038 Å at 100 e/Å² (D spread
over the grid 5–14); at 20 e/Å² the spread is ≤ 1.1 and the start is kept.

"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .. import backend
from ..errors import PtyengineError

DEFAULT_POSITIONS = 1024  # scan positions the search looks at (whole blocks of rows)
SEARCH_HOLDOUT = 0.1  # fraction of the pixels held out: the search compares their deviance
#: Half-deviance by which the best candidate must beat the start for the search to move
#: away from it: smaller differences are chance (at 20 e/Å² on the UiO-66 quick data all
#: seven candidates lay within 1.1 of each other and the lowest moved at random).
SIGNIFICANCE = 2.0
AUTO_SPAN = 300.0  # Å: the half-width searched by default when the defocus is unknown


@dataclass
class DefocusSearch:
    """The outcome: ``defocus`` (Å) the estimate, ``candidates`` (Å) and ``objective`` (the
    held-out half-deviance D at each), ``on_edge`` when the lowest D lies at the end of the
    grid, ``positions`` the number of scan positions used, ``significant`` False when the
    start was kept (no candidate better by SIGNIFICANCE)."""

    defocus: float
    candidates: list[float]
    objective: list[float]
    on_edge: bool
    positions: int
    significant: bool = True

    def describe(self) -> str:
        rows = ", ".join(f"{c:g}: {v - min(self.objective):.1f}"
                         for c, v in zip(self.candidates, self.objective, strict=True))  # fmt: skip
        edge = " (the lowest is at the edge of the range: widen it)" if self.on_edge else ""
        if not self.significant:
            edge = f" (kept: no candidate beats it by {SIGNIFICANCE:g} in held-out deviance)"
        return (f"defocus search on {self.positions} positions: C10 = {self.defocus:.1f} Å"
                f"{edge}; held-out D − min per C10 (Å): {rows}")


def grid(centre: float, span: float, step: float) -> list[float]:
    """c₀ + m·Δ for |m·Δ| ≤ span (Å), always an odd number ≥ 3 of candidates."""
    if not (math.isfinite(span) and span > 0 and math.isfinite(step) and step > 0):
        raise PtyengineError(f"defocus search: span ({span}) and step ({step}) must be > 0 Å")
    m = max(1, int(math.floor(span / step + 1e-9)))
    if m > 50:
        raise PtyengineError(f"defocus search: {2 * m + 1} candidates (span {span:g} Å, "
                             f"step {step:g} Å); use a step of at least {span / 50:g} Å")
    return [centre + k * step for k in range(-m, m + 1)]


def vertex(xs, ys) -> tuple[float, bool]:
    """(the parabola's vertex through the lowest point and its neighbours, on_edge)."""
    i = int(np.argmin(ys))
    if i == 0 or i == len(ys) - 1:
        return float(xs[i]), True
    x0, x1, x2 = xs[i - 1], xs[i], xs[i + 1]
    y0, y1, y2 = ys[i - 1], ys[i], ys[i + 1]
    den = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / den
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / den
    if a <= 0:
        return float(x1), False
    return float(min(max(-b / (2 * a), x0), x2)), False


def central_blocks(eng, positions: int) -> list:
    """The engine's (block, positions) list cut to whole blocks nearest the scan centre,
    at least ``positions`` positions (all of them if fewer)."""
    order = eng.order
    total = sum(len(p) for _, p in order)
    if total <= positions:
        return order
    mid = (len(order) - 1) / 2
    ranked = sorted(range(len(order)), key=lambda i: abs(i - mid))
    chosen, n = [], 0
    for i in ranked:
        chosen.append(i)
        n += len(order[i][1])
        if n >= positions:
            break
    return [order[i] for i in sorted(chosen)]


def search_defocus(eng, params, span: float, step: float, iterations: int = 5,
                   positions: int = DEFAULT_POSITIONS) -> DefocusSearch:  # fmt: skip
    """Run the search of the module docstring with an ML engine (:func:`.ml.setup`: its
    patterns, geometry and prior; ``params`` its parameters). The probe is held fixed and
    nothing is held out; the engine's scan order is restored afterwards and its probe left
    at the last candidate (the caller starts it where it wants)."""
    from . import ml as mlmod
    from .iterative import run

    xp = eng.xp
    centre = params.defocus
    if centre is None:
        centre = float(dict(eng.cal.aberrations).get("C10", 0.0))
    candidates = grid(centre, span, step)
    holdout = SEARCH_HOLDOUT
    quick = dataclasses.replace(params, holdout=holdout, iterations=iterations,
                                probe_update_start=iterations + 1)  # fmt: skip
    full_order, full_params = eng.order, eng.params
    eng.order, eng.params = central_blocks(eng, positions), quick  # the kernels' holdout
    used = sum(len(p) for _, p in eng.order)
    total_counts = eng.counts_per_pattern * used
    values = []
    try:
        for c10 in candidates:
            eng.start_at(c10)
            state = mlmod._new_state(eng.geometry, eng.pm.initial(), xp, eng.shape)
            sweep = mlmod._sweep_factory(eng, quick, eng.complex_object, total_counts,
                                         total_counts * holdout, xp)  # fmt: skip
            run(state, sweep, iterations, xp)
            held_per_count = float(backend.to_numpy(state.arrays["held"])[-1])
            values.append(held_per_count * total_counts * holdout)
    finally:
        eng.order, eng.params = full_order, full_params
    values = np.asarray(values)
    if values[len(values) // 2] - values.min() < SIGNIFICANCE:  # the start is as good
        return DefocusSearch(centre, candidates, list(values), False, used, significant=False)
    best, on_edge = vertex(np.asarray(candidates), values)
    return DefocusSearch(best, candidates, list(values), on_edge, used)


def check_search(span: float | None, step: float) -> None:
    """Refuse a search half-width that is not ≥ 0 Å (None: automatic) or a step ≤ 0 Å."""
    width = 0.0 if span is None else span
    if not (math.isfinite(width) and width >= 0 and math.isfinite(step) and step > 0):
        raise PtyengineError(f"defocus search: span ({span}) must be ≥ 0 Å and step "
                             f"({step}) > 0 Å")


def search_span(span: float | None, defocus: float | None, cal) -> float:
    """The half-width (Å) to search: ``span`` if given, else AUTO_SPAN when neither
    ``defocus`` nor the calibration gives C10 (the defocus is unknown), else 0."""
    if span is not None:
        return float(span)
    return AUTO_SPAN if defocus is None and "C10" not in dict(cal.aberrations) else 0.0


def estimate_defocus(ds, patterns, defocus: float | None, span: float, step: float, xp,
                     batch_size: int = 64, margin: int = 8, report=None) -> float:  # fmt: skip
    """The search for another engine (ePIE, mepie): an ML engine on the same measured
    ``patterns`` (nothing read twice), its prior at the defaults; returns C10 in Å. Data
    must be counts or carry a dose (the likelihood models electron counts)."""
    from . import ml as mlmod

    params = mlmod.MLParameters(defocus=defocus, batch_size=batch_size, margin=margin)
    eng = mlmod.setup(ds, params, xp, patterns=patterns)
    result = search_defocus(eng, params, span, step)
    if report:
        report(result.describe())
    return result.defocus
