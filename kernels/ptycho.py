"""Kernels for ptychographic updates: Fourier-modulus constraint and overlap accumulation.

Each kernel has a serial, GIL-free CPU twin (numba) and a numba.cuda version
(:mod:`ptycho_cuda`), tested against each other through numba's CUDA simulator
(tests/test_kernels.py). The public functions dispatch on the array type.
"""

from __future__ import annotations

import numba
import numpy as np


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
            for j in range(w1):
                v = psi_k[b, i, j]
                mag = np.sqrt(v.real * v.real + v.imag * v.imag)
                a = amplitude[b, i, j]
                acc += (mag - a) * (mag - a)
                if mag > 0:
                    psi_k[b, i, j] = v * (a / mag)
                else:
                    psi_k[b, i, j] = a
        err[b] += acc


@numba.njit(nogil=True, cache=True)
def overlap_add_cpu(num, den, weight, update, corners):
    """num[window_b] += conj(weight[b]) · update[b];  den[window_b] += |weight[b]|².

    The ptychographic overlap sum: object update numerator and its normalisation, windows
    of size (W, W) at corners[b] (inside the arrays; no wrap). Serial, so overlapping
    windows of one batch add up correctly.
    """
    nb, w0, w1 = update.shape
    for b in range(nb):
        cy = corners[b, 0]
        cx = corners[b, 1]
        for i in range(w0):
            for j in range(w1):
                wv = weight[b, i, j]
                num[cy + i, cx + j] += np.conj(wv) * update[b, i, j]
                den[cy + i, cx + j] += wv.real * wv.real + wv.imag * wv.imag


def _cuda():
    from . import ptycho_cuda

    return ptycho_cuda


def _grid(shape, block=(1, 8, 32)):
    return tuple((s + k - 1) // k for s, k in zip(shape, block, strict=True)), block


def fourier_modulus_cuda(psi_k, amplitude, err):
    """GPU twin of :func:`fourier_modulus_cpu` (err accumulated with atomics)."""
    grid, block = _grid(psi_k.shape)
    _cuda().fourier_modulus_gpu[grid, block](psi_k, amplitude, err)


def overlap_add_cuda(num, den, weight, update, corners):
    """GPU twin of :func:`overlap_add_cpu` (atomic adds: overlapping windows are safe).

    ``num`` is complex64/complex128; the kernel adds into its real view.
    """
    grid, block = _grid(update.shape)
    real = num.view(np.float32 if num.dtype == np.complex64 else np.float64)
    _cuda().overlap_add_gpu[grid, block](real, den, weight, update, corners)


def _on_host(a) -> bool:
    return isinstance(a, np.ndarray)


def fourier_modulus(psi_k, amplitude, err):
    """In place Fourier-modulus constraint on a batch; adds the squared misfit to err."""
    if _on_host(psi_k):
        fourier_modulus_cpu(psi_k, amplitude, err)
    else:
        fourier_modulus_cuda(psi_k, amplitude, err)
    return psi_k


def overlap_add(num, den, weight, update, corners):
    """Accumulate a batch of windowed updates into (num, den); see overlap_add_cpu."""
    if _on_host(num):
        overlap_add_cpu(num, den, weight, update, corners)
    else:
        overlap_add_cuda(num, den, weight, update, corners)
