"""The command line end to end: simulate -> reconstruct (iCOM, iDPC, ePIE), checkpoints,
one-line errors, doctor and demo. Commands run in this process through ``cli.main`` (as
the ``ptyengine`` script does), one of them as a real subprocess."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from cli_helpers import run
from click.testing import CliRunner

from ptyengine import io
from ptyengine.calibration import Calibration
from ptyengine.cli import cli, main
from ptyengine.reconstruct.epie import EpieParameters
from ptyengine.results import read_result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """SrTiO3 [001], 4 Å thick, 6 × 6 positions at 0.4 Å, 32 × 32 px to 40 mrad."""
    path = tmp_path_factory.mktemp("cli") / "tiny.zarr"
    main(["simulate", "--structure", "srtio3", "--zone-axis", "0,0,1", "--field", "7.81",
          "--thickness", "4", "--scan-step", "0.4", "--scan-size", "2.4",
          "--detector-pixels", "32", "--max-angle", "40", "-o", str(path)])  # fmt: skip
    return path


@pytest.mark.parametrize("method, options", [("icom", []), ("idpc", ["--rotation", "0"])])
def test_reconstruct_icom_idpc(tiny, capsys, method, options):
    code, out, err = run(capsys, "reconstruct", tiny, "--method", method, *options)
    assert code == 0, err
    result = tiny.parent / f"tiny_{method}.zarr"  # the default output: next to the data
    arrays, attrs = read_result(result)
    assert set(arrays) == {"phase", "com_y", "com_x"}
    assert arrays["phase"].shape == (6, 6) and arrays["phase"].dtype == np.float32
    assert attrs["method"] == method
    assert attrs["calibration"]["detector_shape"] == [32, 32]
    assert attrs["parameters"]["rotation"] == ("calibration" if method == "icom" else 0.0)
    assert attrs["rotation_deg"] == 0.0 and attrs["sampling"] == [0.4, 0.4]
    assert -1 <= attrs["ncc_to_truth"] <= 1
    assert f"NCC of the {method} phase" in out
    assert (tiny.parent / f"tiny_{method}_preview.png").stat().st_size > 1000


def test_reconstruct_epie(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PTYENGINE_PROGRESS", "1")  # the bar, although stderr is no TTY
    result = tmp_path / "e.zarr"
    code, out, err = run(capsys, "reconstruct", tiny, "--method", "epie", "--iterations", 3,
                         "--batch-size", 4, "--defocus", 10, "-o", result)  # fmt: skip
    assert code == 0, err
    assert "ePIE" in err and "error=" in err  # tqdm bar with the error metric
    arrays, attrs = read_result(result)
    assert set(arrays) == {"object", "probe", "phase"}
    assert arrays["object"].dtype == np.complex64 and arrays["probe"].dtype == np.complex64
    assert arrays["probe"].shape == (32, 32)
    np.testing.assert_allclose(arrays["phase"], np.angle(arrays["object"]), atol=1e-6)
    p = attrs["parameters"]
    assert (p["iterations"], p["batch_size"], p["defocus"], p["alpha"]) == (3, 4, 10.0, 1.0)
    assert p["defocus_used"] == 10.0 and p["device"] == "cpu"
    assert len(attrs["errors"]) == 3 and attrs["calibration"]["scan_shape"] == [6, 6]
    assert 0 < attrs["ncc_to_truth"] <= 1 and "NCC of the epie phase" in out
    (y0, y1), (x0, x1) = attrs["scanned_area_px"]
    assert 0 < y0 < y1 < arrays["phase"].shape[0] and 0 < x0 < x1 < arrays["phase"].shape[1]
    assert (tmp_path / "e_preview.png").stat().st_size > 1000
    assert not list(tmp_path.glob("*.npz"))  # no checkpoint asked, none left
    assert attrs["streamed"] is False  # 150 kB of amplitudes: held in memory
    # a budget below the data's size streams them from disk, a chunk of rows at a time,
    # with the same result as when they are held (the order of the positions depends on
    # the chunking: both runs here read data stored with one scan row per chunk)
    with io.open_dataset(tiny) as ds:
        rows = np.asarray(ds.read_rows(0, 6))
        with io.create_dataset(tmp_path / "rows.zarr", ds.calibration, rows.dtype,
                               rows_per_chunk=1) as w:  # fmt: skip
            w.write_rows(0, rows)
    results = {}
    for limit in ("2GB", "120kB"):
        code, _, err = run(capsys, "reconstruct", tmp_path / "rows.zarr", "--iterations", 3,
                           "--batch-size", 4, "--defocus", 10, "-o", tmp_path / f"{limit}.zarr",
                           "--memory-limit", limit)  # fmt: skip
        assert code == 0, err
        results[limit] = read_result(tmp_path / f"{limit}.zarr")
    (held, held_attrs), (streamed, s_attrs) = results["2GB"], results["120kB"]
    assert not held_attrs["streamed"] and s_attrs["streamed"]
    assert s_attrs["errors"] == held_attrs["errors"]
    np.testing.assert_array_equal(streamed["object"], held["object"])
    code, _, err = run(capsys, "reconstruct", tiny, "--iterations", 1, "-o",
                       tmp_path / "m.zarr", "--memory-limit", "lots")
    assert code != 0 and "'lots'" in err and "size in bytes" in err
    # an existing result is kept unless --overwrite
    code, _, err = run(capsys, "reconstruct", tiny, "--iterations", 1, "-o", result)
    assert code == 2 and "--overwrite" in err


def _epie_object(path):
    return read_result(path)[0]["object"]


def test_checkpoint_kept_and_resumed(tiny, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    ck = tmp_path / "r.zarr.checkpoint.npz"
    args = ["reconstruct", tiny, "--iterations", 4, "--checkpoint-every", 2, "-o", out]
    code, _, err = run(capsys, *args, "--keep-checkpoint")
    assert code == 0, err
    assert ck.exists()
    first = _epie_object(out)
    code, _, err = run(capsys, *args, "--resume")  # the same run, picked up at its end
    assert code == 0, err
    assert "resuming from" in err
    np.testing.assert_array_equal(_epie_object(out), first)
    assert not ck.exists()  # removed after a successful run
    # --resume without a checkpoint starts afresh (batch jobs may always pass it)
    code, _, err = run(capsys, "reconstruct", tiny, "--iterations", 1, "--resume",
                       "-o", tmp_path / "fresh.zarr")  # fmt: skip
    assert code == 0 and "no checkpoint at" in err
    # a checkpoint of other parameters is refused, on one line
    run(capsys, *args, "--keep-checkpoint", "--overwrite")
    code, _, err = run(capsys, *args, "--alpha", 0.5, "--resume")
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: ") and "other data or parameters" in last


def test_resume_to_more_iterations_equals_straight_run(tiny, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    args = ["reconstruct", tiny, "--checkpoint-every", 2, "-o", out]
    assert run(capsys, *args, "--iterations", 4, "--keep-checkpoint")[0] == 0
    code, _, err = run(capsys, *args, "--iterations", 6, "--resume")
    assert code == 0, err
    assert run(capsys, "reconstruct", tiny, "--iterations", 6, "-o", tmp_path / "s.zarr")[0] == 0
    np.testing.assert_allclose(_epie_object(out), _epie_object(tmp_path / "s.zarr"), atol=1e-6)
    assert len(read_result(out)[1]["errors"]) == 6


def _small(path, data, cal):
    with io.create_dataset(path, cal, data.dtype) as w:
        w.write_rows(0, data)
    return path


CAL = Calibration(energy=300e3, semiangle=20.0, scan_shape=(4, 4), scan_step=(0.4, 0.4),
                  detector_shape=(16, 16), dk=(0.15, 0.15), detector_center=(8.0, 8.0))


@pytest.fixture
def bad_detector(tmp_path):
    path = _small(tmp_path / "bad_det.zarr", np.ones((4, 4, 16, 16), np.float32), CAL)
    root = zarr.open_group(str(path), mode="r+")
    attrs = dict(root.attrs["ptyengine"])
    attrs["calibration"] = {**attrs["calibration"], "detector_shape": [20, 20]}
    root.attrs["ptyengine"] = attrs
    return path


@pytest.fixture
def nan_counts(tmp_path):
    data = np.ones((4, 4, 16, 16), np.float32)
    data[2, 1, 3, 3] = np.nan
    return _small(tmp_path / "nan.zarr", data, CAL)


@pytest.mark.parametrize("case, method, expect", [
    ("missing", "icom", "does not exist"),
    ("bad_detector", "epie", "detector shape (16, 16) but the calibration says (20, 20)"),
    ("nan_counts", "icom", "non-finite"),
    ("nan_counts", "epie", "non-finite"),
])  # fmt: skip
def test_bad_input_is_one_line(request, tmp_path, capsys, case, method, expect):
    path = tmp_path / "missing.zarr" if case == "missing" else request.getfixturevalue(case)
    code, out, err = run(capsys, "reconstruct", path, "--method", method)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and expect in last and str(path) in last
    assert "Traceback" not in err + out
    assert not (tmp_path / f"{path.stem}_{method}.zarr").exists()


def test_bad_input_subprocess(tmp_path):
    cmd = [sys.executable, "-m", "ptyengine", "reconstruct", str(tmp_path / "nothing.zarr")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {tmp_path / 'nothing.zarr'} does not exist"


def test_options_of_the_other_method_are_refused(tiny, capsys):
    code, _, err = run(capsys, "reconstruct", tiny, "--method", "icom", "--iterations", 3)
    assert code == 2 and "--iterations: for --method epie/mepie/ml only" in err
    code, _, err = run(capsys, "reconstruct", tiny, "--rotation", "auto")
    assert code == 2 and "--rotation applies to --method icom/idpc" in err
    code, _, err = run(capsys, "reconstruct", tiny, "--method", "icom", "--rotation", "left")
    assert code == 2 and "left" in err


def test_help_states_the_library_defaults():
    """Every field of ePIE's, mepie's and ML's parameter dataclasses has its option, whose
    help states the dataclass's default."""
    from ptyengine.reconstruct.mepie import MepieParameters
    from ptyengine.reconstruct.ml import MLParameters

    help_text = CliRunner().invoke(cli, ["reconstruct", "--help"], terminal_width=200).output
    text = help_text.split("Options:", 1)[1]
    for cls in (EpieParameters, MepieParameters, MLParameters):
        for f in dataclasses.fields(cls):
            if f.name in ("defocus", "margin", "slice_thickness"):
                continue
            flag = f"--{f.name.replace('_', '-')}"
            assert flag in text
            if f.default is None:  # an automatic default, described in words
                assert "[default: " in text.split(flag, 1)[1].split("\n  --", 1)[0], flag
                continue
            if isinstance(f.default, bool):
                shown = "on" if f.default else "off"
            elif isinstance(f.default, str):
                shown = f.default
            else:
                shown = f"{f.default:g}"
            assert f"[default: {shown}]" in text.split(flag, 1)[1].split("\n  --", 1)[0], flag
    assert "ABOVE (upstream of) the entrance surface" in text


def test_doctor(capsys):
    code, out, err = run(capsys, "doctor")
    assert code == 0, out + err
    assert "FFT backend:" in out and ("pyfftw" in out or "scipy.fft" in out)
    assert "CPU ePIE:" in out and "ok:" in out and out.strip().endswith("CPU path: ok")
    assert "numba:" in out and "cupy:" in out and "numba.cuda:" in out


def test_doctor_fails_when_the_cpu_path_is_broken(capsys, monkeypatch):
    from ptyengine import backend

    def broken(*args, **kwargs):
        raise RuntimeError("no FFT today")

    monkeypatch.setattr(backend, "fft2", broken)
    code, out, _ = run(capsys, "doctor")
    assert code == 1
    assert "FFT backend:   FAILED: RuntimeError: no FFT today" in out
    assert out.strip().splitlines()[-1].startswith("CPU path: BROKEN (FFT backend: ")


def test_demo(tmp_path, capsys):
    code, out, err = run(capsys, "demo", "-o", tmp_path, "--iterations", 5)
    assert code == 0, err
    assert (tmp_path / "demo_comparison.png").stat().st_size > 5000
    assert (tmp_path / "srtio3_001_preview.png").exists()
    assert "iCOM: NCC" in out and "ePIE: NCC" in out
    _, attrs = read_result(tmp_path / "srtio3_001_epie.zarr")
    assert json.loads(json.dumps(attrs))["ncc_to_truth"] > 0.8
    assert Path(tmp_path / "srtio3_001_icom.zarr").is_dir()


def test_info_describes_a_result(tiny, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    assert run(capsys, "reconstruct", tiny, "--method", "icom", "-o", out)[0] == 0
    code, text, _ = run(capsys, "info", out)
    assert code == 0 and "method icom" in text and "phase" in text and "com_y" in text
