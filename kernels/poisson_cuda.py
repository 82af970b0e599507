"""numba.cuda versions of the kernels in :mod:`poisson` (imported only when used)."""

import math

import numpy as np
from numba import cuda


@cuda.jit(device=True, inline=True)
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
                      scale, seed, thr):  # fmt: skip
    """One thread per element; the half-deviance is summed with atomics."""
    b, i, j = cuda.grid(3)
    if b < psi_k.shape[0] and i < psi_k.shape[1] and j < psi_k.shape[2]:
        v = psi_k[b, i, j]
        if mask[i, j] == 0:
            psi_k[b, i, j] = v * scale
            return
        a = amplitude[index[b], i, j]
        n = count_scale * a * a
        inten = v.real * v.real + v.imag * v.imag
        term = inten
        if n > 0:
            term = inten - n * math.log(inten + eps) - (n - n * math.log(n))
        w1 = psi_k.shape[2]
        if thr > 0 and holdout_hash(positions[b], i * w1 + j, seed) < thr:
            cuda.atomic.add(held, b, term)
            psi_k[b, i, j] = v * scale
        else:
            cuda.atomic.add(nll, b, term)
            psi_k[b, i, j] = v * (n / (inten + eps) * scale)


@cuda.jit
def poisson_curvature_gpu(psi_k, d_k, amplitude, index, positions, mask, d1, d2, count_scale,
                          eps, seed, thr):  # fmt: skip
    b, i, j = cuda.grid(3)
    if b < psi_k.shape[0] and i < psi_k.shape[1] and j < psi_k.shape[2]:
        if mask[i, j] == 0:
            return
        w1 = psi_k.shape[2]
        if thr > 0 and holdout_hash(positions[b], i * w1 + j, seed) < thr:
            return
        v = psi_k[b, i, j]
        d = d_k[b, i, j]
        a = amplitude[index[b], i, j]
        n = count_scale * a * a
        inten = v.real * v.real + v.imag * v.imag + eps
        ip = 2.0 * (v.real * d.real + v.imag * d.imag)
        cuda.atomic.add(d1, b, (1.0 - n / inten) * ip)
        cuda.atomic.add(d2, b, ip * ip / inten)
