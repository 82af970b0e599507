"""``ptyengine study uio66-defocus`` end to end on the ``tiny`` preset (one UiO-66 [110]
cell, 14.65 Å thick, static lattice, 128 px to 24 mrad: ~30 s for all six methods on three
defoci): the files it writes, the table's rows, the study's physics (iCOM inverts out of
focus, ePIE keeps the structure), reuse on a rerun, noisy rows, and one-line errors."""

import csv
import shutil
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from cli_helpers import run

from ptyengine import io, physics
from ptyengine.results import read_result

METHODS = ("icom", "idpc", "epie", "ml", "ssb", "wdd", "tcbf")
DEFOCI_NM = (0.0, 50.0, 100.0)


def _study(out, *options):
    """The tiny study as a real subprocess (the fixture's run)."""
    return subprocess.run([sys.executable, "-m", "ptyengine", "study", "uio66-defocus",
                           "--preset", "tiny", "-o", str(out), *options],
                          capture_output=True, text=True)  # fmt: skip


def _study_here(capsys, out, *options):
    """(exit status, stderr) of the tiny study run in this process (no interpreter start)."""
    code, _, err = run(capsys, "study", "uio66-defocus", "--preset", "tiny", "-o", out,
                       *options)  # fmt: skip
    return code, err


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    """The tiny study, noise-free, every method: (output folder, stderr)."""
    out = tmp_path_factory.mktemp("study") / "tiny"
    r = _study(out)
    assert r.returncode == 0, r.stderr
    return out, r.stderr


def _table(out):
    with open(out / "ncc.csv", newline="") as f:
        return list(csv.DictReader(f))


def _ncc(rows, method, defocus_nm, dose="none"):
    (row,) = [r for r in rows if r["method"] == method and float(r["defocus_nm"]) == defocus_nm
              and r["dose"] == dose]  # fmt: skip
    return float(row["ncc"])


def test_study_writes_figure_table_and_truth(tiny_study):
    out, err = tiny_study
    for name in ("figure_noise-free.png", "ground_truth.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    with io.open_dataset(out / "datasets" / "noise-free" / "df0nm.zarr") as ds:
        pot, _ = ds.read_array("ground_truth/potential")
    np.testing.assert_allclose(np.load(out / "ground_truth.npy"),  # σ·V in rad
                               physics.interaction_constant(300e3) * pot, rtol=1e-6)
    rows = _table(out)
    assert list(rows[0]) == ["dose", "defocus_nm", "method", "ncc", "ncc_1A", "seconds",
                             "note"]  # fmt: skip
    assert sorted((r["method"], float(r["defocus_nm"])) for r in rows) == sorted(
        (m, d) for m in METHODS for d in DEFOCI_NM)
    assert all(-1 <= float(r["ncc"]) <= 1 and -1 <= float(r["ncc_1A"]) <= 1
               and float(r["seconds"]) >= 0 for r in rows)  # fmt: skip
    md = (out / "ncc.md").read_text()
    assert "| dose (e/Å²) | defocus | method | NCC | NCC(1 Å) | seconds |" in md
    assert md.count("| none |") == len(METHODS) * len(DEFOCI_NM)
    # every output whole, under its final name: no temporary or partial left behind
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") or ".partial" in p.name
                 or ".tmp" in p.name]  # fmt: skip
    assert leftovers == []
    # each reconstruction kept as a result the rest of ptyengine reads
    arrays, attrs = read_result(out / "results" / "noise-free" / "df100nm_epie.zarr")
    assert attrs["method"] == "epie" and arrays["phase"].ndim == 2
    assert "wrote" in err and "figure_noise-free.png" in err


def test_study_reproduces_the_finding(tiny_study):
    """Noise-free: iCOM shows the structure in focus and inverted contrast with the
    crossover 50 and 100 nm above the surface; ePIE shows it at every defocus
    (measured on tiny: iCOM +0.80 / −0.50 / −0.35, ePIE 0.88 / 0.95 / 0.96)."""
    rows = _table(tiny_study[0])
    assert _ncc(rows, "icom", 0.0) > 0.5
    assert _ncc(rows, "icom", 50.0) < -0.2 and _ncc(rows, "icom", 100.0) < -0.2
    for df in DEFOCI_NM:
        assert _ncc(rows, "epie", df) > 0.8, df
        assert _ncc(rows, "ssb", df) > 0.8, df


def test_rerun_reuses_everything(tiny_study, capsys):
    out, _ = tiny_study
    result = out / "results" / "noise-free" / "df0nm_ml.zarr"
    before = (result / "zarr.json").stat().st_mtime_ns, _table(out)
    code, err = _study_here(capsys, out)
    assert code == 0, err
    assert "simulating" not in err and "reconstructing" not in err, err
    assert err.count("reused") >= 3 + 3 * len(METHODS)
    assert ((result / "zarr.json").stat().st_mtime_ns, _table(out)) == before


def test_results_store_the_run_configuration(tiny_study, capsys):
    """Each result holds the study's resolved configuration (TOML); the study re-runs from
    a result (here: everything reused) and writes that configuration back unchanged."""
    out, _ = tiny_study
    result = out / "results" / "noise-free" / "df100nm_epie.zarr"
    text = read_result(result)[1]["run_config"]
    stored = tomllib.loads(text)
    assert (stored["name"], stored["preset"], stored["output"]) == ("uio66-defocus", "tiny",
                                                                    str(out))  # fmt: skip
    assert stored["seed"] == 0 and stored["device"] == "cpu" and stored["resume"] is True
    assert stored["ptyengine"]["command"] == "study"
    code, printed, err = run(capsys, "study", "--config", result, "--write-config", "-")
    assert code == 0 and printed == text, err
    code, _, err = run(capsys, "study", "--config", result)
    assert code == 0, err
    assert "reconstructing" not in err and "simulating" not in err, err


def test_dose_adds_noisy_rows(tiny_study, tmp_path, capsys):
    """--dose D: Poisson datasets beside the noise-free ones (those reused), rows for
    both, a figure per dose."""
    out = tmp_path / "s"
    shutil.copytree(tiny_study[0], out)
    code, err = _study_here(capsys, out, "--methods", "icom,epie", "--dose", "1000",
                            "--seed", "3")  # fmt: skip
    assert code == 0, err
    assert err.count("simulating") == 3, err  # the noisy ones only
    assert err.count("reconstructing") == 6, err
    rows = _table(out)
    assert sorted((r["dose"], r["method"]) for r in rows) == sorted(
        [(d, m) for d in ("1000", "none") for m in ("icom", "epie")] * 3)
    # ePIE: plain noise-free, the low-dose recipe (|O| = 1, calibrated probe) with a dose
    _, plain = read_result(out / "results" / "noise-free" / "df50nm_epie.zarr")
    _, low = read_result(out / "results" / "dose1000" / "df50nm_epie.zarr")
    assert plain["parameters"]["alpha"] == 1.0 and not plain["parameters"]["phase_only"]
    assert low["parameters"]["alpha"] == 0.1 and low["parameters"]["phase_only"]
    assert low["parameters"]["probe_update_start"] >= low["parameters"]["iterations"]
    assert low["parameters"]["seed"] == 3 and plain["parameters"]["seed"] == 0
    assert (out / "figure_dose1000.png").exists() and (out / "figure_noise-free.png").exists()
    with io.open_dataset(out / "datasets" / "dose1000" / "df50nm.zarr") as ds:
        assert ds.calibration.dose == 1000.0 and ds.metadata["simulation"]["seed"] == 3
        assert np.issubdtype(ds.dtype, np.integer)


@pytest.mark.parametrize("options, expect", [
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--dose", "0"], "--dose"),
    (["--dose", "-5"], "--dose"),
    (["--dose", "abc"], "--dose"),
    (["--methods", "icom,foo"], "unknown method 'foo'"),
])  # fmt: skip
def test_bad_input_is_one_line(tmp_path, capsys, options, expect):
    out = tmp_path / "s"
    code, _, err = run(capsys, "study", "uio66-defocus", "-o", out, *options)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert expect in err
    assert not out.exists()  # refused before anything is written


def test_unknown_study_is_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "study", "uio67", "-o", tmp_path / "s")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "unknown study 'uio67'" in err and "uio66-defocus" in err


def test_interrupted_simulation_is_continued(tiny_study, tmp_path, capsys):
    """A dataset's .partial of the same parameters is continued (here: all its rows were
    written), one of other parameters is simulated afresh; finished ones are reused."""
    src, out = tiny_study[0] / "datasets" / "noise-free", tmp_path / "s"
    dst = out / "datasets" / "noise-free"
    dst.mkdir(parents=True)
    for label in ("df50nm", "df100nm"):
        shutil.copytree(src / f"{label}.zarr", dst / f"{label}.zarr")
    shutil.copytree(src / "df0nm.zarr", dst / "df0nm.zarr.partial")
    expected = _ncc(_table(tiny_study[0]), "icom", 0.0)
    code, err = _study_here(capsys, out, "--methods", "icom")
    assert code == 0, err
    assert "resuming" in err and err.count("simulating") == 1, err
    assert _ncc(_table(out), "icom", 0.0) == expected
    shutil.rmtree(dst / "df0nm.zarr")
    shutil.copytree(src / "df50nm.zarr", dst / "df0nm.zarr.partial")  # other parameters
    code, err = _study_here(capsys, out, "--methods", "icom")
    assert code == 0, err
    assert "resuming" not in err and err.count("simulating") == 1, err
    assert _ncc(_table(out), "icom", 0.0) == expected
    assert not (dst / "df0nm.zarr.partial").exists()


def test_a_method_without_an_image_is_named_in_the_table(tmp_path):
    """tcBF in focus at low dose (C10 = C12 = 0: sin χ₂ ≡ 0): "no image" and the reason in
    ncc.csv and ncc.md, never a NaN score."""
    from ptyengine.study import StudyRow
    from ptyengine.study_report import write_tables

    nan, p = float("nan"), tmp_path / "x.zarr"
    why = "tcBF: in focus (C10 = C12 = 0 Å, from the calibration): sin χ₂ ≡ 0"
    rows = [StudyRow(20.0, 0.0, "df0nm", "icom", 0.5, 0.6, 0.3, (0.0, 0.0), p, p, False),
            StudyRow(20.0, 0.0, "df0nm", "tcbf", nan, nan, 9.0, (0.0, 0.0), p, p, False, why)]
    csv_path, md_path = write_tables(rows, tmp_path, ["# study"])
    text, md = csv_path.read_text(), md_path.read_text()
    assert "nan" not in text.lower() and "nan" not in md.lower()
    assert f"| 20 | 0 nm | tcBF | no image ({why}) | — | 9.0 |" in md
    assert list(csv.reader(text.splitlines()))[2] == ["20", "0", "tcbf", "", "", "9.00", why]
