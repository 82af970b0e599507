"""Fused kernels for windowed multislice: gather-and-multiply, and broadcast multiply.

Each kernel has a CPU twin (numba, parallel over the batch) and a GPU version
(numba.cuda, launched on cupy arrays through ``__cuda_array_interface__``). The public
functions dispatch on the array type, so algorithm code calls them once for both devices.
The GPU versions are tested against the CPU twins through numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, see tests/test_kernels.py).

Why fuse: numpy's ``psi *= t[iy, ix]`` builds a (B, W, W) temporary by fancy indexing and
then makes a second pass; the fused loop reads the window straight out of the periodic
slice and multiplies in one pass. The CPU twins are serial and release the GIL: CPU
parallelism comes from splitting the batch over threads (``backend.split_map``), which
on few cores is faster than waking a thread pool for every kernel and every FFT.
"""

from __future__ import annotations

import numba

from ._launch import grid, on_host


@numba.njit(nogil=True, cache=True)
def window_multiply_cpu(psi, t, corners):
    """psi[b, i, j] *= t[cy_b + i, cx_b + j] with corners[b] = (cy_b, cx_b).

    ``t`` is a periodically extended slice (multislice.ProbeWindow.prepare), large enough
    that every window lies inside it.
    """
    nb, w0, w1 = psi.shape
    for b in range(nb):
        cy = corners[b, 0]
        cx = corners[b, 1]
        for i in range(w0):
            row = t[cy + i, cx:cx + w1]  # a row view lets LLVM vectorise the inner loop
            for j in range(w1):
                psi[b, i, j] *= row[j]


@numba.njit(nogil=True, cache=True)
def masked_intensity_cpu(psi, mask, scale, out):
    """out[b, i, j] = |psi[b, i, j]|² · mask[i, j] · scale (float32 or float64 out)."""
    nb, w0, w1 = psi.shape
    for n in range(nb * w0):
        b = n // w0
        i = n % w0
        for j in range(w1):
            v = psi[b, i, j]
            out[b, i, j] = (v.real * v.real + v.imag * v.imag) * mask[i, j] * scale


@numba.njit(nogil=True, cache=True)
def broadcast_multiply_cpu(psi, p):
    """psi[b, i, j] *= p[i, j]."""
    nb, w0, w1 = psi.shape
    for n in range(nb * w0):
        b = n // w0
        i = n % w0
        for j in range(w1):
            psi[b, i, j] *= p[i, j]


def _cuda():
    """The CUDA kernels, compiled on first use (numba.cuda is imported only then)."""
    from . import windows_cuda

    return windows_cuda



def window_multiply_cuda(psi, t, corners):
    """GPU twin of :func:`window_multiply_cpu` (device arrays, or host arrays in the
    CUDA simulator)."""
    blocks, threads = grid(psi.shape)
    _cuda().window_multiply_gpu[blocks, threads](psi, t, corners)


def broadcast_multiply_cuda(psi, p):
    """GPU twin of :func:`broadcast_multiply_cpu`."""
    blocks, threads = grid(psi.shape)
    _cuda().broadcast_multiply_gpu[blocks, threads](psi, p)


def masked_intensity_cuda(psi, mask, scale, out):
    """GPU twin of :func:`masked_intensity_cpu`."""
    blocks, threads = grid(psi.shape)
    _cuda().masked_intensity_gpu[blocks, threads](psi, mask, scale, out)



def window_multiply(psi, t, corners):
    """In place: multiply each wave psi[b] by the window of ``t`` at corners[b] (pixels).

    ``t`` must hold every window (a periodically extended slice); ``corners`` is an int64
    (B, 2) array on the same device as ``psi``."""
    if on_host(psi):
        window_multiply_cpu(psi, t, corners)
    else:
        window_multiply_cuda(psi, t, corners)
    return psi


def broadcast_multiply(psi, p):
    """In place: psi[b] *= p for every b."""
    if on_host(psi):
        broadcast_multiply_cpu(psi, p)
    else:
        broadcast_multiply_cuda(psi, p)
    return psi


def masked_intensity(psi, mask, scale, out):
    """out = |psi|² · mask · scale, in one pass (mask broadcast over the batch)."""
    if on_host(psi):
        masked_intensity_cpu(psi, mask, scale, out)
    else:
        masked_intensity_cuda(psi, mask, scale, out)
    return out
