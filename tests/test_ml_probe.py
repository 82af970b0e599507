"""The ML engine's free pixel probe with incoherent modes (reconstruct/probe_model.py):
its gradient, the modes' orthogonalisation, and partially coherent data it fits."""

import dataclasses

import numpy as np
import pytest
import test_ml
from test_ml import THIN, _counts, _ncc

from ptyengine import io
from ptyengine.dataset import InMemoryDataset
from ptyengine.errors import PtyengineError
from ptyengine.reconstruct import ml as mlmod
from ptyengine.reconstruct.ml import MLParameters, ml
from ptyengine.reconstruct.probe_model import Pixels
from ptyengine.simulate import simulate

thin = test_ml.thin  # the noise-free one-cell SrTiO3 data (a module fixture: made again here)

PIXELS = dict(refine_probe="pixels", smoothness=0.0, ridge=0.0, holdout=0.1)


def _random_modes(rng, eng, m):
    sup = np.asarray(eng.pm.support)
    return ((rng.standard_normal((m, *sup.shape)) + 1j * rng.standard_normal((m, *sup.shape)))
            * sup).astype(np.complex64)


def test_pixel_probe_gradient_matches_finite_differences(thin):
    """∂L/∂P̂_m (as the real vector G = −2 upd) against central differences of L along a
    random direction of two modes, at a structured object; and the line-search kernel's
    slope along a joint (object, modes) direction equals g·d."""
    ds = _counts(thin, 2000.0)
    eng = mlmod.setup(ds, MLParameters(probe_modes=2, **PIXELS), np)
    rng = np.random.default_rng(6)
    shape = eng.geometry.object_shape
    phi = (0.3 * rng.standard_normal(shape)).astype(np.float32)
    zero = np.zeros(shape, np.float32)
    v = eng.pm.initial()
    v = (v + 0.05 * np.abs(v).max() * _random_modes(rng, eng, 2)).astype(np.complex64)
    _, g_phi, _, g_v = mlmod.objective(eng, phi, zero, v)
    assert g_v.shape == v.shape
    d = (0.01 * np.abs(v).max() * _random_modes(rng, eng, 2)).astype(np.complex64)
    h = 1e-1
    fd = (mlmod.objective(eng, phi, zero, v + h * d)[0]
          - mlmod.objective(eng, phi, zero, v - h * d)[0]) / (2 * h)  # fmt: skip
    an = float(np.sum((g_v.conj() * d).real))
    assert an == pytest.approx(fd, rel=5e-3), (an, fd)
    eng.set_coefficients(v)
    obj = np.exp(1j * phi).astype(np.complex64)
    d_phi = rng.standard_normal(shape).astype(np.float32)
    d1, d2 = eng.curvature(obj, (obj * 1j * d_phi).astype(np.complex64),
                           eng.probe_direction(d))  # fmt: skip
    assert d1 == pytest.approx(float(np.sum(g_phi * d_phi)) + an, rel=1e-3)
    assert d2 > 0


def test_orthogonalisation_keeps_the_density_matrix(thin):
    """The modes' unitary mixing: orthogonal modes, strongest first; ρ = Σ|P_m⟩⟨P_m| and the
    scalar products of the mixed gradient-like arrays are unchanged."""
    _, _, cal = thin
    pm = Pixels(cal, 3, np)
    rng = np.random.default_rng(2)
    shape = (3, *np.asarray(pm.support).shape)
    arrays = {k: (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(
        np.complex64) for k in ("v", "g", "d")}  # fmt: skip
    before = {k: a.reshape(3, -1).astype(np.complex128) for k, a in arrays.items()}
    pm.orthogonalise(arrays, ("v", "g", "d"))
    flat = arrays["v"].reshape(3, -1).astype(np.complex128)
    gram = flat.conj() @ flat.T
    assert np.allclose(gram - np.diag(np.diag(gram)), 0, atol=1e-3 * abs(gram).max())
    assert np.all(np.diff(np.diag(gram).real) <= 0)  # strongest first
    np.testing.assert_allclose(flat.T @ flat.conj(), before["v"].T @ before["v"].conj(),
                               atol=1e-3 * abs(gram).max())  # fmt: skip
    for a, b in (("g", "d"), ("v", "g")):
        x = np.sum(arrays[a].conj() * arrays[b]).real
        assert x == pytest.approx(np.sum(before[a].conj() * before[b]).real, rel=1e-4)


@pytest.fixture(scope="module")
def focal_spread(thin, tmp_path_factory):
    """The thin data with a focal spread: the incoherent mean of the patterns at C10 = 110,
    150 and 190 Å (weights ¼, ½, ¼), noise-free, as an in-memory dataset."""
    path, data, cal = thin
    tmp = tmp_path_factory.mktemp("spread")
    mean = 0.5 * data.astype(np.float64)
    for c10 in (110.0, 190.0):
        simulate(dataclasses.replace(THIN, defocus=c10), str(tmp / f"{c10:.0f}.zarr"))
        with io.open_dataset(tmp / f"{c10:.0f}.zarr") as ds:
            mean += 0.25 * ds.read_rows(0, ds.shape[0])
    ds = InMemoryDataset(mean.astype(np.float32), cal)
    ds.metadata = {"simulation": {"dose": None}}
    return ds, path


def test_modes_fit_partially_coherent_data(focal_spread):
    """On data with a ±40 Å focal spread the coherent aberration probe cannot fit the
    patterns; three incoherent pixel modes fit them 3× better (fitted deviance; and better
    than one pixel mode) and give the phase of the structure (NCC ≥ 0.95, against < 0.92
    with the aberration probe); the extra modes take a share of the counts."""
    ds, path = focal_spread
    coherent = ml(ds, MLParameters(iterations=30, refine_probe="aberrations"))
    one = ml(ds, MLParameters(iterations=30, refine_probe="pixels"))
    modes = ml(ds, MLParameters(iterations=30, refine_probe="pixels", probe_modes=3))
    assert modes.errors[-1] < 0.7 * one.errors[-1], (modes.errors[-1], one.errors[-1])
    ncc_c = _ncc(coherent.phase, coherent.geometry, path)
    ncc_m = _ncc(modes.phase, modes.geometry, path)
    assert ncc_m >= 0.95 and ncc_c < 0.92, (ncc_m, ncc_c)
    assert modes.errors[-1] < coherent.errors[-1] / 3, (modes.errors[-1], coherent.errors[-1])
    powers = modes.extra["probe_mode_powers"]
    assert modes.probe_modes.shape[0] == 3 and 0.1 < 1 - powers[0] < 0.5, powers
    flat = modes.probe_modes.reshape(3, -1)
    gram = np.abs(flat.conj() @ flat.T)
    assert gram[0, 1] < 1e-3 * gram[0, 0] and gram[1, 2] < 1e-3 * gram[0, 0]


@pytest.mark.parametrize("bad", [dict(probe_modes=0), dict(probe_modes=2),
                                 dict(refine_probe="pixels", probe_modes=99),
                                 dict(refine_probe="pixels", probe_modes=2,
                                      refine_positions="on")])
def test_bad_mode_parameters(bad):
    with pytest.raises(PtyengineError, match="modes|positions"):
        MLParameters(**bad)


def test_cli_writes_probe_modes_and_resumes(tmp_path, capsys):
    """``--refine-probe pixels --probe-modes 2``: the result holds both modes (orthogonal,
    mode 0 = ``probe``), the summary their shares; a resumed run (complex modes in the
    checkpoint) ends where an uninterrupted one does."""
    from cli_helpers import TINY_SIMULATION, run

    from ptyengine.results import read_result

    data = tmp_path / "tiny.zarr"
    assert run(capsys, *TINY_SIMULATION, "--dose", "50000", "-o", data)[0] == 0
    opts = ("--method", "ml", "--refine-probe", "pixels", "--probe-modes", 2, "--holdout", 0)
    code, stdout, err = run(capsys, "reconstruct", data, *opts, "--iterations", 4,
                            "-o", tmp_path / "full.zarr")  # fmt: skip
    assert code == 0, err
    assert "probe modes" in err
    arrays, attrs = read_result(tmp_path / "full.zarr")
    modes = arrays["probe_modes"]
    assert modes.shape[0] == 2 and np.array_equal(modes[0], arrays["probe"])
    assert abs(np.vdot(modes[0], modes[1])) < 1e-3 * np.vdot(modes[0], modes[0]).real
    assert attrs["probe_model"] == "pixels" and len(attrs["probe_mode_powers"]) == 2
    ck = tmp_path / "part.zarr"
    assert run(capsys, "reconstruct", data, *opts, "--iterations", 2, "-o", ck,
               "--checkpoint-every", 1, "--keep-checkpoint")[0] == 0  # fmt: skip
    code, _, err = run(capsys, "reconstruct", data, *opts, "--iterations", 4, "-o", ck,
                       "--resume", "--overwrite")  # fmt: skip
    assert code == 0, err
    resumed, _ = read_result(ck)
    np.testing.assert_allclose(resumed["phase"], arrays["phase"], atol=1e-4)


def test_pixel_probe_starts_from_an_aberration_run(thin):
    """The pixels alone hardly move a wrong defocus; started from a short aberration run
    (the default) they report the C10 that run finds, from 30 Å either side."""
    path, data, cal = thin
    ds = InMemoryDataset(data, cal)
    ds.metadata = {"simulation": {"dose": None}}
    ref = ml(ds, MLParameters(iterations=20, defocus=150.0)).extra["refined"]["C10"]
    for start in (120.0, 180.0):
        res = ml(ds, MLParameters(iterations=20, defocus=start, refine_probe="pixels"))
        assert res.extra["refined"]["C10"] == pytest.approx(ref, abs=3.0), (start, ref)
        alone = ml(ds, MLParameters(iterations=20, defocus=start, refine_probe="pixels",
                                    pixel_start_iterations=0))  # fmt: skip
        assert abs(alone.extra["refined"]["C10"] - ref) > 10.0
