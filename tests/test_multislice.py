"""Windowed batched multislice against a full-field reference and analytic limits."""

import numpy as np
import pytest

from ptyengine import physics
from ptyengine.multislice import ProbeWindow, rebin_matrix, smooth_size, transmission_functions

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


def test_rebin_conserves_intensity():
    r = rebin_matrix(64, 0.05, 20, 0.13)
    inside = np.abs(np.fft.fftfreq(64) * 64 * 0.05) + 0.025 < 10 * 0.13 - 0.065
    np.testing.assert_allclose(r.sum(axis=0)[inside], 1.0, atol=1e-6)
    assert np.all(r.sum(axis=0) <= 1 + 1e-6)


def test_smooth_size():
    assert smooth_size(97) == 98 and smooth_size(128) == 128 and smooth_size(1025) == 1050


def test_vacuum_pattern_is_the_aperture():
    sampling = (0.1, 0.1)
    w, n_det = 128, 64
    k_max = 0.5 / 0.1 * 2 / 3
    dk = 2 * k_max / n_det
    pw = ProbeWindow.build(w, sampling, E, 20.0, {"C10": 80.0}, [2.0] * 3, (n_det, n_det),
                           (dk, dk), dtype=np.complex128)
    t = np.ones((3, 100, 100), np.complex128)
    pats = pw.diffraction(t, np.array([[3.3, 4.7], [50.0, 12.25]]))
    # every electron lands on the detector, and the pattern is the (defocus-blind) disc
    np.testing.assert_allclose(pats.sum(axis=(1, 2)), 1.0, atol=1e-6)
    np.testing.assert_allclose(pats[0], pats[1], atol=1e-9)
    k = np.hypot(*np.meshgrid((np.arange(n_det) - n_det // 2) * dk,
                              (np.arange(n_det) - n_det // 2) * dk, indexing="ij"))
    k_ap = 20e-3 / physics.wavelength(E)
    assert pats[0][k > k_ap + 2 * dk].sum() < 1e-6
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
