"""Windowed batched multislice against a full-field reference and analytic limits."""

import numpy as np
import pytest

from ptyengine import physics
from ptyengine.multislice import (
    ProbeWindow,
    ceil_size,
    detector_points,
    interpolation_matrix,
    smooth_size,
    transmission_functions,
    window_size,
)

E = 300e3


def _weak_specimen(shape, n_slices, seed=0):
    """A smooth random potential (V·Å) standing in for a specimen, periodic by construction."""
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n_slices, *shape))
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.fftfreq(shape[1])[None, :]
    v = np.fft.ifft2(np.fft.fft2(v) * np.exp(-((ky**2 + kx**2) / 0.08**2))).real
    return 300 * v / v.std()  # ~0.2 rad of phase per slice at 300 kV


def _full_field_exit_wave(v, sampling, position, semiangle, aberrations, dz):
    """Reference: the probe propagated over the whole periodic field, complex128."""
    gpts = v.shape[1:]
    t = transmission_functions(v, E, sampling, dtype=np.complex128)
    psi = physics.probe(gpts, sampling, E, semiangle, aberrations, position=position,
                        dtype=np.complex128)
    prop = physics.fresnel_propagator(gpts, sampling, E, dz, dtype=np.complex128)
    for s in range(len(v)):
        psi = psi * t[s]
        if s < len(v) - 1:
            psi = np.fft.ifft2(np.fft.fft2(psi) * prop)
    return psi


def test_interpolation_matrix_is_the_far_field_at_any_frequency():
    rng = np.random.default_rng(1)
    w, d = 24, 0.3
    psi = rng.normal(size=w) + 1j * rng.normal(size=w)
    k = np.array([0.0, 0.05, -0.7, 1.234, 1 / (w * d) * 5])
    e = interpolation_matrix(w, d, k, dtype=np.complex128)
    direct = np.exp(-2j * np.pi * np.outer(k, np.arange(w) * d)) @ psi
    np.testing.assert_allclose(e @ np.fft.fft(psi), direct, atol=1e-12)
    # on the window's own Fourier grid a row picks one FFT bin
    np.testing.assert_allclose(np.abs(e[-1]), np.eye(w)[5], atol=1e-12)
    assert np.allclose(detector_points(4, 1.0, 2), [-2.25, -1.75, -1.25, -0.75, -0.25, 0.25,
                                                    0.75, 1.25])


def test_sizes_are_rounded_before_ceil():
    """1/dk = 15.620000000000001 Å on a 320-px, 15.62 Å field is 320 px, not 321 -> 324."""
    assert ceil_size(320.00000000000006) == 320 and ceil_size(320.001) == 321
    d = 15.62 / 320
    lam = physics.wavelength(E)
    dk = 2 * (40.332884e-3 / lam) / 64
    assert 1 / dk != 15.62  # the rounding error the rule is for
    args = ((d, d), E, 20.0, 0.0, 3.905, 40.332884)
    assert window_size(*args, detector_fov=1 / dk) == 320
    # a detector field of view a little larger than a field that holds the probe: the
    # field itself (no window of a mismatched period)
    assert window_size(*args, detector_fov=15.63) == 324
    assert window_size(*args, detector_fov=15.63, field_pixels=(320, 320)) == 320
    # a probe that does not fit the field gets its own window
    assert window_size((d, d), E, 20.0, 500.0, 3.905, 40.0, field_pixels=(320, 320)) > 320


def test_smooth_size():
    assert smooth_size(97) == 98 and smooth_size(128) == 128 and smooth_size(1025) == 1050


@pytest.mark.parametrize("dk_ratio, oversampling", [(1.0, 1), (1.33, 1), (1.33, 4)])
def test_vacuum_pattern_is_the_aperture(dk_ratio, oversampling):
    """Detector rule: on the window's own Fourier grid (dk_det = 1/(W d)) point sampling
    conserves the electrons exactly; off it, point samples of the far field conserve them
    to the edge pixels' share, and m × m points per pixel approach the pixel integral."""
    sampling = (0.1, 0.1)
    w, n_det = 128, 64
    dk = dk_ratio / (w * sampling[0])
    pw = ProbeWindow.build(w, sampling, E, 20.0, {"C10": 80.0}, [2.0] * 3, (n_det, n_det),
                           (dk, dk), dtype=np.complex128, oversampling=oversampling)
    t = np.ones((3, 100, 100), np.complex128)
    pats = pw.diffraction(t, np.array([[3.3, 4.7], [50.0, 12.25]]))
    # every electron lands on the detector, and the pattern is the (defocus-blind) disc
    tol = {(1.0, 1): 1e-9, (1.33, 1): 0.01, (1.33, 4): 0.002}[dk_ratio, oversampling]
    np.testing.assert_allclose(pats.sum(axis=(1, 2)), 1.0, atol=tol)
    # the same disc wherever the probe is (off the grid, to ~2 % of a pixel at the edge:
    # the window truncates the probe's tails)
    np.testing.assert_allclose(pats[0], pats[1], atol=1e-9 if dk_ratio == 1 else 0.03 * pats.max())
    k = np.hypot(*np.meshgrid((np.arange(n_det) - n_det // 2) * dk,
                              (np.arange(n_det) - n_det // 2) * dk, indexing="ij"))
    k_ap = 20e-3 / physics.wavelength(E)
    assert pats[0][k > k_ap + 2 * dk].sum() < 1e-3
    inner = pats[0][k < k_ap - 2 * dk]
    assert inner.std() / inner.mean() < 0.05  # flat disc


@pytest.mark.parametrize("defocus", [0.0, 60.0])
def test_window_matches_full_field(defocus):
    """Windowed multislice against a full-field propagation of the same probe.

    A window as large as the field must reproduce the full-field exit wave exactly (this
    checks the gather, the wrap round the periodic field and the sub-pixel shift); a
    smaller window differs only by the probe tail it cannot hold, so the squared error is
    bounded by (a few times) the full-field wave's energy outside the window.
    """
    sampling = (0.1, 0.1)
    shape, n_slices, dz = (160, 160), 6, 2.0
    v = _weak_specimen(shape, n_slices)
    positions = np.array([[9.07, 10.31], [1.5, 14.95]])  # the second wraps round the edge
    ab = {"C10": defocus}
    t = transmission_functions(v, E, sampling, dtype=np.complex128)
    refs = [_full_field_exit_wave(v, sampling, p, 20.0, ab, dz) for p in positions]
    for w, exact in ((160, True), (128, False)):
        pw = ProbeWindow.build(w, sampling, E, 20.0, ab, [dz] * n_slices, (16, 16),
                               (0.2, 0.2), dtype=np.complex128)
        got, corner = pw.exit_waves(t, positions)
        for i, ref in enumerate(refs):
            iy = (corner[i, 0] + np.arange(w)) % shape[0]
            ix = (corner[i, 1] + np.arange(w)) % shape[1]
            ref_w = ref[np.ix_(iy, ix)]
            err2 = np.sum(np.abs(got[i] - ref_w) ** 2)
            outside = 1 - np.sum(np.abs(ref_w) ** 2)
            if exact:
                assert err2 < 1e-20
            else:
                assert 1e-6 < outside < 0.02
                assert err2 < 4 * outside, (err2, outside)
    # and the specimen really changed the wave (the test can fail)
    vac, _ = pw.exit_waves(np.ones_like(t), positions)
    assert np.sqrt(np.sum(np.abs(vac - got) ** 2, axis=(1, 2))).min() > 0.1
