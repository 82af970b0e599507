"""The single-slice ptychographic forward model and its adjoint, shared by ePIE and ML.

For the positions ``idx`` of a block of patterns, with object O and Fourier-space probe
P̂ (FFT order):

    P_j  = F⁻¹[P̂ · ramp_j]           probe moved to position j's sub-pixel offset
    ψ_j  = P_j · O[window_j]          exit wave;   Ψ_j = F[ψ_j]   at the detector
    Ψ'_j = revise(Ψ_j)                the update rule's hook (ePIE: measured modulus;
                                      ML: Poisson ratio n/I), times 1/N
    Δψ_j = F⁻¹[Ψ'_j] − ψ_j
    num  = Σ_j conj(P_j) Δψ_j,  den = Σ_j |P_j|²      on the batch's bounding box
    upd  = Σ_j ramp_j* · F[conj(O_j) Δψ_j]            (with_probe: the probe's term)

:func:`exit_wave_pass` returns these sums; the update rule turns them into steps. Work is
split over the CPU cores (:func:`backend.split_map`) and, on the CPU, done in cache-sized
sub-chunks on two in-place FFT buffers (``probes`` and ``psi``): 4 FFTs per position with
the probe term, 3 without.

:func:`direction_pass` is the forward model's derivative along a direction (dO, dP̂) of
the object and the probe, Δ_j = F[P_j · dO[window_j] + dP_j · O[window_j]] with
dP_j = F⁻¹[dP̂ · ramp_j], handed to a ``reduce`` hook with Ψ_j (line searches).
"""

from __future__ import annotations

import numpy as np

from .. import backend
from ..kernels import ptycho as pk

REAL, CPLX = np.float32, np.complex64


def _chunk(window) -> int:
    """Positions per cache-sized sub-chunk on the CPU (~1 MB of waves per array)."""
    return max(1, (1 << 20) // (window[0] * window[1] * 8))


def exit_wave_pass(obj, probe_k, block, idx, corners_dev, lo, box_shape, revise,
                   with_probe: bool, xp):  # fmt: skip
    """(num, den, upd or None, o_weight) of the positions ``idx`` (flat scan indices, a
    host array) of ``block``, one part per CPU core, summed over the parts.

    ``revise(psi_k, local, positions, s0, s1)`` revises the batch ``psi_k`` (Fourier
    space, B × W × W) in place and multiplies it by 1/N (the inverse FFT that follows is
    unnormalised); ``local`` indexes the block's arrays, ``positions`` are the flat scan
    indices (both device arrays), [s0, s1) the members' places in ``idx``.
    o_weight = Σ_j |O[window_j]|² (ePIE's probe normalisation)."""
    w0, w1 = int(probe_k.shape[0]), int(probe_k.shape[1])
    inv_n = 1.0 / (w0 * w1)
    step_cpu = _chunk((w0, w1))

    def part(p):
        sel = idx[p]
        offset = p.start
        num = xp.zeros(box_shape, dtype=CPLX)
        den = xp.zeros(box_shape, dtype=REAL)
        o_weight = xp.zeros((w0, w1), dtype=REAL)
        upd = xp.zeros((w0, w1), dtype=CPLX) if with_probe else None
        lo_dev = xp.asarray(lo)
        idx_dev = xp.asarray(sel)
        local_dev = idx_dev - block.first
        ramp_y, ramp_x = block.ramps
        step = step_cpu if xp is np else len(sel)
        for s0 in range(0, len(sel), step):
            sub, loc = idx_dev[s0:s0 + step], local_dev[s0:s0 + step]
            c = corners_dev[sub]
            ry, rx = ramp_y[loc], ramp_x[loc]
            shape = (len(sub), w0, w1)
            probes = backend.fft_buffer(shape, CPLX, xp, "probes")
            psi = backend.fft_buffer(shape, CPLX, xp, "psi")
            pk.ramp_multiply(probes.a, probe_k, ry, rx, inv_n)
            probes.inverse()  # [1 FFT] probes shifted to their sub-pixel positions
            pk.exit_waves(probes.a, obj, c, psi.a, o_weight)
            psi.forward()  # [1 FFT]
            revise(psi.a, loc, sub, offset + s0, offset + s0 + len(sub))
            psi.inverse()  # [1 FFT] revised exit waves
            # Δψ feeds the object's overlap sums and the probe term conj(O)Δψ in one pass
            pk.difference_updates(num, den, probes.a, obj, psi.a, c, lo_dev)
            if with_probe:  # Σ conj(O_j) Δψ_j, each brought back from its sub-pixel shift
                psi.forward()  # [1 FFT]
                pk.ramp_reduce(upd, psi.a, ry.conj(), rx.conj())
        return num, den, upd, o_weight

    parts = backend.split_map(part, len(idx), xp)
    num, den, upd, o_weight = parts[0]
    for p in parts[1:]:  # summed in place into the first part's arrays
        num += p[0]
        den += p[1]
        o_weight += p[3]
        if with_probe:
            upd += p[2]
    return num, den, upd, o_weight


def direction_pass(obj, d_obj, probe_k, block, idx, corners_dev, reduce, xp,
                   d_probe_k=None) -> None:  # fmt: skip
    """For the positions ``idx`` of ``block``: Ψ_j = F[P_j O_j] and the derivative
    Δ_j = F[P_j dO_j + dP_j O_j] along the object direction ``d_obj`` (None: 0) and the
    Fourier-space probe direction ``d_probe_k`` (None: 0), handed to
    ``reduce(psi_k, d_k, local, positions, s0, s1)``; 3 FFTs per position, 4 with a
    probe direction. One part per CPU core."""
    w0, w1 = int(probe_k.shape[0]), int(probe_k.shape[1])
    inv_n = 1.0 / (w0 * w1)
    step_cpu = _chunk((w0, w1))

    def part(p):
        sel = idx[p]
        idx_dev = xp.asarray(sel)
        local_dev = idx_dev - block.first
        ramp_y, ramp_x = block.ramps
        step = step_cpu if xp is np else len(sel)
        scratch = xp.zeros((w0, w1), dtype=REAL)
        for s0 in range(0, len(sel), step):
            sub, loc = idx_dev[s0:s0 + step], local_dev[s0:s0 + step]
            c = corners_dev[sub]
            ry, rx = ramp_y[loc], ramp_x[loc]
            shape = (len(sub), w0, w1)
            probes = backend.fft_buffer(shape, CPLX, xp, "probes")
            psi = backend.fft_buffer(shape, CPLX, xp, "psi")
            dpsi = backend.fft_buffer(shape, CPLX, xp, "dpsi")
            pk.ramp_multiply(probes.a, probe_k, ry, rx, inv_n)
            probes.inverse()  # [1 FFT]
            pk.exit_waves(probes.a, obj, c, psi.a, scratch)
            if d_obj is not None:
                pk.exit_waves(probes.a, d_obj, c, dpsi.a, scratch)
            if d_probe_k is not None:  # dP_j · O_j, in the probes buffer (P_j is used up)
                pk.ramp_multiply(probes.a, d_probe_k, ry, rx, inv_n)
                probes.inverse()  # [1 FFT]
                pk.exit_waves(probes.a, obj, c, probes.a, scratch)
                if d_obj is None:
                    dpsi.a[...] = probes.a
                else:
                    dpsi.a += probes.a
            elif d_obj is None:
                dpsi.a[...] = 0
            psi.forward()  # [1 FFT]
            dpsi.forward()  # [1 FFT]
            reduce(psi.a, dpsi.a, loc, sub, p.start + s0, p.start + s0 + len(sub))

    backend.split_map(part, len(idx), xp)
