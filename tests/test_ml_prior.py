"""The ML engine's empirical prior (:func:`ptyengine.reconstruct.priors.empirical_spectrum`):
its spectrum, when "auto" takes it, that it survives checkpoints, and that on noisy crystal
data it gives a better phase than the Gaussian prior it starts from."""

import numpy as np
import pytest
import test_ml
from test_ml import _counts, _ncc

from ptyengine.errors import PtyengineError
from ptyengine.reconstruct import ml as mlmod
from ptyengine.reconstruct.ml import MLParameters, ml
from ptyengine.reconstruct.ml_parameters import EMPIRICAL_DEFOCUS, EMPIRICAL_UP_TO, prior_kind
from ptyengine.reconstruct.priors import empirical_spectrum, ring_median

thin = test_ml.thin  # the noise-free one-cell SrTiO3 data (a module fixture: made again here)


def test_ring_median_of_a_radial_function_is_itself():
    ky = np.fft.fftfreq(64, 0.5)[:, None]
    kx = np.fft.fftfreq(60, 0.5)[None, :]
    k = np.hypot(ky, kx)
    dk = 2.0 / (64 * 0.5)
    stepped = np.floor(k / dk) + 1.0  # constant on each ring of the median
    np.testing.assert_allclose(ring_median(stepped, (0.5, 0.5)), stepped)


def test_empirical_spectrum_is_weak_at_the_pilots_reflections():
    """A pilot of two lattice fringes in noise: Λ is small at their Fourier coefficients
    (the prior lets them through), scale × N / (floor × ν) elsewhere, and in proportion to
    the scale."""
    rng = np.random.default_rng(0)
    n, d = 128, 0.4
    y, x = np.mgrid[:n, :n] * d
    g1, g2 = (8 / (n * d), 0.0), (0.0, 13 / (n * d))  # on the grid: exact coefficients
    pilot = (np.cos(2 * np.pi * g1[0] * y) + 0.5 * np.cos(2 * np.pi * g2[1] * x)
             + 0.3 * rng.standard_normal((n, n)))  # fmt: skip
    lam = empirical_spectrum(pilot, (d, d), scale=0.3, floor=0.1)
    assert lam.dtype == np.float32 and lam.shape == (n, n)
    peaks = [lam[8, 0], lam[-8, 0], lam[0, 13], lam[0, -13]]
    background = np.median(lam)
    assert max(peaks) < 1e-3 * background
    # background: the noise's ring median ν, Λ = 0.3 N / (0.1 ν) with ν ≈ σ² N
    assert background == pytest.approx(0.3 / (0.1 * 0.09), rel=0.3)
    np.testing.assert_allclose(empirical_spectrum(pilot, (d, d), scale=0.6, floor=0.1),
                               2 * lam, rtol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="finite"):
        empirical_spectrum(np.full((8, 8), np.nan), (d, d))
    with pytest.raises(ValueError, match="flat"):  # Λ would be infinite: the object pinned
        empirical_spectrum(np.full((8, 8), 0.25), (d, d))


def test_a_flat_pilot_or_no_iterations_keep_the_gaussian_prior(thin, recwarn):
    """A pilot whose flat start won (the held-out rule can pick iteration 0) gives no
    spectrum: the run keeps the Gaussian prior and says so; with no iterations to
    regularise no pilot runs (this was an overflow to an infinite Λ)."""
    from types import SimpleNamespace

    from ptyengine.reconstruct import ml_starts

    lines = []
    flat = SimpleNamespace(phase=np.zeros((16, 16)), errors=[1.0], best_iteration=0)
    assert ml_starts.pilot(lambda *a: flat, None, MLParameters(), np, "", None,
                           lines.append) is None  # fmt: skip
    assert "flat; the Gaussian prior stays" in lines[-1]
    res = ml(_counts(thin, 20.0), MLParameters(prior="empirical", iterations=0))
    assert res.extra["prior"]["kind"] == "gaussian" and res.extra["prior"]["pilot"] is None
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_auto_takes_the_empirical_prior_at_low_dose_out_of_focus_on_one_slice():
    far = EMPIRICAL_DEFOCUS
    assert prior_kind(MLParameters(), EMPIRICAL_UP_TO / 5, far) == "empirical"
    assert prior_kind(MLParameters(), EMPIRICAL_UP_TO, -far) == "empirical"
    assert prior_kind(MLParameters(), EMPIRICAL_UP_TO * 1.01, far) == "gaussian"
    assert prior_kind(MLParameters(), 20.0, 0.5 * far) == "gaussian"  # near focus
    assert prior_kind(MLParameters(slices=4, slice_thickness=2.0), 20.0, far) == "gaussian"
    assert prior_kind(MLParameters(prior="gaussian"), 20.0, far) == "gaussian"
    assert prior_kind(MLParameters(prior="empirical"), 1e6, 0.0) == "empirical"


@pytest.mark.parametrize("bad, match", [
    (dict(prior="wiener"), "--prior must be one of"),
    (dict(prior="empirical", slices=4, slice_thickness=2.0), "pilot is single-slice"),
    (dict(prior_scale=0.0), "--prior-scale"), (dict(prior_floor=-1.0), "--prior-floor")])
def test_bad_prior_options(bad, match):
    with pytest.raises(PtyengineError, match=match):
        MLParameters(**bad)


def test_empirical_prior_beats_the_gaussian_on_noisy_crystal_data(thin):
    """SrTiO3 at 20 e/Å² (0.5 e per bright-field pixel per pattern), the crossover 15 nm
    from it (the prior asked for: "auto" takes it from 20 nm), two noise draws: the
    empirical prior's phase correlates better with σV than the Gaussian pilot's, and the
    result records its prior and pilot."""
    path = thin[0]
    gains = []
    for seed in (0, 1):
        ds = _counts(thin, 20.0, seed=seed)
        gauss = ml(ds, MLParameters(prior="gaussian", seed=seed))
        emp = ml(ds, MLParameters(prior="empirical", seed=seed))
        assert emp.extra["prior"]["kind"] == "empirical"
        assert emp.extra["prior"]["pilot"]["iterations"] == len(gauss.errors)
        gains.append(_ncc(emp.phase, emp.geometry, path) - _ncc(gauss.phase, gauss.geometry,
                                                                 path))
    assert min(gains) > 0.0 and np.mean(gains) > 0.05, gains


def test_empirical_prior_survives_checkpoint_resume(thin, tmp_path):
    """Interrupted and resumed, a run keeps the spectrum its pilot gave (the pilot is not
    run again) and ends where the uninterrupted run ends."""
    ds = _counts(thin, 20.0)
    params = MLParameters(iterations=8, holdout=0.0, prior="empirical")
    ref = ml(ds, params)
    ck = str(tmp_path / "ck.npz")

    def interrupt(iteration, error):
        if iteration == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # after the checkpoint of iteration 4
        ml(ds, params, checkpoint=ck, checkpoint_every=2, progress=interrupt)
    calls = []
    real = mlmod.starts.pilot
    mlmod.starts.pilot = lambda *a, **k: calls.append(1) or real(*a, **k)
    try:
        resumed = ml(ds, params, checkpoint=ck, checkpoint_every=2, resume=True)
    finally:
        mlmod.starts.pilot = real
    assert not calls
    np.testing.assert_array_equal(resumed.phase, ref.phase)


def test_cli_records_the_prior(tmp_path, capsys):
    """``--prior empirical`` on the command line: the result's attributes name the prior and
    its pilot, the summary line says so; a bad value is a usage error."""
    from cli_helpers import TINY_SIMULATION, run

    from ptyengine.results import read_result

    data = tmp_path / "tiny.zarr"
    assert run(capsys, *TINY_SIMULATION, "--dose", "50", "-o", data)[0] == 0
    out = tmp_path / "r.zarr"
    code, stdout, err = run(capsys, "reconstruct", data, "--method", "ml", "--iterations", 3,
                            "--prior", "empirical", "--prior-scale", 0.5, "-o", out)
    assert code == 0, err
    _, attrs = read_result(out)
    assert attrs["parameters"]["prior"] == "empirical"
    assert attrs["parameters"]["prior_scale"] == 0.5
    assert attrs["prior"]["kind"] == "empirical" and attrs["prior"]["pilot"]["iterations"] <= 3
    assert "empirical prior (pilot" in err  # the "wrote …" line
    code, _, err = run(capsys, "reconstruct", data, "--method", "ml", "--prior", "wiener")
    assert code == 2 and "--prior" in err
