"""Kernels of the Poisson maximum-likelihood engine (:mod:`ptyengine.reconstruct.ml`).

With the model intensity I = |Ψ|² (in counts) and the measured counts n of a pattern, the
negative log-likelihood of the counts is Σ_k I − n log I (plus a constant). These kernels
hold its per-pixel work:

* :func:`poisson_ratio`: the half-deviance Σ (I − n log(I + ε)) − (n − n log n) of a batch
  (the saturated term makes it ≥ 0 and zero for a perfect fit), and the Poisson-revised
  wave Ψ' = Ψ · n / (I + ε). Then Ψ' − Ψ = −(1 − n/(I + ε)) Ψ = −∂L/∂Ψ*, so the ePIE
  kernels that turn revised exit waves into object and probe updates give the negative
  gradient of the likelihood (see the engine's docstring).
* :func:`poisson_curvature`: along a search direction, with Ψ(t) = Ψ + t·D, the first
  derivative Σ (1 − n/(I + ε)) I' and the Fisher curvature Σ I'² / (I + ε) of the
  likelihood at t = 0, I' = 2 Re(Ψ* D): the Newton step is −d1/d2.

Pixels where ``mask`` is 0 (dead or hot detector pixels) are not data: they leave Ψ
unchanged and add nothing. A pseudo-random part of the pixels (``threshold`` / 2²⁴ of
them, chosen by a hash of the scan position and the pixel, the same on every device and
in every run) is *held out*: it adds to ``held`` instead of ``nll`` and does not steer the
fit, so its likelihood tells when the fit starts to follow the noise.

Each kernel has a serial, GIL-free CPU twin (numba) and a numba.cuda version
(:mod:`poisson_cuda`), tested against each other through numba's CUDA simulator
(tests/test_kernels.py).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ._launch import grid, on_host

HASH_BITS = 24  # held-out pixels: hash(position, pixel) >> 40 < threshold, of 2**24


@numba.njit(nogil=True, cache=True, inline="always")
def holdout_hash(position, pixel, seed):
    """A 24-bit pseudo-random number of (scan position, detector pixel, seed): a splitmix64
    finaliser of a linear mix, all in uint64 arithmetic (wraps the same on CPU and GPU)."""
    z = (np.uint64(position) * np.uint64(0x9E3779B97F4A7C15)
         + np.uint64(pixel) * np.uint64(0xBF58476D1CE4E5B9) + np.uint64(seed))  # fmt: skip
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return z >> np.uint64(40)


def holdout_mask(positions, shape, seed: int, fraction: float) -> np.ndarray:
    """The held-out pixels (B, ny, nx) bool of the patterns at flat scan ``positions``, as
    the kernels choose them: a numpy reference for tests and for counting."""
    thr = threshold(fraction)
    out = np.zeros((len(positions), *shape), dtype=bool)
    pix = np.arange(shape[0] * shape[1])
    for b, p in enumerate(positions):
        h = np.array([holdout_hash(int(p), int(k), int(seed)) for k in pix], dtype=np.uint64)
        out[b] = (h < np.uint64(thr)).reshape(shape)
    return out


def threshold(fraction: float) -> int:
    """The hash threshold that holds out ``fraction`` (0 ≤ f < 1) of the pixels."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must lie in [0, 1), got {fraction}")
    return int(round(fraction * 2**HASH_BITS))


@numba.njit(nogil=True, cache=True)
def _saturated(n):
    return n - n * math.log(n) if n > 0 else 0.0


@numba.njit(nogil=True, cache=True, fastmath=True)
def poisson_ratio_cpu(psi_k, amplitude, index, positions, mask, nll, held, count_scale, eps,
                      scale, seed, thr, n_modes):  # fmt: skip
    """psi_k (M·B, W, W) complex, M = ``n_modes`` incoherent probe modes, mode-major (mode m
    of pattern b at m·B + b): Ψ_m → Ψ_m · n / (I + ε) · scale on fitted pixels, Ψ_m · scale
    on held-out and masked ones, with I = Σ_m |Ψ_m|² and n = count_scale ·
    amplitude[index[b]]². nll[b], held[b] (float64) += the half-deviance of the fitted /
    held-out pixels. Row by row: the modes' intensities, then one factor per pixel, then
    every mode's row scaled (contiguous inner loops)."""
    nb = psi_k.shape[0] // n_modes
    w0, w1 = psi_k.shape[1], psi_k.shape[2]
    inten = np.empty(w1, dtype=np.float32)
    factor = np.empty(w1, dtype=np.float32)
    for b in range(nb):
        acc = 0.0
        acc_h = 0.0
        pos = positions[b]
        for i in range(w0):
            _row_intensity(psi_k, nb, b, i, n_modes, inten)
            amp = amplitude[index[b], i]
            for j in range(w1):
                if mask[i, j] == 0:
                    factor[j] = scale
                    continue
                a = amp[j]
                n = count_scale * a * a
                v = inten[j]
                # most pixels hold no counts at low dose: no logarithms for them
                term = v - n * math.log(v + eps) - _saturated(n) if n > 0 else v
                if thr > 0 and holdout_hash(pos, i * w1 + j, seed) < thr:
                    acc_h += term
                    factor[j] = scale
                else:
                    acc += term
                    factor[j] = n / (v + eps) * scale if n > 0 else 0.0
            for m in range(n_modes):
                row = psi_k[m * nb + b, i]
                for j in range(w1):
                    row[j] *= factor[j]
        nll[b] += acc
        held[b] += acc_h


@numba.njit(nogil=True, cache=True, fastmath=True, inline="always")
def _row_intensity(psi_k, nb, b, i, n_modes, out):
    """out[j] = Σ_m |Ψ_m[i, j]|² of pattern b's row i."""
    out[:] = 0.0
    for m in range(n_modes):
        row = psi_k[m * nb + b, i]
        for j in range(out.shape[0]):
            v = row[j]
            out[j] += v.real * v.real + v.imag * v.imag


@numba.njit(nogil=True, cache=True, fastmath=True)
def poisson_curvature_cpu(psi_k, d_k, amplitude, index, positions, mask, d1, d2, count_scale,
                          eps, seed, thr, n_modes):  # fmt: skip
    """d1[b] += Σ (1 − n/(I + ε)) I', d2[b] += Σ I'² / (I + ε) over the fitted pixels of
    pattern b, with I = Σ_m |Ψ_m|², I' = 2 Σ_m Re(Ψ_m* D_m) (layout as
    :func:`poisson_ratio_cpu`'s)."""
    nb = psi_k.shape[0] // n_modes
    w0, w1 = psi_k.shape[1], psi_k.shape[2]
    inten = np.empty(w1, dtype=np.float32)
    slope = np.empty(w1, dtype=np.float32)
    for b in range(nb):
        a1 = 0.0
        a2 = 0.0
        pos = positions[b]
        for i in range(w0):
            _row_intensity(psi_k, nb, b, i, n_modes, inten)
            slope[:] = 0.0
            for m in range(n_modes):
                row = psi_k[m * nb + b, i]
                drow = d_k[m * nb + b, i]
                for j in range(w1):
                    v = row[j]
                    d = drow[j]
                    slope[j] += 2.0 * (v.real * d.real + v.imag * d.imag)
            amp = amplitude[index[b], i]
            for j in range(w1):
                if mask[i, j] == 0:
                    continue
                if thr > 0 and holdout_hash(pos, i * w1 + j, seed) < thr:
                    continue
                a = amp[j]
                n = count_scale * a * a
                v = inten[j] + eps
                ip = slope[j]
                a1 += (1.0 - n / v) * ip
                a2 += ip * ip / v
        d1[b] += a1
        d2[b] += a2


def _cuda():
    from . import poisson_cuda

    return poisson_cuda


def poisson_ratio_cuda(psi_k, *args):
    """GPU twin of :func:`poisson_ratio_cpu` (device arrays, the same arguments)."""
    n_modes = int(args[-1])
    blocks, threads = grid((psi_k.shape[0] // n_modes, *psi_k.shape[1:]))
    _cuda().poisson_ratio_gpu[blocks, threads](psi_k, *args)


def poisson_curvature_cuda(psi_k, *args):
    """GPU twin of :func:`poisson_curvature_cpu`."""
    n_modes = int(args[-1])
    blocks, threads = grid((psi_k.shape[0] // n_modes, *psi_k.shape[1:]))
    _cuda().poisson_curvature_gpu[blocks, threads](psi_k, *args)


def poisson_ratio(psi_k, amplitude, index, positions, mask, nll, held, count_scale, eps,
                  scale=1.0, seed=0, fraction=0.0, n_modes=1):  # fmt: skip
    """See :func:`poisson_ratio_cpu`; ``fraction`` of the pixels is held out."""
    real = psi_k.real.dtype.type
    args = (psi_k, amplitude, index, positions, mask, nll, held, real(count_scale), real(eps),
            real(scale), np.uint64(seed), np.uint64(threshold(fraction)), np.int64(n_modes))
    (poisson_ratio_cpu if on_host(psi_k) else poisson_ratio_cuda)(*args)
    return psi_k


def poisson_curvature(psi_k, d_k, amplitude, index, positions, mask, d1, d2, count_scale, eps,
                      seed=0, fraction=0.0, n_modes=1):  # fmt: skip
    """See :func:`poisson_curvature_cpu`."""
    real = psi_k.real.dtype.type
    args = (psi_k, d_k, amplitude, index, positions, mask, d1, d2, real(count_scale),
            real(eps), np.uint64(seed), np.uint64(threshold(fraction)), np.int64(n_modes))
    (poisson_curvature_cpu if on_host(psi_k) else poisson_curvature_cuda)(*args)
