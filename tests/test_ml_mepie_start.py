"""Multislice ML started from mepie (``mepie_start_iterations``): the start is mepie's
slices and probe, ML then keeps or improves mepie's result; options, errors, resume."""

import numpy as np
import pytest
from test_multislice_ptycho import (
    GAP,
    _layer_ncc,
    _ml_data,
    assert_resume_equals_whole,
    two_layer_dataset,
)

from ptyengine.errors import PtyengineError
from ptyengine.reconstruct.mepie import MepieParameters, mepie
from ptyengine.reconstruct.ml import MLParameters, ml

SLICES = dict(slices=2, slice_thickness=(GAP, 1.0))


@pytest.fixture(scope="module")
def two_layers(tmp_path_factory):
    return two_layer_dataset(tmp_path_factory.mktemp("mlmepie") / "two.zarr")


def _mepie_of(mem, k):
    """The mepie run that the ML start makes: K iterations, batch 16, same slices."""
    return mepie(mem, MepieParameters(iterations=k, batch_size=16, defocus_search=0,
                                      **SLICES))  # fmt: skip


def test_ml_starts_from_mepie_slices_and_probe(two_layers):
    """With 0 ML iterations the result is the start: every slice's phase is mepie's
    arg O_s, the single-slice start is skipped, and the probe's C10 is fitted to mepie's
    refined probe (within 5 Å of the data's −40 Å: the calibration's)."""
    mem = _ml_data(two_layers)
    ref = _mepie_of(mem, 4)
    res = ml(mem, MLParameters(iterations=0, mepie_start_iterations=4, defocus_search=0,
                               **SLICES))  # fmt: skip
    np.testing.assert_allclose(res.slice_phase, np.angle(ref.object), atol=1e-6)
    assert res.extra["single_slice_start"] is None
    assert res.extra["mepie_start"]["iterations"] == 4
    assert abs(res.extra["refined"]["C10"] + 40.0) < 5.0, res.extra["refined"]


def test_ml_from_mepie_keeps_mepie_ncc(two_layers):
    """10 mepie iterations, then 15 ML ones: each slice correlates with its own layer
    better than mepie's slices did (measured: 0.999 / 0.999 against mepie's 0.941 / 0.939;
    −0.12 / −0.11 off the diagonal against ML's 0.01 / 0.03; C10 −40.0 Å, the data's)."""
    mem = _ml_data(two_layers)
    ref = _layer_ncc(_mepie_of(mem, 10), two_layers[1])
    res = ml(mem, MLParameters(iterations=15, mepie_start_iterations=10, defocus_search=0,
                               **SLICES))  # fmt: skip
    ncc = _layer_ncc(res, two_layers[1])
    assert ncc[0, 0] > ref[0, 0] + 0.03 and ncc[1, 1] > ref[1, 1] + 0.03, (ncc, ref)
    assert abs(ncc[0, 1]) < 0.1 and abs(ncc[1, 0]) < 0.1, ncc
    assert abs(res.extra["refined"]["C10"] + 40.0) < 1.0, res.extra["refined"]


def test_ml_resume_after_mepie_start(two_layers, tmp_path):
    """Checkpoint/resume of a run started from mepie gives the uninterrupted run bit for
    bit (the resumed run does not repeat the start)."""
    mem = _ml_data(two_layers)
    params = MLParameters(iterations=4, mepie_start_iterations=3, defocus_search=0, **SLICES)
    assert_resume_equals_whole(mem, params, tmp_path)


@pytest.mark.parametrize("value", [-1, 2.5, True])
def test_bad_mepie_start_iterations(value):
    with pytest.raises(PtyengineError, match="--mepie-start-iterations must be a whole "
                                             "number ≥ 0") as exc:  # fmt: skip
        MLParameters(mepie_start_iterations=value)
    assert "\n" not in str(exc.value)


def test_mepie_start_needs_slices():
    with pytest.raises(PtyengineError, match="--mepie-start-iterations 5 starts the slices "
                                             "of --slices > 1, got 1") as exc:  # fmt: skip
        MLParameters(mepie_start_iterations=5)
    assert "\n" not in str(exc.value)


def test_mepie_start_with_measured_positions_is_an_error(two_layers):
    mem = _ml_data(two_layers)
    cal = mem.calibration
    iy, ix = np.meshgrid(np.arange(cal.scan_shape[0]), np.arange(cal.scan_shape[1]),
                         indexing="ij")  # fmt: skip
    pos = np.asarray(cal.scan_origin) + np.asarray(cal.scan_step) * np.stack(
        [iy.ravel(), ix.ravel()], axis=1)  # fmt: skip
    with pytest.raises(PtyengineError, match="--mepie-start-iterations: mepie takes the "
                                             "calibration's scan grid"):  # fmt: skip
        ml(mem, MLParameters(iterations=1, mepie_start_iterations=2, defocus_search=0,
                             **SLICES), positions=pos)  # fmt: skip


def test_cli_mepie_start(two_layers, tmp_path, capsys):
    """--mepie-start-iterations reaches ML (parameters, the start's record, one line on
    stderr); a bad value is one line, exit status 2, nothing written; not an ePIE option."""
    from cli_helpers import TINY_SIMULATION, run

    from ptyengine.results import read_result

    data = tmp_path / "tiny.zarr"
    assert run(capsys, *TINY_SIMULATION, "--dose", "5000", "-o", data)[0] == 0
    out = tmp_path / "ms.zarr"
    code, _, err = run(capsys, "reconstruct", data, "--method", "ml", "--slices", "2",
                       "--iterations", "1", "--mepie-start-iterations", "2", "-o",
                       out)  # fmt: skip
    assert code == 0, err
    _, attrs = read_result(out)
    assert attrs["parameters"]["mepie_start_iterations"] == 2
    assert attrs["mepie_start"]["iterations"] == 2
    assert "mepie start: 2 iterations" in err
    code, _, err = run(capsys, "reconstruct", two_layers[0], "--method", "ml", "--slices",
                       "2", "--mepie-start-iterations", "-3", "-o",
                       tmp_path / "bad.zarr")  # fmt: skip
    assert code == 2 and err.strip().count("\n") == 0, err
    assert "--mepie-start-iterations must be a whole number ≥ 0, got -3" in err
    assert not (tmp_path / "bad.zarr").exists()
    code, _, err = run(capsys, "reconstruct", two_layers[0], "--mepie-start-iterations", "2",
                       "-o", tmp_path / "e.zarr")  # fmt: skip
    assert code == 2 and "--mepie-start-iterations: not an option of --method epie" in err
