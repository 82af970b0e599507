"""HRTEM image formation and CTF correction (ptyengine.hrtem.ctf): analytic limits, the
envelopes' formulas, linear (weak-phase) imaging, corrections and the Thon-ring fit."""

import math

import numpy as np
import pytest

from ptyengine import physics
from ptyengine.errors import PtyengineError
from ptyengine.hrtem import ctf, stack
from ptyengine.metrics import ncc

E = 300e3
LAM = physics.wavelength(E)


def smooth_noise(shape, seed, sigma=2.0):
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.random.default_rng(seed).normal(size=shape), sigma, mode="wrap")


def test_zero_aberrations_transfer_nothing():
    o = ctf.Optics(energy=E)
    assert np.all(ctf.weak_phase_ctf((32, 48), (0.2, 0.2), o) == 0)  # sin 0
    assert np.allclose(ctf.wave_transfer((32, 48), (0.2, 0.2), o), 1)
    phase = np.exp(1j * 0.3 * smooth_noise((32, 48), 0))
    assert np.allclose(ctf.exit_wave_image(phase, (0.2, 0.2), o), 1, atol=1e-12)  # no contrast


def test_defocus_is_fresnel_propagation_and_scherzer_is_underfocus():
    """exp(−iχ) with C10 = dz is the Fresnel propagator over dz: C10 < 0 images a plane
    upstream of the exit surface (underfocus); Scherzer is on that side."""
    gpts, s = (40, 40), (0.25, 0.25)
    t = ctf.wave_transfer(gpts, s, ctf.Optics(energy=E, defocus=-300.0))
    p = physics.fresnel_propagator(gpts, s, E, -300.0, dtype=np.complex128, fraction=10)
    assert np.allclose(t, p)
    assert ctf.scherzer_defocus(E, 1.2e7) == pytest.approx(-math.sqrt(4 / 3 * 1.2e7 * LAM))
    assert ctf.scherzer_defocus(E, 1.2e7) == pytest.approx(-561.2, abs=0.1)


def test_envelopes_match_their_formulas():
    o = ctf.Optics(energy=E, defocus=-500.0, cs=1e7, focal_spread=40.0, convergence=0.3)
    k = np.array([0.0, 0.2, 0.5, 1.0])
    assert np.allclose(ctf.temporal_envelope(k, o),
                       np.exp(-0.5 * (math.pi * LAM * 40.0) ** 2 * k**4))
    # Kirkland's form for round aberrations: exp[−(πα/λ)²(Cs λ³ k³ + C10 λ k)²]
    a = 0.3e-3
    want = np.exp(-(math.pi * a / LAM) ** 2 * (1e7 * LAM**3 * k**3 - 500.0 * LAM * k) ** 2)
    assert np.allclose(ctf.spatial_envelope(k, np.zeros_like(k), o), want, rtol=1e-6)
    assert o.information_limit() == pytest.approx(math.sqrt(2 / (math.pi * LAM * 40.0)))
    assert ctf.temporal_envelope(o.information_limit(), o) == pytest.approx(math.exp(-2))


def test_weak_phase_image_is_linear_in_the_ctf():
    """I(k) = δ + 2σV(k)·sin χ·E for ψ = exp(iσV), σV ≪ 1."""
    v = smooth_noise((64, 64), 1)
    o = ctf.Optics(energy=E, defocus=-700.0, cs=1.2e7, focal_spread=30.0, convergence=0.2)
    eps = 1e-4
    img = ctf.exit_wave_image(np.exp(1j * eps * v), (0.5, 0.5), o)
    lhs = np.fft.fft2(img - 1)
    rhs = 2 * eps * np.fft.fft2(v) * ctf.weak_phase_ctf(v.shape, (0.5, 0.5), o)
    lhs[0, 0] = rhs[0, 0] = 0
    assert np.abs(lhs - rhs).max() < 1e-4 * np.abs(rhs).max()


@pytest.fixture(scope="module")
def weak_crystal():
    """UiO-66 [110], 4 Å thick (weak phase), its projected potential and a noise-free
    image at C10 = −900 Å (not Scherzer: the CTF changes sign inside the passband)."""
    psi, s, _ = stack.crystal_exit_wave("uio66", (1, 1, 0), 4.0, E, 0.2)
    o = ctf.Optics(energy=E, defocus=-900.0, cs=1.2e7, focal_spread=30.0, convergence=0.1)
    return np.angle(psi), s, o, ctf.exit_wave_image(psi, s, o)


def band(img, s, k=0.8):
    from ptyengine.metrics import band_limit

    return band_limit(img, s, k, periodic=True)


def test_phase_flip_and_wiener_raise_the_correlation(weak_crystal):
    v, s, o, img = weak_crystal
    raw = ncc(band(img, s), band(v, s))
    flip = ncc(band(ctf.phase_flip(img, s[0], o), s), band(v, s))
    wien = ncc(band(ctf.wiener_filter(img, s[0], o, 10.0), s), band(v, s))
    assert flip > raw + 0.2 and wien > raw + 0.2
    assert flip > 0.7 and wien > 0.7


def test_camera_frames_shift_and_dose():
    """Each camera pixel is the mean of the image over its area (box transfer sinc·sinc,
    centre (j + ½)p); the content moves by +shift, exactly for sub-pixel shifts."""
    img = 1 + 0.2 * smooth_noise((40, 30), 2)
    s = (0.5, 0.5)
    frames = ctf.camera_frames(img, s, 0.5, (40, 30), [(0, 0), (3, -2), (0.5, 0)])
    fy, fx = np.fft.fftfreq(40)[:, None], np.fft.fftfreq(30)[None, :]
    box = np.sinc(fy) * np.sinc(fx) * np.exp(1j * np.pi * (fy + fx))  # mean over [j, j+1)
    want = np.fft.ifft2(np.fft.fft2(img) * box).real
    assert np.allclose(frames[0], want, atol=1e-5)
    assert np.allclose(frames[1], np.roll(want, (3, -2), axis=(0, 1)), atol=1e-5)
    half = np.fft.ifft2(np.fft.fft2(want) * np.exp(-1j * np.pi * fy)).real
    assert np.allclose(frames[2], half, atol=1e-5)
    counts = ctf.camera_frames(np.ones((16, 16)), (1.0, 1.0), 1.0, (200, 200), None, 3.0, 5)
    assert counts.mean() == pytest.approx(3.0, rel=0.02)
    assert counts.var() == pytest.approx(3.0, rel=0.05)  # Poisson


@pytest.mark.parametrize("c10, cs", [(-1234.0, 1.2e7), (-800.0, 2e7)])
def test_thon_ring_fit_recovers_the_defocus(c10, cs):
    """An amorphous weak-phase object (white phase noise), 50 e/pixel: C10 within 3 %."""
    v = np.random.default_rng(3).normal(size=(256, 256))
    o = ctf.Optics(energy=E, defocus=c10, cs=cs, focal_spread=30.0, convergence=0.05)
    img = ctf.exit_wave_image(np.exp(1j * 0.05 * v), (0.4, 0.4), o)
    noisy = np.random.default_rng(4).poisson(img * 50) / 50
    fit = ctf.fit_defocus(noisy, 0.4, ctf.Optics(energy=E, cs=cs, focal_spread=30.0))
    assert fit.defocus == pytest.approx(c10, rel=0.03) and fit.score > 0.3
    assert ctf.lattice_power_fraction(noisy, 0.4, fit.k_range) < 0.05


def test_thon_ring_fit_refuses_a_crystal(weak_crystal):
    _, s, o, img = weak_crystal
    frame = ctf.camera_frames(img, s, 0.5, (128, 128))[0]
    assert ctf.lattice_power_fraction(frame, 0.5, (0.05, 0.9)) > 0.8
    with pytest.raises(PtyengineError, match="lattice reflections: Thon rings need an amorphous"):
        ctf.fit_defocus(frame, 0.5, o)


def test_bad_inputs():
    with pytest.raises(PtyengineError, match="NaN"):
        ctf.phase_flip(np.full((8, 8), np.nan), 1.0, ctf.Optics())
    with pytest.raises(PtyengineError, match="no signal"):
        ctf.wiener_filter(np.ones((8, 8)), 1.0, ctf.Optics(), 5.0)
    with pytest.raises(PtyengineError, match="2D"):
        ctf.exit_wave_image(np.ones((2, 8, 8)), (1, 1), ctf.Optics())
    with pytest.raises(PtyengineError, match="focal_spread"):
        ctf.Optics(focal_spread=-1)
