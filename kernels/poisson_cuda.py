"""numba.cuda versions of the kernels in :mod:`poisson` (imported only when used)."""

import math

import numpy as np
from numba import cuda


@cuda.jit(device=True, inline="always")
def holdout_hash(position, pixel, seed):
    """Device twin of :func:`poisson.holdout_hash` (the same uint64 arithmetic)."""
    z = (np.uint64(position) * np.uint64(0x9E3779B97F4A7C15)
         + np.uint64(pixel) * np.uint64(0xBF58476D1CE4E5B9) + np.uint64(seed))  # fmt: skip
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return z >> np.uint64(40)


@cuda.jit
def poisson_ratio_gpu(psi_k, amplitude, index, positions, mask, nll, held, count_scale, eps,
                      scale, seed, thr, n_modes):  # fmt: skip
    """One thread per pattern and pixel, looping over the modes (mode-major layout, as the
    CPU twin); the half-deviance is summed with atomics."""
    j, i, b = cuda.grid(3)
    nb = psi_k.shape[0] // n_modes
    if b < nb and i < psi_k.shape[1] and j < psi_k.shape[2]:
        if mask[i, j] == 0:
            for m in range(n_modes):
                psi_k[m * nb + b, i, j] *= scale
            return
        inten = 0.0
        for m in range(n_modes):
            v = psi_k[m * nb + b, i, j]
            inten += v.real * v.real + v.imag * v.imag
        a = amplitude[index[b], i, j]
        n = count_scale * a * a
        term = inten
        if n > 0:
            term = inten - n * math.log(inten + eps) - (n - n * math.log(n))
        w1 = psi_k.shape[2]
        if thr > 0 and holdout_hash(positions[b], i * w1 + j, seed) < thr:
            cuda.atomic.add(held, b, term)
            factor = scale
        else:
            cuda.atomic.add(nll, b, term)
            factor = n / (inten + eps) * scale
        for m in range(n_modes):
            psi_k[m * nb + b, i, j] *= factor


@cuda.jit
def poisson_curvature_gpu(psi_k, d_k, amplitude, index, positions, mask, d1, d2, count_scale,
                          eps, seed, thr, n_modes):  # fmt: skip
    j, i, b = cuda.grid(3)
    nb = psi_k.shape[0] // n_modes
    if b < nb and i < psi_k.shape[1] and j < psi_k.shape[2]:
        if mask[i, j] == 0:
            return
        w1 = psi_k.shape[2]
        if thr > 0 and holdout_hash(positions[b], i * w1 + j, seed) < thr:
            return
        inten = eps
        ip = 0.0
        for m in range(n_modes):
            v = psi_k[m * nb + b, i, j]
            d = d_k[m * nb + b, i, j]
            inten += v.real * v.real + v.imag * v.imag
            ip += 2.0 * (v.real * d.real + v.imag * d.imag)
        a = amplitude[index[b], i, j]
        n = count_scale * a * a
        cuda.atomic.add(d1, b, (1.0 - n / inten) * ip)
        cuda.atomic.add(d2, b, ip * ip / inten)
