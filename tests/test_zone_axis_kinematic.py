"""The zone-axis tilt refined by the kinematic intensities of every reflection
(ptyengine.hrtem.kinematic) on patterns simulated by the plane-wave multislice (all orders
of scattering, so the kinematic model is not the data's own)."""

import math

import numpy as np
import pytest
from cli_helpers import run
from test_zone_axis import AXES, DK, E300, LAM, pattern

from ptyengine import planewave
from ptyengine.errors import PtyengineError
from ptyengine.hrtem import kinematic
from ptyengine.hrtem import zone_axis as za

REACH = math.sqrt(2) * 256 * DK  # the 512-pixel detector's corners


@pytest.fixture(scope="module")
def sto():
    return planewave.plane_wave_specimen("srtio3", (0, 0, 1), field=(3.905, 3.905),
                                         thickness=50.0, k_max=5.2)  # fmt: skip


@pytest.fixture(scope="module")
def model():
    return kinematic.zolz_coefficients("srtio3", (0, 0, 1), REACH, E300, thickness=70.0)


def test_zolz_coefficients_of_srtio3(model):
    """The ZOLZ of SrTiO3 [001]: a square lattice of 1/3.905 Å⁻¹, |U_g|² with the cube's
    four-fold symmetry, no direct beam, and |U_100| below |U_110| and |U_200| (the (100)
    reflection's Sr and TiO columns scatter in antiphase)."""
    g, u2 = model.g, model.u2
    assert np.linalg.norm(g, axis=1).min() == pytest.approx(1 / 3.905, rel=1e-6)
    assert np.all(np.linalg.norm(g, axis=1) > 0)
    table = {tuple(np.rint(v * 3.905).astype(int)): w for v, w in zip(g, u2, strict=True)}
    for (h, k), w in list(table.items())[:200]:
        if (-k, h) in table:
            assert table[(-k, h)] == pytest.approx(w, rel=1e-4)
    assert table[(1, 0)] < table[(1, 1)] and table[(1, 0)] < table[(2, 0)]


def test_fit_recovers_the_circle_and_thickness_from_kinematic_intensities(model):
    """Intensities made by the model itself (noise-free): the fit from a circle 0.3 1/Å off
    and a thickness 30 % off comes back to both, and to a Debye–Waller damping."""
    c_true, t_true = np.array([1.2, -2.1]), 50.0
    measured = 3e4 * kinematic.predicted(model.g, model.u2, c_true, t_true, LAM)
    c, t, a, cost, b = kinematic.fit(model.g, model.u2, measured, LAM, c_true + 0.3, 35.0)
    np.testing.assert_allclose(c, c_true, atol=1e-5)
    assert t == pytest.approx(t_true, rel=1e-5) and a == pytest.approx(3e4, rel=1e-4)
    assert b == pytest.approx(0.0, abs=1e-6)
    # damped by a Debye–Waller factor B = 0.8 Å² (e^{−B|g|²/2}): b = 0.4 Å² comes back from
    # near the truth (b trades off against c and t: from 0.03 1/Å and 5 Å off, or from the
    # start above, the fit stops in a local minimum 0.1–0.2 1/Å away; measured)
    damped = measured * np.exp(-0.4 * (model.g**2).sum(axis=1))
    c, t, a, cost, b = kinematic.fit(model.g, model.u2, damped, LAM, c_true + 0.01, 50.0)
    np.testing.assert_allclose(c, c_true, atol=1e-5)
    assert b == pytest.approx(0.4, rel=1e-4) and t == pytest.approx(t_true, rel=1e-5)


@pytest.mark.parametrize("alpha, beta", [(1.5, 1.2), (-2.6, 3.1)])
def test_refinement_reaches_0p1_degree_where_the_circle_does_not(sto, model, alpha, beta):
    """Two tilts off SrTiO3 [001] at 10⁷ electrons: the circle alone misses 0.1°, the
    refined tilts are within it (measured: 0.03° and 0.06°) and the fitted thickness within
    10 % of the specimen's 50 Å (the model started from 70 Å)."""
    p = pattern(sto, alpha, beta, dose=1e7, seed=3)
    circle = za.align(p, *AXES, DK, E300)
    refined = za.align(p, *AXES, DK, E300, crystal=model)
    assert np.abs(np.subtract(circle.correction, (alpha, beta))).max() > 0.1
    assert np.abs(np.subtract(refined.correction, (alpha, beta))).max() < 0.1
    assert refined.refinement.thickness == pytest.approx(50.0, rel=0.1)
    # the pattern turned by 90° with its axes: the lattice search finds the turn
    turned = za.align(np.rot90(p), *(a - 90.0 for a in AXES), DK, E300, crystal=model)
    np.testing.assert_allclose(turned.correction, refined.correction, atol=0.02)


def test_a_wrong_calibration_is_refused(sto, model):
    p = pattern(sto, 1.0, 1.0)
    with pytest.raises(PtyengineError, match="check the pixel size"):
        za.align(p, *AXES, DK / 40, E300, crystal=model)


def test_command_with_a_crystal(tmp_path, capsys, sto):
    path = tmp_path / "sto.npy"
    np.save(path, pattern(sto, 1.5, 1.2, dose=1e7, seed=3))
    argv = ["hrtem", "zone-axis", path, "--alpha-axis", "30", "--beta-axis", "120",
            "--pixel-size", str(DK)]  # fmt: skip
    code, out, err = run(capsys, *argv, "--crystal", "srtio3", "--zone", "0,0,1",
                         "--thickness", "70")  # fmt: skip
    assert code == 0, err
    assert "kinematic refinement: centre" in out and "thickness" in out
    first = next(line for line in out.splitlines() if line.startswith("apply:"))
    alpha, beta = (float(v.split()[1].rstrip("°,")) for v in first[7:].split(", "))
    assert abs(alpha - 1.5) < 0.1 and abs(beta - 1.2) < 0.1
    # a second pattern's small residual goes to the Friedel estimator, not the refinement
    second = tmp_path / "residual.npy"
    np.save(second, pattern(sto, 0.15, -0.12, dose=1e7, seed=2))
    code, out, err = run(capsys, *argv, "--crystal", "srtio3", "--zone", "0,0,1", "--second",
                         second)  # fmt: skip
    assert code == 0, err
    assert out.count("kinematic refinement") == 1
    nxt = next(line for line in out.splitlines() if line.startswith("residual after"))
    ra, rb = (float(v.split()[1].rstrip("°,")) for v in nxt.split("apply next: ")[1].split(
        " (")[0].split(", "))  # fmt: skip
    assert abs(ra - 0.15) < 0.1 and abs(rb + 0.12) < 0.1
    for extra, message in ((["--crystal", "srtio3"], "--crystal and --zone go together"),
                           (["--crystal", "srtio3", "--zone", "0,1"], "three whole numbers"),
                           (["--crystal", "srtio3", "--zone", "0,0,0"], "not all 0")):
        code, _, err = run(capsys, *argv, *extra)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
