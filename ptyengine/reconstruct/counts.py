"""Electron counts of the data, which the Poisson likelihood (:mod:`.ml`) models."""

from __future__ import annotations

import math

import numpy as np

from ..errors import PtyengineError

NOISE_FREE_COUNTS = 1e6  # counts per pattern assumed for noise-free (float, no dose) data


def count_scale(ds, cal, mean_sum: float) -> float:
    """Factor from stored values to electron counts: 1 for integer data (counts as
    measured), dose × step² / mean pattern sum for real-valued data with a dose, and
    10⁶ / mean pattern sum for the noise-free intensities of a ptyengine simulation (see
    the module docstring). Real-valued data with neither are refused: their counts are
    unknown, and the likelihood of counts needs them."""
    if np.dtype(ds.dtype).kind in "iu":
        return 1.0
    if cal.dose is not None:
        return cal.dose * cal.scan_step[0] * cal.scan_step[1] / mean_sum
    simulation = (getattr(ds, "metadata", None) or {}).get("simulation") or {}
    if "dose" in simulation and simulation["dose"] is None:
        return NOISE_FREE_COUNTS / mean_sum
    name = getattr(ds, "path", None) or "data"
    raise PtyengineError(
        f"{name}: ML models electron counts, but the data are {np.dtype(ds.dtype)} "
        f"(not counts) and the calibration records no dose; give the dose in e/Å² "
        f"(ptyengine convert ... --dose D), or store the counts as integers")


def bright_field_pixels(cal) -> float:
    """Detector pixels inside the bright-field disc, π (α/λ)² / (dk_y dk_x)."""
    return math.pi * (cal.semiangle * 1e-3 / cal.wavelength) ** 2 / (cal.dk[0] * cal.dk[1])
