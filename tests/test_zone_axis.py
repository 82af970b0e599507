"""Zone-axis alignment from one diffraction pattern (ptyengine.hrtem.zone_axis) and its
command (ptyengine.cli.hrtem_zone)."""

import math

import numpy as np
import pytest
from cli_helpers import run
from click.testing import CliRunner

from ptyengine import physics, planewave
from ptyengine.cli import cli
from ptyengine.cli.hrtem_zone import zone_axis as zone_axis_command
from ptyengine.errors import PtyengineError
from ptyengine.hrtem import zone_axis as za

E300 = 300e3
LAM = physics.wavelength(E300)
AXES = (30.0, 120.0)  # α and β axes on the pattern (degrees)
DK = 0.02  # 1/Å per pixel; 512 pixels reach 5.12 1/Å


def misoriented(alpha, beta, axes=AXES):
    """The zone axis that the holder tilts (alpha, beta) degrees bring onto the beam."""
    ra = za.rotation(za._axis(axes[0]), math.radians(-alpha))
    rb = za.rotation(za._axis(axes[1]), math.radians(-beta))
    return rb @ ra @ np.array([0.0, 0.0, 1.0])


@pytest.fixture(scope="module")
def sto():
    """SrTiO3 [001], one unit cell laterally, 50 Å thick, band-limited beyond 5.12 1/Å."""
    return planewave.plane_wave_specimen("srtio3", (0, 0, 1), field=(3.905, 3.905),
                                         thickness=50.0, k_max=5.2)


def pattern(specimen, alpha, beta, **kw):
    tilt = planewave.tilt_from_direction(misoriented(alpha, beta))
    return planewave.diffraction_pattern(specimen, E300, tilt, 512, DK, **kw)


def test_circle_through_origin_on_synthetic_points():
    c = np.array([0.7, -1.9])
    angles = np.linspace(0.3, 2.5, 9)
    r = np.linalg.norm(c)
    points = c + r * np.stack([np.sin(angles), np.cos(angles)], axis=1)
    np.testing.assert_allclose(za.circle_through_origin(points), c, atol=1e-12)
    s = za.excitation_errors(points, c, LAM)
    np.testing.assert_allclose(s, 0, atol=1e-12)  # on the circle: no excitation error


def test_fit_laue_circle_on_a_synthetic_lattice_with_outliers():
    """A square lattice whose signal is the Laue function's tail plus noise, with a ring of
    bright outliers (a HOLZ ring not through the origin): the circle is recovered."""
    rng = np.random.default_rng(4)
    g = np.stack(np.meshgrid(np.arange(-12, 13), np.arange(-12, 13)), -1).reshape(-1, 2) * 0.2
    g = g[np.linalg.norm(g, axis=1) > 0]
    c = np.array([-1.1, 1.6])
    s = za.excitation_errors(g, c, LAM)
    signal = -np.log(s**2 + 1e-3**2) + rng.normal(0, 1.0, len(g))
    holz = np.abs(np.linalg.norm(g - [1.0, -0.5], axis=1) - 1.2) < 0.1
    signal[holz] = signal.max()
    fit = za.fit_laue_circle(g, signal, LAM, max_radius=5.0)
    assert np.linalg.norm(np.subtract(fit.centre, c)) * LAM < math.radians(0.02)
    assert fit.radius == pytest.approx(np.linalg.norm(c), rel=0.01)


@pytest.mark.parametrize("axes", [(30.0, 120.0), (20.0, 95.0), (-40.0, 10.0)])
def test_holder_tilts_round_trip(axes):
    """(α, β) → the zone axis they correct → (α, β), also with non-orthogonal axes; and the
    small-angle direction: α > 0 about an axis u moves the zone axis along u × ẑ."""
    rng = np.random.default_rng(1)
    for alpha, beta in rng.uniform(-5, 5, (6, 2)):
        n = misoriented(alpha, beta, axes)
        got = za.holder_tilts(n, *axes)
        np.testing.assert_allclose(got, (alpha, beta), atol=1e-8)
        np.testing.assert_allclose(za.tilt_axes_apply(n, *axes, *got), [0, 0, 1], atol=1e-12)
    u = za._axis(axes[0])
    moved = za.tilt_axes_apply([0, 0, 1], *axes, 0.5, 0.0)
    assert moved[:2] @ np.cross(u, [0, 0, 1])[:2] > 0


def test_tilt_recovery_on_a_simulated_srtio3_pattern(sto):
    """A 2.5° tilt off SrTiO3 [001]: α and β within 0.1°, the tilt φ within 0.1°, and the
    fitted radius is the simulator's Laue circle (tan φ/λ, paraxial) to the fit's precision."""
    alpha, beta = 2.0, -1.5
    n = misoriented(alpha, beta)
    result = za.align(pattern(sto, alpha, beta), *AXES, DK, E300)
    assert result.circle.radius == pytest.approx(
        planewave.laue_circle(E300, planewave.tilt_from_direction(n))[1], rel=0.03)
    assert abs(result.tilt - math.degrees(math.acos(n[2]))) < 0.1
    assert np.abs(np.subtract(result.correction, (alpha, beta))).max() < 0.1
    assert result.direct_beam == pytest.approx((256, 256), abs=0.01)


def test_small_tilt_with_friedel_pairs(sto):
    """A 0.19° tilt, below the circle fit's reach: the Friedel-pair estimator gets α and β
    within 0.1° (a realistic dose of 10⁷ electrons per pattern)."""
    alpha, beta = 0.15, -0.12
    result = za.align(pattern(sto, alpha, beta, dose=1e7, seed=2), *AXES, DK, E300,
                      method="friedel")
    assert np.abs(np.subtract(result.correction, (alpha, beta))).max() < 0.1


def test_bad_patterns():
    with pytest.raises(PtyengineError, match="flat"):
        za.align(np.full((64, 64), 3.0), *AXES, DK)
    noise = np.random.default_rng(0).normal(100, 1, (64, 64))
    with pytest.raises(PtyengineError, match="no reflections|too few reflections"):
        za.align(noise, *AXES, DK, threshold=8)
    two = np.zeros((64, 64))
    two[32, 32], two[32, 40] = 100.0, 5.0
    with pytest.raises(PtyengineError, match="too few reflections"):
        za.align(two, *AXES, DK)
    with pytest.raises(PtyengineError, match="parallel"):
        za.align(two, 30.0, 210.0, DK)
    with pytest.raises(PtyengineError, match="2-D"):
        za.align(np.zeros((3, 64, 64)), *AXES, DK)


def test_command_reports_tilts(tmp_path, sto):
    path = tmp_path / "sto.npy"
    np.save(path, pattern(sto, 2.0, -1.5))
    second = tmp_path / "residual.tif"
    import tifffile

    tifffile.imwrite(second, pattern(sto, 0.15, -0.12, dose=1e7, seed=2))
    result = CliRunner().invoke(zone_axis_command, [str(path), "--alpha-axis", "30",
                                                    "--beta-axis", "120", "--pixel-size",
                                                    str(DK), "--second", str(second)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    first = next(line for line in lines if line.startswith("apply:"))
    alpha, beta = (float(v.split()[1].rstrip("°,")) for v in first[7:].split(", "))
    assert abs(alpha - 2.0) < 0.1 and abs(beta + 1.5) < 0.1
    assert any(line.startswith("residual after the first correction") for line in lines)
    # the camera length + detector pixel give the same calibration
    cam = 1.0  # mm; then the pixel is dk·L·λ
    pix = DK * 1e10 * cam * 1e-3 * LAM * 1e-10 * 1e6
    again = CliRunner().invoke(zone_axis_command, [str(path), "--alpha-axis", "30",
                                                   "--beta-axis", "120", "--camera-length",
                                                   str(cam), "--detector-pixel", str(pix)])
    assert again.exit_code == 0 and first in again.output


@pytest.mark.parametrize("make, args, message", [
    ("flat", [], "flat"),
    ("two", [], "too few reflections"),
    ("two", ["--beta-axis", "210"], "parallel"),
    ("missing", [], "does not exist"),
    ("two", ["--pixel-size", None], "calibration is missing"),
])  # fmt: skip
def test_command_errors_are_one_line(tmp_path, capsys, make, args, message):
    assert cli.commands["hrtem"].commands["zone-axis"] is zone_axis_command
    path = tmp_path / f"{make}.npy"
    if make == "flat":
        np.save(path, np.ones((64, 64)))
    elif make == "two":
        two = np.zeros((64, 64))
        two[32, 32], two[32, 40] = 100.0, 5.0
        np.save(path, two)
    opts = {"--alpha-axis": "30", "--beta-axis": "120", "--pixel-size": str(DK)}
    for key, value in zip(args[::2], args[1::2], strict=True):
        opts[key] = value
    argv = ["hrtem", "zone-axis", path]
    for key, value in opts.items():
        if value is not None:
            argv += [key, value]
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".mrc", ".dm4", ".png"])
def test_a_pattern_reads_from_each_format(tmp_path, suffix):
    """read_pattern: the pattern as written, in every format the command takes (PNG as an
    8-bit grey image); a stack is refused."""
    from test_convert import write_dm4

    from ptyengine.hrtem import stack

    pattern = np.random.default_rng(3).poisson(20.0, (24, 20)).astype(np.uint16)
    path = tmp_path / f"p{suffix}"
    if suffix == ".dm4":
        write_dm4(path, pattern, [0.02, 0.02], ["1/nm", "1/nm"], [0, 0], 300e3)
    elif suffix == ".png":
        import matplotlib.pyplot as plt

        plt.imsave(path, pattern, cmap="gray", vmin=0, vmax=255)
    else:
        stack.write_array(path, pattern, None)
    got = za.read_pattern(path)
    assert got.shape == pattern.shape
    if suffix == ".png":  # grey levels scaled to 0..1
        assert np.allclose(got * 255, pattern, atol=1.5)  # the colour map's 256 levels
    else:
        assert np.array_equal(got, pattern)
    if suffix in (".npy", ".tif", ".mrc"):
        stack.write_array(tmp_path / f"s{suffix}", np.stack([pattern] * 2), None)
        with pytest.raises(PtyengineError, match="2-D"):
            za.read_pattern(tmp_path / f"s{suffix}")
