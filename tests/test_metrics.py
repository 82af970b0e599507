"""Metrics against known answers: shifts, correlations, resampling, FRC resolution."""

import numpy as np
import pytest

from ptyengine import metrics
from ptyengine.errors import PtyengineError


def smooth_field(shape, sigma_px, seed):
    """Periodic Gaussian-filtered white noise (correlation length ~ sigma_px pixels)."""
    rng = np.random.default_rng(seed)
    ky = np.fft.fftfreq(shape[0])[:, None]
    kx = np.fft.fftfreq(shape[1])[None, :]
    gauss = np.exp(-2 * (np.pi * sigma_px) ** 2 * (ky**2 + kx**2))
    return np.fft.ifft2(np.fft.fft2(rng.standard_normal(shape)) * gauss).real


def cosines(y, x):
    """Analytic periodic test function on a 25.6 Å x 19.2 Å cell (1/Å frequencies < 1)."""
    Y, X = np.meshgrid(y, x, indexing="ij")
    return (1.0 + np.cos(2 * np.pi * (3 * Y / 25.6 + 0.4))
            + 0.5 * np.cos(2 * np.pi * (5 * Y / 25.6 - 7 * X / 19.2))
            + 0.3 * np.sin(2 * np.pi * 11 * X / 19.2))  # fmt: skip


def test_register_shift_periodic_subpixel():
    img = smooth_field((256, 256), 3, 0)
    moved = metrics.shift_image(img, (3.3, -7.6))
    s = metrics.register_shift(img, moved, window=None)
    assert s == pytest.approx((-3.3, 7.6), abs=0.01)  # shift that brings `moved` back
    assert metrics.register_shift(img, moved, upsample=1, window=None) == (-3.0, 8.0)
    back = metrics.shift_image(moved, s)
    assert np.max(np.abs(back - img)) < 1e-3 * np.ptp(img)


def test_register_shift_nonperiodic_crop_with_window():
    big = smooth_field((512, 512), 3, 1)
    ref = big[100:356, 50:306]
    # the same field sampled at positions displaced by (3.3, -7.6) px: no wrap-around
    moved = metrics.truth_on_grid(big, 1.0, (0, 0), ref.shape, 1.0, (100 - 3.3, 50 + 7.6))
    for window in ("tukey", "hann"):
        s = metrics.register_shift(ref, moved, window=window)
        assert np.hypot(s[0] + 3.3, s[1] - 7.6) < 0.01, (window, s)  # one pass: ~0.045
    # inverted contrast registers only with allow_inversion; max_shift clips the search
    s = metrics.register_shift(ref, -moved, allow_inversion=True)
    assert np.hypot(s[0] + 3.3, s[1] - 7.6) < 0.05
    s = metrics.register_shift(ref, moved, max_shift=2.0)
    assert max(abs(s[0]), abs(s[1])) <= 2.0 + 1e-9


def test_shift_image_round_trip_and_integer_roll():
    img = smooth_field((64, 96), 2.5, 2)
    rt = metrics.shift_image(metrics.shift_image(img, (0.37, -5.81)), (-0.37, 5.81))
    assert np.max(np.abs(rt - img)) < 1e-6 * np.ptp(img)
    assert np.allclose(metrics.shift_image(img, (2, -3)), np.roll(img, (2, -3), axis=(0, 1)))


def test_ncc_identity_inversion_noise():
    rng = np.random.default_rng(3)
    a = smooth_field((256, 256), 2, 4)
    assert metrics.ncc(a, a) == pytest.approx(1.0, abs=1e-12)
    assert metrics.ncc(a, 3 - 2 * a) == pytest.approx(-1.0, abs=1e-12)
    assert abs(metrics.ncc(rng.standard_normal((256, 256)), rng.standard_normal((256, 256)))) < 0.05
    mask = np.zeros(a.shape, bool)
    mask[:128] = True
    b = a.copy()
    b[128:] = rng.standard_normal((128, 256))  # garbage outside the mask is ignored
    assert metrics.ncc(a, b, mask=mask) == pytest.approx(1.0, abs=1e-12)
    assert np.isnan(metrics.ncc(a, np.ones_like(a)))
    with pytest.raises(PtyengineError):
        metrics.ncc(a, a[:10])


def test_truth_on_grid_matches_analytic_function():
    ts = (0.2, 0.15)  # truth: 128 x 128 pixels = one 25.6 x 19.2 Å period
    truth = cosines(np.arange(128) * ts[0], np.arange(128) * ts[1])
    for gs in [(0.07, 0.11), (0.33, 0.27)]:  # finer and coarser than the truth
        go, shape = (-7.13, 31.4), (70, 90)  # offset, and the coarse grid runs past a period
        out = metrics.truth_on_grid(truth, ts, (0, 0), shape, gs, go)
        exact = cosines(go[0] + gs[0] * np.arange(shape[0]), go[1] + gs[1] * np.arange(shape[1]))
        assert np.max(np.abs(out - exact)) < 1e-3 * np.max(np.abs(exact)), gs
    # a truth whose pixel (0, 0) is not at the field origin
    t2 = cosines(1.1 + np.arange(128) * ts[0], -0.4 + np.arange(128) * ts[1])
    out2 = metrics.truth_on_grid(t2, ts, (1.1, -0.4), shape, gs, go)
    assert np.max(np.abs(out2 - exact)) < 1e-3 * np.max(np.abs(exact))
    # a grid too coarse for the 11/19.2 Å^-1 term drops it instead of aliasing it
    coarse = metrics.truth_on_grid(truth, ts, (0, 0), (20, 20), (1.0, 1.0), (0, 0))
    y, x = np.arange(20.0), np.arange(20.0)
    no_x_term = cosines(y, x) - 0.3 * np.sin(2 * np.pi * 11 * x / 19.2)[None, :]
    assert np.max(np.abs(coarse - no_x_term)) < 1e-9


def test_band_limit_keeps_low_and_removes_high_frequencies():
    n, d = 128, 0.1  # k spacing 1/12.8 Å^-1
    y = np.arange(n) * d
    low = np.cos(2 * np.pi * 8 / 12.8 * y)[:, None] * np.ones(n)  # k = 0.625 Å^-1
    high = np.cos(2 * np.pi * 40 / 12.8 * y)[None, :] * np.ones((n, 1))  # k = 3.125 Å^-1
    out = metrics.band_limit(low + high, d, k_max=2.0, periodic=True)
    assert np.max(np.abs(out - low)) < 1e-12
    assert np.array_equal(metrics.band_limit(low, d, None), low)
    # a non-periodic image (ramp, incommensurate cosine): mirror extension avoids the
    # ringing of the wrap-around jump
    Y, X = np.meshgrid(y, y, indexing="ij")
    smooth = np.cos(2 * np.pi * 0.37 * Y + 0.5) + 0.05 * X
    inner = (slice(10, -10), slice(10, -10))
    err_mirror = np.abs(metrics.band_limit(smooth, d, 2.0) - smooth)[inner].max()
    err_wrap = np.abs(metrics.band_limit(smooth, d, 2.0, periodic=True) - smooth)[inner].max()
    assert err_mirror < 0.01 < 0.02 < err_wrap


def _reconstruction(shift_a, noise, seed):
    """Truth (periodic, 0.1 Å pixels, content below ~0.8 Å^-1) and a 0.25 Å-pixel image of
    it displaced by shift_a Å, plus white noise."""
    truth = smooth_field((512, 512), 4, seed)  # 51.2 Å field
    truth /= truth.std()
    origin, shape, samp = (3.1, 5.7), (128, 128), (0.25, 0.25)
    clean = metrics.truth_on_grid(truth, 0.1, (0, 0), shape, samp,
                                  (origin[0] - shift_a[0], origin[1] - shift_a[1]))
    rng = np.random.default_rng(seed + 100)
    return truth, clean, clean + noise * rng.standard_normal(shape), origin, samp


def test_compare_to_truth_recovers_shift_and_expected_ncc():
    shift = (0.7, -0.3)
    truth, clean, recon, origin, samp = _reconstruction(shift, noise=0.8, seed=5)
    r = metrics.compare_to_truth(recon, samp, origin, truth, 0.1, border=4)
    assert np.hypot(r["shift_A"][0] - shift[0], r["shift_A"][1] - shift[1]) < 0.05
    expected = metrics.ncc(clean[4:-4, 4:-4], recon[4:-4, 4:-4])  # noise-limited ceiling
    assert r["ncc"] == pytest.approx(expected, abs=0.01)
    assert r["k_max"] == pytest.approx(2.0)  # Nyquist of 0.25 Å pixels
    # band limit below the noise band: noise outside the signal band is removed
    rb = metrics.compare_to_truth(recon, samp, origin, truth, 0.1, k_max=0.8, border=4)
    assert rb["ncc"] > r["ncc"] + 0.15 and rb["ncc"] > 0.9
    assert np.hypot(rb["shift_A"][0] - shift[0], rb["shift_A"][1] - shift[1]) < 0.05
    # without registration the 0.76 Å offset costs correlation; inverted contrast is negative
    r0 = metrics.compare_to_truth(recon, samp, origin, truth, 0.1, k_max=0.8, register=False)
    assert r0["ncc"] < rb["ncc"] - 0.1 and r0["shift_A"] == (0.0, 0.0)
    ri = metrics.compare_to_truth(-recon, samp, origin, truth, 0.1, k_max=0.8, border=4)
    assert ri["ncc"] == pytest.approx(-rb["ncc"], abs=1e-6)
    rm = metrics.compare_to_truth(recon, samp, origin, truth, 0.1, k_max=0.8, max_shift=(0.25, 1))
    assert abs(rm["shift_A"][0]) <= 0.25 + 1e-9 and rm["ncc"] < rb["ncc"]
    with pytest.raises(PtyengineError):
        metrics.compare_to_truth(recon, samp, origin, truth, 0.1, border=64)
    with pytest.raises(PtyengineError, match="complex"):
        metrics.compare_to_truth(np.exp(1j * recon), samp, origin, truth, 0.1)


def test_frc_high_at_low_k_and_low_where_noise_dominates():
    rng = np.random.default_rng(6)
    signal = smooth_field((256, 256), 3, 7)
    signal /= signal.std()
    a = signal + 0.3 * rng.standard_normal(signal.shape)
    b = signal + 0.3 * rng.standard_normal(signal.shape)
    k, values = metrics.frc(a, b, 0.5)
    assert k.shape == (128,) and k[0] == pytest.approx(1 / 128) and k[-1] == pytest.approx(1.0)
    assert np.all(values[k < 0.05] > 0.95)
    assert np.all(values[k > 0.4] < 0.2)
    assert np.allclose(metrics.frc(a, a, 0.5)[1], 1.0)


@pytest.mark.parametrize("k0", [0.6, 1.2])
def test_frc_resolution_of_band_limited_signal(k0):
    rng = np.random.default_rng(8)
    n, d = 256, 0.2  # Nyquist 2.5 Å^-1
    ky = np.fft.fftfreq(n, d)[:, None]
    kx = np.fft.fftfreq(n, d)[None, :]
    band = np.hypot(ky, kx) < k0
    signal = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, n))) * band).real
    signal /= signal.std()
    noise = 1 / np.sqrt(10 * band.mean())  # white; spectral SNR 10 in the band, 0 outside
    a = signal + noise * rng.standard_normal((n, n))
    b = signal + noise * rng.standard_normal((n, n))
    for threshold in ("halfbit", 1 / 7):
        res = metrics.frc_resolution(a, b, d, threshold=threshold)
        assert res == pytest.approx(1 / k0, rel=0.2), (threshold, res)
    # never below the threshold: the sampling limit; never above: infinite
    assert metrics.frc_resolution(signal, signal, d) == pytest.approx(2 * d)
    assert metrics.frc_resolution(a, rng.standard_normal((n, n)), d, threshold=0.5) == np.inf


def test_lowpass_ncc_sees_structure_through_fine_noise():
    """With σ the NCC compares Gaussian-blurred images: white noise on a smooth truth
    lowers the plain NCC, much less the NCC after a 1 Å blur."""
    from ptyengine import metrics

    rng = np.random.default_rng(2)
    d = (0.25, 0.25)
    truth = metrics.band_limit(rng.standard_normal((96, 96)), d, None, periodic=True,
                               sigma=1.5)  # fmt: skip
    img = truth + 2 * truth.std() * rng.standard_normal(truth.shape)
    r = metrics.compare_to_truth(img, d, (0, 0), truth, d, register=False, border=8, sigma=1.0)
    assert r["sigma_A"] == 1.0
    assert r["ncc"] < 0.6 < 0.9 < r["ncc_lowpass"]


@pytest.mark.parametrize("k0", [0.8, 1.4])
def test_compare_to_truth_frc_resolution_of_truth_band_limited_at_k0(k0):
    """FRC against the ground truth (``frc_threshold``): an image that is the truth cut
    at k0 (on a displaced, smaller grid) has its resolution at 1/k0 Å; the truth itself
    reaches the grid's Nyquist bound; inverted contrast never crosses (inf)."""
    rng = np.random.default_rng(3)
    n, d = 128, 0.2  # truth: 25.6 Å periodic, white up to its Nyquist 2.5 1/Å
    truth = rng.standard_normal((n, n))
    shape, samp, origin = (96, 96), (0.25, 0.25), (1.3, 0.7)  # image Nyquist 2 1/Å
    cut = metrics.truth_on_grid(truth, d, (0, 0), shape, samp, origin, k_max=k0, edge=0.02)
    rc = metrics.compare_to_truth(cut, samp, origin, truth, d, frc_threshold=1 / 7)
    assert rc["frc_A"] == pytest.approx(1 / k0, rel=0.1)
    assert rc["shift_A"] == pytest.approx((0, 0), abs=0.02)
    full = metrics.truth_on_grid(truth, d, (0, 0), shape, samp, origin)
    r = metrics.compare_to_truth(full, samp, origin, truth, d, frc_threshold=1 / 7)
    assert r["frc_A"] == pytest.approx(0.5)  # 2 × 0.25 Å: the sampling's bound
    r = metrics.compare_to_truth(-cut, samp, origin, truth, d, frc_threshold=metrics.HALFBIT)
    assert r["frc_A"] == np.inf and r["ncc"] == pytest.approx(-rc["ncc"])
    assert "frc_A" not in metrics.compare_to_truth(cut, samp, origin, truth, d)
    # a band without its lowest frequencies (SSB, tcBF): still 1/k0, the last crossing
    low = metrics.truth_on_grid(truth, d, (0, 0), shape, samp, origin, k_max=0.3, edge=0.02)
    r = metrics.compare_to_truth(cut - low, samp, origin, truth, d, frc_threshold=1 / 7)
    assert r["frc_A"] == pytest.approx(1 / k0, rel=0.1)
