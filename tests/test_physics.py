"""Physics against analytic results: wavelength, probe normalisation, propagation, sign."""

import math

import numpy as np
import pytest

from ptyengine import physics
from ptyengine.errors import PtyengineError

E300 = 300e3


@pytest.mark.parametrize(
    "energy, expected",
    [(100e3, 0.037014), (200e3, 0.025079), (300e3, 0.019687)],  # Kirkland 2010, Table 2.2
)
def test_wavelength_five_significant_figures(energy, expected):
    assert float(f"{physics.wavelength(energy):.5g}") == expected


def test_interaction_constant_300kV():
    # Kirkland (2010) eq. 5.6: sigma = 2 pi m e lambda / h^2 = 6.5262e-4 rad/(V A) at 300 kV
    assert physics.interaction_constant(E300) == pytest.approx(6.5262e-4, rel=2e-5)


def test_probe_normalisation_and_parseval():
    gpts, sampling = (96, 128), (0.08, 0.07)
    psi = physics.probe(gpts, sampling, E300, 20.0, {"C10": 50.0, "C30": 1e4}, dtype=np.complex128)
    psi_k = np.fft.fft2(psi)
    assert np.sum(np.abs(psi) ** 2) == pytest.approx(1.0, abs=1e-12)
    assert np.sum(np.abs(psi_k) ** 2) / psi.size == pytest.approx(1.0, abs=1e-12)
    # the Fourier-space probe returned directly is the same wave
    psi_k2 = physics.probe(gpts, sampling, E300, 20.0, {"C10": 50.0, "C30": 1e4},
                           dtype=np.complex128, fourier=True)
    np.testing.assert_allclose(psi_k2, psi_k, atol=1e-9)


def test_aperture_area_matches_disc():
    # the anti-aliased edge keeps the aperture area equal to pi k_ap^2 to < 0.5 %
    gpts, sampling = (256, 256), (0.05, 0.05)
    a = physics.aperture(gpts, sampling, E300, 21.3)
    dk = 1 / (gpts[0] * sampling[0])
    k_ap = 21.3e-3 / physics.wavelength(E300)
    assert a.sum() * dk**2 == pytest.approx(math.pi * k_ap**2, rel=5e-3)


def test_aberration_function_terms():
    gpts, sampling = (64, 64), (0.1, 0.1)
    lam = physics.wavelength(E300)
    ky, kx = physics.spatial_frequencies(gpts, sampling)
    k2 = ky**2 + kx**2
    chi = physics.aberration_function(gpts, sampling, E300, {"C10": 100.0, "C30": 2e5})
    expected = math.pi * lam * 100.0 * k2 + 0.5 * math.pi * lam**3 * 2e5 * k2**2
    np.testing.assert_allclose(chi, expected, rtol=1e-12, atol=1e-12)
    # two-fold astigmatism along phi12: extreme along phi12 and zero at 45 deg to it
    chi12 = physics.aberration_function(gpts, sampling, E300, {"C12": 50.0, "phi12": 0.0})
    assert chi12[0, 10] == pytest.approx(math.pi * lam * 50.0 * (10 / 6.4) ** 2)
    assert chi12[10, 10] == pytest.approx(0.0, abs=1e-12)
    assert chi12[10, 0] == pytest.approx(-chi12[0, 10])


def test_unknown_aberration_is_an_error():
    with pytest.raises(PtyengineError, match="C99"):
        physics.aberration_function((8, 8), (0.1, 0.1), E300, {"C99": 1.0})


def test_vacuum_propagation_conserves_norm_and_composes():
    gpts, sampling = (128, 128), (0.1, 0.1)
    psi = physics.probe(gpts, sampling, E300, 20.0, dtype=np.complex128)
    p_full = physics.fresnel_propagator(gpts, sampling, E300, 300.0, dtype=np.complex128)
    p_half = physics.fresnel_propagator(gpts, sampling, E300, 150.0, dtype=np.complex128)
    full = np.fft.ifft2(np.fft.fft2(psi) * p_full)
    half = np.fft.ifft2(np.fft.fft2(np.fft.ifft2(np.fft.fft2(psi) * p_half)) * p_half)
    assert np.sum(np.abs(full) ** 2) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(half, full, atol=1e-12)
    # the propagated probe has really changed (not a trivial identity)
    assert np.max(np.abs(full - psi)) > 1e-2


@pytest.mark.parametrize("c10", [200.0, -200.0])
def test_defocus_sign(c10):
    """C10 > 0 puts the crossover a distance C10 *above* (upstream of) the entrance surface.

    Propagate the entrance-surface probe through vacuum by z (negative z = back towards the
    lens) and find where it is sharpest: at z = -C10.
    """
    gpts, sampling = (256, 256), (0.1, 0.1)
    psi_k = physics.probe(gpts, sampling, E300, 20.0, {"C10": c10}, dtype=np.complex128,
                          fourier=True)
    zs = np.arange(-400.0, 401.0, 10.0)
    peak = [np.max(np.abs(np.fft.ifft2(psi_k * physics.fresnel_propagator(
        gpts, sampling, E300, z, dtype=np.complex128))) ** 2) for z in zs]
    assert zs[int(np.argmax(peak))] == pytest.approx(-c10)
    # and at the crossover the probe is the aberration-free probe
    focused = physics.probe(gpts, sampling, E300, 20.0, dtype=np.complex128)
    back = np.fft.ifft2(psi_k * physics.fresnel_propagator(gpts, sampling, E300, -c10,
                                                         dtype=np.complex128))
    np.testing.assert_allclose(np.abs(back), np.abs(focused), atol=1e-10)


def test_sampling_too_coarse_for_aperture():
    with pytest.raises(PtyengineError, match="too coarse for a 30 mrad aperture"):
        physics.probe((64, 64), (0.3, 0.3), E300, 30.0)


def test_bad_energy():
    with pytest.raises(PtyengineError, match="energy"):
        physics.wavelength(-1.0)
