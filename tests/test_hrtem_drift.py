"""Amplitude-filter drift correction (ptyengine.hrtem.drift) on small simulated stacks
of a lattice with known shifts."""

import numpy as np
import pytest

from ptyengine.errors import PtyengineError
from ptyengine.hrtem import ctf, drift, stack
from ptyengine.metrics import ncc


@pytest.fixture(scope="module")
def lattice():
    """A noise-free HRTEM image of UiO-66 [110] (one periodic unit cell, 0.2 Å)."""
    psi, s, _ = stack.crystal_exit_wave("uio66", (1, 1, 0), 20.0, 300e3, 0.2)
    o = ctf.Optics(defocus=ctf.scherzer_defocus(300e3, 1.2e7), cs=1.2e7, focal_spread=30.0,
                   convergence=0.1)
    return ctf.exit_wave_image(psi, s, o), s


SHIFTS = np.array([(0, 0), (1, 0), (2, -1), (2, -2), (3, -2), (3, -3)], float)
SUBPIXEL = SHIFTS * 0.73 + np.array([0, 0.31])


@pytest.mark.parametrize("shifts", [SHIFTS, SUBPIXEL], ids=["integer", "subpixel"])
def test_noise_free_drift_recovery(lattice, shifts):
    img, s = lattice
    frames = ctf.camera_frames(img, s, 0.6, (96, 96), shifts)
    filt = drift.amplitude_filter(frames * 100 + np.random.default_rng(0).normal(
        0, 1e-3, frames.shape))  # a faint noise floor gives the ring background a scale
    got = drift.estimate_drift(filt.spectra)
    assert drift.rms_error(got, shifts) < 0.1
    raw = drift.estimate_drift(drift.spectra_of(frames))
    assert drift.rms_error(raw, shifts) < 0.1


def test_amplitude_filter_keeps_the_lattice_and_removes_noise(lattice):
    img, s = lattice
    shifts = stack.drift_trajectory(30, seed=1, velocity=(0.1, 0.05), curve=0.5)
    clean = ctf.camera_frames(img, s, 0.6, (96, 96), shifts)
    noisy = ctf.camera_frames(img, s, 0.6, (96, 96), shifts, dose_per_pixel=0.5, seed=2)
    filt = drift.amplitude_filter(noisy, threshold=4.0)
    # the strongest lattice reflections of the noise-free frame are kept ...
    spec = np.abs(drift.spectra_of(clean[:1])[0])
    spec[drift.ring_index(spec.shape) < 2] = 0
    top = np.argsort(spec.ravel())[-6:]
    assert filt.mask.ravel()[top].all()
    # ... few other pixels are (the lattice and its leakage only) ...
    assert filt.mask.sum() < 0.02 * filt.mask.size
    # ... and the filtered frames match the noise-free lattice (the same Fourier pixels of
    # the noise-free frames) far better than the raw frames do
    lattice_only = np.fft.ifft2(drift.spectra_of(clean) * filt.mask).real
    w = drift.taper_window(clean.shape[1:])
    for i in (0, 29):
        got, raw = ncc(filt.frames[i], lattice_only[i]), ncc(noisy[i] * w, lattice_only[i])
        assert got > 0.4 > raw + 0.2, (got, raw)


def test_smooth_trajectory_is_robust():
    t = np.arange(40.0)
    truth = np.stack([0.1 * t + 0.002 * t**2, -0.2 * t], axis=1)
    noisy = truth + np.random.default_rng(0).normal(0, 0.3, truth.shape)
    noisy[7] += (12, -9)  # a lattice hop
    fit = drift.smooth_trajectory(noisy, degree=2)
    assert np.sqrt(np.mean((fit - truth) ** 2)) < 0.15


def test_align_sums_the_original_frames(lattice):
    img, s = lattice
    shifts = np.array([(0, 0), (0.5, 1.25), (1.0, 2.5), (1.5, 3.75)])
    frames = ctf.camera_frames(img, s, 0.6, (96, 96), shifts) * 50
    res = drift.align(frames, compare_raw=True)
    assert drift.rms_error(res.shifts, shifts) < 0.1
    assert drift.rms_error(res.raw_shifts, shifts) < 0.1
    ref = sum(drift.shift_image(f, -d) for f, d in zip(frames, drift._relative(shifts),
                                                        strict=True))
    assert ncc(res.total, ref) > 0.999
    assert np.allclose(res.total, drift.apply_drift(frames, res.shifts))


def test_no_lattice_is_an_error():
    """All zeros, and pure shot noise (which passes ~2 pixels at 4σ by chance)."""
    with pytest.raises(PtyengineError, match="no lattice reflections"):
        drift.amplitude_filter(np.zeros((4, 32, 32)))
    noise = np.random.default_rng(0).poisson(0.033, (120, 128, 128)).astype(np.float32)
    with pytest.raises(PtyengineError, match="no more than pure noise would"):
        drift.amplitude_filter(noise)
    with pytest.raises(PtyengineError, match="threshold"):
        drift.amplitude_filter(noise, threshold=-1)
