"""The calibration that travels with every 4D-STEM dataset, and its versioned schema.

Conventions (DESIGN.md): 4-D data are ``(scan_y, scan_x, k_y, k_x)``; a detector pixel
``p`` sits at spatial frequency ``k = (p - center) * dk`` (1/Å) in the detector frame;
the detector frame is turned by ``rotation`` (degrees, counter-clockwise from the scan
axes) and, if ``transpose``, has its k_y/k_x axes swapped first. Probe position (i, j) of
the scan sits at ``scan_origin + (i * scan_step[0], j * scan_step[1])`` Å in the
specimen frame.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from . import physics
from .errors import PtyengineError

SCHEMA = "ptyengine.calibration"
SCHEMA_VERSION = 1


class CalibrationError(PtyengineError):
    """A calibration field is missing, malformed or contradicts the data."""


def _pair(name: str, value, kind=float) -> tuple:
    try:
        a, b = value
        out = (kind(a), kind(b))
    except (TypeError, ValueError):
        raise CalibrationError(
            f"calibration field {name!r} must be a pair, got {value!r}") from None
    if kind is float and not all(math.isfinite(v) for v in out):
        raise CalibrationError(f"calibration field {name!r} must be finite, got {value!r}")
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
        def positive(name):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and math.isfinite(v) and v > 0):
                raise CalibrationError(f"calibration field {name!r} must be positive, got {v!r}")

        positive("energy")
        positive("semiangle")
        for name in ("scan_shape", "detector_shape"):
            v = _pair(name, getattr(self, name), int)
            if min(v) < 1:
                raise CalibrationError(f"calibration field {name!r} must be ≥ 1, got {v}")
            object.__setattr__(self, name, v)
        for name in ("scan_step", "dk"):
            v = _pair(name, getattr(self, name))
            if min(v) <= 0:
                raise CalibrationError(f"calibration field {name!r} must be positive, got {v}")
            object.__setattr__(self, name, v)
        for name in ("detector_center", "scan_origin"):
            object.__setattr__(self, name, _pair(name, getattr(self, name)))
        if not math.isfinite(float(self.rotation)):
            raise CalibrationError(f"calibration field 'rotation' must be finite: {self.rotation}")
        object.__setattr__(self, "rotation", float(self.rotation))
        object.__setattr__(self, "transpose", bool(self.transpose))
        try:
            object.__setattr__(self, "aberrations", physics.check_aberrations(self.aberrations))
        except PtyengineError as exc:
            raise CalibrationError(f"calibration field 'aberrations': {exc}") from None
        if self.dose is not None:
            d = float(self.dose)
            if not (math.isfinite(d) and d > 0):
                raise CalibrationError(f"calibration field 'dose' must be positive, got {d}")
            object.__setattr__(self, "dose", d)

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
            raise CalibrationError(f"{source}: calibration field {missing[0]!r} is missing")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names - {"schema", "version"})
        if unknown:
            raise CalibrationError(f"{source}: unknown calibration field {unknown[0]!r}")
        kwargs = {k: d[k] for k in names if k in d}
        try:
            return cls(**kwargs)
        except CalibrationError as exc:
            raise CalibrationError(f"{source}: {exc}") from None
