"""The probe's refined aberration coefficients: defocus and two-fold astigmatism.

At low counts the pixels of a free probe cannot be determined; the ML engine refines only a
few coefficients c of the aberration function χ (physics' sign convention, Krivanek
names): C10 and the Cartesian components of C12,

    C12a = C12 cos 2φ12,   C12b = C12 sin 2φ12   (Å),

for which χ is linear: χ = χ₀ + Σ_i (c_i − c0_i) χ_i with

    χ_C10 = πλ|k|²,   χ_C12a = πλ|k|² cos 2φ_k,   χ_C12b = πλ|k|² sin 2φ_k   (rad/Å).

Everything here is in the reconstruction frame (:mod:`.frame`: the detector axes, swapped
if transposed; aberration angles turned by −rotation); :func:`refined_aberrations` turns
the result back into the calibration's scan frame.
"""

from __future__ import annotations

import math

import numpy as np

from .. import physics
from . import frame as frm

#: Probe coefficients refined by each ``probe`` setting (Å): C12a, C12b are the Cartesian
#: components of two-fold astigmatism, C12a = C12 cos 2φ12, C12b = C12 sin 2φ12.
PROBE_COEFFICIENTS = {"none": (), "defocus": ("C10",), "aberrations": ("C10", "C12a", "C12b")}


def coefficient_basis(cal, names, xp):
    """∂χ/∂c (rad/Å, FFT order, shape (len(names), Wy, Wx)) of the refined coefficients:
    πλ|k|² for C10, πλ|k|² cos 2φ_k for C12a, πλ|k|² sin 2φ_k for C12b (physics' χ)."""
    shape, dk, _ = frm.detector_axes(cal)
    ky, kx = physics.spatial_frequencies(shape, (1 / (shape[0] * dk[0]), 1 / (shape[1] * dk[1])))
    base = math.pi * cal.wavelength * (ky**2 + kx**2)
    phi = np.arctan2(ky, kx)
    rows = {"C10": base, "C12a": base * np.cos(2 * phi), "C12b": base * np.sin(2 * phi)}
    return xp.asarray(np.stack([rows[n] for n in names]) if names else
                      np.zeros((0,) + tuple(shape)), dtype=np.float32)  # fmt: skip


def initial_coefficients(cal, names, defocus: float | None) -> np.ndarray:
    """The calibration's values (Å) of the refined coefficients (C10 = ``defocus`` if given),
    in the reconstruction frame (:mod:`.frame`: astigmatism turned with the detector)."""
    ab = frm.rotated_aberrations(cal.aberrations, cal.rotation)
    c12, phi12 = ab.get("C12", 0.0), ab.get("phi12", 0.0)
    values = {"C10": ab.get("C10", 0.0) if defocus is None else float(defocus),
              "C12a": c12 * math.cos(2 * phi12), "C12b": c12 * math.sin(2 * phi12)}
    return np.array([values[n] for n in names], dtype=np.float64)


def refined_aberrations(cal, names, coefficients) -> dict[str, float]:
    """The calibration's aberrations with the refined coefficients (reconstruction frame)
    put in (Å, rad), in the calibration's scan frame."""
    ab = frm.rotated_aberrations(cal.aberrations, cal.rotation)
    c = dict(zip(names, (float(v) for v in coefficients), strict=True))
    if "C10" in c:
        ab["C10"] = c["C10"]
    if "C12a" in c:
        ab["C12"] = math.hypot(c["C12a"], c["C12b"])
        ab["phi12"] = 0.5 * math.atan2(c["C12b"], c["C12a"])
    return frm.rotated_aberrations(ab, -cal.rotation)
