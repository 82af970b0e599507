"""Same seed, same numbers: across processes, with the default FFT planner, whatever the
number of threads (README, "Reproducibility").

FFTW_MEASURE chose its plans by timing them, so two processes could take different FFT
algorithms and round differently (measured: two noise-free simulations differed in 70 %
of their values by ~1e-10 and Poisson counts flipped); the default is now FFTW_ESTIMATE,
whose choice does not depend on timing, nor (checked here) on the thread count.
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
THREADS = {"PTYENGINE_THREADS": "1", "PTYENGINE_FFT_THREADS": "3"}


def _env(**extra) -> dict:
    """The environment of a user: the default planner and thread counts, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in
           ("PTYENGINE_FFTW_PLANNER", "PTYENGINE_THREADS", "PTYENGINE_FFT_THREADS")}
    return {**env, **extra}


def _ptyengine(*args, env=None):
    r = subprocess.run([sys.executable, "-m", "ptyengine", *map(str, args)],
                       capture_output=True, text=True, env=env or _env())
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
    out = {}
    for label, extra in (("clean", []), ("dose", ["--dose", "2e4"])):
        out[label] = d / f"{label}.zarr"
        _ptyengine(*SIMULATE, *extra, "-o", out[label])
    return out


@pytest.mark.parametrize("label", ["clean", "dose"])
def test_simulate_twice_gives_the_same_bytes(simulated, tmp_path, label):
    """Another process, with other thread counts (one worker, three FFT threads), writes
    the same bytes: noise-free intensities and Poisson counts alike."""
    again = tmp_path / "again.zarr"
    extra = ["--dose", "2e4"] if label == "dose" else []
    _ptyengine(*SIMULATE, *extra, "-o", again, env=_env(**THREADS))
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
    bit. Sequential ePIE does not depend on the thread counts either (the resumed process
    runs with others); a batch is summed in one part per worker thread
    (PTYENGINE_THREADS), so a batched run resumes with the same number."""
    from ptyengine.reconstruct.epie import EpieParameters, epie

    for name in ("PTYENGINE_FFTW_PLANNER", *THREADS):  # the defaults, here too
        monkeypatch.delenv(name, raising=False)
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
    env = _env(**THREADS) if batch == 1 else _env()
    r = subprocess.run([sys.executable, str(script), str(data), str(ck), str(out), str(batch)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    with np.load(out) as res:
        np.testing.assert_array_equal(res["object"], ref.object)
        np.testing.assert_array_equal(res["probe"], ref.probe)
        assert list(res["errors"]) == ref.errors
