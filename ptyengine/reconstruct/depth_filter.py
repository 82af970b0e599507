"""The k_z ("missing wedge") filter: a depth regulariser for a stack of object slices.

A probe of convergence semi-angle α illuminates the specimen with plane waves tilted by at
most α, so ptychography measures the specimen's 3-D spectrum only inside a double cone
round the lateral plane, |k_z| ≲ α |k_r| (the "missing wedge" lies outside it: no depth
information). Chen et al., Science 372, 826 (2021), supplementary text, damp what the
reconstruction puts outside it with an arctan weight on the 3-D Fourier transform of the
slice stack; here

    W(k_r, k_z) = 1 − (2/π) arctan(β² k_z² / k_r²)

with k_r = |(k_y, k_x)| the lateral spatial frequency (1/Å, the object pixel d: k ∈
fftfreq(N, d)), k_z the one along the beam (1/Å, the slice spacing Δz: k_z ∈
fftfreq(2S, Δz), see below) and β ≥ 0 dimensionless. W = 1 on the plane k_z = 0 (the
projection: the sum over the slices passes unchanged), W = ½ on the cone |k_z| = |k_r|/β,
W → 0 towards the k_z axis (k_r = 0, k_z ≠ 0: a depth variation with no lateral
structure, which no tilt within the aperture can see, is removed); β = 0 is no filter.
The information limit |k_z| ≤ α |k_r| corresponds to β ≈ 1/α (α in rad: 40 for 25
mrad); PtychoShelves and py4DSTEM use the same arctan form with k in other units (their
strength γ is β·d/Δz in py4DSTEM's).

What is filtered: the logarithm of each slice's transmission, log|O_s| + i arg O_s (the
phase as the slice holds it, in (−π, π]: slices thin enough not to wrap), W being real
and even, phase and log-amplitude separately; then O_s = exp(filtered). A pure phase
object stays one (log|O| = 0 stays 0).

Along the beam the stack is extended by its mirror image (slices 0 … S−1, S−1 … 0, the
2S-point FFT of a cosine transform) instead of being taken as periodic, so that the first
and last slices are not coupled to each other, and the sum over the S slices (half the
mirrored stack's k_z = 0 term) is kept exactly. Slices unevenly spaced are filtered on
their index with Δz their mean spacing (first to last entrance plane / (S − 1)).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import PtyengineError


def check_kz_filter(beta, every) -> tuple[float, int]:
    """(β, every) checked: β a finite number ≥ 0 (0: off), every a whole number ≥ 1."""
    ok = isinstance(beta, (int, float)) and not isinstance(beta, bool)
    if not (ok and math.isfinite(beta) and beta >= 0):
        raise PtyengineError(f"--kz-filter must be a finite number ≥ 0 (β, dimensionless; "
                             f"0: off), got {beta}")  # fmt: skip
    if isinstance(every, bool) or int(every) != every or every < 1:
        raise PtyengineError(f"--kz-every must be a whole number ≥ 1, got {every}")
    return float(beta), int(every)


def wedge_weight(n_slices: int, shape, spacing: float, sampling, beta: float, xp):
    """W (2S, Ny, Nx) on the mirrored stack's FFT grid (FFT order; module docstring):
    ``spacing`` Δz in Å, ``sampling`` the object pixel (dy, dx) in Å."""
    kz = xp.asarray(np.fft.fftfreq(2 * n_slices, spacing), dtype=np.float32)
    ky = xp.asarray(np.fft.fftfreq(shape[0], sampling[0]), dtype=np.float32)
    kx = xp.asarray(np.fft.fftfreq(shape[1], sampling[1]), dtype=np.float32)
    kr2 = ky[:, None] ** 2 + kx[None, :] ** 2
    kz2 = np.float32(beta) ** 2 * kz**2
    # arctan2(y ≥ 0, x ≥ 0): 0 at k_z = 0 (also at k = 0), π/2 on the k_z axis
    return 1 - np.float32(2 / np.pi) * xp.arctan2(kz2[:, None, None], kr2[None])


def filter_stack(values, spacing: float, sampling, beta: float, xp):
    """The stack ``values`` (S, Ny, Nx), real or complex, filtered by W along the beam
    and laterally (module docstring); the sum over the S slices is unchanged."""
    s = values.shape[0]
    if beta == 0 or s == 1:
        return values.copy()
    spec = xp.fft.fft2(values, axes=(-2, -1))  # lateral FFT first: S, not 2S, planes
    mirrored = xp.concatenate([spec, spec[::-1]], axis=0)
    mirrored = xp.fft.fft(mirrored, axis=0)
    mirrored *= wedge_weight(s, values.shape[1:], spacing, sampling, beta, xp)
    out = xp.fft.ifft2(xp.fft.ifft(mirrored, axis=0)[:s], axes=(-2, -1))
    return out.real.astype(values.dtype) if not xp.iscomplexobj(values) else out.astype(
        values.dtype)  # fmt: skip


def slice_spacing(positions) -> float:
    """Δz (Å) the filter uses: the slices' mean spacing (entrance depths in Å)."""
    if len(positions) < 2:
        return 1.0  # one slice: nothing to filter along the beam
    return (positions[-1] - positions[0]) / (len(positions) - 1)


def kz_filter(obj, positions, sampling, beta: float, xp) -> None:
    """Apply the k_z filter to the transmission slices ``obj`` (S, Ny, Nx) in place: to
    log|O_s| + i arg O_s, then O_s = exp(·). ``positions``: the slices' entrance depths
    (Å); ``sampling``: the object pixel (Å)."""
    if beta == 0 or obj.shape[0] == 1:
        return
    logs = xp.log(xp.abs(obj).clip(1e-12)) + 1j * xp.angle(obj)
    out = filter_stack(logs.astype(obj.dtype), slice_spacing(positions), sampling, beta, xp)
    obj[...] = xp.exp(out)
