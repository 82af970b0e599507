"""``ptyengine suggest``: parameter advice from a calibration, checked on analytic limits and
on the three calibrations of issue 19 (in focus at high dose, 100 nm defocus at 20 e/Å², an
undersampled detector)."""

import math

import pytest
from cli_helpers import TINY_SIMULATION, run

from ptyengine import physics
from ptyengine.calibration import Calibration
from ptyengine.suggest import (
    calibration_from_options,
    describe,
    overlap_area,
    probe_diameter,
    suggest,
)

LAM300 = physics.wavelength(300e3)


def cal(defocus=0.0, dose=None, pixels=128, max_angle=40.0, step=0.4, scan=64):
    return calibration_from_options(energy=300, semiangle=20, scan_step=step,
                                    scan_shape=(scan, scan), detector_pixels=pixels,
                                    max_angle=max_angle, dose=dose, defocus=defocus)


def test_probe_diameter_limits():
    a = 20e-3
    assert probe_diameter(LAM300, 20, 0.0) == pytest.approx(1.22 * LAM300 / a)
    big = probe_diameter(LAM300, 20, 1e5)  # 10 µm: geometric 2α|C10| dominates
    assert big == pytest.approx(2 * a * 1e5, rel=1e-6)
    assert probe_diameter(LAM300, 20, -1000) == probe_diameter(LAM300, 20, 1000)


def test_overlap_area_limits():
    assert overlap_area(0.0, 10.0) == pytest.approx(1.0)
    assert overlap_area(10.0, 10.0) == 0.0 and overlap_area(20.0, 10.0) == 0.0
    # two unit discs one radius apart: (2π/3 − √3/2) / π
    assert overlap_area(5.0, 10.0) == pytest.approx((2 * math.pi / 3 - math.sqrt(3) / 2) /
                                                    math.pi)  # fmt: skip


def test_calibration_from_options_matches_simulate_convention():
    c = cal()
    assert c.dk[0] == pytest.approx(2 * 40e-3 / LAM300 / 128)
    with pytest.raises(Exception, match="--max-angle or --dk"):
        calibration_from_options(energy=300, semiangle=20, scan_step=0.4,
                                 detector_pixels=128)  # fmt: skip


def test_in_focus_high_dose():
    s = suggest(cal(defocus=0.0, dose=1e5, step=0.4))
    assert s.probe_diameter == pytest.approx(1.22 * LAM300 / 20e-3)
    assert s.overlap == pytest.approx(1 - 0.4 / s.probe_diameter)
    assert s.counts_per_pattern == pytest.approx(1e5 * 0.16)
    assert s.method == "either" and s.ml_probe == "pixels" and s.ml_prior == "gaussian"
    assert s.warnings == []


def test_defocus_100nm_20_e():
    s = suggest(cal(defocus=1000.0, dose=20.0, pixels=256, max_angle=40, step=1.2))
    assert s.probe_diameter == pytest.approx(math.hypot(2 * 20e-3 * 1000,
                                                        1.22 * LAM300 / 20e-3))  # fmt: skip
    assert s.overlap > 0.9
    assert s.counts_per_pattern == pytest.approx(20 * 1.44)
    assert s.counts_per_bf_pixel < 1  # ePIE's amplitude update is biased here
    assert s.method == "ml" and s.ml_probe == "aberrations" and s.ml_prior == "empirical"
    assert "prior (--prior auto): empirical (a pilot run" in describe(s)
    assert not any("undersampled" in w for w in s.warnings)
    assert not any("dose" in w for w in s.warnings)


def test_undersampled_detector_and_low_overlap():
    # 50 nm defocus (a 20 Å probe) on 32 pixels to 25 mrad: a 12.6 Å window
    s = suggest(cal(defocus=500.0, dose=5.0, pixels=32, max_angle=25, step=10.0))
    assert 1 / s.calibration.dk[0] < s.probe_diameter
    text = " ".join(s.warnings)
    assert "undersampled" in text and "overlap" in text and "dose" in text


def test_cli_with_options_and_data(tmp_path, capsys):
    code, out, err = run(capsys, "suggest", "--energy", 300, "--semiangle", 20, "--scan-step",
                         1.2, "--detector-pixels", 256, "--max-angle", 40, "--dose", 20,
                         "--defocus", 1000)  # fmt: skip
    assert code == 0, err
    assert "overlap" in out and "probe diameter" in out and "use ML" in out
    assert "counts per bright-field pixel" in out and "memory" in out and "batch" in out
    data = tmp_path / "d.zarr"
    assert run(capsys, *TINY_SIMULATION, "-o", data)[0] == 0
    code, out, err = run(capsys, "suggest", data)
    assert code == 0, err
    assert "no dose recorded" in out


def test_cli_errors_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "suggest", "--energy", 300)
    assert code == 2 and len(err.splitlines()) == 1 and "--semiangle" in err
    code, _, err = run(capsys, "suggest", tmp_path / "none.zarr")
    assert code == 2 and len(err.splitlines()) == 1
    assert isinstance(cal(), Calibration)


def test_slice_rule():
    from ptyengine.reconstruct.slices import RULE_MAX_SLICES, rule_slices

    dz = LAM300 / (2 * 20e-3**2)  # 24.6 Å: a quarter of the depth of field 2λ/α²
    assert dz == pytest.approx(24.6, abs=0.05)
    assert rule_slices(LAM300, 20, 10.0) == 1  # thin: one slice
    assert rule_slices(LAM300, 20, 100.0) == round(100 / dz) == 4
    assert rule_slices(LAM300, 20, 200.0) == 8
    assert rule_slices(LAM300, 20, 400.0) == RULE_MAX_SLICES == 8  # the cap (measured)
    assert rule_slices(LAM300, 10, 100.0) == 1  # α/2: 4× the depth of field
    with pytest.raises(Exception, match="positive thickness"):
        rule_slices(LAM300, 20, 0.0)


def test_thick_specimen_advice(capsys):
    s = suggest(cal(pixels=48, dose=1000.0), thickness=400.0)
    assert s.slices == 8 and "--slices 8 --slice-thickness 50" in describe(s)
    # 2α·400 Å = 16 Å of beam at the exit against the 11.8 Å window of 48 px to 40 mrad
    assert any("record at least 66 detector pixels" in w for w in s.warnings)
    s = suggest(cal(pixels=96, dose=1000.0), thickness=400.0)
    assert not any("detector pixels" in w for w in s.warnings)
    assert suggest(cal(), thickness=20.0).slices == 1
    assert suggest(cal()).slices is None and "slices:" not in describe(suggest(cal()))
    code, out, err = run(capsys, "suggest", "--energy", 300, "--semiangle", 20, "--scan-step",
                         0.4, "--detector-pixels", 96, "--max-angle", 40, "--thickness", 200)
    assert code == 0, err
    assert "slices:           8 for 200 Å (--slices 8 --slice-thickness 25)" in out
    code, _, err = run(capsys, "suggest", "--energy", 300, "--semiangle", 20, "--scan-step",
                       0.4, "--detector-pixels", 96, "--max-angle", 40, "--thickness", -1)
    assert code == 2 and len(err.splitlines()) == 1 and "--thickness" in err
