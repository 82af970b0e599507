"""Kernels for ptychographic updates: probe shifts, exit waves, Fourier-modulus constraint,
and the overlap sums of the object and probe updates.

Each kernel has a serial, GIL-free CPU twin (numba) and a numba.cuda version
(:mod:`ptycho_cuda`), tested against each other through numba's CUDA simulator
(tests/test_kernels.py). The public functions dispatch on the array type.
"""

from __future__ import annotations

import numba
import numpy as np

from ._launch import grid, on_host


@numba.njit(nogil=True, cache=True, fastmath=True)
def fourier_modulus_cpu(psi_k, amplitude, index, mask, err, scale):
    """Replace |Ψ| by the measured amplitude, keep the phase, and multiply by ``scale``
    (e.g. the 1/N of an unnormalised inverse FFT to come); err[b] += Σ (|Ψ| − A)².

    psi_k (B, W, W) complex; amplitude (M, W, W) real ≥ 0 (FFT order), of which pattern
    index[b] belongs to psi_k[b]; mask (W, W) uint8 (FFT order): where it is 0 (a dead or
    hot detector pixel) Ψ keeps its own modulus (only times ``scale``) and adds nothing
    to err; err (B,) float64. Where |Ψ| = 0 the new value is the amplitude with zero phase.
    """
    nb, w0, w1 = psi_k.shape
    zero = amplitude.dtype.type(0)
    for b in range(nb):
        acc = 0.0
        for i in range(w0):
            row = psi_k[b, i]
            amp = amplitude[index[b], i]
            mrow = mask[i]
            racc = zero  # a row's misfit in the data's precision, the rows' sum in float64
            for j in range(w1):  # branch-free, so that LLVM vectorises the row
                v = row[j]
                mag = np.sqrt(v.real * v.real + v.imag * v.imag)
                a = amp[j]
                data = mrow[j] != 0
                racc += (mag - a) * (mag - a) if data else zero
                f = (a * scale / mag if mag > 0 else zero) if data else scale
                row[j] = v * f + (a * scale if data and mag == 0 else zero)
            acc += racc
        err[b] += acc


@numba.njit(nogil=True, cache=True, fastmath=True)
def ramp_multiply_cpu(out, wave, ry, rx, scale):
    """out[b, i, j] = wave[i, j] · ry[b, i] · rx[b, j] · scale: a Fourier-space wave times
    the separable sub-pixel shift ramps of each batch member (one pass)."""
    nb, w0, w1 = out.shape
    for b in range(nb):
        rxb = rx[b]
        for i in range(w0):
            r = ry[b, i] * scale
            orow = out[b, i]
            wrow = wave[i]
            for j in range(w1):
                orow[j] = wrow[j] * r * rxb[j]


@numba.njit(nogil=True, cache=True, fastmath=True)
def ramp_reduce_cpu(acc, u, ry, rx):
    """acc[i, j] += Σ_b u[b, i, j] · ry[b, i] · rx[b, j]: undo each member's shift and sum
    over the batch (one pass)."""
    nb, w0, w1 = u.shape
    for b in range(nb):
        rxb = rx[b]
        for i in range(w0):
            r = ry[b, i]
            arow = acc[i]
            urow = u[b, i]
            for j in range(w1):
                arow[j] += urow[j] * r * rxb[j]


@numba.njit(nogil=True, cache=True, fastmath=True)
def exit_waves_cpu(probes, obj, corners, psi, o_weight):
    """psi[b] = probes[b] · obj[window_b]; o_weight += Σ_b |obj[window_b]|².

    Two loops per row, not one: fused, the weight's read-modify-write beside the wave's
    store vectorised worse (64², 32 overlapping windows in cache: 3.4–3.8 µs per window
    fused, 2.2 µs in two loops; the product alone, :func:`transmit_cpu`, 1.6–1.9 µs)."""
    nb, w0, w1 = probes.shape
    for b in range(nb):
        cy = corners[b, 0]
        cx = corners[b, 1]
        for i in range(w0):
            row = obj[cy + i, cx:cx + w1]  # row views let LLVM vectorise the inner loop
            prow = probes[b, i]
            out = psi[b, i]
            wrow = o_weight[i]
            for j in range(w1):
                out[j] = prow[j] * row[j]
            for j in range(w1):
                o = row[j]
                wrow[j] += o.real * o.real + o.imag * o.imag


@numba.njit(nogil=True, cache=True, fastmath=True)
def transmit_cpu(incident, obj, corners, out):
    """out[b] = incident[b] · obj[window_b] (out may be incident): the transmission through
    a slice whose Σ|O|² nobody needs (exit_waves_cpu adds it up for the first slice)."""
    nb, w0, w1 = incident.shape
    for b in range(nb):
        cy = corners[b, 0]
        cx = corners[b, 1]
        for i in range(w0):
            row = obj[cy + i, cx:cx + w1]
            prow = incident[b, i]
            orow = out[b, i]
            for j in range(w1):
                orow[j] = prow[j] * row[j]


@numba.njit(nogil=True, cache=True, fastmath=True)
def difference_updates_cpu(num, den, probes, obj, psi, corners, origin):
    """From the revised exit waves ``psi`` (in place), in one pass, with O = obj[window]
    (unchanged since the exit waves were formed, so ψ = P·O is recomputed, not stored):
    Δψ = psi − P·O; num[window − origin] += conj(P)Δψ, den[window − origin] += |P|²
    (object update; overlapping windows add); psi ← conj(O)Δψ (probe update, before its
    unshift)."""
    nb, w0, w1 = psi.shape
    for b in range(nb):
        cy = corners[b, 0]
        cx = corners[b, 1]
        by = cy - origin[0]
        bx = cx - origin[1]
        for i in range(w0):
            orow = obj[cy + i, cx:cx + w1]
            num_row = num[by + i, bx:bx + w1]
            den_row = den[by + i, bx:bx + w1]
            prow = probes[b, i]
            qrow = psi[b, i]
            for j in range(w1):
                p = prow[j]
                o = orow[j]
                d = qrow[j] - p * o
                num_row[j] += p.conjugate() * d
                den_row[j] += p.real * p.real + p.imag * p.imag
                qrow[j] = o.conjugate() * d


@numba.njit(nogil=True, cache=True, fastmath=True)
def slice_updates_cpu(num, den, incident, obj, delta, corners, origin):
    """One slice of the multislice adjoint, in one pass, with O = obj[window] and ψ the
    waves incident on the slice: num[window − origin] += conj(ψ)Δ, den[...] += |ψ|²
    (the slice's overlap sums); delta ← conj(O)Δ (the correction of the incident waves,
    to be propagated back to the slice before). difference_updates_cpu is the same for
    the last slice, with Δ = revised exit wave − ψ·O formed on the way."""
    nb, w0, w1 = delta.shape
    for b in range(nb):
        cy = corners[b, 0]
        cx = corners[b, 1]
        by = cy - origin[0]
        bx = cx - origin[1]
        for i in range(w0):
            orow = obj[cy + i, cx:cx + w1]
            num_row = num[by + i, bx:bx + w1]
            den_row = den[by + i, bx:bx + w1]
            prow = incident[b, i]
            qrow = delta[b, i]
            for j in range(w1):
                p = prow[j]
                d = qrow[j]
                num_row[j] += p.conjugate() * d
                den_row[j] += p.real * p.real + p.imag * p.imag
                qrow[j] = orow[j].conjugate() * d


@numba.njit(nogil=True, cache=True, fastmath=True)
def object_step_cpu(box, num, scale, phase_only):
    """box += scale · num; with ``phase_only`` then box /= |box| (one pass)."""
    h, w = box.shape
    for i in range(h):
        row = box[i]
        nrow = num[i]
        for j in range(w):
            v = row[j] + scale * nrow[j]
            if phase_only:
                mag = np.sqrt(v.real * v.real + v.imag * v.imag)
                v = v / max(mag, 1e-12)
            row[j] = v


def _cuda():
    from . import ptycho_cuda

    return ptycho_cuda



def fourier_modulus_cuda(psi_k, amplitude, index, mask, err, scale):
    """GPU twin of :func:`fourier_modulus_cpu` (err accumulated with atomics)."""
    blocks, threads = grid(psi_k.shape)
    _cuda().fourier_modulus_gpu[blocks, threads](psi_k, amplitude, index, mask, err, scale)


def ramp_multiply_cuda(out, wave, ry, rx, scale):
    blocks, threads = grid(out.shape)
    _cuda().ramp_multiply_gpu[blocks, threads](out, wave, ry, rx, scale)


def ramp_reduce_cuda(acc, u, ry, rx):
    blocks, threads = grid((1, *acc.shape))
    _cuda().ramp_reduce_gpu[blocks, threads](acc, u, ry, rx)


def exit_waves_cuda(probes, obj, corners, psi, o_weight):
    blocks, threads = grid(probes.shape)
    _cuda().exit_waves_gpu[blocks, threads](probes, obj, corners, psi, o_weight)


def transmit_cuda(incident, obj, corners, out):
    blocks, threads = grid(incident.shape)
    _cuda().transmit_gpu[blocks, threads](incident, obj, corners, out)


def difference_updates_cuda(num, den, probes, obj, psi, corners, origin):
    blocks, threads = grid(psi.shape)
    real = num.view(np.float32 if num.dtype == np.complex64 else np.float64)
    _cuda().difference_updates_gpu[blocks, threads](real, den, probes, obj, psi, corners,
                                                    origin)  # fmt: skip


def slice_updates_cuda(num, den, incident, obj, delta, corners, origin):
    blocks, threads = grid(delta.shape)
    real = num.view(np.float32 if num.dtype == np.complex64 else np.float64)
    _cuda().slice_updates_gpu[blocks, threads](real, den, incident, obj, delta, corners,
                                               origin)  # fmt: skip


def fourier_modulus(psi_k, amplitude, index, err, scale=1.0, mask=None):
    """In place Fourier-modulus constraint on a batch (psi_k[b] is measured as pattern
    amplitude[index[b]]), times ``scale``; adds the squared misfit to err. ``mask``
    (W, W) uint8 on psi_k's device, 0 at pixels that are not data (None: every pixel)."""
    if mask is None:
        mask = _ones_like_window(psi_k)
    fn = fourier_modulus_cpu if on_host(psi_k) else fourier_modulus_cuda
    fn(psi_k, amplitude, index, mask, err, psi_k.real.dtype.type(scale))
    return psi_k


def _ones_like_window(psi_k):
    """A (W, W) uint8 mask of ones on psi_k's device."""
    shape = psi_k.shape[1:]
    if on_host(psi_k):
        return np.ones(shape, np.uint8)
    import cupy

    return cupy.ones(shape, np.uint8)


def ramp_multiply(out, wave, ry, rx, scale=1.0):
    """out[b] = wave · (ry[b] ⊗ rx[b]) · scale; ry (B, ny), rx (B, nx)."""
    fn = ramp_multiply_cpu if on_host(out) else ramp_multiply_cuda
    fn(out, wave, ry, rx, out.real.dtype.type(scale))
    return out


def ramp_reduce(acc, u, ry, rx):
    """acc += Σ_b u[b] · (ry[b] ⊗ rx[b])."""
    (ramp_reduce_cpu if on_host(acc) else ramp_reduce_cuda)(acc, u, ry, rx)
    return acc


def object_step(box, nums, dens, alpha: float, phase_only: bool):
    """The batched ePIE object step from the overlap sums of each CPU part (lists of arrays
    of box's shape, summed into the first ones in place): box += α Σ nums / max Σ dens;
    with ``phase_only`` then box /= |box|. On the CPU the update is one fused pass."""
    num, den = nums[0], dens[0]
    for n, d in zip(nums[1:], dens[1:], strict=True):
        num += n
        den += d
    peak = float(den.max())
    scale = alpha / peak if peak > 0 else 0.0
    if on_host(box):
        object_step_cpu(box, num, box.real.dtype.type(scale), bool(phase_only))
        return box
    return object_step_xp(box, num, scale, phase_only)


def object_step_xp(box, num, scale: float, phase_only: bool):
    """object_step's update with array operations (numpy or cupy)."""
    box += box.real.dtype.type(scale) * num
    if phase_only:
        box /= abs(box).clip(1e-12)
    return box


def exit_waves(probes, obj, corners, psi, o_weight):
    """Exit waves and the summed window intensity of the object in one pass."""
    (exit_waves_cpu if on_host(psi) else exit_waves_cuda)(probes, obj, corners, psi, o_weight)


def transmit(incident, obj, corners, out):
    """out = incident · obj[window] per batch member, in one pass (out may be incident)."""
    (transmit_cpu if on_host(out) else transmit_cuda)(incident, obj, corners, out)


def difference_updates(num, den, probes, obj, psi, corners, origin):
    """See difference_updates_cpu; on the GPU the overlap sums use atomics."""
    fn = difference_updates_cpu if on_host(psi) else difference_updates_cuda
    fn(num, den, probes, obj, psi, corners, origin)


def slice_updates(num, den, incident, obj, delta, corners, origin):
    """See slice_updates_cpu; on the GPU the overlap sums use atomics."""
    fn = slice_updates_cpu if on_host(delta) else slice_updates_cuda
    fn(num, den, incident, obj, delta, corners, origin)
