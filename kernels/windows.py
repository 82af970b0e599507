"""Fused kernels for windowed multislice: gather-and-multiply, and broadcast multiply.

Each kernel has a CPU twin (numba, parallel over the batch) and a GPU version
(numba.cuda, launched on cupy arrays through ``__cuda_array_interface__``). The public
functions dispatch on the array type, so algorithm code calls them once for both devices.
The GPU versions are tested against the CPU twins through numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, see tests/test_kernels.py).

Why fuse: numpy's ``psi *= t[iy, ix]`` builds a (B, W, W) temporary by fancy indexing and
then makes a second pass, single-threaded; the fused loop reads the window straight out of
the periodic slice and multiplies in one threaded pass.
"""

from __future__ import annotations

import os

import numba
import numpy as np

# FFTW's threads and numba's share the cores in turn: numba's OpenMP layer keeps its
# threads spinning after a parallel loop and slows the next FFT by ~20 %; the workqueue
# layer does not spin. A user's NUMBA_THREADING_LAYER still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"


@numba.njit(parallel=True, cache=True)
def window_multiply_cpu(psi, t, corners):
    """psi[b, i, j] *= t[(cy_b + i) % ny, (cx_b + j) % nx] with corners[b] = (cy_b, cx_b)."""
    nb, w0, w1 = psi.shape
    ny, nx = t.shape
    for n in numba.prange(nb * w0):
        b = n // w0
        i = n % w0
        y = (corners[b, 0] + i) % ny
        x = corners[b, 1] % nx
        for j in range(w1):
            psi[b, i, j] *= t[y, x]
            x += 1
            if x == nx:  # wrap round the periodic slice (any number of times)
                x = 0


@numba.njit(parallel=True, cache=True)
def broadcast_multiply_cpu(psi, p):
    """psi[b, i, j] *= p[i, j]."""
    nb, w0, w1 = psi.shape
    for n in numba.prange(nb * w0):
        b = n // w0
        i = n % w0
        for j in range(w1):
            psi[b, i, j] *= p[i, j]


def _cuda():
    """The CUDA kernels, compiled on first use (numba.cuda is imported only then)."""
    from . import windows_cuda

    return windows_cuda


def _grid(shape, block=(1, 8, 32)):
    return tuple((s + k - 1) // k for s, k in zip(shape, block, strict=True)), block


def window_multiply_cuda(psi, t, corners):
    """GPU twin of :func:`window_multiply_cpu` (device arrays, or host arrays in the
    CUDA simulator)."""
    grid, block = _grid(psi.shape)
    _cuda().window_multiply_gpu[grid, block](psi, t, corners)


def broadcast_multiply_cuda(psi, p):
    """GPU twin of :func:`broadcast_multiply_cpu`."""
    grid, block = _grid(psi.shape)
    _cuda().broadcast_multiply_gpu[grid, block](psi, p)


def _on_host(a) -> bool:
    return isinstance(a, np.ndarray)


def window_multiply(psi, t, corners):
    """In place: multiply each wave psi[b] by the window of ``t`` at corners[b] (pixels,
    wrapping round the periodic slice). ``corners`` is an int64 (B, 2) array on the same
    device as ``psi``."""
    if _on_host(psi):
        window_multiply_cpu(psi, t, corners)
    else:
        window_multiply_cuda(psi, t, corners)
    return psi


def broadcast_multiply(psi, p):
    """In place: psi[b] *= p for every b."""
    if _on_host(psi):
        broadcast_multiply_cpu(psi, p)
    else:
        broadcast_multiply_cuda(psi, p)
    return psi
