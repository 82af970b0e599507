"""WDD: agreement with SSB in focus, a defocused probe and a turned detector corrected, the
Wiener constant from the dose, bad input."""

from pathlib import Path

import numpy as np
import pytest
from direct_helpers import atoms, calibration, forward
from test_ssb import STEP, N, grating, ncc, truth_image

from ptyengine.dataset import InMemoryDataset
from ptyengine.errors import PtyengineError
from ptyengine.reconstruct.ssb import ssb
from ptyengine.reconstruct.wdd import WddParameters, default_epsilon, wdd


def periodic_object(seed=0, n=12, amplitude=0.02):
    """A weak phase (rad), periodic over the scanned field: ``n`` cosines of random
    direction and phase at 3–10 periods per field (within SSB's and WDD's transfer)."""
    rng = np.random.default_rng(seed)
    length = N * STEP
    m = rng.integers(-10, 11, size=(3 * n, 2))
    m = m[(np.hypot(*m.T) >= 3) & (np.hypot(*m.T) <= 10)][:n]
    theta = rng.uniform(0, 2 * np.pi, len(m))
    amp = amplitude * rng.uniform(0.5, 1.0, len(m))

    def phase(y, x):
        out = np.zeros(np.shape(y))
        for (my, mx), t, a in zip(m, theta, amp, strict=True):
            out += a * np.cos(2 * np.pi * (my * y + mx * x) / length + t)
        return out

    return phase


def test_wdd_agrees_with_ssb_in_focus():
    """A weak object in focus, periodic over the field: WDD and SSB give the same image
    (NCC ≥ 0.95), both the truth; a 0.05 rad grating comes out within 5 % (rad)."""
    cal = calibration(N, STEP, 48, 9)
    phase = periodic_object()
    ds = InMemoryDataset(forward(phase, cal), cal)
    w, s = wdd(ds).phase, ssb(ds).phase
    truth = truth_image(phase)
    print(f"NCC wdd–ssb {ncc(w, s):.3f}, wdd–truth {ncc(w, truth):.3f}, "
          f"ssb–truth {ncc(s, truth):.3f}")  # fmt: skip
    assert ncc(w, s) >= 0.95 and ncc(w, truth) > 0.95 and ncc(s, truth) > 0.95
    g = wdd(InMemoryDataset(forward(grating(0.05), cal), cal)).phase
    amp = 2 * abs(np.fft.fft2(g)[3, 2]) / N**2
    print(f"grating amplitude {amp:.4f} rad (0.05)")
    assert abs(amp - 0.05) < 0.05 * 0.05 and ncc(g, truth_image(grating(0.05))) > 0.99


def test_wdd_corrects_a_defocused_probe():
    """Atoms imaged in focus and 150 Å out of focus: the NCC with the truth stays within
    0.1 of the in-focus one; without the correction it does not."""
    phase = atoms(width=0.7)
    truth = truth_image(phase)
    nccs = {}
    for c10 in (0.0, 150.0):
        cal = calibration(N, STEP, 48, 9, aberrations={"C10": c10})
        ds = InMemoryDataset(forward(phase, cal, {"C10": c10}), cal)
        nccs[c10] = ncc(wdd(ds).phase, truth)
        if c10:
            nccs["uncorrected"] = ncc(wdd(ds, WddParameters(defocus=0.0)).phase, truth)
    print(nccs)
    assert nccs[0.0] > 0.5
    assert abs(nccs[150.0] - nccs[0.0]) < 0.1
    assert nccs["uncorrected"] < nccs[0.0] - 0.2


@pytest.mark.parametrize("rotation, transpose", [(30.0, False), (205.0, True)])
def test_wdd_with_a_turned_detector(rotation, transpose):
    """The detector turned by 30° (and 205° transposed) with C10 = 150 Å, all in the
    calibration: the grating's amplitude within 10 % (7 % low at 30°: the scan's
    frequencies fall between detector pixels, where the simulated probe is not the
    model's aperture; on the grid, unturned, within 0.5 %), its image alone."""
    ab = {"C10": 150.0}
    cal = calibration(N, STEP, 48, 9, aberrations=ab, rotation=rotation, transpose=transpose)
    res = wdd(InMemoryDataset(forward(grating(0.05), cal, ab, rotation, transpose), cal))
    spec = np.fft.fft2(res.phase)
    amp = 2 * abs(spec[3, 2]) / N**2
    print(f"grating amplitude {amp:.4f} rad (0.05)")
    assert abs(amp - 0.05) < 0.1 * 0.05
    assert ncc(res.phase, truth_image(grating(0.05))) > 0.98
    assert res.rotation_deg == rotation and res.transpose == transpose


def test_blocks_and_the_disk_stack_give_the_same_phase():
    cal = calibration(N, STEP, 48, 9, aberrations={"C10": 100.0})
    ds = InMemoryDataset(forward(atoms(), cal, {"C10": 100.0}), cal)
    ref = wdd(ds)
    small = wdd(ds, WddParameters(block=37), memory_limit=600_000)  # stack: ~600 kB
    assert not ref.stack_on_disk and small.stack_on_disk
    assert np.allclose(small.phase, ref.phase, atol=1e-6)


def test_the_wiener_constant_follows_the_dose():
    """ε/max|χ_P|² = 1/(2 C σ²) for C counts per pattern (σ the assumed phase rms), never
    below the noise-free floor; noise-free data (no counts known) get the floor."""
    floor = default_epsilon(None)
    assert floor > 0 and default_epsilon(1e12) == floor
    assert default_epsilon(36.0) == pytest.approx(4 * default_epsilon(144.0))
    assert default_epsilon(36.0) > 100 * floor
    cal = calibration(N, STEP, 48, 9)
    data = forward(atoms(), cal) * 1000.0
    counts = np.random.default_rng(0).poisson(data).astype(np.uint16)
    res = wdd(InMemoryDataset(counts, cal))
    assert res.epsilon_from == "counts"
    assert res.counts_per_pattern == pytest.approx(data.sum((2, 3)).mean(), rel=0.02)
    assert res.epsilon == pytest.approx(default_epsilon(res.counts_per_pattern))
    assert wdd(InMemoryDataset(data, cal)).epsilon_from == "noise-free"
    given = wdd(InMemoryDataset(counts, cal), WddParameters(epsilon=0.3))
    assert given.epsilon == 0.3 and given.epsilon_from == "given"


def test_bad_input_is_refused():
    with pytest.raises(PtyengineError, match="too small for WDD.s trotters"):
        wdd(InMemoryDataset(np.ones((2, 2, 48, 48), np.float32), calibration(2, 0.1, 48, 9)))
    with pytest.raises(PtyengineError, match="reaches outside"):
        cal = calibration(8, 0.5, 48, 9, center=(4, 24))
        wdd(InMemoryDataset(np.ones((8, 8, 48, 48), np.float32), cal))
    for bad in ({"epsilon": 0.0}, {"epsilon": float("nan")}, {"bin": 0}, {"block": 0},
                {"defocus": float("inf")}):  # fmt: skip
        with pytest.raises(PtyengineError, match="WDD"):
            WddParameters(**bad)
    with pytest.raises(PtyengineError, match="no counts"):
        cal = calibration(8, 0.5, 48, 9)
        wdd(InMemoryDataset(np.zeros((8, 8, 48, 48), np.float32), cal))


def test_cli_wdd_writes_a_result(tmp_path, capsys):
    from cli_helpers import run

    from ptyengine import io
    from ptyengine.results import read_result

    cal = calibration(N, STEP, 48, 9, aberrations={"C10": 150.0})
    data = forward(atoms(), cal, {"C10": 150.0})
    path = tmp_path / "d.zarr"
    with io.create_dataset(path, cal, data.dtype, rows_per_chunk=8) as w:
        for r0 in range(0, N, 8):
            w.write_rows(r0, data[r0:r0 + 8])
    code, out, err = run(capsys, "reconstruct", path, "--method", "wdd", "--epsilon", "0.001")
    assert code == 0, err
    arrays, attrs = read_result(tmp_path / "d_wdd.zarr")
    assert arrays["phase"].shape == (N, N) and attrs["units"] == "rad"
    assert attrs["aberrations"]["C10"] == 150.0 and attrs["epsilon"] == 0.001
    assert (tmp_path / "d_wdd_preview.png").exists()
    ref = wdd(InMemoryDataset(data, cal), WddParameters(epsilon=0.001)).phase
    assert np.allclose(arrays["phase"], ref, atol=1e-5)
    code, out, err = run(capsys, "reconstruct", path, "--method", "wdd", "--upsample", "2",
                         "-o", tmp_path / "x.zarr")  # fmt: skip
    assert code == 2 and "--upsample: not an option of --method wdd" in err
    code, out, err = run(capsys, "reconstruct", path, "--method", "ssb", "--epsilon", "0.1",
                         "-o", tmp_path / "y.zarr")  # fmt: skip
    assert code == 2 and "--epsilon: not an option of --method ssb" in err


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc only")
def test_the_disk_stack_is_not_resident(tmp_path):
    """A MappedStack of 200 MB, filled block by block as bright_field_stack does, then
    FFT'd in place: its pages go back to the page cache after every block, so the process's
    resident file pages (RssFile) grow by far less than the stack (as a plain memmap they
    grew by all of it: WDD's peak was 1.2 GB at 2 GB of data and 6.5 GB at 16 GB)."""
    from ptyengine.reconstruct.wdd import MappedStack, fft_in_place

    def rss_file():
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
        pytest.skip("no RssFile in /proc/self/status")

    n, sy, sx = 50, 1000, 1000
    before = rss_file()
    stack = MappedStack(tmp_path / "s.npy", (n, sy, sx + 2))
    rng = np.random.default_rng(0)
    block = rng.random((n, 50, sx), dtype=np.float32)
    for r0 in range(0, sy, 50):
        stack.write(r0, block)
    assert rss_file() - before < 50e6
    spec = fft_in_place(stack, sx, 5, np)
    assert rss_file() - before < 50e6
    np.testing.assert_allclose(spec[3, :3, :3], np.fft.rfft2(np.tile(block[3], (20, 1)))[:3, :3],
                               rtol=1e-4)  # fmt: skip
    stack.close()
