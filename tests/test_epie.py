"""ePIE against ground truth from the simulator, checkpoint/resume, bad input."""

import dataclasses

import numpy as np
import pytest

from ptyengine import io, metrics, physics
from ptyengine.dataset import InMemoryDataset
from ptyengine.errors import PtyengineError
from ptyengine.reconstruct import iterative
from ptyengine.reconstruct.epie import EpieParameters, epie
from ptyengine.simulate import SimulationParameters, simulate

THIN = SimulationParameters(structure="srtio3", zone_axis=(0, 0, 1), field=(7.81, 7.81),
                            thickness=3.905, scan_step=0.4, scan_size=(7.81, 7.81),
                            max_angle=40.0, detector_pixels=48)


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """Noise-free SrTiO3 [001], one unit cell thick: focused and defocused by 150 Å."""
    d = tmp_path_factory.mktemp("epie")
    return {df: simulate(dataclasses.replace(THIN, defocus=df), str(d / f"df{df:g}.zarr"))["output"]
            for df in (0.0, 150.0)}


def _ncc(res, path):
    return _compare(res, path)["ncc"]


def _compare(res, path) -> dict:
    """metrics.compare_to_truth of the phase with σ·V: {"ncc", "shift_A", ...}."""
    with io.open_dataset(path) as ds:
        pot, attrs = ds.read_array("ground_truth/potential")
    sigma = physics.interaction_constant(300e3)
    k_ap = 20e-3 / physics.wavelength(300e3)
    g = res.geometry
    return metrics.compare_to_truth(res.phase, g.sampling, g.object_origin, sigma * pot,
                                    attrs["sampling"], k_max=2 * k_ap, max_shift=1.0,
                                    border=g.window[0] // 2 + int(g.corners.min()))


@pytest.mark.parametrize("defocus", [0.0, 150.0])
def test_epie_reaches_ground_truth(datasets, defocus):
    errors = []
    res = epie(datasets[defocus], EpieParameters(iterations=12),
               progress=lambda k, e: errors.append(e))
    assert res.errors == errors and len(errors) == 12
    # the error falls monotonically over the first iterations
    assert all(b < a for a, b in zip(errors[:6], errors[1:6], strict=False)), errors
    assert errors[-1] < 0.1 * errors[0]
    assert _ncc(res, datasets[defocus]) > 0.95


def test_batched_epie_converges_like_sequential(datasets):
    """Batches of 16 and 64 positions per update reach the quality of sequential ePIE.

    Measured (12 iterations, this data, error at iterations 1/12): B=1 3.0e-3/2.0e-4,
    B=16 3.5e-3/1.3e-4, B=64 4.4e-3/1.5e-4; NCC 0.987-0.988 for all. Large batches start
    slower (fewer updates in the first sweep) and then settle lower than sequential ePIE,
    whose full steps (α = β = 1) keep overshooting.
    """
    seq = epie(datasets[150.0], EpieParameters(iterations=12))
    b16 = epie(datasets[150.0], EpieParameters(iterations=12, batch_size=16))
    b64 = epie(datasets[150.0], EpieParameters(iterations=12, batch_size=64))
    assert b64.errors[0] > seq.errors[0]  # fewer updates in the first sweep
    for res in (b16, b64):
        assert res.errors[-1] < 1.5 * seq.errors[-1]
        assert _ncc(res, datasets[150.0]) > 0.95


def test_batch_of_one_is_sequential(datasets):
    a = epie(datasets[0.0], EpieParameters(iterations=2))
    b = epie(datasets[0.0], EpieParameters(iterations=2, batch_size=1, seed=0))
    np.testing.assert_array_equal(a.object, b.object)
    c = epie(datasets[0.0], EpieParameters(iterations=2, seed=1))  # another random order
    assert not np.array_equal(a.object, c.object)


def test_checkpoint_resume_equals_uninterrupted(datasets, tmp_path):
    params = EpieParameters(iterations=6, batch_size=4)
    ref = epie(datasets[0.0], params)
    ck = str(tmp_path / "ck.npz")

    def stop_after_4(k, e):
        if k == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        epie(datasets[0.0], params, checkpoint=ck, checkpoint_every=2, progress=stop_after_4)
    resumed = epie(datasets[0.0], params, checkpoint=ck, checkpoint_every=2, resume=True)
    np.testing.assert_array_equal(resumed.object, ref.object)
    np.testing.assert_array_equal(resumed.probe, ref.probe)
    assert resumed.errors == ref.errors
    # a checkpoint of other parameters is refused
    with pytest.raises(PtyengineError, match="other data or parameters"):
        epie(datasets[0.0], dataclasses.replace(params, alpha=0.5), checkpoint=ck, resume=True)


def test_diverging_run_keeps_last_good_checkpoint(tmp_path):
    ck = tmp_path / "ck.npz"
    state = iterative.IterativeState({"object": np.ones(4, np.complex64)})

    def sweep(st, k):
        if k == 3:
            st.arrays["object"][0] = np.nan
        return 1.0 / (k + 1)

    with pytest.raises(PtyengineError, match="diverged at iteration 4.*ck.npz"):
        iterative.run(state, sweep, 10, np, "fp", str(ck), checkpoint_every=1)
    good = iterative.load_checkpoint(ck, "fp", np)
    assert good.iteration == 3 and np.isfinite(good.arrays["object"]).all()


def test_bad_input(datasets):
    with io.open_dataset(datasets[0.0]) as ds:
        data = np.asarray(ds.read_rows(0, ds.calibration.scan_shape[0]))
        cal = ds.calibration
    bad = data.copy()
    bad[3, 4, 10, 10] = np.nan
    with pytest.raises(PtyengineError, match="NaN"):
        epie(InMemoryDataset(bad, cal), EpieParameters(iterations=1))
    bad = data.copy()
    bad[2, 1, 0, 0] = -5
    with pytest.raises(PtyengineError, match="negative"):
        epie(InMemoryDataset(bad, cal), EpieParameters(iterations=1))
    with pytest.raises(PtyengineError, match="detector shape"):
        InMemoryDataset(data[:, :, :40, :40], cal)
    with pytest.raises(PtyengineError, match="step size alpha"):
        EpieParameters(alpha=5.0)


def test_phase_only_object(datasets, tmp_path):
    """|O| = 1 is kept exactly, the noise-free answer is unchanged, and at low counts
    (160 per pattern) the constraint beats a free amplitude (measured 0.50 vs 0.34)."""
    res = epie(datasets[150.0], EpieParameters(iterations=8, phase_only=True))
    np.testing.assert_allclose(np.abs(res.object), 1.0, atol=1e-5)
    assert _ncc(res, datasets[150.0]) > 0.95
    noisy = simulate(dataclasses.replace(THIN, defocus=150.0, dose=1000.0, seed=1),
                     str(tmp_path / "noisy.zarr"))["output"]
    common = dict(iterations=10, alpha=0.3, beta=0.3, probe_update_start=100)
    with pytest.warns(UserWarning, match="counts per bright-field pixel"):
        free = _ncc(epie(noisy, EpieParameters(**common)), noisy)
    phase = _ncc(epie(noisy, EpieParameters(**common, phase_only=True)), noisy)
    assert phase > free + 0.08, (phase, free)


def test_the_low_count_warning_reads_counts_as_ml_does(datasets):
    """Real-valued data with a recorded dose hold dose × step² electrons per pattern,
    whatever their own scale (noise-free intensities summing to ~1): no low-count warning
    at 10⁴ e/Å², one at 10 e/Å²; integer data are counts as stored."""
    import warnings

    with io.open_dataset(datasets[0.0]) as ds:
        data, cal = np.asarray(ds.read_rows(0, ds.calibration.scan_shape[0])), ds.calibration
    params = EpieParameters(iterations=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        epie(InMemoryDataset(data, dataclasses.replace(cal, dose=1e4)), params)
    with pytest.warns(UserWarning, match="counts per bright-field pixel"):
        epie(InMemoryDataset(data, dataclasses.replace(cal, dose=10.0)), params)
    counts = np.random.default_rng(0).poisson(data * 1e4 * 0.16).astype(np.uint32)
    with warnings.catch_warnings():  # ~1600 counts a pattern: plenty
        warnings.simplefilter("error")
        epie(InMemoryDataset(counts, dataclasses.replace(cal, dose=1.0)), params)


def test_the_pass_sums_do_not_depend_on_how_a_part_is_cut(monkeypatch):
    """forward.exit_wave_pass over a batch cut into the CPU's fixed sub-chunks, into 4s,
    or into powers of two (the GPU's cut, forward.sub_chunks(n, None)): the same overlap
    sums, probe update and Σ|O|², to float rounding. (The revision here is linear: ePIE's
    modulus projection gives pixels where the model is ~0 the phase of rounding noise, so
    whole runs with different FFT algorithms differ more than this.)"""
    from types import SimpleNamespace

    from ptyengine.reconstruct import forward

    rng = np.random.default_rng(4)
    w, n = 24, 29
    wave = lambda *s: (rng.normal(size=s) + 1j * rng.normal(size=s)).astype(np.complex64)  # noqa: E731
    obj, probe_k = wave(60, 60), wave(w, w)
    corners = rng.integers(0, 60 - w, (n, 2)).astype(np.int64)
    block = SimpleNamespace(first=0, ramps=(wave(n, w), wave(n, w)))
    lo = corners.min(axis=0)
    box = tuple(int(v) for v in corners.max(axis=0) + w - lo)

    def revise(psi_k, local, positions, s0, s1):
        psi_k *= np.float32(1.0 / (w * w))

    def run():
        return forward.exit_wave_pass(obj, probe_k, block, np.arange(n), corners, lo, box,
                                      revise, True, np, with_weight=True)  # fmt: skip

    ref = run()
    for cut in (4, None):
        monkeypatch.setattr(forward, "_chunk", lambda *a, cut=cut, **k: cut)
        for got, want in zip(run(), ref, strict=True):
            np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5 * np.abs(want).max())


def test_streamed_equals_resident(datasets, tmp_path):
    """A memory limit below the data's size streams the amplitudes from disk every
    iteration, block by block (here 3 scan rows per chunk), with the same result."""
    with io.open_dataset(datasets[150.0]) as ds:
        data, cal = np.asarray(ds.read_rows(0, ds.calibration.scan_shape[0])), ds.calibration
    path = tmp_path / "chunked.zarr"
    with io.create_dataset(path, cal, np.float32, rows_per_chunk=3) as w:
        for r0 in range(0, data.shape[0], 3):
            w.write_rows(r0, data[r0:r0 + 3])
    params = EpieParameters(iterations=3, batch_size=8)
    resident = epie(path, params)
    block_bytes = 3 * data.shape[1] * data[0, 0].nbytes
    streamed = epie(path, params, memory_limit=8 * block_bytes)
    assert not resident.extra["streamed"] and streamed.extra["streamed"]
    np.testing.assert_array_equal(streamed.object, resident.object)
    np.testing.assert_array_equal(streamed.probe, resident.probe)
    assert streamed.errors == resident.errors
    with pytest.raises(PtyengineError, match="memory limit .* fewer than two blocks of 3"):
        epie(path, params, memory_limit=block_bytes)


def test_probe_is_kept_centred(datasets, monkeypatch):
    """Probe and object may move together without changing a single diffraction pattern
    (ψ_j(r + c) has the pattern of ψ_j), so nothing in ePIE's updates stops them from
    wandering off: a probe started (or drifted) 0.1 Å off the window centre stays there
    and the object sits 0.1 Å off the truth. ePIE moves the probe's intensity centroid
    back to the centre after each probe update and the object with it: after 30
    iterations the phase registers on the ground truth within 0.02 Å."""
    from ptyengine.reconstruct import epie as epie_module

    start = epie_module.initial_probe

    def off_centre(cal, *args, **kw):  # the calibrated probe moved by +0.1 Å in y and x
        p = start(cal, *args, **kw)
        ky, kx = (np.fft.fftfreq(n, d)[:, None] for n, d in
                  zip(p.shape, cal.real_space_sampling, strict=True))
        return (p * np.exp(-2j * np.pi * (ky * 0.1 + kx.T * 0.1))).astype(p.dtype)

    monkeypatch.setattr(epie_module, "initial_probe", off_centre)
    res = epie(datasets[150.0], EpieParameters(iterations=30))
    cmp = _compare(res, datasets[150.0])
    assert cmp["ncc"] > 0.95
    assert np.hypot(*cmp["shift_A"]) < 0.02, cmp["shift_A"]
    # the centroid the engine holds (a circular mean, blind to the window's wrap): the
    # last iteration's probe step may move it by at most CENTRE_TOLERANCE again
    centre = epie_module.probe_centroid(np.fft.fft2(res.probe), np)
    assert np.hypot(*centre) * res.geometry.sampling[0] < 0.01, centre


def test_centring_resumes_bit_for_bit(datasets, tmp_path, monkeypatch):
    """The centring happens inside the iteration, so a run interrupted and resumed from
    its checkpoint equals an uninterrupted one while the probe is being moved back."""
    from ptyengine.reconstruct import epie as epie_module

    start = epie_module.initial_probe
    moved = []

    def off_centre(cal, *args, **kw):
        p = start(cal, *args, **kw)
        ky = np.fft.fftfreq(p.shape[0], cal.real_space_sampling[0])[:, None]
        return (p * np.exp(-2j * np.pi * ky * 0.1)).astype(p.dtype)

    def centre(*args, **kw):
        moved.append(centre_probe(*args, **kw))
        return moved[-1]

    centre_probe = epie_module.centre_probe
    monkeypatch.setattr(epie_module, "initial_probe", off_centre)
    monkeypatch.setattr(epie_module, "centre_probe", centre)
    params = EpieParameters(iterations=4)
    ref = epie(datasets[0.0], params)
    # the pair was moved back (0.4 px) in iteration 2, and again (0.02 px) in iteration 3,
    # after the checkpoint the resumed run starts from
    assert abs(moved[0][0]) > 0.3 and moved[1] != (0.0, 0.0), moved
    ck = str(tmp_path / "ck.npz")

    def stop_after_2(k, e):
        if k == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        epie(datasets[0.0], params, checkpoint=ck, checkpoint_every=1, progress=stop_after_2)
    resumed = epie(datasets[0.0], params, checkpoint=ck, resume=True)
    np.testing.assert_array_equal(resumed.object, ref.object)
    np.testing.assert_array_equal(resumed.probe, ref.probe)
