"""What the kernel modules share: dispatch on the array type and CUDA launch geometry."""

import numpy as np


def on_host(a) -> bool:
    """True for numpy arrays (CPU twin), False for device arrays (CUDA kernel)."""
    return isinstance(a, np.ndarray)


def grid(shape, block=(32, 8, 1)):
    """(blocks per grid, threads per block) covering a 3-D index space ``shape`` (b, i, j)
    (batch, row, column), launched reversed: the kernels take ``j, i, b = cuda.grid(3)``,
    so that x, the index consecutive threads of a warp step through, runs along a row
    (coalesced loads and atomics) and ``block`` is (columns, rows, batch members)."""
    b, i, j = shape
    return tuple((s + k - 1) // k for s, k in zip((j, i, b), block, strict=True)), block
