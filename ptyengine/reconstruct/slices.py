"""The specimen as S slices along the beam: the options shared by the multislice engines
(mepie, ML with ``slices`` > 1) and the propagators they build from a dataset.

``slices`` S ≥ 1; ``slice_thickness`` Δz in Å, one value for every slice or a list of S
(None: the dataset's recorded specimen thickness / S). The wave propagates Δz_s from
slice s to slice s + 1 (:mod:`.forward`); the last slice's thickness propagates nowhere
but counts in S·Δz, which is checked against the dataset's recorded thickness (a warning
outside a factor THICKNESS_FACTOR).

Band limit: the propagators keep |k| below ``fraction`` of the probe window's Nyquist
frequency. A simulated dataset records the simulator's field pixel d_sim, whose band limit
2/3 · 1/(2 d_sim) is matched on the reconstruction's pixel d: fraction = (2/3) d / d_sim
(at most 1); other data keep the whole window (fraction 1: the detector's own limit).
"""

from __future__ import annotations

import math
import warnings

from ..errors import PtyengineError
from .forward import SlicePropagators, slice_propagators

#: S·Δz outside this factor of the dataset's recorded thickness draws a warning.
THICKNESS_FACTOR = 1.5
#: A beam this many times wider than the probe window draws a warning (check_window).
WINDOW_FACTOR = 1.25
#: the most slices :func:`rule_slices` gives (benchmarks/RESULTS.md, "Thick specimens":
#: at 400 Å S = 8 beat S = 16 in every SrTiO3 cell)
RULE_MAX_SLICES = 8


def rule_slices(wavelength: float, semiangle: float, thickness: float) -> int:
    """S for a specimen ``thickness`` Å thick, probed at ``wavelength`` Å with a
    ``semiangle`` mrad aperture: S = round(t / Δz) with Δz = λ/(2α²) (a quarter of the
    probe's depth of field 2λ/α²; 24.6 Å at 300 kV, 20 mrad), at least 1 and at most
    RULE_MAX_SLICES. Measured on SrTiO3 [001] and UiO-66 [110], 100–400 Å thick, 300 kV,
    20 mrad, noise-free to 1000 e/Å² (benchmarks/RESULTS.md, "Thick specimens"): at
    200 Å it gives the sweep's best (8 of 4/8/16); at 400 Å the cap (8 beat 16 in every
    SrTiO3 cell: finer slices need more iterations and more counts per unknown than
    these data hold); at 100 Å S = 4 beat one and two slices, and 8 was better still."""
    if not (thickness > 0 and wavelength > 0 and semiangle > 0):
        raise PtyengineError(
            f"the slice rule needs a positive thickness, wavelength and semiangle, got "
            f"{thickness} Å, {wavelength} Å, {semiangle} mrad")
    dz = wavelength / (2 * (semiangle * 1e-3) ** 2)
    return int(min(RULE_MAX_SLICES, max(1, round(thickness / dz))))


def check_slices(slices, slice_thickness):
    """(S, Δz) checked and normalised: S an int ≥ 1; Δz None, one float, or a tuple of S
    floats, all > 0 Å. Bad values raise one-line errors naming the option."""
    if isinstance(slices, bool) or int(slices) != slices or slices < 1:
        raise PtyengineError(f"--slices must be a whole number ≥ 1, got {slices}")
    slices = int(slices)
    dz = slice_thickness
    if dz is None:
        return slices, None
    values = [dz] if isinstance(dz, (int, float)) else list(dz)
    if len(values) not in (1, slices):
        raise PtyengineError(
            f"--slice-thickness has {len(values)} values for {slices} slices: give "
            f"one (every slice) or {slices}")
    for v in values:
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
            raise PtyengineError(f"--slice-thickness must be positive Å, got {v}")
    return slices, float(values[0]) if len(values) == 1 else tuple(map(float, values))


def check_single_slice_iterations(k) -> int:
    """K ≥ 0, the single-slice iterations that start the slices (0: flat)."""
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise PtyengineError(f"--single-slice-iterations must be a whole number ≥ 0, got {k}")
    return int(k)


def thicknesses(slices: int, slice_thickness, recorded: float | None = None) -> tuple[float, ...]:
    """Δz_s (Å) of every slice; ``recorded``: the dataset's specimen thickness (Å)."""
    dz = slice_thickness
    if dz is None:
        if recorded is None:
            raise PtyengineError(
                "the dataset records no specimen thickness: give --slice-thickness (Å)")
        dz = recorded / slices
    if isinstance(dz, tuple):
        return dz
    return (float(dz),) * slices


def recorded_thickness(ds) -> float | None:
    """The specimen thickness (Å) a dataset records (a simulated one does), or None."""
    sim = (getattr(ds, "metadata", None) or {}).get("simulation") or {}
    t = sim.get("thickness")
    return float(t) if isinstance(t, (int, float)) and t > 0 else None


def band_fraction(ds, sampling) -> float:
    """The propagators' band limit as a fraction of the window's Nyquist frequency (module
    docstring): the simulator's, where the dataset records its field pixel, else 1."""
    d_sim = (getattr(ds, "metadata", None) or {}).get("field_sampling")
    if not d_sim:
        return 1.0
    return min(1.0, (2 / 3) * max(sampling) / max(float(v) for v in d_sim))


def exit_beam(cal, thickness: float) -> float:
    """The bright-field cone's widest diameter (Å) in ``thickness`` Å of specimen below the
    entrance: 2α·max(|C10|, |C10 + t|), C10 the calibration's crossover above the entrance."""
    c10 = float(cal.aberrations.get("C10", 0.0))
    return 2 * cal.semiangle * 1e-3 * max(abs(c10), abs(c10 + thickness))


def pixels_to_hold(pixels: int, beam: float, window: float) -> int:
    """Detector pixels over the same angles whose window (Å) holds a ``beam`` Å wide, for a
    detector of ``pixels`` whose window is ``window`` Å."""
    return math.ceil(pixels * beam / window - 1e-9)


def check_window(cal, geom, thickness: float) -> None:
    """Warn when the bright-field cone is more than WINDOW_FACTOR times wider than the
    probe window (W·d Å, 1/detector pixel) somewhere in the ``thickness`` Å the slices
    model: its widest diameter is 2α·max(|C10|, |C10 + t|), C10 the calibration's. The
    window wraps round what leaves it, so multislice then models a different specimen:
    SrTiO3 [001] 400 Å thick, 300 kV, 20 mrad, an 11.8 Å window (48 pixels to 40 mrad),
    beams 16 and 20 Å wide (factors 1.4 and 1.7), mepie lost to single-slice ePIE, and
    won with 96 pixels (a 23.6 Å window); at 200 Å (12 Å, factor 1.02) it won with 48
    (benchmarks/RESULTS.md, "Thick specimens")."""
    c10 = float(cal.aberrations.get("C10", 0.0))
    beam = exit_beam(cal, thickness)
    window = min(w * d for w, d in zip(geom.window, geom.sampling, strict=True))
    if beam > WINDOW_FACTOR * window:
        pixels = pixels_to_hold(max(geom.window), beam, window)
        warnings.warn(
            f"the beam is {beam:.4g} Å wide at the exit of the {thickness:.4g} Å the slices "
            f"model (2α·max(|C10|, |C10 + t|), C10 {c10:.4g} Å), the probe window "
            f"{window:.4g} Å (1/detector pixel): multislice wraps what leaves the window "
            f"round it and models another specimen; record at least {pixels} detector "
            "pixels over the same angles", stacklevel=4)  # fmt: skip


def propagators_for(ds, geom, xp, slices: int, slice_thickness) -> SlicePropagators:
    """The :class:`.forward.SlicePropagators` of S slices of ``slice_thickness`` on the
    window and pixel of ``geom`` for the dataset ``ds``; warns when S·Δz is far from the
    dataset's recorded thickness."""
    recorded = recorded_thickness(ds)
    dz = thicknesses(slices, slice_thickness, recorded)
    total = sum(dz)
    if recorded is not None and not (1 / THICKNESS_FACTOR <= total / recorded
                                     <= THICKNESS_FACTOR):  # fmt: skip
        warnings.warn(
            f"{slices} slices × {total / slices:.4g} Å = {total:.4g} Å, but "
            f"the dataset's specimen is {recorded:.4g} Å thick: the propagation between "
            f"slices is off by {total / recorded:.3g}×; give --slice-thickness "
            f"{recorded / slices:.4g}", stacklevel=4)  # fmt: skip
    check_window(ds.calibration, geom, total)
    return slice_propagators(geom.window, geom.sampling, ds.calibration.energy, dz, xp,
                             band_fraction(ds, geom.sampling))  # fmt: skip
