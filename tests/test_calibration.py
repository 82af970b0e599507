"""The calibration's plausibility checks: every field range-checked with its reason, the
bright-field disc in the data against semi-angle/(λ·dk), messages instead of tracebacks for
malformed fields, and the warning for a probe model without aberrations."""

import json
import re

import numpy as np
import pytest
from cli_helpers import run

from ptyengine import calibration, io, physics
from ptyengine.calibration import Calibration, CalibrationError

LAM = physics.wavelength(300e3)
K_AP = 20e-3 / LAM  # 1.016 1/Å: the bright-field disc of 20 mrad at 300 kV
GOOD = {"energy": 300e3, "semiangle": 20.0, "scan_shape": (4, 5), "scan_step": (0.4, 0.4),
        "detector_shape": (32, 32), "dk": (0.1, 0.1), "detector_center": (16.0, 15.5)}  # fmt: skip


def make(**changes):
    return Calibration(**{**GOOD, **changes})


def test_a_plausible_calibration_passes():
    cal = make(aberrations={"C10": 500.0, "C12": 20.0, "phi12": 0.4, "C30": -1e4}, dose=1e4,
               scan_origin=(-2.0, 3.0), rotation=-190.0)  # fmt: skip
    assert cal.defocus == 500.0 and cal.dose == 1e4


@pytest.mark.parametrize("changes, reason", [
    ({"energy": 300.0}, "300 eV (0.3 kV), outside 10 kV – 1.5 MV: kV and eV mixed up?"),
    ({"energy": 3e8}, "3e+08 eV (300000 kV), outside 10 kV – 1.5 MV: kV and eV mixed up?"),
    ({"energy": 1.0}, "1 eV (0.001 kV), outside 10 kV – 1.5 MV"),
    ({"energy": -3e5}, "'energy' must be positive"),
    ({"semiangle": -20.0}, "'semiangle' must be positive"),
    ({"semiangle": 2000.0}, "'semiangle' is 2000 mrad: convergence semi-angles lie between "
                            "0.01 and 300 mrad"),
    ({"scan_step": (0.4, -0.4)}, "'scan_step' must be positive"),
    ({"scan_step": (1e9, 1e9)}, "'scan_step' is (1e+09, 1e+09) Å: a scan step lies between "
                                "0.001 Å and 1e+06 Å"),
    ({"scan_shape": (0, 5)}, "'scan_shape' must be ≥ 1"),
    ({"detector_shape": (0, 32)}, "'detector_shape' must be at least 2 × 2 pixels"),
    ({"detector_shape": (1, 1)}, "'detector_shape' must be at least 2 × 2 pixels"),
    ({"detector_shape": (32.5, 32)}, "'detector_shape' must be whole numbers"),
    ({"dk": (-0.1, 0.1)}, "'dk' must be positive"),
    ({"dk": (1e3, 1e3)}, "a detector pixel of 1.97e+04 mrad lies outside 0.0001 – 100 mrad"),
    ({"dk": (0.01, 0.01)}, "the bright-field disc (20 mrad = 1.016 1/Å) is larger than the "
                           "detector (half-width 0.16 1/Å = 3.15 mrad along k_y)"),
    ({"detector_center": (-3.0, 15.5)}, "'detector_center' (-3, 15.5) px lies outside the "
                                        "32 × 32 px detector"),
    ({"detector_center": (16.0, 40.0)}, "'detector_center' (16, 40) px lies outside"),
    ({"rotation": 1e6}, "'rotation' is 1e+06°: give an angle within ±360°"),
    ({"aberrations": {"C10": 1e7}}, "aberration C10 = 1e+07 Å (1 mm) exceeds 1e+05 Å (10 µm)"),
    ({"aberrations": {"C30": 1e10}}, "aberration C30 = 1e+10 Å (1 m) exceeds 1e+08 Å (1 cm)"),
    ({"aberrations": {"C99": 1.0}}, "unknown aberration 'C99'"),
    ({"aberrations": {"C10": float("nan")}}, "aberration C10 must be finite"),
    ({"dose": -5.0}, "'dose' must be positive"),
    ({"dose": 1e12}, "'dose' is 1e+12 e/Å²: doses lie below 1e+09 e/Å²"),
    ({"scan_origin": (1e12, 0.0)}, "'scan_origin' is (1e+12, 0) Å: beyond ±1e+08 Å"),
])  # fmt: skip
def test_implausible_calibrations_are_refused_with_the_reason(changes, reason):
    with pytest.raises(CalibrationError) as exc:
        make(**changes)
    assert reason in str(exc.value), str(exc.value)


@pytest.mark.parametrize("field, value", [
    ("energy", "300kV"), ("energy", "300"), ("semiangle", None), ("rotation", "abc"),
    ("dose", "lots"), ("scan_step", ["0.4", "x"]), ("dk", "0.1"), ("detector_shape", [32, "a"]),
    ("detector_center", {"y": 1}), ("scan_origin", [1, 2, 3]), ("transpose", "maybe"),
    ("aberrations", {"C10": "far"}), ("aberrations", [1, 2]), ("energy", True),
])  # fmt: skip
def test_non_numeric_fields_name_the_field(field, value):
    d = {**Calibration(**GOOD).to_dict(), field: value}
    with pytest.raises(CalibrationError) as exc:
        Calibration.from_dict(d, source="f.zarr")
    msg = str(exc.value)
    assert msg.startswith("f.zarr: ") and repr(field) in msg and "\n" not in msg, msg


def test_every_missing_field_is_named_at_once():
    d = {k: v for k, v in Calibration(**GOOD).to_dict().items()
         if k not in ("energy", "dk", "detector_center")}  # fmt: skip
    with pytest.raises(CalibrationError, match="calibration fields 'energy', 'dk', "
                                               "'detector_center' are missing"):
        Calibration.from_dict(d)


def _dataset_with(tmp_path, **edit):
    path = tmp_path / "d.zarr"
    cal = make()
    with io.create_dataset(path, cal, "float32") as w:
        w.write_rows(0, np.ones((4, 5, 32, 32), np.float32))
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["ptyengine"]["calibration"].update(edit)
    (path / "zarr.json").write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize("edit, expect", [
    ({"energy": 300}, "'energy' is 300 eV (0.3 kV), outside 10 kV – 1.5 MV"),
    ({"energy": "300 kV"}, "'energy' must be a number, got '300 kV'"),
    ({"rotation": "abc"}, "'rotation' must be a number, got 'abc'"),
    ({"aberrations": {"C10": "1 mm"}}, "'aberrations': C10 must be a number, got '1 mm'"),
])  # fmt: skip
def test_a_file_with_a_bad_calibration_gives_one_line(tmp_path, capsys, edit, expect):
    path = _dataset_with(tmp_path, **edit)
    code, out, err = run(capsys, "info", path)
    assert code == 2 and "Traceback" not in out + err
    assert err.count("\n") == 1 and str(path) in err and expect in err, err


# ------------------------------------------------------------------ bright-field disc
def disc_pattern(radius_px, shape=(64, 64), center=(31.0, 33.0), background=0.02):
    """A mean pattern: a disc of ``radius_px`` with a soft one-pixel edge on a faint
    diffuse background (the scattered electrons)."""
    y, x = np.indices(shape)
    r = np.hypot(y - center[0], x - center[1])
    return np.clip(radius_px + 0.5 - r, 0, 1) + background * np.exp(-r / 20)


@pytest.mark.parametrize("radius_px, outcome", [
    (10.0, None), (9.3, None), (10.7, None),  # within 10 %: silent
    (8.5, "warn"), (11.5, "warn"), (6.0, "warn"),  # beyond 10 %
    (4.0, "refuse"), (25.0, "refuse"),  # < 0.5× or > 2×: absurd
])  # fmt: skip
def test_bright_field_disc_against_the_semiangle(radius_px, outcome):
    cal = make(detector_shape=(64, 64), dk=(K_AP / 10, K_AP / 10), detector_center=(31, 33))
    pattern = disc_pattern(radius_px)
    if outcome == "refuse":
        with pytest.raises(CalibrationError) as exc:
            calibration.check_bright_field_disc(cal, pattern)
        note = str(exc.value)
    else:
        note = calibration.check_bright_field_disc(cal, pattern)
        if outcome is None:
            assert note is None, note
            return
    assert "but semiangle/(λ·dk) gives 10 px (20 mrad)" in note, note
    measured = float(re.search(r"radius of ([\d.]+) px", note).group(1))
    assert measured == pytest.approx(radius_px, rel=0.03)


def test_anisotropic_pixels_and_no_disc():
    # dk differs between the axes: the disc is an ellipse in pixels, a circle in k
    cal = make(detector_shape=(64, 64), dk=(K_AP / 10, K_AP / 15), detector_center=(31, 33))
    y, x = np.indices((64, 64))
    ellipse = (((y - 31) / 10) ** 2 + ((x - 33) / 15) ** 2 <= 1).astype(float)
    assert calibration.check_bright_field_disc(cal, ellipse) is None
    # a flat pattern (random counts) shows no disc edge: nothing to compare, said so
    flat = np.random.default_rng(0).uniform(1900, 2100, (64, 64))
    assert "no bright-field disc edge" in calibration.check_bright_field_disc(cal, flat)


def test_probe_model_warning():
    assert "records no probe aberrations" in calibration.probe_model_warning(make())
    assert calibration.probe_model_warning(make(), defocus=300.0) is None
    assert calibration.probe_model_warning(make(aberrations={"C10": 0.0})) is None
