"""numba.cuda versions of the kernels in :mod:`windows` (imported only when used).

Kept in their own module so that importing ptyengine never imports numba.cuda, and so the
kernels are module-level functions (numba's CUDA simulator needs that).
"""

from numba import cuda


@cuda.jit
def window_multiply_gpu(psi, t, corners):
    """psi[b, i, j] *= t[(cy_b + i) % ny, (cx_b + j) % nx]; one thread per element."""
    b, i, j = cuda.grid(3)
    if b < psi.shape[0] and i < psi.shape[1] and j < psi.shape[2]:
        y = (corners[b, 0] + i) % t.shape[0]
        x = (corners[b, 1] + j) % t.shape[1]
        psi[b, i, j] *= t[y, x]


@cuda.jit
def broadcast_multiply_gpu(psi, p):
    """psi[b, i, j] *= p[i, j]; one thread per element."""
    b, i, j = cuda.grid(3)
    if b < psi.shape[0] and i < psi.shape[1] and j < psi.shape[2]:
        psi[b, i, j] *= p[i, j]
