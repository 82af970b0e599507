import os
import shutil

# Tests build many small FFT plans: estimate them instead of measuring (tests/test_determinism.py
# checks the default planner).
os.environ.setdefault("PTYENGINE_FFTW_PLANNER", "FFTW_ESTIMATE")
# Without a GPU, numba.cuda kernels run in numba's CUDA simulator (set before numba loads).
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def uio66_quick(tmp_path_factory):
    """The quick UiO-66 defocus preset, simulated once per test session through the CLI
    (~40 s on a 2-core CPU): {label: path} for df0nm, df50nm, df100nm. To keep the suite
    short it scans one unit cell at 0.6 Å (35 × 24 positions) at every defocus, without the
    preset's dose margin (the benchmarks use the preset as it is)."""
    out = tmp_path_factory.mktemp("uio66_quick")
    r = subprocess.run([sys.executable, "-m", "ptyengine", "simulate", "uio66-defocus",
                        "--preset", "quick", "--scan-margin", "0", "--scan-step", "0.6",
                        "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return {label: out / f"{label}.zarr" for label in ("df0nm", "df50nm", "df100nm")}


@pytest.fixture(autouse=True)
def _plain_cli_environment(monkeypatch):
    """Tests see the CLI as a user without debugging or forced progress bars does."""
    monkeypatch.delenv("PTYENGINE_DEBUG", raising=False)
    monkeypatch.delenv("PTYENGINE_PROGRESS", raising=False)
