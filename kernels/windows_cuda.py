"""numba.cuda versions of the kernels in :mod:`windows` (imported only when used).

Kept in their own module so that importing ptyengine never imports numba.cuda, and so the
kernels are module-level functions (numba's CUDA simulator needs that).
"""

from numba import cuda


@cuda.jit
def window_multiply_gpu(psi, t, corners):
    """psi[b, i, j] *= t[cy_b + i, cx_b + j] (t periodically extended); one thread each."""
    j, i, b = cuda.grid(3)
    if b < psi.shape[0] and i < psi.shape[1] and j < psi.shape[2]:
        psi[b, i, j] *= t[corners[b, 0] + i, corners[b, 1] + j]


@cuda.jit
def broadcast_multiply_gpu(psi, p):
    """psi[b, i, j] *= p[i, j]; one thread per element."""
    j, i, b = cuda.grid(3)
    if b < psi.shape[0] and i < psi.shape[1] and j < psi.shape[2]:
        psi[b, i, j] *= p[i, j]


@cuda.jit
def masked_intensity_gpu(psi, mask, scale, out):
    """out[b, i, j] = |psi[b, i, j]|² · mask[i, j] · scale; one thread per element."""
    j, i, b = cuda.grid(3)
    if b < psi.shape[0] and i < psi.shape[1] and j < psi.shape[2]:
        v = psi[b, i, j]
        out[b, i, j] = (v.real * v.real + v.imag * v.imag) * mask[i, j] * scale
