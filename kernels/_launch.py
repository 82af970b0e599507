"""What the kernel modules share: dispatch on the array type and CUDA launch geometry."""

import numpy as np


def on_host(a) -> bool:
    """True for numpy arrays (CPU twin), False for device arrays (CUDA kernel)."""
    return isinstance(a, np.ndarray)


def grid(shape, block=(1, 8, 32)):
    """(blocks per grid, threads per block) covering a 3-D index space ``shape``."""
    return tuple((s + k - 1) // k for s, k in zip(shape, block, strict=True)), block
