"""Correlated scan-position errors (reconstruct/position_models.py): the pooled model's
algebra against its dense form, and row jitter found from patterns that cannot locate
themselves one by one."""

import dataclasses

import numpy as np
import pytest
from test_ml import THIN

from ptyengine import io
from ptyengine.dataset import InMemoryDataset
from ptyengine.errors import PtyengineError
from ptyengine.reconstruct import ml as mlmod
from ptyengine.reconstruct import position_models as posm
from ptyengine.reconstruct import positions as pos
from ptyengine.reconstruct.epie import scan_grid
from ptyengine.reconstruct.ml import MLParameters, ml
from ptyengine.simulate import simulate


def _raster(ny=5, nx=7, step=3.0, jitter=0.1):
    """A row-major raster of positions (Å), each moved by ``jitter`` Å rms."""
    i, j = np.divmod(np.arange(ny * nx), nx)
    jitter = jitter * np.random.default_rng(0).standard_normal((ny * nx, 2))
    return np.column_stack([i * step, j * step]) + jitter


def _dense_j(model):
    b = model.basis.toarray()
    return b - model.q @ (model.q.T @ b)


@pytest.mark.parametrize("kind", ["rows", "drift", "rows+drift"])
def test_hessian_and_projection_match_the_dense_model(kind):
    """JᵀFJ from the sparse basis equals the dense product; Jᵀg too; J θ holds no
    translation and no linear map of the positions (the data cannot see them)."""
    m = _raster()
    model = posm.build(kind, (5, 7), m, knots=4)
    rng = np.random.default_rng(1)
    a = rng.standard_normal((len(m), 2, 2))
    fisher = a @ a.transpose(0, 2, 1)
    j = _dense_j(model)
    f = np.zeros((2 * len(m), 2 * len(m)))
    for n in range(len(m)):
        f[2 * n:2 * n + 2, 2 * n:2 * n + 2] = fisher[n]
    np.testing.assert_allclose(model.hessian(fisher), j.T @ f @ j, atol=1e-10)
    g = rng.standard_normal((len(m), 2))
    np.testing.assert_allclose(model.project(g), j.T @ g.reshape(-1), atol=1e-12)
    d = model.displacement(rng.standard_normal(model.size))
    x = np.column_stack([np.ones(len(m)), m - m.mean(axis=0)])
    coef = np.linalg.lstsq(x, d, rcond=None)[0]
    assert np.abs(coef).max() < 1e-10


def test_rows_basis_moves_each_row_as_a_whole():
    m = _raster()
    b = posm.row_basis((5, 7))
    theta = np.arange(10.0)
    d = (b @ theta).reshape(5, 7, 2)
    np.testing.assert_array_equal(d[2, :, 0], 4.0)
    np.testing.assert_array_equal(d[2, :, 1], 5.0)
    hats = posm.drift_basis(len(m), 3).toarray()
    np.testing.assert_allclose(hats.sum(axis=1), 1.0)  # partition of unity
    assert hats[0, 0] == 1.0 and hats[-1, -1] == 1.0


@pytest.mark.parametrize("kind", ["rows", "drift"])
def test_newton_steps_find_the_correlated_offsets_of_a_quadratic(kind):
    """On L = ½ Σ (p_j − p*_j)ᵀ F_j (p_j − p*_j) with p* − m = J θ*, repeated steps from
    θ = 0 (no prior) converge on J θ*."""
    m = _raster(jitter=0.0)
    model = posm.build(kind, (5, 7), m, knots=4)
    rng = np.random.default_rng(2)
    a = rng.standard_normal((len(m), 2, 2))
    fisher = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(2)
    target = model.displacement(rng.standard_normal(model.size))
    theta = np.zeros(model.size)
    for _ in range(30):
        g = np.einsum("nij,nj->ni", fisher, model.displacement(theta) - target)
        dt, _ = posm.step(model, g, fisher, theta, 0.0, max_shift=10.0)
        theta += dt
    np.testing.assert_allclose(model.displacement(theta), target, atol=1e-6)


def test_bad_correlated_models_are_one_line_errors():
    with pytest.raises(PtyengineError, match="--position-correlated must be one of"):
        MLParameters(position_correlated="columns")
    with pytest.raises(PtyengineError, match="--position-drift-knots"):
        MLParameters(position_drift_knots=1)
    with pytest.raises(PtyengineError, match="scan shape 4 × 7 does not hold the 35"):
        posm.build("rows", (4, 7), _raster())


@pytest.fixture(scope="module")
def thin_2000(tmp_path_factory):
    """THIN (SrTiO3, 20 × 20 scan) as Poisson counts at 2000 e/Å² (~40 counts per
    pattern: one pattern locates itself to ~0.27 Å), and the scan grid (Å)."""
    path = tmp_path_factory.mktemp("posm") / "thin.zarr"
    simulate(THIN, str(path))
    with io.open_dataset(path) as ds:
        data, cal = ds.read_rows(0, ds.shape[0]), ds.calibration
    counts = np.random.default_rng(0).poisson(data.astype(np.float64) * 2000 * 0.16)
    return InMemoryDataset(counts.astype(np.uint32), dataclasses.replace(cal, dose=2000.0))


def test_row_jitter_is_found_where_single_patterns_cannot_locate_themselves(thin_2000):
    """Rows displaced by 0.3 Å rms (their mean and linear trend removed). At an object
    reconstructed from the true grid, one pattern's Cramér–Rao bound (0.27 Å) is above
    half the prior's σ (0.2 of 0.4 Å), so the own offsets stay; the row model pools 20
    patterns per row (bound 0.06 Å, below a fifth of σ) and three updates bring the error
    from 0.30 Å to ≤ 0.15 Å (measured 0.11 Å)."""
    cal = thin_2000.calibration
    grid = scan_grid(cal)
    ny, nx = cal.scan_shape
    rows = np.random.default_rng(1).normal(0.0, 1.0, (ny, 2))
    x = np.column_stack([np.ones(ny), np.arange(ny)])
    rows -= x @ np.linalg.lstsq(x, rows, rcond=None)[0]
    rows *= 0.3 / np.sqrt(np.mean(np.sum(rows**2, axis=1)))
    params = MLParameters(refine_probe="none", refine_positions="off")
    obj = ml(thin_2000, dataclasses.replace(params, iterations=30), positions=grid).object
    eng = mlmod.setup(thin_2000, params, np, positions=grid)
    d = np.asarray(eng.geometry.sampling)
    truth = pos.pixel_positions(eng.geometry).copy()
    measured = truth + np.repeat(rows, nx, axis=0) / d
    eng.set_positions(measured)

    def error():
        e = (pos.pixel_positions(eng.geometry) - truth) * d
        e -= e.mean(axis=0)
        return float(np.sqrt(np.mean(np.sum(e**2, axis=1))))

    assert error() == pytest.approx(0.3)
    model = posm.build("rows", cal.scan_shape, measured)
    theta, affine = np.zeros(model.size), np.zeros(4)
    for _ in range(3):
        step, affine, theta = pos.update_positions(eng, obj, 1.0, mlmod.EPS, measured, affine,
                                                   0.4 / d.min(), False, False, model, theta)
        assert step.correlated and not step.own
    assert step.crb > 0.2 and step.correlated_crb < 0.08
    assert error() < 0.15


def test_bound_is_that_of_the_displacement():
    """crb equals √tr of the 2 × 2 blocks of J H⁺ Jᵀ (dense), median over positions; with F =
    f·1 at every position and the rows model it is that of a row's mean, √(2/(f n_x))
    less the projected directions' share."""
    m = _raster(jitter=0.0)
    for kind in ("rows", "drift", "rows+drift"):
        model = posm.build(kind, (5, 7), m, knots=4)
        rng = np.random.default_rng(3)
        a = rng.standard_normal((len(m), 2, 2))
        fisher = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(2)
        h = model.hessian(fisher)
        j = _dense_j(model)
        cov = j @ np.linalg.pinv(h, rcond=1e-10, hermitian=True) @ j.T
        d = np.diag(cov).reshape(-1, 2).sum(axis=1)
        assert posm.crb(model, h) == pytest.approx(float(np.median(np.sqrt(d))), rel=1e-8)
    model = posm.build("rows", (5, 7), m)
    f = 4.0
    bound = posm.crb(model, model.hessian(np.tile(f * np.eye(2), (35, 1, 1))))
    # 5 rows × 2 axes, 4 of the 10 directions projected out (translation, row trend)
    assert bound == pytest.approx(np.sqrt(2 / (f * 7)) * np.sqrt(6 / 10), rel=0.3)
