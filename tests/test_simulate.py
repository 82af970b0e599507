"""End-to-end simulation: dose statistics, resume, presets, CLI errors."""

import dataclasses
import subprocess
import sys

import numpy as np
import pytest

from ptyengine import io, presets
from ptyengine.errors import PtyengineError
from ptyengine.simulate import SimulationParameters, simulate

SMALL = SimulationParameters(structure="srtio3", zone_axis=(0, 0, 1), field=(7.81, 7.81),
                             thickness=8.0, scan_step=0.5, scan_size=(3.0, 2.5),
                             max_angle=30.0, detector_pixels=24, phonons=0, seed=3)


def _read(path):
    with io.open_dataset(path) as ds:
        return np.asarray(ds.read_rows(0, ds.calibration.scan_shape[0])), ds.calibration


def test_dose_gives_poisson_counts_with_the_right_mean(tmp_path):
    clean, _ = _read(simulate(SMALL, str(tmp_path / "clean.zarr"))["output"])
    dosed = dataclasses.replace(SMALL, dose=1e4)
    counts, cal = _read(simulate(dosed, str(tmp_path / "dose.zarr"))["output"])
    assert counts.dtype == np.uint32
    per_pattern = 1e4 * 0.5 * 0.5  # dose × step²
    assert cal.counts_per_pattern == pytest.approx(per_pattern)
    # the noise-free patterns hold most electrons (the rest scatter beyond 30 mrad; the
    # band-limited transmission function is not exactly unitary, hence < 1.01) ...
    assert 0.9 < clean.sum(axis=(2, 3)).min() <= clean.sum(axis=(2, 3)).max() < 1.01
    # ... and the mean number of counts is dose × step² × that, within Poisson error
    expected = per_pattern * clean.sum()
    assert abs(counts.sum() - expected) < 4 * np.sqrt(expected)
    mean_counts = counts.sum(axis=(2, 3)).mean()
    n = counts.shape[0] * counts.shape[1]
    assert abs(mean_counts - per_pattern * clean.sum(axis=(2, 3)).mean()) < 4 * np.sqrt(
        per_pattern / n)
    # pixel statistics are Poisson: variance ≈ mean in bright pixels
    lam = clean * per_pattern
    bright = lam > 8
    assert bright.sum() > 1000
    z = (counts[bright] - lam[bright]) / np.sqrt(lam[bright])
    assert abs(z.mean()) < 0.1 and 0.9 < z.std() < 1.1


def test_resume_equals_uninterrupted_run(tmp_path):
    params = dataclasses.replace(SMALL, dose=500.0, phonons=2)
    ref, _ = _read(simulate(params, str(tmp_path / "ref.zarr"), rows_per_block=2)["output"])
    out = str(tmp_path / "run.zarr")
    done = []

    def interrupt(n):
        done.append(n)
        if len(done) == 10:  # in the second block of rows
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate(params, out, rows_per_block=2, batch_size=3, progress=interrupt)
    with pytest.raises(PtyengineError, match="resume"):
        io.open_dataset(out)
    # a changed parameter is refused, naming it, and the partial output is kept
    with pytest.raises(PtyengineError, match=r"seed = 3 there, 4 now"):
        simulate(dataclasses.replace(params, seed=4), out, rows_per_block=2, resume=True)
    notes = []
    simulate(params, out, rows_per_block=2, resume=True, log=notes.append)
    assert any("at scan row 2 of 6 (block 1 of 3)" in n for n in notes), notes
    got, _ = _read(out)
    np.testing.assert_array_equal(got, ref)


def test_phonons_smear_the_potential(tmp_path):
    static = simulate(SMALL, str(tmp_path / "s.zarr"))["output"]
    hot = simulate(dataclasses.replace(SMALL, phonons=3), str(tmp_path / "h.zarr"))["output"]
    with io.open_dataset(static) as a, io.open_dataset(hot) as b:
        va, _ = a.read_array("ground_truth/potential")
        vb, _ = b.read_array("ground_truth/potential")
    # thermal averaging lowers the peaks and keeps the mean (same atoms)
    assert vb.max() < 0.9 * va.max()
    assert vb.mean() == pytest.approx(va.mean(), rel=1e-3)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "ptyengine", *args], capture_output=True,
                          text=True)


def test_quick_uio66_preset_end_to_end(uio66_quick):
    """The quick UiO-66 defocus preset runs on a CI machine and opens with `info`."""
    for label, path in uio66_quick.items():
        info = _cli("info", str(path))
        assert info.returncode == 0, info.stderr
        assert "300" in info.stdout and "20" in info.stdout
        data, cal = _read(path)
        assert cal.defocus == {"df0nm": 0, "df50nm": 500, "df100nm": 1000}[label]
        sums = data.sum(axis=(2, 3))
        assert 0.9 < sums.min() <= sums.max() < 1.01
    params = presets.uio66_defocus("quick")[0][1]
    assert params.thickness == 30.0 and params.energy == 300e3 and params.semiangle == 20.0


@pytest.mark.parametrize("args, message", [
    (["info", "nonexistent.zarr"], "does not exist"),
    (["simulate", "--structure", "srtio3", "--sampling", "0.5", "-o", "x.zarr"], "too coarse"),
    (["simulate", "--structure", "nothere.cif", "-o", "x.zarr"], "nothere.cif"),
    (["simulate", "nosuchrecipe", "-o", "x"], "unknown recipe"),
    (["simulate", "--detector-pixels", "0", "-o", "x.zarr"], "detector_pixels = 0"),
    (["simulate", "--energy", "300000", "-o", "x.zarr"], "--energy is in kV"),
    (["simulate", "--phonons", "-1", "-o", "x.zarr"], "phonons = -1"),
    (["simulate", "--max-angle", "10", "--semiangle", "20", "-o", "x.zarr"], "bright-field"),
    (["simulate", "--max-angle", "30", "--dk", "0.05", "-o", "x.zarr"], "give one of them"),
    (["simulate", "--sigma", "Sr=big", "-o", "x.zarr"], "--sigma takes"),
    (["simulate", "--sigma", "Zr=0.1", "--field", "8", "-o", "x.zarr"], "does not contain"),
    (["simulate", "--defocus", "500000", "--field", "8", "-o", "x.zarr"], "--defocus"),
    (["simulate", "-o", "f.txt"], "f.txt: name one dataset"),
])
def test_cli_user_errors_are_one_line(tmp_path, args, message):
    r = subprocess.run([sys.executable, "-m", "ptyengine", *args], capture_output=True,
                       text=True, cwd=tmp_path)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("simulating")]
    assert len(lines) == 1, r.stderr
    assert not list(tmp_path.iterdir())  # nothing written, not even f.txt/


def test_unknown_element_is_a_clear_error(tmp_path):
    cif = tmp_path / "og.cif"
    cif.write_text("data_x\n_cell_length_a 5\n_cell_length_b 5\n_cell_length_c 5\n"
                   "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n"
                   "_symmetry_space_group_name_H-M 'P 1'\nloop_\n_atom_site_label\n"
                   "_atom_site_type_symbol\n_atom_site_fract_x\n_atom_site_fract_y\n"
                   "_atom_site_fract_z\nOg1 Og 0 0 0\n")
    r = _cli("simulate", "--structure", str(cif), "--field", "5", "--thickness", "5",
             "-o", str(tmp_path / "og.zarr"))
    assert r.returncode == 2 and "Og" in r.stderr and "Traceback" not in r.stderr


def test_detector_pixel_of_exactly_one_over_the_field_does_not_flip_the_window(tmp_path):
    """SrTiO3 on a 15.62 Å, 320-px field: --max-angle 40.332884 makes dk = 1/15.62 Å⁻¹ up
    to a 6e-17 rounding error, 40.33 a hair coarser. Both use the field as the window and
    the same detector rule, so the patterns differ only by the 7e-5 change of dk."""
    base = dataclasses.replace(SMALL, field=(15.62, 15.62), thickness=3.905, sampling=0.0489,
                               slice_thickness=1.9525, scan_size=(1.0, 1.0),
                               detector_pixels=64)
    got = {}
    for angle in (40.332884, 40.33):
        out = simulate(dataclasses.replace(base, max_angle=angle),
                       str(tmp_path / f"{angle}.zarr"))
        assert out["window"] == 320
        got[angle], _ = _read(out["output"])
        with io.open_dataset(out["output"]) as ds:
            assert ds.metadata["window_pixels"] == 320
    a, b = got[40.332884], got[40.33]
    err = np.sqrt(((a - b) ** 2).sum(axis=(2, 3)) / (a**2).sum(axis=(2, 3)))
    assert err.max() < 2e-3, err


def test_info_prints_the_window(tmp_path):
    out = simulate(SMALL, str(tmp_path / "w.zarr"))
    text = io.describe(out["output"])
    assert f"window {out['window']} × {out['window']} px" in text
    assert "point samples at pixel centres" in text


def test_cli_detector_pixel_scan_origin_and_sigma(tmp_path, capsys):
    """--dk sets the detector pixel exactly, --scan-origin the first position, --sigma one
    element's thermal σ (the others keep SrTiO3's literature values)."""
    from cli_helpers import run

    from ptyengine.structures import SRTIO3_SIGMA

    out = tmp_path / "o.zarr"
    code, _, err = run(capsys, "simulate", "--structure", "srtio3", "--field", "7.81",
                       "--thickness", "4", "--scan-step", "1", "--scan-size", "2",
                       "--detector-pixels", "48", "--dk", 1 / 15.62, "--scan-origin", "1.5,0.25",
                       "--phonons", "1", "--sigma", "Sr=0.1", "-o", out)
    assert code == 0, err
    with io.open_dataset(out) as ds:
        cal, meta = ds.calibration, ds.metadata
    assert cal.dk == (1 / 15.62, 1 / 15.62)
    assert cal.scan_origin == (1.5, 0.25)
    assert meta["thermal_sigmas"] == {"O": SRTIO3_SIGMA["O"], "Sr": 0.1, "Ti": SRTIO3_SIGMA["Ti"]}
    assert "thermal sigma" in err and "Sr 0.1" in err


def _received_dose(params, spec, d=0.3, n=384):
    """Dose received (as a fraction of the nominal dose per scanned area) on the unit cell in
    the middle of the scan, min and max: Σ_j step² |P(r − r_j)|² / pixel area, averaged
    over one scan step (a focused probe lights the points between positions less)."""
    from ptyengine import physics
    from ptyengine.simulate import dose_margin, scan_positions

    (ny, nx), _ = scan_positions(params, spec)
    k = int(round(params.scan_step / d))
    assert abs(k * d - params.scan_step) < 1e-9
    comb = np.zeros((n, n))
    y0, x0 = (n - ny * k) // 2, (n - nx * k) // 2
    comb[y0:y0 + ny * k:k, x0:x0 + nx * k:k] = 1
    probe = physics.probe((n, n), (d, d), params.energy, params.semiangle,
                          {"C10": params.defocus}, position=(0.0, 0.0), band_fraction=1.0)
    dose = np.fft.ifft2(np.fft.fft2(comb) * np.fft.fft2(np.abs(probe) ** 2)).real
    dose *= params.scan_step ** 2 / d ** 2
    box = np.zeros((n, n))
    box[:k, :k] = 1 / k**2
    dose = np.fft.ifft2(np.fft.fft2(dose) * np.fft.fft2(box)).real
    m = int(round(dose_margin(params) / d))
    cell = dose[y0 + m:y0 + ny * k - m, x0 + m:x0 + nx * k - m]
    return cell.min(), cell.max()


def test_quick_study_scan_gives_the_cell_the_full_dose():
    """The quick preset's scan reaches the probe's radius α·|C10| + 1 Å beyond the unit cell,
    so every point of the cell receives the labelled dose (within 7 %: the focused probe's
    tails reach beyond 1 Å). A scan of the cell alone gives the cell 21–25 % of it with the
    crossover 100 nm above (26–83 % at 50 nm)."""
    import types

    spec = types.SimpleNamespace(unit_cell=(20.72, 14.65), cell=(41.44, 43.96))
    for label, params in presets.uio66_defocus("quick"):
        low, high = _received_dose(params, spec)
        assert 0.93 < low <= high < 1.05, (label, low, high)
    far = dict(presets.uio66_defocus("quick"))["df100nm"]
    _, high = _received_dose(dataclasses.replace(far, scan_margin=0.0), spec)
    assert high < 0.3
    with pytest.raises(PtyengineError, match="scan margin"):
        simulate(dataclasses.replace(SMALL, scan_margin=-1.0), "unused.zarr")
