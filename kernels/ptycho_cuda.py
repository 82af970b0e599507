"""numba.cuda versions of the kernels in :mod:`ptycho` (imported only when used)."""

import math

from numba import cuda


@cuda.jit
def fourier_modulus_gpu(psi_k, amplitude, err):
    """One thread per element: |Ψ| -> A, phase kept; err[b] += (|Ψ| − A)² atomically."""
    b, i, j = cuda.grid(3)
    if b < psi_k.shape[0] and i < psi_k.shape[1] and j < psi_k.shape[2]:
        v = psi_k[b, i, j]
        mag = math.sqrt(v.real * v.real + v.imag * v.imag)
        a = amplitude[b, i, j]
        cuda.atomic.add(err, b, (mag - a) * (mag - a))
        if mag > 0:
            psi_k[b, i, j] = v * (a / mag)
        else:
            psi_k[b, i, j] = a


@cuda.jit
def overlap_add_gpu(num_real, den, weight, update, corners):
    """One thread per window element; atomics make overlapping windows safe.

    ``num_real`` is the float view of the complex numerator (real, imag interleaved).
    """
    b, i, j = cuda.grid(3)
    if b < update.shape[0] and i < update.shape[1] and j < update.shape[2]:
        y = corners[b, 0] + i
        x = corners[b, 1] + j
        w = weight[b, i, j]
        u = update[b, i, j]
        prod = w.conjugate() * u
        cuda.atomic.add(num_real, (y, 2 * x), prod.real)
        cuda.atomic.add(num_real, (y, 2 * x + 1), prod.imag)
        cuda.atomic.add(den, (y, x), w.real * w.real + w.imag * w.imag)
