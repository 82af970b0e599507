"""The Poisson maximum-likelihood engine: gradient, kernels, ground truth, stopping rule."""

import dataclasses

import numpy as np
import pytest
from ptyengine.kernels import poisson as pp

from ptyengine import io, metrics, physics
from ptyengine.dataset import InMemoryDataset
from ptyengine.errors import PtyengineError
from ptyengine.reconstruct import ml as mlmod
from ptyengine.reconstruct.ml import MLParameters, ml
from ptyengine.simulate import SimulationParameters, simulate

THIN = SimulationParameters(structure="srtio3", zone_axis=(0, 0, 1), field=(7.81, 7.81),
                            thickness=3.905, scan_step=0.4, scan_size=(7.81, 7.81),
                            max_angle=40.0, detector_pixels=48, defocus=150.0)


@pytest.fixture(scope="module")
def thin(tmp_path_factory):
    """Noise-free SrTiO3 [001], one unit cell thick, 15 nm defocus: (path, data, cal)."""
    path = tmp_path_factory.mktemp("ml") / "thin.zarr"
    simulate(THIN, str(path))
    with io.open_dataset(path) as ds:
        return path, ds.read_rows(0, ds.shape[0]), ds.calibration


def _counts(thin, dose, seed=0):
    """The noise-free data as Poisson counts at ``dose`` e/Å², in memory."""
    _, data, cal = thin
    n0 = dose * cal.scan_step[0] * cal.scan_step[1]
    rng = np.random.default_rng(seed)
    counts = rng.poisson(data.astype(np.float64) * n0).astype(np.uint32)
    return InMemoryDataset(counts, dataclasses.replace(cal, dose=dose))


def _ncc(phase, geom, path):
    with io.open_dataset(path) as ds:
        pot, attrs = ds.read_array("ground_truth/potential")
    sigma = physics.interaction_constant(300e3)
    k_max = 2 * 20e-3 / physics.wavelength(300e3)
    return metrics.compare_to_truth(phase, geom.sampling, geom.object_origin, sigma * pot,
                                    attrs["sampling"], k_max=k_max, max_shift=1.0,
                                    border=geom.window[0] // 2 + int(geom.corners.min()))["ncc"]


@pytest.mark.parametrize("holdout", [0.0, 0.2])
def test_gradient_matches_finite_differences(thin, holdout):
    """∂L/∂φ and ∂L/∂a (likelihood + priors, the total variation too) against central
    differences of L along
    random directions, at a random complex object, on Poisson counts."""
    ds = _counts(thin, 2000.0)
    params = MLParameters(holdout=holdout, smoothness=2.0, ridge=30.0, tv=5.0)
    eng = mlmod.setup(ds, params, np)
    rng = np.random.default_rng(3)
    shape = eng.geometry.object_shape
    phi = (0.3 * rng.standard_normal(shape)).astype(np.float32)
    ab = (0.05 * rng.standard_normal(shape)).astype(np.float32)
    _, g_phi, g_ab, _ = mlmod.objective(eng, phi, ab)
    for _ in range(2):
        d_phi = rng.standard_normal(shape).astype(np.float32)
        d_ab = rng.standard_normal(shape).astype(np.float32)
        h = 1e-3
        lp = mlmod.objective(eng, phi + h * d_phi, ab + h * d_ab)[0]
        lm = mlmod.objective(eng, phi - h * d_phi, ab - h * d_ab)[0]
        fd = (lp - lm) / (2 * h)
        an = float(np.sum(g_phi * d_phi) + np.sum(g_ab * d_ab))
        assert an == pytest.approx(fd, rel=2e-3), (an, fd)


def test_curvature_kernel_slope_is_the_gradient(thin):
    """The line-search kernel's dL/dt along dO equals the gradient's projection on it."""
    ds = _counts(thin, 2000.0)
    eng = mlmod.setup(ds, MLParameters(smoothness=0.0, ridge=0.0, holdout=0.1), np)
    rng = np.random.default_rng(4)
    shape = eng.geometry.object_shape
    phi = (0.2 * rng.standard_normal(shape)).astype(np.float32)
    zero = np.zeros(shape, np.float32)
    _, g_phi, _, _ = mlmod.objective(eng, phi, zero)
    d = rng.standard_normal(shape).astype(np.float32)
    obj = np.exp(1j * phi).astype(np.complex64)
    d1, d2 = eng.curvature(obj, (obj * 1j * d).astype(np.complex64))
    assert d1 == pytest.approx(float(np.sum(g_phi * d)), rel=1e-3)
    assert d2 > 0


def test_probe_coefficient_gradient_matches_finite_differences(thin):
    """∂L/∂c for C10 and both astigmatism components against central differences of L,
    at a structured object and a probe away from the calibration's; and the line-search
    kernel's slope along a joint (object, probe) direction equals g·d."""
    ds = _counts(thin, 2000.0)
    eng = mlmod.setup(ds, MLParameters(refine_probe="aberrations", holdout=0.1, smoothness=0.0,
                                       ridge=0.0), np)
    assert eng.names == ("C10", "C12a", "C12b")
    rng = np.random.default_rng(5)
    shape = eng.geometry.object_shape
    phi = (0.3 * rng.standard_normal(shape)).astype(np.float32)
    zero = np.zeros(shape, np.float32)
    c = eng.c0 + np.array([30.0, 12.0, -8.0])
    _, g_phi, _, g_c = mlmod.objective(eng, phi, zero, c)
    for i in range(3):
        h = np.zeros(3)
        h[i] = 0.5  # Å
        fd = (mlmod.objective(eng, phi, zero, c + h)[0]
              - mlmod.objective(eng, phi, zero, c - h)[0]) / (2 * h[i])  # fmt: skip
        assert g_c[i] == pytest.approx(fd, rel=5e-3, abs=1e-3 * np.abs(g_c).max()), (i, g_c, fd)
    assert np.abs(g_c).max() > 0
    eng.set_coefficients(c)
    obj = np.exp(1j * phi).astype(np.complex64)
    d = rng.standard_normal(shape).astype(np.float32)
    d_c = np.array([1.0, -0.5, 0.25])
    d1, d2 = eng.curvature(obj, (obj * 1j * d).astype(np.complex64), eng.probe_direction(d_c))
    assert d1 == pytest.approx(float(np.sum(g_phi * d)) + float(g_c @ d_c), rel=1e-3)
    assert d2 > 0


def test_multislice_gradient_matches_finite_differences(thin):
    """S = 3 slices of a complex object, with the probe's coefficients: ∂L/∂φ_s, ∂L/∂a_s
    (through the multislice adjoint, with the lateral and the depth priors) and ∂L/∂c
    against central differences of L along a
    joint random direction; the line-search kernel's slope along an (object, probe)
    direction of all slices equals g·d, its curvature is positive."""
    ds = _counts(thin, 2000.0)
    params = MLParameters(slices=3, slice_thickness=(15.0, 25.0, 5.0), holdout=0.1,
                          smoothness=2.0, ridge=30.0, depth_smoothness=50.0)  # fmt: skip
    eng = mlmod.setup(ds, params, np)
    rng = np.random.default_rng(8)
    shape = (3, *eng.geometry.object_shape)
    assert eng.shape == shape
    phi = (0.2 * rng.standard_normal(shape)).astype(np.float32)
    ab = (0.03 * rng.standard_normal(shape)).astype(np.float32)
    c = eng.c0 + np.array([20.0, 10.0, -6.0])
    _, g_phi, g_ab, g_c = mlmod.objective(eng, phi, ab, c)
    assert g_phi.shape == shape and np.abs(g_phi[2]).max() > 0
    d_phi = rng.standard_normal(shape).astype(np.float32)
    d_ab = rng.standard_normal(shape).astype(np.float32)
    d_c = np.array([40.0, -20.0, 10.0])  # Å per unit step
    h = 1e-3
    lp = mlmod.objective(eng, phi + h * d_phi, ab + h * d_ab, c + h * d_c)[0]
    lm = mlmod.objective(eng, phi - h * d_phi, ab - h * d_ab, c - h * d_c)[0]
    an = float(np.sum(g_phi * d_phi) + np.sum(g_ab * d_ab) + g_c @ d_c)
    assert an == pytest.approx((lp - lm) / (2 * h), rel=3e-3)
    # the curvature pass along a phase direction of all slices and a probe direction
    params0 = MLParameters(slices=3, slice_thickness=(15.0, 25.0, 5.0), holdout=0.1,
                           smoothness=0.0, ridge=0.0)  # fmt: skip
    eng = mlmod.setup(ds, params0, np)
    zero = np.zeros(shape, np.float32)
    _, g_phi, _, g_c = mlmod.objective(eng, phi, zero, c)
    eng.set_coefficients(c)
    obj = np.exp(1j * phi).astype(np.complex64)
    d1, d2 = eng.curvature(obj, (obj * 1j * d_phi).astype(np.complex64),
                           eng.probe_direction(d_c))  # fmt: skip
    assert d1 == pytest.approx(float(np.sum(g_phi * d_phi)) + float(g_c @ d_c), rel=1e-3)
    assert d2 > 0


def test_single_slice_is_todays_ml(thin):
    """slices = 1 (any thickness) is the single-slice engine: the same result bit for bit,
    a 2-D object and no slice stack."""
    ds = _counts(thin, 500.0)
    common = dict(iterations=4, object_model="complex", defocus_search=100.0)
    a = ml(ds, MLParameters(**common))
    b = ml(ds, MLParameters(slices=1, slice_thickness=40.0, **common))
    assert a.object.ndim == 2 and b.slice_phase is None
    np.testing.assert_array_equal(a.object, b.object)
    np.testing.assert_array_equal(a.probe, b.probe)
    assert a.errors == b.errors and a.held_out == b.held_out


def test_holdout_hash_fraction_and_reference():
    """The held-out pixels: the requested fraction, and the numba hash equals its
    reference (the same pixels on every device)."""
    mask = pp.holdout_mask(np.arange(40), (16, 16), seed=7, fraction=0.1)
    assert abs(mask.mean() - 0.1) < 0.02
    again = pp.holdout_mask(np.arange(40), (16, 16), seed=7, fraction=0.1)
    assert np.array_equal(mask, again)
    assert not np.array_equal(mask, pp.holdout_mask(np.arange(40), (16, 16), 8, 0.1))


def test_holdout_rule_keeps_the_best_iterate(thin):
    """On noisy data the result is the latest fitted iterate whose held-out deviance lies
    within noise (HELD_TOLERANCE) of the lowest, and the run stops ``patience`` iterations
    after it (or at the limit)."""
    ds = _counts(thin, 300.0, seed=2)
    params = MLParameters(iterations=40, patience=3, smoothness=0.0, ridge=0.0)
    res = ml(ds, params)
    held = np.asarray(res.held_out)
    tol = mlmod.HELD_TOLERANCE / (res.extra["counts_per_pattern"] * 400 * params.holdout)
    fitted = held[1:]  # the flat start (iterate 0) is no candidate
    within = 1 + np.flatnonzero(fitted <= np.minimum.accumulate(fitted) + tol)
    assert res.best_iteration == within.max()
    assert len(held) == len(res.errors)
    by = res.extra["stopped_by"]
    assert (by == "iteration limit" and len(held) == 40) or by == "converged" or (
        by == "held-out likelihood" and len(held) - 1 - res.best_iteration == 3), by


def test_total_variation_gradient_and_curvature_bound():
    """R_tv's gradient against central differences, its small-gradient limit ½ μ |∇u|²,
    and the curvature bound μ Σ w |∇d|² ≥ the true second difference along d."""
    from ptyengine.reconstruct.priors import total_variation, tv_curvature

    rng = np.random.default_rng(1)
    u = (0.3 * rng.standard_normal((2, 24, 20))).astype(np.float64)
    mu, delta = 3.0, 0.2
    r, g, w = total_variation(u, mu, delta, np)
    for _ in range(3):
        d = rng.standard_normal(u.shape)
        h = 1e-5
        fd = (total_variation(u + h * d, mu, delta, np)[0]
              - total_variation(u - h * d, mu, delta, np)[0]) / (2 * h)
        assert float(np.sum(g * d)) == pytest.approx(fd, rel=1e-4)
        h = 1e-3
        second = (total_variation(u + h * d, mu, delta, np)[0] - 2 * r
                  + total_variation(u - h * d, mu, delta, np)[0]) / h**2
        assert tv_curvature(d, w, mu, np) >= second > 0
    tiny = 1e-4 * u
    gy, gx = np.roll(tiny, -1, -2) - tiny, np.roll(tiny, -1, -1) - tiny
    quadratic = 0.5 * mu * np.sum(gy**2 + gx**2)
    assert total_variation(tiny, mu, delta, np)[0] == pytest.approx(quadratic, rel=1e-4)


def test_empty_data_is_a_clear_error(thin):
    _, data, cal = thin
    with pytest.raises(PtyengineError, match="empty"):
        ml(InMemoryDataset(np.zeros_like(data), cal), MLParameters(iterations=1))


def test_unknown_counts_are_a_clear_error(thin):
    """Real-valued data with no dose and no record of a noise-free simulation: the counts
    cannot be known. Integer data are counts; a dose makes real values counts."""
    _, data, cal = thin
    with pytest.raises(PtyengineError, match="no dose"):
        ml(InMemoryDataset(data * 1000, cal), MLParameters(iterations=1))
    res = ml(InMemoryDataset(data * 1000, dataclasses.replace(cal, dose=500.0)),
             MLParameters(iterations=1))
    assert res.extra["counts_per_pattern"] == pytest.approx(500.0 * 0.4 * 0.4)


@pytest.mark.parametrize("bad", [dict(object_model="auto"), dict(smoothness=-1.0),
                                 dict(holdout=0.7), dict(patience=0),
                                 dict(defocus_search=-5.0), dict(defocus_step=0.0),
                                 dict(refine_positions="yes"), dict(position_update_every=0),
                                 dict(position_max_shift=-0.1),
                                 dict(slices=2, slice_thickness=2.0, refine_positions="on")])
def test_bad_parameters(bad):
    with pytest.raises(PtyengineError):
        MLParameters(**bad)


@pytest.mark.parametrize("bad", [dict(defocus_search=-5.0), dict(defocus_step=0.0)])
def test_bad_epie_defocus_search(bad):
    from ptyengine.reconstruct.epie import EpieParameters

    with pytest.raises(PtyengineError, match="defocus search"):
        EpieParameters(**bad)


def test_cli_ml_writes_a_result(tmp_path, capsys):
    """``reconstruct --method ml`` on simulated counts: a result with the held-out curve,
    the best iteration and the NCC; options of other methods are refused."""
    from cli_helpers import TINY_SIMULATION, run

    from ptyengine.results import read_result

    data = tmp_path / "tiny.zarr"
    assert run(capsys, *TINY_SIMULATION, "--dose", "5000", "-o", data)[0] == 0
    out = tmp_path / "r.zarr"
    code, stdout, err = run(capsys, "reconstruct", data, "--method", "ml", "--iterations", 4,
                            "--smoothness", 1, "-o", out, "--checkpoint-every", 2)
    assert code == 0, err
    arrays, attrs = read_result(out)
    assert set(arrays) == {"object", "probe", "phase"}
    assert attrs["method"] == "ml" and attrs["parameters"]["smoothness"] == 1.0
    assert len(attrs["held_out"]) == len(attrs["errors"]) <= 4
    assert 0 <= attrs["best_iteration"] <= 4
    assert "NCC of the ml phase" in stdout
    code, _, err = run(capsys, "reconstruct", data, "--method", "ml", "--alpha", 0.5)
    assert code == 2 and "--alpha: not an option of --method ml" in err
    code, _, err = run(capsys, "reconstruct", data, "--method", "epie", "--ridge", 1)
    assert code == 2 and "--ridge: not an option of --method epie" in err


@pytest.mark.parametrize("bad", [np.nan, -1.0])
def test_nan_or_negative_counts_are_a_clear_error(thin, bad):
    _, data, cal = thin
    data = data.copy()
    data[3, 4, 10, 10] = bad
    with pytest.raises(PtyengineError, match="row"):
        ml(InMemoryDataset(data, dataclasses.replace(cal, dose=100.0)),
           MLParameters(iterations=1))


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """Noise-free 4 Å slab of 40 Si/Zr atoms at random (seed 11) in a 16 Å cell, crossover
    40 nm above, a 31 Å window (room for a probe 20 nm off): (path, data, cal, params).
    Amorphous, so no lattice period makes other defoci look alike."""
    from ase import Atoms
    from ase.io import write

    tmp = tmp_path_factory.mktemp("ml")
    rng = np.random.default_rng(11)
    cell = (16.0, 16.0, 4.0)
    atoms = Atoms(["Si"] * 25 + ["Zr"] * 15, positions=rng.random((40, 3)) * cell, cell=cell,
                  pbc=True)  # fmt: skip
    write(tmp / "slab.cif", atoms)
    params = dataclasses.replace(THIN, structure=str(tmp / "slab.cif"), field=(16.0, 16.0),
                                 thickness=4.0, defocus=400.0, max_angle=30.0,
                                 detector_pixels=96, scan_step=0.5, scan_size=(8.0, 8.0),
                                 sigmas={})  # fmt: skip
    simulate(params, str(tmp / "wide.zarr"))
    with io.open_dataset(tmp / "wide.zarr") as ds:
        return tmp / "wide.zarr", ds.read_rows(0, ds.shape[0]), ds.calibration, params


@pytest.mark.parametrize("start", [200.0, 600.0])
def test_a_defocus_20_nm_off_is_found_and_refined(wide, start):
    """The issue's test: the probe starts 20 nm from the data's defocus (C10 = 400 Å, a
    4 Å slab whose single-slice plane lies ~2 Å lower). The likelihood search puts it
    within a grid step's fraction, the refinement within a few Å, and the phase reaches the
    NCC of a run that starts from the true defocus; without search and refinement it does
    not."""
    path, data, cal, params = wide
    ds = _counts(wide[:3], 5000.0)
    truth = 400.0 + params.thickness / 2
    res = ml(ds, MLParameters(defocus=start, iterations=25, holdout=0.0, defocus_search=300.0))
    assert abs(res.extra["start_defocus"] - truth) < 40, res.extra["defocus_search"]
    assert abs(res.extra["refined"]["C10"] - truth) < 8, res.extra["refined"]
    ncc = _ncc(res.phase, res.geometry, path)
    ref = ml(ds, MLParameters(defocus=truth, iterations=25, holdout=0.0, defocus_search=0,
                              refine_probe="aberrations"))  # fmt: skip
    fixed = ml(ds, MLParameters(defocus=start, iterations=25, defocus_search=0,
                                refine_probe="none", holdout=0.0))  # fmt: skip
    ncc_ref = _ncc(ref.phase, ref.geometry, path)
    ncc_fixed = _ncc(fixed.phase, fixed.geometry, path)
    assert ncc > ncc_ref - 0.02, (ncc, ncc_ref)
    assert ncc_fixed < ncc - 0.1, (ncc_fixed, ncc)


def test_defocus_search_grid_and_vertex():
    """The grid is symmetric about its centre; the vertex of a sampled parabola is its
    minimum; a minimum at the end of the grid is reported on the edge, not extrapolated."""
    from ptyengine.reconstruct.defocus_search import grid, vertex

    xs = grid(1000.0, 300.0, 100.0)
    assert xs == [700.0, 800.0, 900.0, 1000.0, 1100.0, 1200.0, 1300.0]
    ys = [(x - 1037.0) ** 2 for x in xs]
    best, edge = vertex(np.asarray(xs), np.asarray(ys))
    assert best == pytest.approx(1037.0) and not edge
    best, edge = vertex(np.asarray(xs), np.asarray([(x - 2000.0) ** 2 for x in xs]))
    assert best == 1300.0 and edge
    with pytest.raises(PtyengineError, match="step"):
        grid(0.0, 300.0, 0.0)


def test_defocus_search_keeps_the_start_where_the_data_cannot_tell(wide):
    """At 2 e/Å² (a few electrons per pattern) no candidate's held-out deviance beats the
    start's by the significance margin: the search keeps the start instead of moving at
    random; at 5000 e/Å² it moves (to the data's defocus, see the test above)."""
    from ptyengine.reconstruct.defocus_search import search_defocus

    ds = _counts(wide[:3], 2.0, seed=1)
    params = MLParameters(defocus=250.0)
    r = search_defocus(mlmod.setup(ds, params, np), params, 300.0, 100.0)
    assert not r.significant and r.defocus == 250.0, r.describe()
    assert "kept" in r.describe()


def test_converged_rule():
    """L that falls by less than CONVERGED per iteration over ``patience`` iterations has
    converged; a steady fall of more, or too short a history, has not."""
    flat = 1000.0 - 0.05 * np.arange(20)
    steep = 1000.0 - 5.0 * np.arange(20)
    assert mlmod.converged(flat, 10) and not mlmod.converged(steep, 10)
    assert not mlmod.converged(flat[:10], 10)


def test_epie_takes_the_defocus_search_too(wide):
    """ePIE with ``defocus_search`` starts from the defocus the ML engine's search finds
    on the same measured patterns (issue 14: every iterative method)."""
    from ptyengine.reconstruct.epie import EpieParameters, epie

    ds = _counts(wide[:3], 5000.0)
    lines = []
    res = epie(ds, EpieParameters(iterations=1, batch_size=16, defocus=600.0,
                                  defocus_search=300.0), report=lines.append)  # fmt: skip
    assert abs(res.extra["start_defocus"] - 402.0) < 40, lines
    assert len(lines) == 1 and "defocus search" in lines[0]


# ------------------------------------------------------------------ scan positions
def _displaced(cal, rms=0.3, seed=1):
    """(true grid positions, positions displaced by random offsets of ``rms`` Å), (N, 2) Å."""
    from ptyengine.reconstruct.epie import scan_grid

    truth = scan_grid(cal)
    rng = np.random.default_rng(seed)
    return truth, truth + rng.normal(0.0, rms / np.sqrt(2), truth.shape)


def _position_error(p, truth):
    """rms distance (Å) of positions from the truth, the global translation removed."""
    e = p - truth
    e -= e.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(e**2, axis=1))))


def test_position_gradient_matches_finite_differences(thin):
    """∂L/∂p_j of every position (positions.gradient_and_fisher) against central
    differences of L along a random joint displacement of all positions, at a random
    object, positions off the grid, held-out pixels on; the 2 × 2 Fisher blocks are
    symmetric and positive semi-definite."""
    from ptyengine.reconstruct import positions as pos

    ds = _counts(thin, 2000.0)
    eng = mlmod.setup(ds, MLParameters(holdout=0.1), np)
    rng = np.random.default_rng(6)
    p0 = pos.pixel_positions(eng.geometry) + rng.normal(0.0, 0.4, (len(eng.geometry.frac), 2))
    eng.set_positions(p0)
    phi = (0.3 * rng.standard_normal(eng.geometry.object_shape)).astype(np.float32)
    obj = np.exp(1j * phi).astype(np.complex64)
    g, fisher, _ = pos.gradient_and_fisher(eng, obj, mlmod.EPS)
    assert np.abs(g).max() > 0
    np.testing.assert_allclose(fisher[:, 0, 1], fisher[:, 1, 0])
    assert np.linalg.eigvalsh(fisher).min() >= -1e-6 * np.abs(fisher).max()
    d = rng.standard_normal(g.shape)
    h = 2e-3  # object pixels
    lp = (eng.set_positions(p0 + h * d), eng.gradient(obj)[0])[1]
    lm = (eng.set_positions(p0 - h * d), eng.gradient(obj)[0])[1]
    fd = (lp - lm) / (2 * h)
    assert float(np.sum(g * d)) == pytest.approx(fd, rel=5e-3), (np.sum(g * d), fd)


def test_positions_off_the_grid_are_held_at_its_edge(thin):
    """A position that would take its window off the object grid stays on it (corner in
    range, frac in [0, 1)); measured positions of the wrong shape are one clear error."""
    from ptyengine.reconstruct import positions as pos

    ds = _counts(thin, 2000.0)
    eng = mlmod.setup(ds, MLParameters(), np)
    geom = eng.geometry
    p = pos.pixel_positions(geom)
    p[0] -= 100.0
    p[1] += 0.25
    assert eng.set_positions(p) == 1
    assert geom.corners.min() >= 0 and (geom.frac >= 0).all() and (geom.frac < 1).all()
    assert (geom.corners + np.array(geom.window) <= np.array(geom.object_shape)).all()
    np.testing.assert_allclose(pos.pixel_positions(geom)[1], p[1])
    with pytest.raises(PtyengineError, match="positions: shape"):
        mlmod.setup(ds, MLParameters(), np, positions=np.zeros((3, 2)))


def test_position_refinement_recovers_displaced_positions(thin):
    """Noise-free data on the regular grid, reconstructed from positions displaced by
    0.3 Å rms: refinement (auto) brings them back (rms error, global translation removed, falls
    ≥ 3×; measured 0.29 → 0.04 Å) and the phase agrees better with the ground truth than
    the same run with the positions fixed (NCC 0.83 → 0.94 measured)."""
    path, data, cal = thin
    truth, start = _displaced(cal)
    runs = {mode: ml(path, MLParameters(iterations=40, refine_positions=mode,
                                        refine_probe="aberrations"), positions=start)
            for mode in ("off", "auto")}  # fmt: skip
    err0 = _position_error(start, truth)
    assert _position_error(runs["off"].positions, truth) == pytest.approx(err0)
    assert _position_error(runs["auto"].positions, truth) < err0 / 3
    summary = runs["auto"].extra["positions"]
    assert summary["refined"] and summary["own_offsets"][0]  # noise-free: bound ≪ σ
    assert max(summary["cramer_rao_A"]) < 0.05
    ncc = {m: _ncc(r.phase, r.geometry, path) for m, r in runs.items()}
    assert ncc["auto"] > ncc["off"] + 0.05, ncc


def test_auto_keeps_own_offsets_at_low_counts(thin):
    """At ~3 counts per pattern one pattern cannot locate its position (Cramér–Rao bound
    ≫ the prior's σ): "auto" leaves the positions, and the result is the "off" run's bit
    for bit; with ``position_affine`` it moves a global linear map only; "on" moves every
    position."""
    _, _, cal = thin
    _, start = _displaced(cal, seed=3)
    ds = _counts(thin, 20.0)
    params = MLParameters(iterations=6, position_update_start=2, position_update_every=2,
                          holdout=0.0)  # fmt: skip
    auto = ml(ds, params, positions=start)
    off = ml(ds, dataclasses.replace(params, refine_positions="off"), positions=start)
    summary = auto.extra["positions"]
    assert summary["own_offsets"] == [False, False] and min(summary["cramer_rao_A"]) > 0.3
    assert summary["shift_rms_A"] == 0.0
    np.testing.assert_array_equal(auto.phase, off.phase)
    affine = ml(ds, dataclasses.replace(params, position_affine=True), positions=start)
    summary = affine.extra["positions"]
    assert summary["shift_rms_A"] > 1e-3 and summary["affine"]["residual_rms_A"] < 1e-6
    on = ml(ds, dataclasses.replace(params, refine_positions="on"), positions=start)
    assert on.extra["positions"]["own_offsets"] == [True, True]
    assert on.extra["positions"]["affine"]["residual_rms_A"] > 1e-3


def test_position_refinement_survives_checkpoint_resume(thin, tmp_path):
    """Interrupted after 6 iterations and resumed to 12, the refined positions (and the
    phase) equal the uninterrupted run's."""
    _, data, cal = thin
    _, start = _displaced(cal, seed=2)
    ds = _counts(thin, 2000.0)
    params = MLParameters(iterations=12, refine_positions="on", position_update_start=2,
                          position_update_every=3, holdout=0.0)  # fmt: skip
    ref = ml(ds, params, positions=start)
    ck = str(tmp_path / "ck.npz")
    ml(ds, dataclasses.replace(params, iterations=6), checkpoint=ck, checkpoint_every=3,
       positions=start)  # fmt: skip
    resumed = ml(ds, params, checkpoint=ck, checkpoint_every=3, resume=True, positions=start)
    assert len(ref.extra["positions"]["update_rms_A"]) == 4
    np.testing.assert_array_equal(resumed.positions, ref.positions)
    np.testing.assert_array_equal(resumed.phase, ref.phase)
    assert np.abs(ref.positions - start).max() > 1e-3


def test_cli_ml_writes_refined_positions(tmp_path, capsys):
    """``--refine-positions on``: the result holds the refined positions (Å, (N, 2)) and
    says how far they moved; ``--position-correlated`` adds the pooled row and drift
    offsets."""
    from cli_helpers import TINY_SIMULATION, run

    from ptyengine.results import read_result

    data = tmp_path / "tiny.zarr"
    assert run(capsys, *TINY_SIMULATION, "--dose", "5000", "-o", data)[0] == 0
    out = tmp_path / "r.zarr"
    code, stdout, err = run(capsys, "reconstruct", data, "--method", "ml", "--iterations", 3,
                            "--refine-positions", "on", "--position-update-start", 1,
                            "--position-update-every", 1, "--position-max-shift", 0.1,
                            "--position-correlated", "rows+drift", "--position-drift-knots", 3,
                            "-o", out)  # fmt: skip
    assert code == 0, err
    arrays, attrs = read_result(out)
    n = attrs["calibration"]["scan_shape"][0] * attrs["calibration"]["scan_shape"][1]
    assert arrays["positions"].shape == (n, 2)
    assert len(attrs["positions"]["update_rms_A"]) == 2
    assert attrs["positions"]["correlated_offsets"] == [True, True]  # "on" moves them
    assert attrs["parameters"]["refine_positions"] == "on"
    assert attrs["parameters"]["position_correlated"] == "rows+drift"
    assert "positions refined (2 updates" in stdout + err


def test_position_refinement_streamed_equals_resident(thin, tmp_path):
    """Streamed blocks take their shift ramps from the moved positions as resident ones
    do: the same positions and phase."""
    ds = _counts(thin, 2000.0)
    data, cal = ds.read_rows(0, ds.shape[0]), ds.calibration
    path = tmp_path / "chunked.zarr"
    with io.create_dataset(path, cal, data.dtype, rows_per_chunk=3) as w:
        for r0 in range(0, data.shape[0], 3):
            w.write_rows(r0, data[r0:r0 + 3])
    _, start = _displaced(cal, seed=4)
    params = MLParameters(iterations=5, refine_positions="on", position_update_start=1,
                          position_update_every=2, holdout=0.0)  # fmt: skip
    resident = ml(path, params, positions=start)
    streamed = ml(path, params, positions=start, memory_limit=8 * data[:3].nbytes)
    assert not resident.extra["streamed"] and streamed.extra["streamed"]
    np.testing.assert_array_equal(streamed.positions, resident.positions)
    np.testing.assert_array_equal(streamed.phase, resident.phase)
    assert np.abs(resident.positions - start).max() > 1e-3


def test_auto_keeps_exact_positions_the_held_out_pixels_vouch_for(thin):
    """Exact positions and counts enough to pass the Cramér–Rao rule (~3200 per pattern):
    each update only moves them by noise, the held-out likelihood says so, and "auto"
    puts them back — the result is the "off" run's bit for bit."""
    from ptyengine.reconstruct.epie import scan_grid

    ds = _counts(thin, 2e4)
    grid = scan_grid(ds.calibration)
    params = MLParameters(iterations=14, position_update_start=2, position_update_every=3)
    auto = ml(ds, params, positions=grid)
    off = ml(ds, dataclasses.replace(params, refine_positions="off"), positions=grid)
    summary = auto.extra["positions"]
    assert max(summary["cramer_rao_A"]) < 0.5 * params.position_sigma
    assert not any(summary["own_offsets"]) and summary["shift_rms_A"] == 0.0
    np.testing.assert_array_equal(auto.phase, off.phase)


def test_cli_ml_reads_measured_positions(tmp_path, capsys):
    """``--positions FILE`` (CSV or .npy, Å, scan frame, scan order) replaces the
    calibration's grid: with refinement off the result holds them unchanged. A file with
    the wrong number of positions, or --positions with another method, is a one-line error
    and nothing is written."""
    from cli_helpers import TINY_SIMULATION, run

    from ptyengine.reconstruct.epie import scan_grid
    from ptyengine.results import read_result

    data = tmp_path / "tiny.zarr"
    assert run(capsys, *TINY_SIMULATION, "--dose", "5000", "-o", data)[0] == 0
    with io.open_dataset(data) as ds:
        grid = scan_grid(ds.calibration)
    measured = grid + np.random.default_rng(3).normal(0, 0.1, grid.shape)
    csv = tmp_path / "pos.csv"
    np.savetxt(csv, measured, delimiter=",", header="y_A, x_A")
    out = tmp_path / "r.zarr"
    code, _, err = run(capsys, "reconstruct", data, "--method", "ml", "--iterations", 2,
                       "--refine-positions", "off", "--positions", csv, "-o", out)
    assert code == 0, err
    arrays, _ = read_result(out)
    np.testing.assert_allclose(arrays["positions"], measured, atol=1e-6)
    np.save(tmp_path / "short.npy", measured[:-1])
    bad = tmp_path / "bad.zarr"
    code, _, err = run(capsys, "reconstruct", data, "--method", "ml",
                       "--positions", tmp_path / "short.npy", "-o", bad)
    assert code == 2 and "short.npy" in err and "positions" in err and len(
        err.strip().splitlines()) == 1, err
    assert not bad.exists()
    code, _, err = run(capsys, "reconstruct", data, "--method", "epie", "--positions", csv)
    assert code == 2 and "--positions: for --method ml only" in err


def test_step_curvature_from_a_subset_of_positions(thin):
    """The Newton step's curvature L'' along a direction, from a random subset of the
    positions scaled to all (ml.curvature_positions: 256 of the 400 here), is within 5 %
    of the full sum; below 256 positions every position is used."""
    ds = _counts(thin, 300.0, seed=5)
    eng = mlmod.setup(ds, MLParameters(), np)
    rng = np.random.default_rng(7)
    phi = (0.2 * rng.standard_normal(eng.geometry.object_shape)).astype(np.float32)
    obj = np.exp(1j * phi).astype(np.complex64)
    d_obj = (1j * obj * rng.standard_normal(phi.shape)).astype(np.complex64)
    full = eng.curvature(obj, d_obj)[1]
    n = len(eng.geometry.corners)
    assert n == 400 and mlmod.curvature_positions(n) == 256
    assert mlmod.curvature_positions(100) == 100 and mlmod.curvature_positions(4000) == 1000
    for seed in range(3):
        with eng.subset(256, np.random.default_rng(seed)) as scale:
            part = eng.curvature(obj, d_obj)[1]
        assert scale == pytest.approx(400 / 256)
        assert part * scale == pytest.approx(full, rel=0.05)
    with eng.subset(400, np.random.default_rng(0)) as scale:
        assert scale == 1.0 and eng.curvature(obj, d_obj)[1] == full


def test_prior_strengths_follow_the_dose(thin):
    """(3, 8) from 100 e/Å² up and for noise-free data, in proportion to the dose below
    (the prior's weight against the likelihood held at its 100 e/Å² value); given strengths
    are kept; the run records the ones it used."""
    from ptyengine.reconstruct.priors import prior_strengths

    assert prior_strengths(1000.0) == (3.0, 8.0) and prior_strengths(100.0) == (3.0, 8.0)
    assert prior_strengths(20.0) == pytest.approx((0.6, 1.6))
    assert prior_strengths(20.0, smoothness=2.0, ridge=0.0) == (2.0, 0.0)
    path, _, _ = thin
    for dose, expected in ((20.0, (0.6, 1.6)), (400.0, (3.0, 8.0))):
        eng = mlmod.setup(_counts(thin, dose), MLParameters(), np)
        assert (eng.params.smoothness, eng.params.ridge) == pytest.approx(expected), dose
    noise_free = ml(path, MLParameters(iterations=1, refine_probe="aberrations"))
    assert noise_free.extra["prior"] == {"smoothness": 3.0, "ridge": 8.0, "tv": 0.0,
                                         "tv_scale": 0.15, "kind": "gaussian",
                                         "pilot": None}
