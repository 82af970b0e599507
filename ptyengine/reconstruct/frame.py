"""The frame of the iterative engines: scan–detector rotation and transpose, handled
exactly, without resampling a single count.

Convention (:mod:`ptyengine.calibration`, :func:`.icom.to_scan_frame`): a detector-frame
vector k_d goes to the scan frame by first swapping its components if ``transpose`` (S),
then turning it by θ = ``rotation``: k_s = R(θ) S k_d, with R(θ) turning +x towards +y,

    x' = x cos θ − y sin θ,    y' = x sin θ + y cos θ.

So a pattern stored as ``np.rot90(p)`` (counter-clockwise on a screen) has θ = +90°.

At 10–100 e/Å² a pattern holds tens of electrons; interpolating counts destroys their
Poisson statistics. The engines therefore never resample the data:

* **transpose**: each pattern's axes are swapped exactly when its amplitudes are made
  (:func:`.patterns.engine_frame`), the detector's shape, pixel size and centre with them
  (:func:`detector_axes`). The swapped pattern I_t(k_t) = I_d(S k_t) lies in a frame turned
  by θ from the scan frame: k_s = R(θ) k_t.
* **rotation**: the object is reconstructed on a grid aligned with those detector axes (the
  *reconstruction frame*). As k_s·r_s = k_t·r_t, r_t = R(θ)ᵀ r_s: the scan positions are
  turned by −θ into it (:meth:`.epie.PtychoGeometry.from_calibration`), and so are the
  probe's aberration angles, φ_nm → φ_nm − θ (:func:`rotated_aberrations`; the
  calibration gives them in the scan frame, like the simulator).
* **presentation**: ``result.object`` (and ``phase``) are the reconstruction resampled
  (cubic spline) onto the grid that aligned data would give: pixel (0, 0) at
  ``geometry.object_origin``, rows along the scan's y, in the specimen frame
  (:func:`present`). So the phase compares with the ground truth, iCOM and the previews
  exactly as for aligned data. The reconstruction-frame object and its geometry stay in
  ``result.reconstruction_frame``; the probe stays in the reconstruction frame. Resampling
  the reconstructed object is harmless (a smooth estimate, band-limited to the data);
  resampling the counts is not. Where the rotated reconstruction does not reach (corners
  of the margin round the scanned area), the object is 1 and the phase 0.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .. import physics


def _cos_sin(theta_deg: float) -> tuple[float, float]:
    """cos θ, sin θ, exact for multiples of 90° (no 6e-17 residues)."""
    t = float(theta_deg) % 360.0
    exact = {0.0: (1.0, 0.0), 90.0: (0.0, 1.0), 180.0: (-1.0, 0.0), 270.0: (0.0, -1.0)}
    if t in exact:
        return exact[t]
    r = math.radians(t)
    return math.cos(r), math.sin(r)


def is_turned(theta_deg: float) -> bool:
    """Whether a rotation (degrees) differs from none (360° is none)."""
    return float(theta_deg) % 360.0 != 0.0


def scan_to_frame(pos, theta_deg: float) -> np.ndarray:
    """Scan-frame (y, x) positions (N, 2) → the frame turned by θ: r_t = R(θ)ᵀ r_s."""
    pos = np.asarray(pos, dtype=np.float64)
    if not is_turned(theta_deg):
        return pos.copy()
    c, s = _cos_sin(theta_deg)
    y, x = pos[..., 0], pos[..., 1]
    return np.stack([c * y - s * x, s * y + c * x], axis=-1)


def frame_to_scan(pos, theta_deg: float) -> np.ndarray:
    """The inverse of :func:`scan_to_frame`: r_s = R(θ) r_t."""
    pos = np.asarray(pos, dtype=np.float64)
    if not is_turned(theta_deg):
        return pos.copy()
    c, s = _cos_sin(theta_deg)
    y, x = pos[..., 0], pos[..., 1]
    return np.stack([c * y + s * x, -s * y + c * x], axis=-1)


def detector_axes(cal):
    """(shape, dk, center) of the detector as the engines see it: the calibration's, with
    both axes swapped if ``transpose``."""
    if not cal.transpose:
        return tuple(cal.detector_shape), tuple(cal.dk), tuple(cal.detector_center)
    return (cal.detector_shape[::-1], cal.dk[::-1], cal.detector_center[::-1])


def rotated_aberrations(aberrations, theta_deg: float) -> dict[str, float]:
    """Aberrations (scan frame) in the frame turned by θ: every angle φ_nm of a
    coefficient with m > 0 becomes φ_nm − θ (rad), as k_t's azimuth is k_s's − θ."""
    ab = dict(aberrations)
    if not is_turned(theta_deg):
        return ab
    theta = math.radians(float(theta_deg))
    for name in list(ab):
        order = physics.ABERRATION_ORDERS.get(name)
        if order is None or order[1] == 0:
            continue
        key = f"phi{name[1:]}"
        ab[key] = float(ab.get(key, 0.0)) - theta
    return ab


def resample(image, source, target, fill: float):
    """``image`` on the grid of geometry ``source`` (turned by source.rotation) resampled
    onto the grid of ``target`` (turned by target.rotation), by cubic splines; complex
    images by their real and imaginary parts; a stack (S, Ny, Nx) slice by slice. Points
    outside ``source`` get ``fill``."""
    from scipy import ndimage

    if np.ndim(image) == 3:
        return np.stack([resample(im, source, target, fill) for im in image])

    ny, nx = target.object_shape
    a, b = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    r = np.stack([target.object_origin[0] + a * target.sampling[0],
                  target.object_origin[1] + b * target.sampling[1]], axis=-1)  # fmt: skip
    r = scan_to_frame(frame_to_scan(r, target.rotation), source.rotation)
    coords = np.stack([(r[..., 0] - source.object_origin[0]) / source.sampling[0],
                       (r[..., 1] - source.object_origin[1]) / source.sampling[1]])  # fmt: skip
    image = np.asarray(image)

    def one(part, cval):
        return ndimage.map_coordinates(part.astype(np.float64), coords, order=3,
                                       mode="constant", cval=cval)  # fmt: skip

    if np.iscomplexobj(image):
        out = one(image.real, complex(fill).real) + 1j * one(image.imag, complex(fill).imag)
    else:
        out = one(image, float(fill))
    return out.astype(image.dtype)


def present(result):
    """An engine's result with ``object`` (and a ``phase`` field) in the specimen frame
    (see the module docstring); unchanged when the calibration has no rotation. The
    reconstruction-frame ``object``, ``phase`` and ``geometry`` go to
    ``result.reconstruction_frame``."""
    geom = result.geometry
    if not is_turned(geom.rotation):
        return result
    from .epie import PtychoGeometry

    target = PtychoGeometry.from_calibration(result.calibration, result.parameters.margin,
                                             frame="specimen")  # fmt: skip
    names = {f.name for f in dataclasses.fields(result)}
    kept = {"object": result.object, "geometry": geom}
    obj = resample(result.object, geom, target, 1.0)
    if getattr(result.parameters, "phase_only", False):  # |O| = 1 again after splines
        obj /= np.abs(obj).clip(1e-12)
    changes = {"object": obj, "geometry": target}
    for name in ("phase", "slice_phase"):  # fields (ML); mepie's are properties
        if name in names and getattr(result, name) is not None:
            kept[name] = getattr(result, name)
            changes[name] = resample(kept[name], geom, target, 0.0)
    return dataclasses.replace(result, **changes, reconstruction_frame=kept)
