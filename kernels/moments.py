"""CPU kernels for one-pass detector moments (iCOM, iDPC, virtual detectors): they read
the stored counts as they are (uint16 and friends), so that no float copy of a block is
made. Serial and GIL-free: the reading threads of a streaming reduction run them side by
side. On a GPU the same reductions are plain cupy sums and matrix products
(:mod:`ptyengine.reconstruct.icom`); these CPU kernels have no CUDA twin.
"""

from __future__ import annotations

import numba
import numpy as np

#: dtypes the CPU kernels read as they are stored (others are cast to float64 first)
KERNEL_DTYPES = frozenset(np.dtype(t) for t in ("uint8", "uint16", "uint32", "int8", "int16",
                                                "int32", "int64", "float32", "float64"))


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def projections_cpu(patterns, rows, cols):
    """rows[p, i] += Σ_j patterns[p, i, j];  cols[p, j] += Σ_i patterns[p, i, j].

    patterns: (n, Ky, Kx) in their stored dtype (uint16 counts are read as they are: no
    float copy of the block); rows (n, Ky), cols (n, Kx): zeroed accumulators, int64 for
    integer counts (exact), float64 for intensities. One pass over the block, serial and
    GIL-free, so reading threads can run it side by side.
    """
    for p in range(patterns.shape[0]):
        col = cols[p]
        for i in range(patterns.shape[1]):
            row = patterns[p, i]  # a row view lets LLVM vectorise the inner loop
            s = rows[p, i]
            for j in range(row.shape[0]):
                s += row[j]
                col[j] += row[j]
            rows[p, i] = s


@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def weighted_sums_cpu(patterns, weights, out):
    """out[w, p] = Σ_j patterns[p, j] · weights[w, j], accumulated in float64.

    patterns: (n, Ky·Kx) in their stored dtype; weights: (n_weights, Ky·Kx) float64;
    out: (n_weights, n) float64. Serial and GIL-free, like :func:`projections_cpu`.
    """
    for p in range(patterns.shape[0]):
        row = patterns[p]
        for k in range(weights.shape[0]):
            wk = weights[k]
            s = 0.0
            for j in range(row.shape[0]):
                s += np.float64(row[j]) * wk[j]
            out[k, p] = s


def kernel_input(block, pixels_shape):
    """``block`` as (n_patterns, *pixels_shape) in a dtype the CPU kernels read."""
    flat = block.reshape(-1, *pixels_shape)
    return flat if flat.dtype in KERNEL_DTYPES else flat.astype(np.float64)
