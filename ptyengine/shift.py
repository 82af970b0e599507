"""Sub-pixel shifts of waves by Fourier phase ramps (shared by simulation and ptychography)."""

from __future__ import annotations

import math

import numpy as np

from . import backend
from .kernels import ptycho as pk


def ramps_2d(frac, shape, xp=np, dtype=np.complex64):
    """Separable ramps exp(-2πi k·f) for sub-pixel shifts ``frac`` (B, 2) in pixels.

    Returns (ry (B, ny), rx (B, nx)) in FFT order: multiplying a Fourier-space wave by
    ry[b] ⊗ rx[b] moves it by +frac[b] pixels in real space.
    """
    frac = np.asarray(frac, dtype=np.float64)
    ky = np.fft.fftfreq(shape[0])
    kx = np.fft.fftfreq(shape[1])
    ry = xp.asarray(np.exp(-2j * math.pi * frac[:, 0, None] * ky[None, :]), dtype=dtype)
    rx = xp.asarray(np.exp(-2j * math.pi * frac[:, 1, None] * kx[None, :]), dtype=dtype)
    return ry, rx



def shifted_waves(wave_k, frac, xp=np, out=None, ramps=None):
    """Real-space copies (B, ny, nx) of the Fourier-space wave ``wave_k`` (ny, nx), each
    moved by its sub-pixel shift frac[b] (pixels). ``ramps`` = (ry, rx) from
    :func:`ramps_2d` may be passed instead of being computed from ``frac``."""
    ry, rx = ramps if ramps is not None else ramps_2d(frac, wave_k.shape, xp, wave_k.dtype)
    if out is None:
        out = backend.empty((len(ry), *wave_k.shape), wave_k.dtype, xp)
    pk.ramp_multiply(out, wave_k, ry, rx)
    return backend.ifft2(out, out=out)
