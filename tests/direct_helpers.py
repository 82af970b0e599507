"""Small 4D-STEM datasets for the direct methods (tcBF, SSB): the probe of
``physics.probe`` (aberrations included) on a weak phase object, patterns on the FFT grid
of the probe window, the detector turned by (rotation, transpose) as in test_icom."""

import numpy as np

from ptyengine import physics
from ptyengine.calibration import Calibration
from ptyengine.reconstruct.frame import rotated_aberrations
from ptyengine.reconstruct.icom import to_scan_frame

ENERGY = 300e3
DELTA = 0.25  # Å, window pixel


def calibration(n_scan, step, det, k_alpha_px, aberrations=None, rotation=0.0,
                transpose=False, center=None):  # fmt: skip
    dk = 1 / (det * DELTA)
    semiangle = k_alpha_px * dk * physics.wavelength(ENERGY) * 1e3
    c = (det // 2, det // 2) if center is None else center
    return Calibration(energy=ENERGY, semiangle=semiangle, scan_shape=(n_scan, n_scan),
                       scan_step=(step, step), detector_shape=(det, det), dk=(dk, dk),
                       detector_center=c, rotation=rotation, transpose=transpose,
                       aberrations=dict(aberrations or {}))  # fmt: skip


def forward(phase_fn, cal, aberrations=None, rotation=0.0, transpose=False):
    """(n, n, det, det) float32 patterns of probe(r − r_j)·exp(iφ(r)); ``aberrations``
    (scan frame) and the detector's (rotation, transpose) are the truth, whatever ``cal``
    says."""
    det = cal.detector_shape[0]
    ab = rotated_aberrations(aberrations or {}, rotation)
    if transpose and "phi12" in ab:  # a mirror: angles change sign
        ab["phi12"] = np.pi / 2 - ab["phi12"]
    probe = physics.probe((det, det), (DELTA, DELTA), ENERGY, cal.semiangle, ab,
                          band_fraction=1.0, dtype=np.complex128)  # fmt: skip
    u = (np.arange(det) - det // 2) * DELTA
    uy, ux = np.meshgrid(u, u, indexing="ij")
    my, mx = to_scan_frame(uy, ux, rotation, transpose)
    n = cal.scan_shape[0]
    step = cal.scan_step[0]
    iy, ix = np.meshgrid(np.arange(n) * step, np.arange(n) * step, indexing="ij")
    out = np.empty((n * n, det, det), np.float32)
    for j, (y0, x0) in enumerate(zip(iy.ravel(), ix.ravel(), strict=True)):
        psi = probe * np.exp(1j * phase_fn(y0 + my, x0 + mx))
        out[j] = np.abs(np.fft.fftshift(np.fft.fft2(psi))) ** 2
    return out.reshape(n, n, det, det)


def atoms(seed=0, n=60, extent=(-8.0, 24.0), height=0.15, width=0.6):
    """A weak phase (rad) of random Gaussian 'atoms' over ``extent`` Å (y and x)."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(*extent, size=(n, 2))
    h = height * rng.uniform(0.5, 1.0, n)

    def phase(y, x):
        out = np.zeros(np.shape(y))
        for (ay, ax), hh in zip(pos, h, strict=True):
            out += hh * np.exp(-((y - ay) ** 2 + (x - ax) ** 2) / (2 * width**2))
        return out

    return phase
