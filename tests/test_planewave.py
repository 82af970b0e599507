"""The simulator's plane-wave (TEM) mode: tilted propagator, sign of the tilt, patterns."""

import math

import numpy as np
import pytest

from ptyengine import physics, planewave
from ptyengine.errors import PtyengineError

E300 = 300e3
G_STO = 1 / 3.905  # SrTiO3 (100) spacing, 1/Å


@pytest.fixture(scope="module")
def sto():
    """SrTiO3 [001], one unit cell laterally (a static lattice's exit wave is periodic with
    it), 100 Å thick, band-limited at 3 1/Å."""
    return planewave.plane_wave_specimen("srtio3", (0, 0, 1), field=(3.905, 3.905),
                                         thickness=100.0, k_max=3.0)


def test_zero_tilt_is_the_plain_propagator():
    gpts, sampling = (48, 40), (0.1, 0.12)
    plain = physics.fresnel_propagator(gpts, sampling, E300, 2.0)
    np.testing.assert_array_equal(planewave.tilted_propagator(gpts, sampling, E300, 2.0), plain)
    np.testing.assert_array_equal(
        planewave.tilted_propagator(gpts, sampling, E300, 2.0, (0.0, 0.0)), plain)
    tilted = planewave.tilted_propagator(gpts, sampling, E300, 2.0, (30.0, -20.0))
    assert np.array_equal(tilted != 0, plain != 0)  # the same band limit
    np.testing.assert_allclose(np.abs(tilted), np.abs(plain), atol=1e-6)


def test_tilted_propagator_moves_the_wave_against_the_tilt():
    """In the crystal's frame the beam travels along −tanθ: a packet propagated by dz moves
    sideways by −dz·tanθ (the zone axis is tilted towards +θ in the beam's frame)."""
    gpts, d, dz, tilt = (128, 128), (0.1, 0.1), 50.0, (40.0, -60.0)
    y, x = np.mgrid[:128, :128] * 0.1
    packet = np.exp(-((y - 6.4) ** 2 + (x - 6.4) ** 2) / 2.0).astype(np.complex128)
    out = np.fft.ifft2(np.fft.fft2(packet) * planewave.tilted_propagator(
        gpts, d, E300, dz, tilt, dtype=np.complex128))
    w = np.abs(out) ** 2
    centre = [(w * c).sum() / w.sum() for c in (y, x)]
    expect = [6.4 - dz * math.tan(t * 1e-3) for t in tilt]
    np.testing.assert_allclose(centre, expect, atol=0.02)


def _reflections(intensity):
    """{(h, k): I} of the (k along y, h along x) reflections of a one-cell field."""
    ny, nx = intensity.shape
    return {(h, k): intensity[k % ny, h % nx] for h in range(-11, 12) for k in range(-11, 12)}


def test_tilt_sign():
    """A tilt θ_x > 0 excites the reflections on the +k_x side: the Laue circle (centre
    tanθ/λ, through the direct beam) meets the k_x axis at 2 tanθ_x/λ (h = 8 here), whose
    reflection is strong while its mirror is not; the same for θ_y along k_y. (A thin,
    nearly kinematic crystal: in thicker ones the systematic row's dynamical coupling
    evens the row out; the zone-axis tests check the circle in 2-D patterns.)"""
    thin = planewave.plane_wave_specimen("srtio3", (0, 0, 1), field=(3.905, 3.905),
                                         thickness=30.0, k_max=3.0)
    theta = 20.0
    crossing = 2 * math.tan(theta * 1e-3) / physics.wavelength(E300)
    h = round(crossing / G_STO)
    assert h == 8
    for tilt, axis in (((0.0, theta), 1), ((theta, 0.0), 0)):
        refl = _reflections(planewave.far_field(thin, E300, tilt))
        on = refl[(h, 0)] if axis == 1 else refl[(0, h)]
        mirror = refl[(-h, 0)] if axis == 1 else refl[(0, -h)]
        assert on > 10 * mirror
        # intensity-weighted mean position of the scattered beams lies on the +θ side
        ks = np.array([(k, hh) for (hh, k) in refl if (hh, k) != (0, 0)], float) * G_STO
        w = np.array([refl[(hh, k)] for (hh, k) in refl if (hh, k) != (0, 0)])
        mean = (w[:, None] * ks).sum(0) / w.sum()
        assert mean[axis] > 0.2 and abs(mean[1 - axis]) < 1e-6


def test_pattern_centre_normalisation_and_dose(sto):
    p = planewave.diffraction_pattern(sto, E300, (5.0, -8.0), detector_pixels=128, dk=0.04)
    assert p.dtype == np.float32 and p.shape == (128, 128)
    assert np.unravel_index(np.argmax(p), p.shape) == (64, 64)  # the direct beam
    assert 0.95 < p.sum() <= 1.0 + 1e-4  # fractions of the incident electrons
    # a beam of the field's Fourier grid lands at (pixel − n//2)·dk: (200) at 0.512 1/Å
    sharp = planewave.diffraction_pattern(sto, E300, (0.0, 0.0), detector_pixels=64,
                                          dk=G_STO / 4, spot_sigma=0.0)
    assert sharp[32, 32 + 8] > 0 and sharp[32, 32 + 7] == 0
    counts = planewave.diffraction_pattern(sto, E300, (5.0, -8.0), detector_pixels=128,
                                           dk=0.04, dose=1e5, seed=3)
    again = planewave.diffraction_pattern(sto, E300, (5.0, -8.0), detector_pixels=128,
                                          dk=0.04, dose=1e5, seed=3)
    np.testing.assert_array_equal(counts, again)
    assert np.all(counts == np.round(counts)) and abs(counts.sum() - 1e5 * p.sum()) < 2e3


def test_bad_plane_wave_input(sto):
    with pytest.raises(PtyengineError, match="at most 100 mrad"):
        planewave.tilted_propagator((8, 8), (0.1, 0.1), E300, 2.0, (0.0, 150.0))
    with pytest.raises(PtyengineError, match="band-limits the simulation"):
        planewave.diffraction_pattern(sto, E300, detector_pixels=512, dk=0.05)
    with pytest.raises(PtyengineError, match="dose"):
        planewave.diffraction_pattern(sto, E300, detector_pixels=64, dk=0.05, dose=-1)


def test_tilt_and_zone_axis_direction_round_trip():
    """zone_axis_direction is the zone axis (tan θ_x, tan θ_y, 1)/norm of a tilt, and
    tilt_from_direction inverts it; the Laue circle's centre lies along its transverse part."""
    tilt = (-35.0, 62.0)
    n = planewave.zone_axis_direction(tilt)
    assert np.isclose(np.linalg.norm(n), 1.0)
    assert np.allclose(planewave.tilt_from_direction(n), tilt)
    (cy, cx), _ = planewave.laue_circle(300e3, tilt)
    assert np.isclose(np.arctan2(cy, cx), np.arctan2(n[1], n[0]))
