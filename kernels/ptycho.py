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
def fourier_modulus_cpu(psi_k, amplitude, err):
    """Replace |Ψ| by the measured amplitude, keep the phase; err[b] += Σ (|Ψ| − A)².

    psi_k (B, W, W) complex, amplitude (B, W, W) real ≥ 0 (FFT order), err (B,) float64.
    Where |Ψ| = 0 the new value is the amplitude with zero phase.
    """
    nb, w0, w1 = psi_k.shape
    for b in range(nb):
        acc = 0.0
        for i in range(w0):
            row = psi_k[b, i]
            amp = amplitude[b, i]
            for j in range(w1):
                v = row[j]
                mag = np.sqrt(v.real * v.real + v.imag * v.imag)
                a = amp[j]
                acc += (mag - a) * (mag - a)
                row[j] = v * (a / mag) if mag > 0 else a + 0j
        err[b] += acc


@numba.njit(nogil=True, cache=True, fastmath=True)
def ramp_multiply_cpu(out, wave, ry, rx):
    """out[b, i, j] = wave[i, j] · ry[b, i] · rx[b, j]: a Fourier-space wave times the
    separable sub-pixel shift ramps of each batch member (one pass)."""
    nb, w0, w1 = out.shape
    for b in range(nb):
        rxb = rx[b]
        for i in range(w0):
            r = ry[b, i]
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
def exit_waves_cpu(probes, obj, corners, o_win, psi, o_weight):
    """o_win[b] = obj[window_b]; psi[b] = probes[b] · o_win[b]; o_weight += Σ_b |o_win[b]|²."""
    nb, w0, w1 = probes.shape
    for b in range(nb):
        cy = corners[b, 0]
        cx = corners[b, 1]
        for i in range(w0):
            row = obj[cy + i, cx:cx + w1]  # row views let LLVM vectorise the inner loop
            for j in range(w1):
                o = row[j]
                o_win[b, i, j] = o
                psi[b, i, j] = probes[b, i, j] * o
                o_weight[i, j] += o.real * o.real + o.imag * o.imag


@numba.njit(nogil=True, cache=True, fastmath=True)
def difference_updates_cpu(num, den, probes, o_win, psi_new, psi, corners, probe_term):
    """From the revised exit waves, in one pass: Δψ = psi_new − psi;
    num[window] += conj(P)Δψ, den[window] += |P|² (object update, overlapping windows add);
    probe_term = conj(O)Δψ (probe update, before its unshift)."""
    nb, w0, w1 = psi.shape
    for b in range(nb):
        cy = corners[b, 0]
        cx = corners[b, 1]
        for i in range(w0):
            num_row = num[cy + i, cx:cx + w1]
            den_row = den[cy + i, cx:cx + w1]
            for j in range(w1):
                d = psi_new[b, i, j] - psi[b, i, j]
                p = probes[b, i, j]
                num_row[j] += p.conjugate() * d
                den_row[j] += p.real * p.real + p.imag * p.imag
                probe_term[b, i, j] = o_win[b, i, j].conjugate() * d


def _cuda():
    from . import ptycho_cuda

    return ptycho_cuda



def fourier_modulus_cuda(psi_k, amplitude, err):
    """GPU twin of :func:`fourier_modulus_cpu` (err accumulated with atomics)."""
    blocks, threads = grid(psi_k.shape)
    _cuda().fourier_modulus_gpu[blocks, threads](psi_k, amplitude, err)


def ramp_multiply_cuda(out, wave, ry, rx):
    blocks, threads = grid(out.shape)
    _cuda().ramp_multiply_gpu[blocks, threads](out, wave, ry, rx)


def ramp_reduce_cuda(acc, u, ry, rx):
    blocks, threads = grid((1, *acc.shape))
    _cuda().ramp_reduce_gpu[blocks, threads](acc, u, ry, rx)


def exit_waves_cuda(probes, obj, corners, o_win, psi, o_weight):
    blocks, threads = grid(probes.shape)
    _cuda().exit_waves_gpu[blocks, threads](probes, obj, corners, o_win, psi, o_weight)


def difference_updates_cuda(num, den, probes, o_win, psi_new, psi, corners, probe_term):
    blocks, threads = grid(psi.shape)
    real = num.view(np.float32 if num.dtype == np.complex64 else np.float64)
    _cuda().difference_updates_gpu[blocks, threads](real, den, probes, o_win, psi_new, psi,
                                                corners, probe_term)



def fourier_modulus(psi_k, amplitude, err):
    """In place Fourier-modulus constraint on a batch; adds the squared misfit to err."""
    if on_host(psi_k):
        fourier_modulus_cpu(psi_k, amplitude, err)
    else:
        fourier_modulus_cuda(psi_k, amplitude, err)
    return psi_k


def ramp_multiply(out, wave, ry, rx):
    """out[b] = wave · (ry[b] ⊗ rx[b]); ry (B, ny), rx (B, nx)."""
    (ramp_multiply_cpu if on_host(out) else ramp_multiply_cuda)(out, wave, ry, rx)
    return out


def ramp_reduce(acc, u, ry, rx):
    """acc += Σ_b u[b] · (ry[b] ⊗ rx[b])."""
    (ramp_reduce_cpu if on_host(acc) else ramp_reduce_cuda)(acc, u, ry, rx)
    return acc


def exit_waves(probes, obj, corners, o_win, psi, o_weight):
    """Object windows, exit waves and the summed window intensity in one pass."""
    (exit_waves_cpu if on_host(psi) else exit_waves_cuda)(probes, obj, corners, o_win, psi,
                                                           o_weight)


def difference_updates(num, den, probes, o_win, psi_new, psi, corners, probe_term):
    """See difference_updates_cpu; on the GPU the overlap sums use atomics."""
    fn = difference_updates_cpu if on_host(psi) else difference_updates_cuda
    fn(num, den, probes, o_win, psi_new, psi, corners, probe_term)
