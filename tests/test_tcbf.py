"""tcBF: parallax shifts, the aberration/rotation fit (physics' defocus sign), the image."""

import math
from pathlib import Path

import numpy as np
import pytest
from direct_helpers import atoms, calibration, forward

from ptyengine.dataset import InMemoryDataset
from ptyengine.errors import PtyengineError
from ptyengine.reconstruct.tcbf import TcbfParameters, fit_model, model_shifts, tcbf


def angle_diff(a, b):
    return abs((a - b + 180.0) % 360.0 - 180.0)


def test_the_fit_inverts_the_model():
    rng = np.random.default_rng(1)
    k = rng.uniform(-0.8, 0.8, size=(50, 2))
    ab = {"C10": -320.0, "C12": 40.0, "phi12": 0.4}
    for rot, tr in ((33.0, False), (200.0, True)):
        d = model_shifts(k, ab, rot, tr, 0.0197) + [0.3, -0.2]
        fab, frot, off, res = fit_model(k, d, np.ones(50), 0.0197, tr, rot + 60.0)
        assert angle_diff(frot, rot) < 1e-6 and np.allclose(off, [0.3, -0.2])
        assert math.isclose(fab["C10"], -320.0) and math.isclose(fab["C12"], 40.0)
        assert math.isclose(fab["phi12"], 0.4) and res.max() < 1e-9


@pytest.mark.parametrize("c10, rotation, transpose, c12",
                         [(200.0, 23.0, False, 0.0), (-200.0, 0.0, False, 0.0),
                          (200.0, 205.0, True, 30.0)])  # fmt: skip
def test_tcbf_recovers_defocus_and_rotation(c10, rotation, transpose, c12):
    """Data simulated with physics.probe at C10 (> 0: crossover above the specimen), C12
    at φ12 = 0.5 rad (scan frame) and a detector turned by ``rotation`` (and transposed);
    the calibration says C10 = 0 and a rotation 0° (200° for the transposed one: the
    branch θ vs θ + 180° is taken nearest the calibration's)."""
    cal = calibration(32, 0.5, 48, 9, rotation=200.0 if transpose else 0.0,
                      transpose=transpose)  # a 16 Å field (smaller ones bias the fit: C12)
    truth = {"C10": c10, "C12": c12, "phi12": 0.5}
    data = forward(atoms(n=110), cal, truth, rotation, transpose)
    res = tcbf(InMemoryDataset(data, cal), TcbfParameters(bin=1))
    print(res.summary())
    assert abs(res.aberrations["C10"] - c10) < 20.0  # 2 nm
    assert angle_diff(res.rotation_deg, rotation) < 0.5
    assert abs(res.aberrations["C12"] - c12) < 10.0
    if c12:
        assert abs(res.aberrations["phi12"] - 0.5) < 0.1
    assert res.phase.shape == (32, 32) and "start an iterative run from --defocus" in res.summary()


def test_tcbf_image_correlates_with_the_phase():
    cal = calibration(24, 0.5, 48, 9)
    phase = atoms()
    data = forward(phase, cal, {"C10": 200.0})
    res = tcbf(InMemoryDataset(data, cal), TcbfParameters(bin=1, upsample=2))
    iy, ix = np.meshgrid(np.arange(48) * 0.25, np.arange(48) * 0.25, indexing="ij")
    truth = phase(iy, ix)[4:-4, 4:-4]
    img = res.phase[4:-4, 4:-4]
    a, b = img - img.mean(), truth - truth.mean()
    assert res.phase.shape == (48, 48) and res.sampling == (0.25, 0.25)
    assert float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum())) > 0.6


def test_a_disc_off_the_detector_is_refused():
    cal = calibration(8, 0.5, 48, 9, center=(24, 40))
    with pytest.raises(PtyengineError, match="reaches outside the 48-pixel detector"):
        tcbf(InMemoryDataset(np.ones((8, 8, 48, 48), np.float32), cal))


def test_cli_tcbf_and_ssb_write_results(tmp_path, capsys):
    """``reconstruct --method tcbf|ssb``: a result with the fitted values, a preview, the
    one-line summary; options of other methods are refused."""
    from cli_helpers import run

    from ptyengine import io
    from ptyengine.results import read_result

    cal = calibration(32, 0.5, 48, 9, aberrations={"C10": 150.0})
    data = forward(atoms(n=110), cal, {"C10": 200.0})
    path = tmp_path / "d.zarr"
    with io.create_dataset(path, cal, data.dtype, rows_per_chunk=8) as w:
        for r0 in range(0, 32, 8):
            w.write_rows(r0, data[r0:r0 + 8])
    code, out, err = run(capsys, "reconstruct", path, "--method", "tcbf", "--bin", "1")
    assert code == 0, err
    line = [s for s in out.splitlines() if s.startswith("tcBF: C10")]
    assert len(line) == 1 and "start an iterative run from --defocus" in line[0]
    arrays, attrs = read_result(tmp_path / "d_tcbf.zarr")
    assert abs(attrs["aberrations"]["C10"] - 200.0) < 20.0
    assert arrays["phase"].shape == (32, 32) and (tmp_path / "d_tcbf_preview.png").exists()
    code, out, err = run(capsys, "reconstruct", path, "--method", "ssb", "--defocus", "200")
    assert code == 0, err
    arrays, attrs = read_result(tmp_path / "d_ssb.zarr")
    assert attrs["aberrations"]["C10"] == 200.0 and attrs["units"] == "rad"
    code, out, err = run(capsys, "reconstruct", path, "--method", "ssb", "--rotation", "3",
                         "-o", tmp_path / "x.zarr")  # fmt: skip
    assert code == 2 and "--rotation: not an option of --method ssb" in err
    code, out, err = run(capsys, "reconstruct", path, "--method", "tcbf", "--iterations", "3",
                         "-o", tmp_path / "y.zarr")  # fmt: skip
    assert code == 2 and "--iterations" in err


def drizzle_reference(values, weights, shifts, step, u):
    """The bilinear splat written with numpy's bincount (the first implementation)."""
    n, sy, sx = values.shape
    ny, nx = sy * u, sx * u
    iy, ix = np.meshgrid(np.arange(sy), np.arange(sx), indexing="ij")
    py = (iy[None] - shifts[:, 0, None, None] / step[0]) * u
    px = (ix[None] - shifts[:, 1, None, None] / step[1]) * u
    w = np.broadcast_to(weights[:, None, None], py.shape)
    v = values * w
    y0, x0 = np.floor(py).astype(np.int64), np.floor(px).astype(np.int64)
    fy, fx = py - y0, px - x0
    num, den = np.zeros(ny * nx), np.zeros(ny * nx)
    for oy, ox, f in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx),
                      (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):  # fmt: skip
        yy, xx = y0 + oy, x0 + ox
        ok = (yy >= 0) & (yy < ny) & (xx >= 0) & (xx < nx)
        num += np.bincount((yy * nx + xx)[ok], (v * f)[ok], ny * nx)
        den += np.bincount((yy * nx + xx)[ok], (w * f)[ok], ny * nx)
    return num.reshape(ny, nx), den.reshape(ny, nx)


@pytest.mark.parametrize("u, split", [(1, False), (1, True), (3, True)])
def test_the_drizzle_kernel_equals_the_bincount_splat(u, split, monkeypatch):
    """tcbf.drizzle (kernels.direct.drizzle_cpu, in the calling thread or the images split
    over the cores) puts every sample where the numpy splat did, shifts of either sign,
    samples off the grid dropped; stored counts (uint16) with a per-image offset and scale
    as their float contrast."""
    from ptyengine.reconstruct import tcbf as module
    from ptyengine.reconstruct.tcbf import drizzle

    monkeypatch.setattr(module, "SPLIT_SAMPLES", 0 if split else 1 << 40)

    rng = np.random.default_rng(4)
    values = rng.normal(size=(37, 9, 11)).astype(np.float32)
    weights, shifts = rng.uniform(0.5, 2, 37), rng.normal(scale=1.5, size=(37, 2))
    # images landing one column/row from the edge, partly and wholly off the grid
    shifts[:6] = [[0.0, -5.0], [0.0, 5.0], [-3.2, -4.9], [0.0, 5.6], [4.0, -6.0], [0.0, -5.25]]
    shifts[6:8] = [[0.0, 5.5], [0.3, 5.4]]  # one column before the grid: the last one's tap
    # rows: the last image row alone on the first grid row, the first alone on the last,
    # partly off above and below, an integer offset (one tap per axis)
    shifts[8:13] = [[0.4 * 8.6, 0.2], [-0.4 * 8.7, -0.3], [0.4 * 3.3, 1.1], [-0.4 * 5.5, 0.0],
                    [0.8, -1.0]]
    got = drizzle(values, weights, shifts, (0.4, 0.5), u)
    ref = drizzle_reference(values, weights, shifts, (0.4, 0.5), u)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    far = np.array([[0.0, 1e12], [-1e15, 0.0], [np.nan, 0.0], [0.0, -np.inf]])
    for d in far:  # images far off the grid (a wild fit) add nothing, touch nothing else
        nd = drizzle(values[:1], [1.0], d[None], (0.4, 0.5), u)
        assert not nd[0].any() and not nd[1].any()
    counts = rng.integers(0, 900, size=values.shape).astype(np.uint16)
    off, scale = rng.uniform(100, 500, 37), rng.uniform(0.5, 2, 37)
    got = drizzle(counts, weights, shifts, (0.4, 0.5), u, offsets=off, scales=scale)
    rel = (counts - off[:, None, None]) * scale[:, None, None]
    ref = drizzle_reference(rel, weights, shifts, (0.4, 0.5), u)
    for a, b in zip(got, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def test_the_fit_stack_sums_groups_in_k_over_a_central_window():
    """fit_stack: groups tiled in k (fit_bin × fit_bin groups), their images summed over the
    central scan window, weights and k the counts-weighted sums and means."""
    from ptyengine.reconstruct.direct import bright_field_groups
    from ptyengine.reconstruct.tcbf import fit_stack

    cal = calibration(12, 0.5, 48, 9)
    bf = bright_field_groups(cal, 1)
    rng = np.random.default_rng(2)
    stack = rng.integers(1, 50, size=(bf.n_groups, 12, 10)).astype(np.uint16)
    cal = cal.replace(scan_shape=(12, 10))
    means = stack.mean(axis=(1, 2))
    fs = fit_stack(stack, means, bf, cal, fit_bin=2, window=(2, 9, 3, 8))
    assert fs.rel.shape[1:] == (7, 5) and fs.cal.scan_shape == (7, 5)
    assert 40 < len(fs.k) < bf.n_groups / 2
    tiles = np.floor(bf.k / (2 * np.asarray(cal.dk)) + 0.5)
    for j in range(len(fs.k)):
        members = np.flatnonzero((tiles == tiles[fs.members[j]]).all(axis=1))
        assert set(members) == set(np.flatnonzero(fs.group_of == j))
        total = stack[members, 2:9, 3:8].sum(0, dtype=np.float64)
        np.testing.assert_allclose(fs.rel[j], total / total.mean() - 1, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fs.weights[j], total.mean())
        np.testing.assert_allclose(fs.k[j], np.average(bf.k[members], axis=0,
                                                       weights=means[members]))


@pytest.mark.parametrize("det, radius, fit_samples, fit_bin, window",
                         [(64, 18, None, 2, (32, 32)), (48, 9, 254 * 20 * 20, 1, (24, 24))])
def test_tcbf_fits_on_the_reduced_stack(det, radius, fit_samples, fit_bin, window):
    """The C10 search and the shift fit on groups binned in k (fit_bin) or on a central
    window of the scan (fit_samples) find the truth as well: C10 = +200 Å, C12 30 Å at
    0.5 rad, the detector turned by 23°; the image is the full stack's, on the full scan."""
    cal = calibration(32, 0.5, det, radius)
    truth = {"C10": 200.0, "C12": 30.0, "phi12": 0.5}
    data = forward(atoms(n=110), cal, truth, 23.0)
    kw = {} if fit_samples is None else {"fit_samples": fit_samples}
    res = tcbf(InMemoryDataset(data, cal), TcbfParameters(bin=1, **kw))
    print(res.summary(), res.extra)
    assert res.extra["fit_bin"] == fit_bin and res.extra["fit_scan"] == list(window)
    assert abs(res.aberrations["C10"] - 200.0) < 20.0
    assert angle_diff(res.rotation_deg, 23.0) < 0.5
    assert abs(res.aberrations["C12"] - 30.0) < 10.0 and abs(res.aberrations["phi12"] - 0.5) < 0.1
    assert res.phase.shape == (32, 32) and res.extra["fit_from"] == "shifts"


def _few_counts(cal, truth_c10, counts=4.0, seed=3):
    """Poisson patterns of ~``counts`` electrons each (truth C10 ``truth_c10`` Å): a C10
    search over such data sees noise (the quick grid's SrTiO3 at 10 e/Å², 100 nm: 0.006
    counts per group and pattern)."""
    data = forward(atoms(n=110), cal, {"C10": truth_c10})
    data = data / data.sum(axis=(2, 3), keepdims=True).mean() * counts
    return np.random.default_rng(seed).poisson(data).astype(np.uint32)


def test_a_search_lost_in_noise_keeps_the_calibration_defocus():
    """The root of the quick grid's NaN tcBF cell: at a few counts per pattern the C10
    search's maximum is noise (there it landed on C10 = 0, where sin χ₂ ≡ 0 and the flipped
    image is zero). A search whose best score does not stand out of its noise keeps the
    calibration's C10, and the image is not empty."""
    cal = calibration(24, 0.5, 48, 9, aberrations={"C10": 200.0})
    res = tcbf(InMemoryDataset(_few_counts(cal, 200.0), cal))
    assert res.extra["fit_from"] == "calibration" and res.extra["search_z"] < 5
    assert res.aberrations["C10"] == 200.0 and "no_image" not in res.extra
    assert np.ptp(res.phase) > 0
    # where the data hold the defocus, the search still finds it (calibration 500 Å off)
    cal = calibration(24, 0.5, 48, 9, aberrations={"C10": -300.0})
    res = tcbf(InMemoryDataset(forward(atoms(n=110), cal, {"C10": 200.0}), cal),
               TcbfParameters(bin=1))  # fmt: skip
    assert res.extra["search_z"] > 5 and abs(res.aberrations["C10"] - 200.0) < 20.0


def test_in_focus_tcbf_gives_no_image_and_says_why():
    """C10 = C12 = 0 (in focus, and nothing in the data moves it): sin χ₂ ≡ 0, the bright
    field holds no weak-phase contrast; tcBF says so instead of a zero image."""
    cal = calibration(24, 0.5, 48, 9)
    res = tcbf(InMemoryDataset(_few_counts(cal, 0.0), cal))
    assert res.aberrations["C10"] == 0.0 and "in focus" in res.extra["no_image"]
    assert "no phase image: in focus" in res.summary()


def vm_flags(address: int) -> list[str]:
    """The kernel's VmFlags of the mapping that holds ``address`` (/proc/self/smaps)."""
    flags, inside = None, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= address < hi
            elif inside and head == "VmFlags:":
                flags = line.split()[1:]
    assert flags is not None, "no mapping holds the address"
    return flags


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="Linux only")
def test_the_stack_asks_for_no_transparent_huge_pages():
    """The bright-field stack is fresh memory written once by the reading threads; numpy
    marks arrays ≥ 4 MiB MADV_HUGEPAGE, whose first touch cost 3–5× that of plain pages on
    the benchmarks' VM (RESULTS.md): the stack is allocated without that hint ("hg")."""
    from ptyengine.reconstruct.direct import bright_field_groups, bright_field_stack

    cal = calibration(32, 0.5, 64, 25)
    data = np.random.default_rng(0).integers(0, 9, (32, 32, 64, 64)).astype(np.float32)
    bf = bright_field_groups(cal, 1)
    stack = bright_field_stack(InMemoryDataset(data, cal), bf)
    assert stack.nbytes >= 4 << 20 and "hg" not in vm_flags(stack.ctypes.data + stack.nbytes // 2)
    flat = data.reshape(32 * 32, -1)[:, bf.pixels].T.reshape(-1, 32, 32)
    np.testing.assert_array_equal(stack, flat)


def test_the_ctf_flip_is_the_full_spectrum_flip_in_a_third_of_the_memory():
    """tcbf.ctf_flip (half spectra, the phase factor in place) equals the flip of the
    mirror-extended image's full spectrum by sign(sin χ₂) with astigmatism, and its numpy
    allocations peak below 12× the image's bytes (the full spectra took 32×: scan-sized
    memory grows with the data, the memory-flat bound of bench_direct_memory.py)."""
    import tracemalloc

    from ptyengine.reconstruct.tcbf import ctf_flip

    image = np.random.default_rng(6).normal(size=(300, 101))
    ab, sampling, lam = {"C10": 300.0, "C12": 40.0, "phi12": 0.3}, (0.3, 0.4), 0.0197
    ext = np.block([[image, image[:, ::-1]], [image[::-1], image[::-1, ::-1]]])
    qy = np.fft.fftfreq(600, sampling[0])[:, None]
    qx = np.fft.fftfreq(202, sampling[1])[None, :]
    a, b = 40.0 * math.cos(0.6), 40.0 * math.sin(0.6)
    chi2 = math.pi * lam * ((300.0 + a) * qx**2 + 2 * b * qx * qy + (300.0 - a) * qy**2)
    ref = np.fft.ifft2(np.fft.fft2(ext) * np.sign(np.sin(chi2))).real[:300, :101]
    tracemalloc.start()
    try:
        got = ctf_flip(image, ab, sampling, lam)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12 * np.abs(ref).max())
    assert peak < 12 * image.nbytes
