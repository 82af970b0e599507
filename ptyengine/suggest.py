"""Parameter advice from a calibration (``ptyengine suggest``): overlap, probe size,
sampling, counts, method, batch and memory, with warnings. Nothing here reads the patterns.

The rules, and where each comes from:

* Probe diameter (Å): d = √(d_g² + d_λ²), the quadrature sum of the geometric disc of the
  defocused cone, d_g = 2α|C10| (a cone of semi-angle α cut |C10| from its crossover),
  and the diffraction limit d_λ = 1.22 λ/α (the first zero of the Airy disc of a round
  aperture; textbook optics). An estimate: it ignores Cs and the other aberrations.
* Overlap: the linear overlap 1 − s/d of adjacent probe discs s apart (s the larger scan
  step), the measure of Bunk et al., Ultramicroscopy 108, 481 (2008), who found
  convergence to fail as it falls below ~60 %: below OVERLAP_WARN, a warning. The area
  overlap of the two discs (:func:`overlap_area`) is printed beside it.
* Real-space pixel: 1/(N dk) per axis (:attr:`Calibration.real_space_sampling`), the object
  pixel of ePIE and ML, whose window is the detector grid.
* Detector sampling: the reconstruction's window is 1/dk Å wide; a probe wider than it
  (σ = 1/(dk d) < 1) wraps round the window: the detector is undersampled for this probe
  (a warning: more pixels across the disc, binning less, or less defocus). Between 1 and 2
  the patterns are below the Nyquist factor 2 of single-pattern CDI, which ptychography's
  overlap makes up for (Edo et al., Phys. Rev. A 87, 053850 (2013)): a note. A
  bright-field disc larger than the detector is refused by the calibration itself.
* Counts per pattern: dose × step area (:attr:`Calibration.counts_per_pattern`); per
  bright-field pixel: that / the disc's pixels (:func:`.reconstruct.counts
  .bright_field_pixels`), an upper bound (all counts in the disc).
* Method: below EPIE_MIN_COUNTS counts per bright-field pixel ePIE's amplitude update is
  biased (:func:`.reconstruct.epie._warn_low_counts`): ML. At or below FULL_PRIOR_DOSE
  (:mod:`.reconstruct.priors`) ML also led ePIE's best low-dose recipe on the UiO-66
  study (README "Low dose", benchmarks/RESULTS.md): ML. Above it, or noise-free: either
  (ePIE is cheaper per iteration). ML's probe model is what ``--refine-probe auto`` picks
  (:func:`.reconstruct.probe_model.probe_kind`: free pixels from PIXEL_COUNTS counts per
  bright-field pixel).
* Dose: below LOW_DOSE e/Å² a warning. A rule of thumb, not a measured limit: the lowest
  dose measured here is 20 e/Å² (UiO-66, NCC(1 Å) 0.37–0.81 by defocus).
* Batch and memory: the patterns held as amplitudes (:func:`.reconstruct.patterns
  .resident_bytes`; streamed from disk when they exceed half the budget, as
  :func:`.reconstruct.patterns.choose_patterns` does), the object grid and WORK_ARRAYS
  window-sized complex64 arrays per position of a batch. The batch starts at ML's default
  (:class:`.reconstruct.ml_parameters.MLParameters`), at most 1/MIN_UPDATES of the
  positions, halved until it fits the budget. An estimate, not a measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import physics
from .calibration import Calibration
from .errors import PtyengineError
from .reconstruct.counts import bright_field_pixels
from .reconstruct.epie import LOW_COUNTS as EPIE_MIN_COUNTS
from .reconstruct.ml_parameters import MLParameters, prior_kind
from .reconstruct.patterns import resident_bytes
from .reconstruct.priors import FULL_PRIOR_DOSE
from .reconstruct.probe_model import probe_kind

OVERLAP_WARN = 0.6  # linear overlap below which Bunk et al. (2008) saw convergence fail
AIRY = 1.22  # the Airy disc's first-zero diameter in units of λ/α
LOW_DOSE = 10.0  # e/Å²: a rule of thumb (module docstring)
WORK_ARRAYS = 6  # complex64 window arrays per position of a batch (exit waves, gradients)
MIN_UPDATES = 16  # a batch is at most 1/16 of the positions: ≥ 16 updates per iteration
PILOT_NOTE = " (a pilot run with the Gaussian prior first: twice the time)"


def probe_diameter(wavelength: float, semiangle: float, defocus: float) -> float:
    """d = √((2α|C10|)² + (1.22 λ/α)²) in Å; ``wavelength`` Å, ``semiangle`` mrad,
    ``defocus`` (C10) Å."""
    a = semiangle * 1e-3
    return math.hypot(2 * a * abs(defocus), AIRY * wavelength / a)


def overlap_area(step: float, diameter: float) -> float:
    """Area overlap of two discs of ``diameter`` whose centres are ``step`` apart (the
    lens's area / one disc's): 1 at 0, 0 from one diameter apart."""
    r = diameter / 2
    if step >= diameter:
        return 0.0
    lens = 2 * r * r * math.acos(step / (2 * r)) - step / 2 * math.sqrt(4 * r * r - step**2)
    return lens / (math.pi * r * r)


def calibration_from_options(energy=None, semiangle=None, scan_step=None, scan_shape=(128, 128),
                             detector_pixels=None, max_angle=None, dk=None, dose=None,
                             defocus=0.0) -> Calibration:  # fmt: skip
    """A calibration from the command line's units: ``energy`` kV, ``semiangle`` mrad,
    ``scan_step`` Å, ``detector_pixels`` per side, and the detector's half-width
    ``max_angle`` mrad or its pixel ``dk`` 1/Å (as ``simulate`` takes them), ``dose``
    e/Å², ``defocus`` C10 Å. A missing one: one error naming the options."""
    missing = [f"--{n.replace('_', '-')}" for n, v in (
        ("energy", energy), ("semiangle", semiangle), ("scan_step", scan_step),
        ("detector_pixels", detector_pixels)) if v is None]  # fmt: skip
    if missing:
        raise PtyengineError(f"suggest needs DATA, or {', '.join(missing)} (and --max-angle "
                             "or --dk, optionally --dose and --defocus)")  # fmt: skip
    if (max_angle is None) == (dk is None):
        raise PtyengineError("give the detector's sampling as one of --max-angle or --dk")
    if energy * 1e3 <= 0:
        raise PtyengineError(f"--energy must be positive (kV), got {energy}")
    n = int(detector_pixels)
    if dk is None:
        dk = 2 * max_angle * 1e-3 / physics.wavelength(energy * 1e3) / n
    step = scan_step if isinstance(scan_step, tuple | list) else (scan_step, scan_step)
    return Calibration(energy=energy * 1e3, semiangle=semiangle, scan_shape=tuple(scan_shape),
                       scan_step=tuple(step), detector_shape=(n, n), dk=(dk, dk),
                       detector_center=(n / 2, n / 2), dose=dose,
                       aberrations={"C10": float(defocus or 0.0)})  # fmt: skip


@dataclass
class Suggestion:
    """What :func:`suggest` found: lengths in Å, counts in electrons, memory in bytes."""

    calibration: Calibration
    probe_diameter: float
    probe_diameter_focused: float
    overlap: float
    overlap_area: float
    pixel: tuple[float, float]
    oversampling: float
    counts_per_pattern: float | None
    counts_per_bf_pixel: float | None
    method: str
    ml_probe: str
    batch_size: int
    memory: dict[str, int]
    streamed: bool
    budget: int
    reasons: list[str] = field(default_factory=list)
    ml_prior: str = "gaussian"
    thickness: float | None = None  # Å, the specimen's (None: not known)
    slices: int | None = None  # S of slices.rule_slices for it
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _method(cal: Calibration, per_px: float | None) -> tuple[str, list[str]]:
    if cal.dose is None:
        return "either", ["no dose recorded (noise-free data?): ePIE or ML; ePIE is cheaper "
                          "per iteration"]  # fmt: skip
    if per_px < EPIE_MIN_COUNTS:
        return "ml", [f"{per_px:.3g} counts per bright-field pixel, below "
                      f"{EPIE_MIN_COUNTS:g}: ePIE's amplitude update is biased there"]
    if cal.dose <= FULL_PRIOR_DOSE:
        return "ml", [f"dose {cal.dose:g} e/Å² ≤ {FULL_PRIOR_DOSE:g}: ML led ePIE's best "
                      "low-dose recipe at such doses (README, Low dose)"]  # fmt: skip
    return "either", [f"dose {cal.dose:g} e/Å² > {FULL_PRIOR_DOSE:g} and {per_px:.3g} counts "
                      "per bright-field pixel: ePIE or ML; ePIE is cheaper per iteration"]


def _memory(cal: Calibration, budget: int) -> tuple[int, dict[str, int], bool]:
    wy, wx = cal.detector_shape
    dy, dx = cal.real_space_sampling
    margin = MLParameters().margin
    oy = (cal.scan_shape[0] - 1) * cal.scan_step[0] / dy + wy + 2 * margin
    ox = (cal.scan_shape[1] - 1) * cal.scan_step[1] / dx + wx + 2 * margin
    patterns = resident_bytes(cal)
    streamed = patterns > budget // 2
    if streamed:  # two blocks of rows in flight instead
        patterns = 2 * patterns // cal.scan_shape[0]
    obj = int(math.ceil(oy) * math.ceil(ox) * 8 * 4)  # object, gradient, direction, scale
    n = cal.scan_shape[0] * cal.scan_shape[1]
    batch = max(1, min(MLParameters().batch_size, n // MIN_UPDATES))
    batch = 2 ** int(math.log2(batch))
    per = WORK_ARRAYS * wy * wx * 8
    while batch > 1 and patterns + obj + batch * per > budget:
        batch //= 2
    return batch, {"patterns": patterns, "object": obj, "batch": batch * per}, streamed


def suggest(cal: Calibration, memory_limit: int | None = None,
            thickness: float | None = None) -> Suggestion:  # fmt: skip
    """Advice for a calibration (rules and sources: module docstring); ``memory_limit``
    bytes, default this machine's CPU budget (:func:`backend.memory_limit`); ``thickness``
    the specimen's in Å, if known: the slices of :func:`.reconstruct.slices.rule_slices`
    and whether the probe window holds the beam through it."""
    from . import backend
    from .reconstruct.slices import (
        RULE_MAX_SLICES,
        WINDOW_FACTOR,
        exit_beam,
        pixels_to_hold,
        rule_slices,
    )

    budget = backend.memory_limit(memory_limit)
    lam = cal.wavelength
    d = probe_diameter(lam, cal.semiangle, cal.defocus)
    d0 = probe_diameter(lam, cal.semiangle, 0.0)
    step = max(cal.scan_step)
    overlap = 1 - step / d
    sigma = 1 / (max(cal.dk) * d)
    per_pattern = cal.counts_per_pattern
    per_px = None if per_pattern is None else per_pattern / max(bright_field_pixels(cal), 1.0)
    method, reasons = _method(cal, per_px)
    ml_probe = probe_kind(MLParameters(), math.inf if per_px is None else per_px)
    batch, memory, streamed = _memory(cal, budget)
    s = Suggestion(cal, d, d0, overlap, overlap_area(step, d), cal.real_space_sampling, sigma,
                   per_pattern, per_px, method, ml_probe, batch, memory, streamed, budget,
                   reasons)  # fmt: skip
    s.ml_prior = prior_kind(MLParameters(), math.inf if cal.dose is None else cal.dose,
                            cal.defocus)  # fmt: skip
    if overlap < OVERLAP_WARN:
        s.warnings.append(f"overlap {overlap:.0%} < {OVERLAP_WARN:.0%} (Bunk et al. 2008): "
                          f"a step ≤ {(1 - OVERLAP_WARN) * d:.3g} Å gives "
                          f"{OVERLAP_WARN:.0%}")  # fmt: skip
    if sigma < 1:
        s.warnings.append(f"undersampled detector: the {d:.3g} Å probe is wider than the "
                          f"{1 / max(cal.dk):.3g} Å window 1/dk (σ = {sigma:.2f}): use more "
                          "pixels across the disc, bin less, or less defocus")  # fmt: skip
    elif sigma < 2:
        s.notes.append(f"σ = 1/(dk·d) = {sigma:.2f} < 2 per pattern; the overlap makes up "
                       "for it (Edo et al. 2013): keep the overlap high")  # fmt: skip
    if cal.dose is not None and cal.dose < LOW_DOSE:
        s.warnings.append(f"dose {cal.dose:g} e/Å² is below ~{LOW_DOSE:g} e/Å²: expect "
                          "little more than the strongest columns; the lowest dose "
                          "measured here is 20 e/Å²")  # fmt: skip
    if streamed:
        s.notes.append("the patterns exceed half the memory budget: they are streamed "
                       "from disk every iteration")  # fmt: skip
    if thickness is not None:
        s.thickness = float(thickness)
        s.slices = rule_slices(lam, cal.semiangle, s.thickness)
        beam, window = exit_beam(cal, thickness), 1 / max(cal.dk)
        if s.slices > 1 and beam > WINDOW_FACTOR * window:
            need = pixels_to_hold(max(cal.detector_shape), beam, window)
            s.warnings.append(f"the beam is {beam:.3g} Å wide at the specimen's exit, the "
                              f"probe window {window:.3g} Å: multislice wraps it round the "
                              f"window; record at least {need} detector pixels over the same "
                              "angles")  # fmt: skip
        s.notes.append(f"slices: S = round(t / (λ/(2α²))), at most {RULE_MAX_SLICES} "
                       "(reconstruct/slices.py: rule_slices)")  # fmt: skip
    return s


def describe(s: Suggestion) -> str:
    """The advice as the command prints it: one quantity a line, units given."""
    from .io import format_bytes

    cal = s.calibration
    c10 = cal.defocus
    lines = [
        f"probe diameter:   {s.probe_diameter:.3g} Å at C10 {c10:g} Å (focused "
        f"{s.probe_diameter_focused:.3g} Å = 1.22 λ/α; defocus disc 2α|C10| "
        f"{2 * cal.semiangle * 1e-3 * abs(c10):.3g} Å)",
        f"overlap:          {s.overlap:.0%} linear (1 − step/d, step {max(cal.scan_step):g} Å),"
        f" {s.overlap_area:.0%} by area",
        f"real-space pixel: {s.pixel[0]:.4g} × {s.pixel[1]:.4g} Å (1/(N dk)); window "
        f"{1 / cal.dk[0]:.4g} Å, σ = 1/(dk·d) = {s.oversampling:.2f}",
    ]  # fmt: skip
    if s.counts_per_pattern is None:
        lines.append("counts:           no dose recorded (noise-free data?)")
    else:
        lines.append(f"counts per pattern: {s.counts_per_pattern:.4g} (dose {cal.dose:g} "
                     f"e/Å² × step area); counts per bright-field pixel: "
                     f"{s.counts_per_bf_pixel:.3g}")  # fmt: skip
    advice = "use ML (--method ml)" if s.method == "ml" else "use ePIE or ML"
    lines.append(f"method:           {advice}: {'; '.join(s.reasons)}; ML's probe model "
                 f"(--refine-probe auto): {s.ml_probe}; ML's prior (--prior auto): "
                 f"{s.ml_prior}{PILOT_NOTE if s.ml_prior == 'empirical' else ''}")  # fmt: skip
    if s.slices is not None:
        t = s.thickness
        lines.append(
            f"slices:           {s.slices} for {t:g} Å"
            + (": one slice is enough" if s.slices == 1 else
               f" (--slices {s.slices} --slice-thickness {t / s.slices:.4g}); mepie, or ML "
               "from it (--method ml --mepie-start-iterations 30)"))  # fmt: skip
    m = s.memory
    lines.append(f"batch size:       {s.batch_size} (--batch-size)")
    lines.append(f"memory:           ≈ {format_bytes(sum(m.values()))} (patterns "
                 f"{format_bytes(m['patterns'])}{', streamed' if s.streamed else ''}, object "
                 f"{format_bytes(m['object'])}, batch {format_bytes(m['batch'])}) of a "
                 f"{format_bytes(s.budget)} budget")  # fmt: skip
    lines += [f"note: {n}" for n in s.notes]
    lines += [f"warning: {w}" for w in s.warnings]
    return "\n".join(lines)
