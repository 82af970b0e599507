"""Same seed, same numbers across processes, with the default FFT planner (README,
"Reproducibility").

FFTW_MEASURE chooses its plans by timing them, so two processes could take different FFT
algorithms and round differently (measured: two noise-free simulations of the data here
differed in 1 of 2 pairs of runs, in 46,207 of 65,536 values; the UiO-66 quick preset's
in 70 % of its values by ~1e-10, and Poisson counts flipped). Now the plans measured by
the first process are kept as FFTW wisdom in a file of the machine and every later
process plans from it. Here that file is a fresh one, so the first process measures.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SIMULATE = ["simulate", "--structure", "srtio3", "--zone-axis", "0,0,1", "--field", "11.715",
            "--thickness", "3.905", "--scan-step", "0.5", "--scan-size", "2",
            "--max-angle", "25", "--detector-pixels", "64", "--phonons", "1", "--seed", "3"]
USER = ("PTYENGINE_FFTW_PLANNER", "PTYENGINE_THREADS", "PTYENGINE_FFT_THREADS")


def _env(wisdom: Path) -> dict:
    """The environment of a user (default planner and thread counts) whose machine keeps
    its FFT plans in ``wisdom``."""
    env = {k: v for k, v in os.environ.items() if k not in USER}
    return {**env, "PTYENGINE_FFTW_WISDOM": str(wisdom)}


def _ptyengine(wisdom, *args):
    r = subprocess.run([sys.executable, "-m", "ptyengine", *map(str, args)],
                       capture_output=True, text=True, env=_env(wisdom))
    assert r.returncode == 0, r.stderr
    return r


def _data_files(path: Path) -> dict:
    """Every file of the 4-D data array (chunks and array metadata) by relative path."""
    return {p.relative_to(path).as_posix(): p.read_bytes()
            for p in sorted((path / "data").rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """A tiny SrTiO3 dataset (4 × 4 positions, 64² px, 98-px window), noise-free and with
    dose, each simulated once in a process of its own with the default settings."""
    d = tmp_path_factory.mktemp("determinism")
    out = {"wisdom": d / "wisdom.json"}
    for label, extra in (("clean", []), ("dose", ["--dose", "2e4"])):
        out[label] = d / f"{label}.zarr"
        _ptyengine(out["wisdom"], *SIMULATE, *extra, "-o", out[label])
    assert out["wisdom"].stat().st_size > 100  # the first process measured, and kept it
    return out


@pytest.mark.parametrize("label", ["clean", "dose"])
def test_simulate_twice_gives_the_same_bytes(simulated, tmp_path, label):
    """Another process writes the same bytes: noise-free intensities and Poisson counts
    alike."""
    again = tmp_path / "again.zarr"
    extra = ["--dose", "2e4"] if label == "dose" else []
    _ptyengine(simulated["wisdom"], *SIMULATE, *extra, "-o", again)
    first, second = _data_files(simulated[label]), _data_files(again)
    assert first.keys() == second.keys() and len(first) > 1
    differ = [name for name in first if first[name] != second[name]]
    assert not differ, f"{label}: {differ} differ between two processes"


RESUME = """
import sys, numpy as np
from ptyengine.reconstruct.epie import EpieParameters, epie
data, ck, out, batch = sys.argv[1:5]
res = epie(data, EpieParameters(iterations=6, batch_size=int(batch)), checkpoint=ck,
           checkpoint_every=1, resume=True)
np.savez(out, object=res.object, probe=res.probe, errors=np.array(res.errors))
"""


@pytest.mark.parametrize("batch", [1, 4])
def test_epie_resumed_in_another_process_equals_uninterrupted(simulated, tmp_path, batch,
                                                             monkeypatch):
    """ePIE interrupted after 3 of 6 iterations (here) and resumed in another process
    gives the object, probe and error history of the uninterrupted run (here), to the
    bit (the default planner, here too)."""
    from ptyengine.reconstruct.epie import EpieParameters, epie

    for name in USER:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PTYENGINE_FFTW_WISDOM", str(simulated["wisdom"]))
    data, ck, out = simulated["clean"], tmp_path / "ck.npz", tmp_path / "resumed.npz"
    params = EpieParameters(iterations=6, batch_size=batch)
    ref = epie(data, params)

    def stop_after_3(k, e):
        if k == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        epie(data, params, checkpoint=str(ck), checkpoint_every=1, progress=stop_after_3)
    script = tmp_path / "resume.py"
    script.write_text(RESUME)
    r = subprocess.run([sys.executable, str(script), str(data), str(ck), str(out), str(batch)],
                       capture_output=True, text=True, env=_env(simulated["wisdom"]))
    assert r.returncode == 0, r.stderr
    with np.load(out) as res:
        np.testing.assert_array_equal(res["object"], ref.object)
        np.testing.assert_array_equal(res["probe"], ref.probe)
        assert list(res["errors"]) == ref.errors
