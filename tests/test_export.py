"""``ptyengine export``: a result's images as calibrated TIFF (ImageJ), HyperSpy, NumPy and
PNG files, read back with the tools people open them in."""

import json

import numpy as np
import pytest
from cli_helpers import TINY_SIMULATION, run

from ptyengine.results import write_result

SAMPLING = (0.25, 0.2)  # Å: unequal, so that a swapped axis shows


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    """A result as ePIE writes it: phase, complex object and probe, 0.25 × 0.2 Å pixels."""
    rng = np.random.default_rng(1)
    phase = rng.normal(size=(12, 10)).astype(np.float32)
    obj = np.exp(1j * phase).astype(np.complex64) * 0.9
    probe = (rng.normal(size=(8, 8)) + 1j * rng.normal(size=(8, 8))).astype(np.complex64)
    path = tmp_path_factory.mktemp("export") / "r.zarr"
    write_result(path, "epie", {"phase": phase, "object": obj, "probe": probe}, SAMPLING,
                 (1.0, 2.0), errors=[1.0, 0.5])  # fmt: skip
    return path


@pytest.fixture(scope="module")
def slices_result(tmp_path_factory):
    """A multislice result: three slices 5 Å apart."""
    rng = np.random.default_rng(2)
    sp = rng.normal(size=(3, 6, 7)).astype(np.float32)
    path = tmp_path_factory.mktemp("export") / "m.zarr"
    write_result(path, "mepie", {"phase": sp.sum(0), "slice_phase": sp,
                                 "object": np.exp(1j * sp).astype(np.complex64)},
                 SAMPLING, (0.0, 0.0), extra={"slice_positions_A": [0.0, 5.0, 10.0]})
    return path


def test_tiff_opens_calibrated(result, tmp_path, capsys):
    tifffile = pytest.importorskip("tifffile")
    code, out, err = run(capsys, "export", result, "--to", "tiff", "-o", tmp_path / "x")
    assert code == 0, err
    with tifffile.TiffFile(tmp_path / "x_phase.tif") as tif:
        page = tif.pages[0]
        meta = tif.imagej_metadata
        data = tif.asarray()
        xres, yres = page.tags["XResolution"].value, page.tags["YResolution"].value
    assert meta["unit"] == "angstrom"
    assert xres[1] / xres[0] == pytest.approx(SAMPLING[1])  # pixels per Å, as a fraction
    assert yres[1] / yres[0] == pytest.approx(SAMPLING[0])
    from ptyengine.results import read_result

    arrays, _ = read_result(result)
    np.testing.assert_array_equal(data, arrays["phase"])
    with tifffile.TiffFile(tmp_path / "x_object.tif") as tif:  # amplitude, phase channels
        obj = tif.asarray()
        assert tif.imagej_metadata["channels"] == 2
    np.testing.assert_allclose(obj[0], np.abs(arrays["object"]), rtol=1e-6)
    np.testing.assert_allclose(obj[1], np.angle(arrays["object"]), atol=1e-6)
    assert (tmp_path / "x_probe.tif").exists()
    assert "x_phase.tif" in out
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_tiff_slices_spacing(slices_result, tmp_path, capsys):
    tifffile = pytest.importorskip("tifffile")
    code, _, err = run(capsys, "export", slices_result, "--to", "tiff", "-o", tmp_path / "m")
    assert code == 0, err
    with tifffile.TiffFile(tmp_path / "m_slice_phase.tif") as tif:
        assert tif.imagej_metadata["spacing"] == pytest.approx(5.0)
        assert tif.asarray().shape == (3, 6, 7)


def test_hspy_axes_in_angstrom(result, slices_result, tmp_path, capsys):
    pytest.importorskip("rsciio")
    from rsciio.hspy import file_reader

    code, _, err = run(capsys, "export", result, "--to", "hspy", "-o", tmp_path / "h")
    assert code == 0, err
    sig = file_reader(str(tmp_path / "h_phase.hspy"))[0]
    axes = sig["axes"]
    assert [a["units"] for a in axes] == ["Å", "Å"]
    assert [a["scale"] for a in axes] == pytest.approx(list(SAMPLING))
    assert sig["data"].shape == (12, 10)
    obj = file_reader(str(tmp_path / "h_object.hspy"))[0]
    assert np.iscomplexobj(obj["data"])
    code, _, err = run(capsys, "export", slices_result, "--to", "hspy", "-o", tmp_path / "s")
    assert code == 0, err
    z = file_reader(str(tmp_path / "s_slice_phase.hspy"))[0]["axes"][0]
    assert z["navigate"] and z["scale"] == pytest.approx(5.0) and z["units"] == "Å"


def test_npy_with_metadata(result, tmp_path, capsys):
    code, _, err = run(capsys, "export", result, "--to", "npy", "-o", tmp_path / "n")
    assert code == 0, err
    from ptyengine.results import read_result

    arrays, _ = read_result(result)
    np.testing.assert_array_equal(np.load(tmp_path / "n_object.npy"), arrays["object"])
    meta = json.loads((tmp_path / "n_metadata.json").read_text())
    assert meta["sampling_A"] == list(SAMPLING) and meta["arrays"]["phase"]["unit"] == "rad"


def test_png(result, tmp_path, capsys):
    code, _, err = run(capsys, "export", result, "--to", "png", "-o", tmp_path / "p")
    assert code == 0, err
    assert (tmp_path / "p_phase.png").stat().st_size > 1000
    assert (tmp_path / "p_probe.png").exists() and not (tmp_path / "p_object.png").exists()


def test_default_prefix_and_overwrite(result, capsys):
    code, _, err = run(capsys, "export", result, "--to", "npy")
    assert code == 0, err
    assert (result.parent / "r_phase.npy").exists()
    code, _, err = run(capsys, "export", result, "--to", "npy")
    assert code == 2 and "exists; pass --overwrite" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, "export", result, "--to", "npy", "--overwrite")
    assert code == 0, err


def test_bad_input_one_line(result, tmp_path, capsys):
    data = tmp_path / "d.zarr"
    assert run(capsys, *TINY_SIMULATION, "-o", data)[0] == 0
    code, _, err = run(capsys, "export", data, "--to", "tiff")
    assert code == 2 and len(err.splitlines()) == 1
    assert "is a dataset, not a result" in err
    code, _, err = run(capsys, "export", result, "--to", "jpeg")
    assert code == 2 and len(err.splitlines()) == 1
    assert "--to jpeg: unknown format; choose one of tiff, hspy, npy, png" in err
    code, _, err = run(capsys, "export", tmp_path / "nothing.zarr", "--to", "npy")
    assert code == 2 and "does not exist" in err and len(err.splitlines()) == 1


def test_scale_bar_length():
    from ptyengine.preview import scale_bar_length

    assert scale_bar_length(40.0) == 10.0  # 1/4 of 40 Å
    assert scale_bar_length(30.0) == 5.0
    assert scale_bar_length(9.0) == 2.0
    assert scale_bar_length(3.9) == 0.5
