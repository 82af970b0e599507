"""``reconstruct --probe-from RESULT``: an iterative run starts from a direct method's (or
another run's) aberrations and rotation, says so in one line; bad results one line."""

import pytest
from cli_helpers import TINY_SIMULATION, run

from ptyengine.calibration import Calibration
from ptyengine.results import read_result, write_result

FITTED = {"C10": 123.0, "C12": 7.0, "phi12": 0.3}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from ptyengine.cli import main

    path = tmp_path_factory.mktemp("probe_from") / "s.zarr"
    main([*TINY_SIMULATION, "--dose", "5000", "-o", str(path)])
    return path


def fake_result(path, method="tcbf", **extra):
    """A result as tcbf/ssb/wdd write it: the fitted values in its attributes."""
    import numpy as np

    return write_result(path, method, {"phase": np.zeros((4, 4), np.float32)}, (1.0, 1.0),
                        (0.0, 0.0), None, {}, None, extra)  # fmt: skip


@pytest.mark.parametrize("method", ["ml", "epie"])
def test_the_run_starts_from_the_results_aberrations_and_rotation(tiny, tmp_path, capsys,
                                                                  method):  # fmt: skip
    src = fake_result(tmp_path / "t_tcbf.zarr", aberrations=FITTED, rotation_deg=1.5,
                      transpose=False)  # fmt: skip
    out = tmp_path / f"{method}.zarr"
    code, _, err = run(capsys, "reconstruct", tiny, "--method", method, "--iterations", 1,
                       "--probe-from", src, "-o", out)  # fmt: skip
    assert code == 0, err
    lines = [s for s in err.splitlines() if s.startswith("probe from")]
    assert len(lines) == 1 and str(src) in lines[0], err
    assert "C10 123 Å" in lines[0] and "rotation 1.50°" in lines[0]
    _, attrs = read_result(out)
    cal = Calibration.from_dict(attrs["calibration"])
    assert cal.aberrations["C10"] == 123.0 and cal.aberrations["C12"] == 7.0
    assert cal.rotation == 1.5 and attrs["probe_from"] == str(src)
    assert attrs["parameters"]["defocus_used"] == 123.0


def test_an_ml_result_serves_as_well(tiny, tmp_path, capsys):
    """ML writes its refined aberrations; the rotation is then its calibration's."""
    first = tmp_path / "ml1.zarr"
    assert run(capsys, "reconstruct", tiny, "--method", "ml", "--iterations", 1, "-o",
               first)[0] == 0  # fmt: skip
    _, a1 = read_result(first)
    code, _, err = run(capsys, "reconstruct", tiny, "--method", "ml", "--iterations", 1,
                       "--probe-from", first, "-o", tmp_path / "ml2.zarr")  # fmt: skip
    assert code == 0, err
    _, a2 = read_result(tmp_path / "ml2.zarr")
    c10 = a1["aberrations"]["C10"]
    assert Calibration.from_dict(a2["calibration"]).aberrations["C10"] == pytest.approx(c10)


def test_bad_results_and_combinations_are_refused(tiny, tmp_path, capsys):
    no_ab = fake_result(tmp_path / "a.zarr", rotation_deg=0.0)
    code, _, err = run(capsys, "reconstruct", tiny, "--method", "ml", "--probe-from", no_ab,
                       "-o", tmp_path / "o1.zarr")  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(no_ab) in err and "'aberrations'" in err
    no_c10 = fake_result(tmp_path / "b.zarr", aberrations={"C12": 3.0}, rotation_deg=0.0)
    code, _, err = run(capsys, "reconstruct", tiny, "--method", "epie", "--probe-from",
                       no_c10, "-o", tmp_path / "o2.zarr")  # fmt: skip
    assert code == 2 and str(no_c10) in err and "C10" in err
    code, _, err = run(capsys, "reconstruct", tiny, "--method", "ml", "--probe-from",
                       tmp_path / "missing.zarr", "-o", tmp_path / "o3.zarr")  # fmt: skip
    assert code == 2 and "missing.zarr" in err
    ok = fake_result(tmp_path / "c.zarr", aberrations=FITTED, rotation_deg=0.0)
    code, _, err = run(capsys, "reconstruct", tiny, "--method", "ssb", "--probe-from", ok,
                       "-o", tmp_path / "o4.zarr")  # fmt: skip
    assert code == 2 and "--probe-from" in err and "epie/mepie/ml" in err
    code, _, err = run(capsys, "reconstruct", tiny, "--method", "ml", "--probe-from", ok,
                       "--defocus", "50", "-o", tmp_path / "o5.zarr")  # fmt: skip
    assert code == 2 and "--defocus" in err and "--probe-from" in err
    for o in ("o1", "o2", "o3", "o4", "o5"):
        assert not (tmp_path / f"{o}.zarr").exists()
