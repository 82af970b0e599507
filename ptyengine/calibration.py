"""The calibration that travels with every 4D-STEM dataset, and its versioned schema.

Conventions (DESIGN.md): 4-D data are ``(scan_y, scan_x, k_y, k_x)``; a detector pixel
``p`` sits at spatial frequency ``k = (p - center) * dk`` (1/Å) in the detector frame;
the detector frame is turned by ``rotation`` (degrees, counter-clockwise from the scan
axes) and, if ``transpose``, has its k_y/k_x axes swapped first: a detector-frame vector
goes to the scan frame as in :func:`ptyengine.reconstruct.icom.to_scan_frame` (swap, then
x' = x cos θ − y sin θ, y' = x sin θ + y cos θ), so patterns stored as ``np.rot90`` of
scan-aligned ones have rotation +90°; the iterative engines handle both exactly
(:mod:`ptyengine.reconstruct.frame`). Probe position (i, j) of
the scan sits at ``scan_origin + (i * scan_step[0], j * scan_step[1])`` Å in the
specimen frame.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import physics
from .errors import PtyengineError

SCHEMA = "ptyengine.calibration"
SCHEMA_VERSION = 1

# Plausible ranges: a value outside them is a unit mix-up or a typo, never a measurement.
ENERGY_RANGE = (10e3, 1.5e6)  # eV: 10 kV (low-voltage STEM) to 1.5 MV (high-voltage TEM)
SEMIANGLE_RANGE = (0.01, 300.0)  # mrad: nano-beam diffraction to the largest apertures
STEP_RANGE = (1e-3, 1e6)  # Å: 0.001 Å to 100 µm
PIXEL_ANGLE_RANGE = (1e-4, 100.0)  # mrad per detector pixel
MIN_DETECTOR_PIXELS = 2  # per axis
ROTATION_LIMIT = 360.0  # degrees either way
DOSE_LIMIT = 1e9  # e/Å²
ORIGIN_LIMIT = 1e8  # Å (1 cm) either way
#: Largest |C_nm| (Å) by radial order n: defocus and astigmatism 10 µm, coma 1 mm, Cs 1 cm
#: (uncorrected objectives: ~1 mm), C4 10 cm, C5 10 m.
ABERRATION_LIMITS = {1: 1e5, 2: 1e7, 3: 1e8, 4: 1e9, 5: 1e11}
DISC_FIT = 1.02  # the bright-field disc may exceed the detector's half-width by 2 % (rounding)
DISC_WARN, DISC_REFUSE = 0.10, 2.0  # measured/expected disc radius: warn beyond ±10 %,
#                                     refuse beyond 2× or below 1/2×


class CalibrationError(PtyengineError):
    """A calibration field is missing, malformed, implausible or contradicts the data."""


def _length(angstrom: float) -> str:
    """A length in Å for people: '10 µm', '1 mm'."""
    a = abs(angstrom)
    for unit, size in (("m", 1e10), ("cm", 1e8), ("mm", 1e7), ("µm", 1e4), ("nm", 10.0)):
        if a >= size:
            return f"{angstrom / size:g} {unit}"
    return f"{angstrom:g} Å"


def _number(name: str, value) -> float:
    """``value`` as a finite float; a string, bool, None or NaN names the field."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise CalibrationError(f"calibration field {name!r} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise CalibrationError(f"calibration field {name!r} must be finite, got {value!r}")
    return v


def _pair(name: str, value, kind=float) -> tuple:
    try:
        a, b = value
    except (TypeError, ValueError):
        raise CalibrationError(
            f"calibration field {name!r} must be a pair of numbers, got {value!r}") from None
    if isinstance(value, str | dict):
        raise CalibrationError(
            f"calibration field {name!r} must be a pair of numbers, got {value!r}")
    out = (_number(name, a), _number(name, b))
    if kind is int:
        if not all(v.is_integer() for v in out):
            raise CalibrationError(f"calibration field {name!r} must be whole numbers, "
                                   f"got {value!r}")  # fmt: skip
        out = (int(out[0]), int(out[1]))
    return out


def _check_aberrations(value) -> dict[str, float]:
    """Names known to physics, values numbers within :data:`ABERRATION_LIMITS`."""
    if not isinstance(value, Mapping):
        raise CalibrationError(f"calibration field 'aberrations' must be a mapping of names "
                               f"to numbers (Å, angles in rad), got {value!r}")  # fmt: skip
    for name, v in value.items():
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise CalibrationError(f"calibration field 'aberrations': {name} must be a "
                                   f"number, got {v!r}")  # fmt: skip
    try:
        out = physics.check_aberrations(value)
    except PtyengineError as exc:
        raise CalibrationError(f"calibration field 'aberrations': {exc}") from None
    for name, v in out.items():
        order = physics.ABERRATION_ORDERS.get(name, (0, 0))[0]
        limit = ABERRATION_LIMITS.get(order)
        if limit is not None and abs(v) > limit:
            raise CalibrationError(
                f"calibration field 'aberrations': aberration {name} = {v:g} Å ({_length(v)}) "
                f"exceeds {limit:.0e} Å ({_length(limit)}): give it in Å")  # fmt: skip
    return out


@dataclass(frozen=True)
class Calibration:
    """Everything needed to interpret a 4D-STEM dataset physically.

    energy: beam energy, eV. semiangle: probe convergence semi-angle, mrad.
    scan_shape: (ny, nx) probe positions. scan_step: (dy, dx) Å between positions.
    detector_shape: (n_ky, n_kx) pixels. dk: (dky, dkx) 1/Å per detector pixel.
    detector_center: (cy, cx) pixel where k = 0 (the unscattered beam's centre).
    rotation: scan–detector rotation in degrees; transpose: swap detector axes first.
    aberrations: Krivanek coefficients of the probe in Å (angles φ in rad), see physics.
    dose: electrons per Å² (None for noise-free intensities, normalised to 1 per pattern).
    scan_origin: (y, x) Å of the first probe position in the specimen frame.

    Every field is checked on construction (so whether read from a file, given to
    ``convert`` or built by ``simulate``) for its type and for a plausible range, with the
    reason in the message: energy within 10 kV – 1.5 MV (kV/eV mix-ups), semi-angle
    0.01 – 300 mrad, scan step 0.001 Å – 100 µm, at least 2 × 2 detector pixels of 1e-4 –
    100 mrad each, the bright-field disc no larger than the detector (semiangle/λ ≤ the
    half-width N·dk/2 along both axes, 2 % tolerance), the centre on the detector, rotation
    within ±360°, aberrations within :data:`ABERRATION_LIMITS` (|C10| ≤ 10 µm), dose
    ≤ 1e9 e/Å², origin within ±1 cm. The data themselves are compared with the calibration
    by :func:`check_bright_field_disc`.
    """

    energy: float
    semiangle: float
    scan_shape: tuple[int, int]
    scan_step: tuple[float, float]
    detector_shape: tuple[int, int]
    dk: tuple[float, float]
    detector_center: tuple[float, float]
    rotation: float = 0.0
    transpose: bool = False
    aberrations: dict[str, float] = field(default_factory=dict)
    dose: float | None = None
    scan_origin: tuple[float, float] = (0.0, 0.0)

    REQUIRED = ("energy", "semiangle", "scan_shape", "scan_step", "detector_shape", "dk",
                "detector_center")  # fmt: skip

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        for name in ("energy", "semiangle"):
            v = _number(name, getattr(self, name))
            if v <= 0:
                raise CalibrationError(f"calibration field {name!r} must be positive, got {v:g}")
            put(name, v)
        for name in ("scan_shape", "detector_shape"):
            put(name, _pair(name, getattr(self, name), int))
        for name in ("scan_step", "dk"):
            v = _pair(name, getattr(self, name))
            if min(v) <= 0:
                raise CalibrationError(f"calibration field {name!r} must be positive, got {v}")
            put(name, v)
        for name in ("detector_center", "scan_origin"):
            put(name, _pair(name, getattr(self, name)))
        put("rotation", _number("rotation", self.rotation))
        if self.transpose not in (True, False):  # also 0 and 1
            raise CalibrationError(f"calibration field 'transpose' must be true or false, "
                                   f"got {self.transpose!r}")  # fmt: skip
        put("transpose", bool(self.transpose))
        put("aberrations", _check_aberrations(self.aberrations))
        if self.dose is not None:
            d = _number("dose", self.dose)
            if d <= 0:
                raise CalibrationError(f"calibration field 'dose' must be positive, got {d:g}")
            put("dose", d)
        self._check_ranges()

    def _check_ranges(self) -> None:
        """The plausibility checks of the class docstring (types are checked already)."""
        e, (lo, hi) = self.energy, ENERGY_RANGE
        if not lo <= e <= hi:
            raise CalibrationError(
                f"calibration field 'energy' is {e:g} eV ({e / 1e3:g} kV), outside 10 kV – "
                "1.5 MV: kV and eV mixed up? (--energy takes kV; files store eV)")
        lo, hi = SEMIANGLE_RANGE
        if not lo <= self.semiangle <= hi:
            raise CalibrationError(
                f"calibration field 'semiangle' is {self.semiangle:g} mrad: convergence "
                f"semi-angles lie between {lo:g} and {hi:g} mrad")  # fmt: skip
        lo, hi = STEP_RANGE
        if not all(lo <= s <= hi for s in self.scan_step):
            raise CalibrationError(
                "calibration field 'scan_step' is ({:g}, {:g}) Å: ".format(*self.scan_step)
                + f"a scan step lies between {lo:g} Å and {hi:g} Å")
        if min(self.scan_shape) < 1:
            raise CalibrationError(f"calibration field 'scan_shape' must be ≥ 1, "
                                   f"got {self.scan_shape}")  # fmt: skip
        ny, nx = self.detector_shape
        if min(ny, nx) < MIN_DETECTOR_PIXELS:
            raise CalibrationError(
                f"calibration field 'detector_shape' must be at least {MIN_DETECTOR_PIXELS} "
                f"× {MIN_DETECTOR_PIXELS} pixels, got {self.detector_shape}")
        lam, (lo, hi) = self.wavelength, PIXEL_ANGLE_RANGE
        for d in self.dk:
            if not lo <= d * lam * 1e3 <= hi:
                raise CalibrationError(
                    f"calibration field 'dk' is ({self.dk[0]:g}, {self.dk[1]:g}) 1/Å: a "
                    f"detector pixel of {d * lam * 1e3:.3g} mrad lies outside {lo:g} – {hi:g} "
                    "mrad")  # fmt: skip
        k_ap = self.semiangle * 1e-3 / lam
        for axis, n, d in (("k_y", ny, self.dk[0]), ("k_x", nx, self.dk[1])):
            if k_ap > DISC_FIT * n * d / 2:
                raise CalibrationError(
                    f"the bright-field disc ({self.semiangle:g} mrad = {k_ap:.4g} 1/Å) is "
                    f"larger than the detector (half-width {n * d / 2:.4g} 1/Å = "
                    f"{n * d / 2 * lam * 1e3:.3g} mrad along {axis}): check the semi-angle, "
                    "the detector pixel size (dk or detector angle) and the energy")
        cy, cx = self.detector_center
        if not (-0.5 <= cy <= ny - 0.5 and -0.5 <= cx <= nx - 0.5):
            raise CalibrationError(
                f"calibration field 'detector_center' ({cy:g}, {cx:g}) px lies outside the "
                f"{ny} × {nx} px detector: the unscattered beam must hit it")
        if abs(self.rotation) > ROTATION_LIMIT:
            raise CalibrationError(f"calibration field 'rotation' is {self.rotation:g}°: give "
                                   f"an angle within ±{ROTATION_LIMIT:g}°")  # fmt: skip
        if self.dose is not None and self.dose > DOSE_LIMIT:
            raise CalibrationError(f"calibration field 'dose' is {self.dose:g} e/Å²: doses lie "
                                   f"below {DOSE_LIMIT:g} e/Å²")  # fmt: skip
        if max(abs(v) for v in self.scan_origin) > ORIGIN_LIMIT:
            raise CalibrationError(
                "calibration field 'scan_origin' is ({:g}, {:g}) Å: ".format(*self.scan_origin)
                + f"beyond ±{ORIGIN_LIMIT:g} Å")

    # ---------------------------------------------------------------- derived quantities
    @property
    def wavelength(self) -> float:
        """Electron wavelength, Å."""
        return physics.wavelength(self.energy)

    @property
    def defocus(self) -> float:
        """C10 in Å (> 0: crossover above the entrance surface; see physics)."""
        return self.aberrations.get("C10", 0.0)

    @property
    def detector_angle_per_pixel(self) -> tuple[float, float]:
        """Detector pixel size in mrad."""
        return (self.dk[0] * self.wavelength * 1e3, self.dk[1] * self.wavelength * 1e3)

    @property
    def real_space_sampling(self) -> tuple[float, float]:
        """Pixel size (Å) of a real-space window whose FFT is the detector grid."""
        return (1 / (self.detector_shape[0] * self.dk[0]),
                1 / (self.detector_shape[1] * self.dk[1]))  # fmt: skip

    @property
    def counts_per_pattern(self) -> float | None:
        """Mean electrons per diffraction pattern: dose × step area."""
        if self.dose is None:
            return None
        return self.dose * self.scan_step[0] * self.scan_step[1]

    def check_data_shape(self, shape, source: str = "data") -> None:
        """Raise unless a 4-D array of ``shape`` matches the scan and detector shapes."""
        shape = tuple(int(s) for s in shape)
        if len(shape) != 4:
            raise CalibrationError(f"{source} must be 4-D (scan_y, scan_x, k_y, k_x), got {shape}")
        if shape[:2] != self.scan_shape:
            raise CalibrationError(
                f"{source} has scan shape {shape[:2]} but the calibration says {self.scan_shape}")
        if shape[2:] != self.detector_shape:
            raise CalibrationError(
                f"{source} has detector shape {shape[2:]} but the calibration says "
                f"{self.detector_shape}")

    def replace(self, **changes) -> Calibration:
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return {"schema": SCHEMA, "version": SCHEMA_VERSION, **d}

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "calibration") -> Calibration:
        if not isinstance(d, dict):
            raise CalibrationError(
                f"{source}: calibration must be a mapping, got {type(d).__name__}")
        if d.get("schema", SCHEMA) != SCHEMA:
            raise CalibrationError(
                f"{source}: unknown calibration schema {d.get('schema')!r}")
        version = d.get("version", SCHEMA_VERSION)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise CalibrationError(
                f"{source}: calibration schema version {version!r} is newer than this "
                f"ptyengine understands ({SCHEMA_VERSION}); upgrade ptyengine")
        missing = [k for k in cls.REQUIRED if d.get(k) is None]
        if missing:
            raise CalibrationError(f"{source}: {missing_message(missing)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"schema", "version"})
        if unknown:
            raise CalibrationError(f"{source}: unknown calibration field {unknown[0]!r}")
        kwargs = {k: d[k] for k in names if k in d}
        try:
            return cls(**kwargs)
        except CalibrationError as exc:
            raise CalibrationError(f"{source}: {exc}") from None


def missing_message(names, how: Mapping[str, str] | None = None) -> str:
    """'calibration field 'x' is missing (give ...)' naming every missing field at once;
    ``how`` maps a field to the option that gives it."""
    names = list(names)
    quoted = ", ".join(repr(n) for n in names)
    text = (f"calibration field {quoted} is missing" if len(names) == 1 else
            f"calibration fields {quoted} are missing")  # fmt: skip
    hints = [how[n] for n in names if how and n in how]
    if hints:
        text += " (give " + (hints[0] if len(hints) == 1 else
                             ", ".join(hints[:-1]) + " and " + hints[-1]) + ")"  # fmt: skip
    return text


def check_bright_field_disc(cal: Calibration, mean_pattern) -> str | None:
    """Compare the bright-field disc in ``mean_pattern`` (a mean diffraction pattern on
    ``cal``'s detector, any scale) with the calibration's semiangle/(λ·dk).

    The disc is measured by its area: the pixels brighter than halfway between the dark
    level (the 5th percentile) and the disc's plateau (the median of the brightest eighth
    of the expected disc's pixels, so that hot pixels do not count); area·dky·dkx = π k_r².
    Returns a note when k_r differs from semiangle/λ by more than 10 % (:data:`DISC_WARN`),
    or when the data cannot tell (no disc edge: a dark level above half the plateau, as in
    a flat pattern; or a disc expected smaller than 2 px in radius); None when they agree.
    Raises :class:`CalibrationError` when k_r is more than twice or less than half of
    semiangle/λ (:data:`DISC_REFUSE`). Only ``convert`` runs it, on the mean pattern it
    reads anyway (up to 16 scan rows, for the default centre) and before it writes
    anything; ``info`` and the reconstructions do not, as they would have to read the data.
    """
    import numpy as np

    p = np.clip(np.nan_to_num(np.asarray(mean_pattern, np.float64)), 0, None)
    if p.shape != cal.detector_shape:
        raise CalibrationError(f"mean pattern of shape {p.shape} on a detector of "
                               f"{cal.detector_shape}")  # fmt: skip
    lam, px_area = cal.wavelength, cal.dk[0] * cal.dk[1]
    k_ap = cal.semiangle * 1e-3 / lam
    expected_px = math.pi * k_ap**2 / px_area
    r_expected = k_ap / math.sqrt(px_area)  # pixels (geometric mean of the two axes)
    if r_expected < 2:
        return (f"the bright-field disc should be {r_expected:.2g} px in radius: too small to "
                "compare its size with the data")  # fmt: skip
    flat = np.sort(p.ravel())
    hi = float(np.median(flat[-max(3, int(expected_px / 8)):]))
    lo = float(np.percentile(flat, 5))
    if not hi > 0 or lo > hi / 2:
        return (f"no bright-field disc edge in the mean pattern (dark level {lo:.3g}, bright "
                f"{hi:.3g}): the semi-angle is not compared with the data")  # fmt: skip
    area = int(np.count_nonzero(p > (lo + hi) / 2))
    k_r = math.sqrt(area * px_area / math.pi)
    ratio = k_r / k_ap
    text = (f"the bright-field disc in the mean pattern has a radius of "
            f"{k_r / math.sqrt(px_area):.3g} px ({k_r:.3g} 1/Å = {k_r * lam * 1e3:.3g} mrad) "
            f"but semiangle/(λ·dk) gives {r_expected:.3g} px ({cal.semiangle:g} mrad)")
    if ratio > DISC_REFUSE or ratio < 1 / DISC_REFUSE:
        raise CalibrationError(f"{text}: check the semi-angle, the detector pixel size (dk "
                               "or detector angle) and the energy")  # fmt: skip
    if abs(ratio - 1) > DISC_WARN:
        return f"{text} ({(ratio - 1) * 100:+.0f} %)"
    return None


def probe_model_warning(cal: Calibration, defocus: float | None = None) -> str | None:
    """The line to print when a reconstruction that models the probe (ePIE) starts from a
    calibration that records no aberrations and no defocus is given (None otherwise): the
    initial probe is then in focus, which is wrong for defocused data (issue 13)."""
    if cal.aberrations or defocus is not None:
        return None
    return ("the calibration records no probe aberrations: ePIE starts from an in-focus, "
            "aberration-free probe; if the probe was defocused give --defocus (C10 in Å, "
            "> 0: crossover above the specimen), or convert with --defocus/--aberration")
