"""``ptyengine hrtem`` on tiny inputs: simulate → align → ctf, the stack formats' round
trips, and the one-line errors for bad input."""

import json

import numpy as np
import pytest
from cli_helpers import run

from ptyengine.hrtem import stack

TINY = ("hrtem", "simulate", "--thickness", "10", "--sampling", "0.25", "--size", "64",
        "--pixel-size", "0.6")  # fmt: skip
"""UiO-66 [110], 10 Å, 64 × 64 px of 0.6 Å (~1 s); add --frames and -o."""


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory):
    """8 noise-free frames with a known drift (stack.npy + .json + _trajectory.csv)."""
    from ptyengine.cli import main

    path = tmp_path_factory.mktemp("hrtem") / "stack.npy"
    try:
        main([*TINY, "--frames", "8", "--noise-free", "--velocity", "0.4,-0.3", "-o",
              str(path)])
    except SystemExit as exc:
        assert exc.code == 0
    return path


def test_simulate_writes_the_stack_and_its_trajectory(tiny_stack):
    s = stack.read_stack(tiny_stack)
    assert s.frames.shape == (8, 64, 64) and s.pixel_size == 0.6
    assert s.trajectory.shape == (8, 2) and np.allclose(s.trajectory[0], 0)
    meta = json.loads(tiny_stack.with_suffix(".json").read_text())
    assert meta["optics"]["C10_A"] == pytest.approx(-561.2, abs=0.1)  # Scherzer, 1.2 mm


def test_align_recovers_the_drift(tiny_stack, tmp_path, capsys):
    code, out, err = run(capsys, "hrtem", "align", tiny_stack, "-o", tmp_path / "al")
    assert code == 0, err
    report = json.loads((tmp_path / "al" / "report.json").read_text())
    assert report["rms_error_px"] < 0.1 and report["rms_error_raw_px"] < 0.1
    total = np.load(tmp_path / "al" / "sum.npy")
    assert total.shape == (64, 64)
    header = (tmp_path / "al" / "trajectory.csv").read_text().splitlines()[0]
    assert header.startswith("frame,dy_px,dx_px,measured_dy_px") and "raw_dy_px" in header
    code, _, err = run(capsys, "hrtem", "align", tiny_stack, "-o", tmp_path / "al")
    assert code == 2 and "exists" in err and len(err.strip().splitlines()) == 1


def test_ctf_phase_flip_and_wiener(tmp_path, capsys):
    img = tmp_path / "img.tif"
    code, _, err = run(capsys, *TINY, "--frames", "1", "--noise-free", "--thickness", "4",
                       "--defocus", "-1500", "-o", img)
    assert code == 0, err
    for opts, name in ((["--phase-flip"], "flip.npy"), (["--wiener", "10"], "wiener.mrc")):
        code, out, err = run(capsys, "hrtem", "ctf", img, "--defocus", "-1500", "--cs", "1.2",
                             "--energy", "300", *opts, "-o", tmp_path / name)
        assert code == 0, err
        got, pixel = stack.read_image(tmp_path / name)
        assert got.shape == (64, 64) and pixel == pytest.approx(0.6, rel=1e-5)


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".mrc"])
def test_stack_round_trip(tmp_path, suffix):
    frames = np.random.default_rng(0).poisson(0.5, (3, 16, 20)).astype(np.float32)
    st = stack.Stack(frames, 0.42, np.array([[0, 0], [0.5, -1], [1, -2.0]]))
    stack.write_stack(tmp_path / f"s{suffix}", st)
    back = stack.read_stack(tmp_path / f"s{suffix}")
    assert np.array_equal(back.frames, frames) and back.pixel_size == pytest.approx(0.42)
    assert np.allclose(back.trajectory, st.trajectory)
    (tmp_path / "s.json").unlink()  # the file's own pixel size (npy has none)
    alone = stack.read_stack(tmp_path / f"s{suffix}")
    assert alone.pixel_size == (None if suffix == ".npy" else pytest.approx(0.42, rel=1e-5))


def test_dm4_stack_through_rosettasciio(tmp_path):
    from test_convert import write_dm4

    frames = np.random.default_rng(1).poisson(2.0, (3, 16, 12)).astype(np.uint16)
    write_dm4(tmp_path / "s.dm4", frames, [1.0, 0.05, 0.05], ["", "nm", "nm"], [0, 0, 0],
              300e3)
    back = stack.read_stack(tmp_path / "s.dm4")
    assert np.array_equal(back.frames, frames) and back.pixel_size == pytest.approx(0.5)


BAD = {
    "one frame": (np.ones((1, 16, 16)), "holds 1 frame"),
    "2-D image": (np.random.default_rng(0).random((16, 16)), "a stack of one frame"),
    "4-D": (np.ones((2, 2, 16, 16)), "a stack is 3-D"),
    "NaN": (np.where(np.eye(16)[None] > 0, np.nan, 1.0) * np.ones((3, 1, 1)), "NaN"),
    "no signal": (np.zeros((4, 16, 16)), "no signal"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_stacks_are_one_line_errors(tmp_path, capsys, case):
    data, message = BAD[case]
    np.save(tmp_path / "bad.npy", data)
    code, _, err = run(capsys, "hrtem", "align", tmp_path / "bad.npy", "-o", tmp_path / "o")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_other_bad_inputs(tmp_path, capsys):
    (tmp_path / "s.xyz").write_text("1 2 3")
    code, _, err = run(capsys, "hrtem", "align", tmp_path / "s.xyz", "-o", tmp_path / "o")
    assert code == 2 and "unknown format '.xyz'" in err
    np.save(tmp_path / "stack.npy", np.ones((3, 16, 16)) + np.arange(16))
    code, _, err = run(capsys, "hrtem", "ctf", tmp_path / "stack.npy", "--defocus", "-500",
                       "--pixel-size", "0.5", "-o", tmp_path / "c.npy")
    assert code == 2 and "an image is 2-D" in err
    np.save(tmp_path / "img.npy", np.ones((16, 16)) + np.arange(16))
    code, _, err = run(capsys, "hrtem", "ctf", tmp_path / "img.npy", "--defocus", "-500",
                       "-o", tmp_path / "c.npy")
    assert code == 2 and "--pixel-size" in err
    code, _, err = run(capsys, "hrtem", "ctf", tmp_path / "img.npy", "--pixel-size", "0.5",
                       "-o", tmp_path / "c.npy")
    assert code == 2 and "--defocus" in err
    assert not (tmp_path / "c.npy").exists()
    np.save(tmp_path / "noise.npy", np.random.default_rng(0).poisson(0.5, (20, 32, 32)))
    code, _, err = run(capsys, "hrtem", "align", tmp_path / "noise.npy", "-o", tmp_path / "o")
    assert code == 2 and "no lattice reflections" in err and not (tmp_path / "o").exists()


def test_pattern_then_zone_axis_recovers_the_tilt(tmp_path, capsys):
    """hrtem pattern (the simulator's plane-wave mode) → hrtem zone-axis: SrTiO3 [001]
    50 Å thick, 10⁷ electrons, tilted by (30, 40) mrad: φ = atan(tan²θ_x + tan²θ_y)^½ =
    2.865° towards 36.9° from x on the pattern; the Laue circle gives it back (0.02° here;
    one pattern of a random tilt: within 0.1° in 3 of 20, benchmarks/RESULTS.md)."""
    path = tmp_path / "saed.npy"
    code, out, err = run(capsys, "hrtem", "pattern", "--tilt", "30,40", "--electrons", "1e7",
                         "--pixels", "256", "--pixel-size", "0.04", "-o", path)
    assert code == 0, err
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["tilt_mrad"] == [30.0, 40.0]
    pattern = np.load(path)
    assert pattern.shape == (256, 256) and pattern.argmax() == 128 * 256 + 128
    code, out, err = run(capsys, "hrtem", "zone-axis", path, "--alpha-axis", "0",
                         "--beta-axis", "90", "--pixel-size", "0.04")
    assert code == 0, err
    phi = float(out.split("tilt φ = ")[1].split("°")[0])
    towards = float(out.split("towards ")[1].split("°")[0])
    truth = np.degrees(np.arctan(np.hypot(np.tan(0.03), np.tan(0.04))))
    assert abs(phi - truth) < 0.1 and abs(towards - np.degrees(np.arctan2(30, 40))) < 2


def test_a_tilted_crystal_images_with_less_lattice_contrast(tmp_path, capsys):
    """hrtem simulate --tilt: 60 mrad off [110] the 30 Å crystal's columns are smeared by
    t·tanθ ≈ 1.8 Å along x (the multislice's tilted propagator), so the noise-free image's
    contrast falls (0.177 → 0.152 measured) and the tilt is recorded."""
    contrast = {}
    for tilt in ("0,0", "0,60"):
        path = tmp_path / f"t{tilt.replace(',', '_')}.npy"
        code, out, err = run(capsys, *TINY[:3], "30", *TINY[4:], "--frames", "1", "--noise-free",
                             "--tilt", tilt, "-o", path)
        assert code == 0, err
        image = np.load(path)
        contrast[tilt] = image.std() / image.mean()
        assert json.loads(path.with_suffix(".json").read_text())["tilt_mrad"] == [
            float(v) for v in tilt.split(",")]
    assert contrast["0,60"] < 0.93 * contrast["0,0"]
