"""The Python interface (``import ptyengine as pe``): the functions the command line calls,
so a notebook's result is the command's result."""

import numpy as np
import pytest
from cli_helpers import TINY_SIMULATION, run

import ptyengine as pe
from ptyengine.errors import PtyengineError
from ptyengine.results import read_result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The CLI tests' tiny SrTiO3 dataset, simulated through pe.simulate."""
    path = tmp_path_factory.mktemp("api") / "tiny.zarr"
    ds = pe.simulate(path, structure="srtio3", zone_axis=(0, 0, 1), field=(7.81, 7.81),
                     thickness=4.0, scan_step=0.4, scan_size=(2.4, 2.4), detector_pixels=32,
                     max_angle=40.0)  # fmt: skip
    ds.close()
    return path


def test_simulate_matches_the_command(tiny, tmp_path, capsys):
    cli = tmp_path / "cli.zarr"
    assert run(capsys, *TINY_SIMULATION, "-o", cli)[0] == 0
    with pe.open(tiny) as a, pe.open(cli) as b:
        assert a.calibration == b.calibration
        np.testing.assert_array_equal(a.read_rows(0, 6), b.read_rows(0, 6))


def test_reconstruct_is_the_command(tiny, tmp_path, capsys):
    with pe.open(tiny) as ds:
        res = pe.reconstruct(ds, method="epie", iterations=3, batch_size=4,
                             output=tmp_path / "api.zarr")  # fmt: skip
    code, _, err = run(capsys, "reconstruct", tiny, "--method", "epie", "--iterations", 3,
                       "--batch-size", 4, "-o", tmp_path / "cli.zarr")  # fmt: skip
    assert code == 0, err
    cli, attrs = read_result(tmp_path / "cli.zarr")
    np.testing.assert_array_equal(res.phase, cli["phase"])  # CPU, fixed seed: bit for bit
    assert res.method == "epie" and res.sampling == tuple(attrs["sampling"])
    assert res.object.dtype == np.complex64 and res.probe is not None
    assert len(res.errors) == 3 and -1 <= res.ncc <= 1
    assert (tmp_path / "api_preview.png").exists()
    assert "epie" in repr(res)


def test_reconstruct_from_a_path_and_load(tiny, tmp_path):
    res = pe.reconstruct(tiny, method="icom", output=tmp_path / "i.zarr")
    again = pe.load(tmp_path / "i.zarr")
    np.testing.assert_array_equal(res.phase, again.phase)
    assert res.object is None and res.errors == []


def test_bad_options_are_one_error_before_work(tiny, tmp_path):
    with pytest.raises(PtyengineError, match="iterations: for method epie/mepie/ml only"):
        pe.reconstruct(tiny, method="icom", iterations=3, output=tmp_path / "x.zarr")
    with pytest.raises(PtyengineError, match="method must be one of"):
        pe.reconstruct(tiny, method="pie")
    with pytest.raises(PtyengineError, match="simulate: "):
        pe.simulate(tmp_path / "s.zarr", thickness_nm=4)
    assert not (tmp_path / "x.zarr").exists()


def test_show_and_export(tiny, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = pe.reconstruct(tiny, method="icom", output=tmp_path / "s.zarr")
    ax = res.show()
    assert ax.get_title().startswith("icom phase, not wrapped")
    assert ax.figure.axes[-1].get_ylabel() == "rad"  # the colour bar
    plt.close(ax.figure)
    files = res.export("npy", prefix=tmp_path / "e")
    assert tmp_path / "e_phase.npy" in files


def test_suggest_prints_like_the_command(tiny):
    s = pe.suggest(tiny)
    assert "overlap" in str(s) and s.probe_diameter > 0


def test_submodules_stay_importable():
    import ptyengine.reconstruct.ml as ml
    from ptyengine.simulate import SimulationParameters

    assert pe.reconstruct.ml is ml and callable(pe.reconstruct)
    assert pe.simulate.SimulationParameters is SimulationParameters
