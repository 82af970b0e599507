"""Multislice ptychography: the forward model against the simulator's multislice, its
adjoint (dot-product test), mepie against ePIE and on a two-layer specimen, bad input."""

import warnings

import numpy as np
import pytest

from ptyengine import physics
from ptyengine.errors import PtyengineError
from ptyengine.multislice import ProbeWindow
from ptyengine.reconstruct.epie import EpieParameters, epie
from ptyengine.reconstruct.forward import direction_pass, exit_wave_pass, slice_propagators
from ptyengine.reconstruct.mepie import MepieParameters, mepie
from ptyengine.reconstruct.patterns import Block
from ptyengine.shift import ramps_2d

ENERGY, SEMIANGLE = 300e3, 25.0


def _waves(rng, shape, scale=1.0):
    return (scale * (rng.normal(size=shape) + 1j * rng.normal(size=shape))).astype(np.complex64)


def _pass(obj, probe_k, corners, frac, props, revise, with_probe=True):
    """exit_wave_pass over all positions as one block (box = the whole object)."""
    ramps = ramps_2d(frac, probe_k.shape, np)
    block = Block(slice(0, 1), 0, None, ramps)
    idx = np.arange(len(corners))
    box = obj.shape[-2:]
    return exit_wave_pass(obj, probe_k, block, idx, np.asarray(corners, np.int64),
                          np.zeros(2, np.int64), box, revise, with_probe, np, props,
                          with_weight=True)


def _capture(store, inv_n, add=None):
    """A revise hook that keeps Ψ (and, with ``add``, adds F[add] to it: Δφ = add)."""
    def revise(psi_k, local, positions, s0, s1):
        store[s0:s1] = psi_k
        if add is not None:
            psi_k += np.fft.fft2(add[s0:s1])
        psi_k *= inv_n
    return revise


@pytest.mark.parametrize("thicknesses", [[3.0], [20.0, 35.0, 10.0]])
def test_forward_equals_simulator_multislice(thicknesses):
    """The exit waves of the reconstruction's model are the simulator's (ProbeWindow), for
    the same slices, probe and band-limited propagators, to float precision."""
    rng = np.random.default_rng(0)
    w, d, n_s = 32, (0.12, 0.12), len(thicknesses)
    window = ProbeWindow.build(w, d, ENERGY, SEMIANGLE, {"C10": 40.0}, thicknesses,
                               (w, w), (1 / (w * d[0]),) * 2)
    field = (40, 44)
    phase = rng.normal(size=(n_s, *field)).astype(np.float32)
    t = np.exp(0.3j * phase).astype(np.complex64)
    positions = np.array([[1.03, 2.51], [3.3, 0.07], [4.0, 4.44]])
    sim, corner = window.exit_waves(t, positions)
    slab = window.prepare(t).padded  # the periodic field extended: windows need no wrap
    corners = corner % np.array(field)
    frac = positions / np.array(d) - np.floor(positions / np.array(d))
    props = slice_propagators((w, w), d, ENERGY, thicknesses, np, fraction=2 / 3)
    got = np.empty((len(positions), w, w), np.complex64)
    _pass(slab, window.probe_k, corners, frac, props, _capture(got, 1 / w**2))
    ref = np.fft.fft2(sim)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 2e-6, err


def test_adjoint_dot_product():
    """<∂φ/∂O_s x, y> = <x, num_s(y)> for every slice, and <∂φ/∂P̂ x, y> = <x, upd(y)>/N:
    the exit wave is linear in each slice and in the probe, so ∂φ/∂O_s x is the exit wave
    with slice s replaced by x."""
    rng = np.random.default_rng(1)
    w, d, thick = 24, (0.15, 0.15), [25.0, 40.0, 10.0]
    n_s, n = len(thick), 24 * 24
    probe_k = _waves(rng, (w, w))
    obj = np.exp(0.5j * rng.normal(size=(n_s, 40, 42))).astype(np.complex64)
    corners = np.array([[0, 0], [5, 9], [16, 18], [7, 3]])
    frac = rng.uniform(size=(4, 2))
    props = slice_propagators((w, w), d, ENERGY, thick, np)
    y = _waves(rng, (4, w, w))
    exit_k = np.empty_like(y)
    num, _, upd, _ = _pass(obj, probe_k, corners, frac, props, _capture(exit_k, 1 / n, y))

    def exit_wave(o, p):
        out = np.empty_like(y)
        _pass(o, p, corners, frac, props, _capture(out, 1 / n), with_probe=False)
        return np.fft.ifft2(out)

    for s in range(n_s):
        x = _waves(rng, obj.shape[1:])
        o = obj.copy()
        o[s] = x
        lhs = np.vdot(y, exit_wave(o, probe_k))
        rhs = np.vdot(num[s], x)
        assert abs(lhs - rhs) < 1e-4 * abs(lhs), (s, lhs, rhs)
    x = _waves(rng, (w, w))
    lhs = np.vdot(y, exit_wave(obj, x))
    rhs = np.vdot(upd, x) / n
    assert abs(lhs - rhs) < 1e-4 * abs(lhs), (lhs, rhs)


@pytest.mark.parametrize("n_slices", [1, 3])
def test_sub_chunks_do_not_change_the_sums(monkeypatch, n_slices):
    """The CPU's sub-chunks (forward._chunk, which sizes them for speed) change nothing
    but the grouping: one position at a time, three (the last sub-chunk of a part then
    smaller, on buffers of another size) or all at once give the same sums and the same
    detector waves to float precision."""
    from ptyengine.reconstruct import forward

    rng = np.random.default_rng(3)
    w, d = 16, (0.15, 0.15)
    thick = [25.0, 40.0, 10.0][:n_slices]
    probe_k = _waves(rng, (w, w))
    obj = np.exp(0.5j * rng.normal(size=(n_slices, 30, 31))).astype(np.complex64)
    corners = rng.integers(0, 14, size=(9, 2))
    frac = rng.uniform(size=(9, 2))
    props = slice_propagators((w, w), d, ENERGY, thick, np)
    y = _waves(rng, (9, w, w))
    results = []
    for size in (None, 1, 3):
        if size is not None:
            monkeypatch.setattr(forward, "_chunk", lambda *a, size=size, **k: size)
        exit_k = np.empty_like(y)
        sums = _pass(obj, probe_k, corners, frac, props, _capture(exit_k, 1 / w**2, y))
        results.append((exit_k, *sums))
    for other in results[1:]:
        for got, ref in zip(other, results[0], strict=True):
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_single_slice_stack_is_the_2d_model():
    """A (1, Ny, Nx) object runs the single-slice arithmetic: the same sums, bit for bit."""
    rng = np.random.default_rng(2)
    w = 16
    probe_k = _waves(rng, (w, w))
    obj = np.exp(0.5j * rng.normal(size=(30, 31))).astype(np.complex64)
    corners, frac = np.array([[0, 0], [7, 9], [14, 15]]), rng.uniform(size=(3, 2))
    y = _waves(rng, (3, w, w))
    flat = _pass(obj, probe_k, corners, frac, None, _capture(np.empty_like(y), 1 / w**2, y))
    stack = _pass(obj[None], probe_k, corners, frac, None,
                  _capture(np.empty_like(y), 1 / w**2, y))
    for a, b in zip(flat, stack, strict=True):
        np.testing.assert_array_equal(a, b[0] if a.ndim == 2 and b.ndim == 3 else b)


def _direction(obj, d_obj, probe_k, d_probe_k, corners, frac, props):
    """direction_pass over all positions as one block: (Ψ, Δ) of every position."""
    ramps = ramps_2d(frac, probe_k.shape, np)
    block = Block(slice(0, 1), 0, None, ramps)
    n, w = len(corners), probe_k.shape
    psi, delta = np.empty((n, *w), np.complex64), np.empty((n, *w), np.complex64)

    def reduce(psi_k, d_k, local, positions, s0, s1):
        psi[s0:s1], delta[s0:s1] = psi_k, d_k

    direction_pass(obj, d_obj, probe_k, block, np.arange(n), np.asarray(corners, np.int64),
                   reduce, np, d_probe_k, props)  # fmt: skip
    return psi, delta


@pytest.mark.parametrize("which", ["object", "probe", "both", "none"])
def test_direction_is_the_sum_over_slices(which):
    """The multislice derivative along (dO_0 … dO_{S−1}, dP̂): the exit wave is linear in
    each slice and in the probe, so Δ = Σ_s Ψ(O_s → dO_s) + Ψ(P̂ → dP̂), each term the
    forward model with one factor replaced (exit_wave_pass); Ψ is the forward model's."""
    rng = np.random.default_rng(6)
    w, d, thick = 24, (0.15, 0.15), [25.0, 40.0, 10.0]
    n, n_s = w * w, len(thick)
    probe_k = _waves(rng, (w, w))
    obj = np.exp(0.5j * rng.normal(size=(n_s, 40, 42))).astype(np.complex64)
    d_obj = _waves(rng, obj.shape, 0.3) if which in ("object", "both") else None
    d_probe_k = _waves(rng, (w, w)) if which in ("probe", "both") else None
    corners = np.array([[0, 0], [5, 9], [16, 18], [7, 3]])
    frac = rng.uniform(size=(4, 2))
    props = slice_propagators((w, w), d, ENERGY, thick, np)
    psi, delta = _direction(obj, d_obj, probe_k, d_probe_k, corners, frac, props)

    def detector(o, p):
        out = np.empty((len(corners), w, w), np.complex64)
        _pass(o, p, corners, frac, props, _capture(out, 1 / n), with_probe=False)
        return out

    np.testing.assert_allclose(psi, detector(obj, probe_k), rtol=0, atol=1e-5 * np.abs(psi).max())
    ref = np.zeros_like(psi)
    for s in range(n_s if d_obj is not None else 0):
        o = obj.copy()
        o[s] = d_obj[s]
        ref += detector(o, probe_k)
    if d_probe_k is not None:
        ref += detector(obj, d_probe_k)
    scale = max(np.abs(ref).max(), 1.0)
    assert np.abs(delta - ref).max() < 2e-5 * scale, np.abs(delta - ref).max() / scale


@pytest.mark.parametrize("with_probe", [False, True])
def test_single_slice_direction_stack_is_the_2d_model(with_probe):
    """direction_pass on a (1, Ny, Nx) object and direction runs the single-slice
    arithmetic: Ψ and Δ bit for bit those of the 2-D call."""
    rng = np.random.default_rng(7)
    w = 16
    probe_k = _waves(rng, (w, w))
    d_probe_k = _waves(rng, (w, w)) if with_probe else None
    obj = np.exp(0.5j * rng.normal(size=(30, 31))).astype(np.complex64)
    d_obj = _waves(rng, obj.shape)
    corners, frac = np.array([[0, 0], [7, 9], [14, 15]]), rng.uniform(size=(3, 2))
    flat = _direction(obj, d_obj, probe_k, d_probe_k, corners, frac, None)
    stack = _direction(obj[None], d_obj[None], probe_k, d_probe_k, corners, frac, None)
    for a, b in zip(flat, stack, strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------- mepie

W, D, FIELD, GAP = 48, 0.15, 96, 80.0  # window px, pixel Å, periodic field px, layer gap Å
SCAN, STEP, ORIGIN = 16, 0.45, 3.0  # positions per side, step Å, first position Å


def _layer(rng, n_atoms, sigma=0.3, peak=0.5):
    """Phase (rad) of Gaussian 'atoms' at random places in the periodic field."""
    y, x = np.meshgrid(np.arange(FIELD) * D, np.arange(FIELD) * D, indexing="ij")
    length = FIELD * D
    phase = np.zeros((FIELD, FIELD))
    for cy, cx in rng.uniform(0, length, size=(n_atoms, 2)):
        dy = (y - cy + length / 2) % length - length / 2
        dx = (x - cx + length / 2) % length - length / 2
        phase += peak * np.exp(-(dy**2 + dx**2) / (2 * sigma**2))
    return phase


def two_layer_dataset(path, gap=GAP, defocus=-40.0, thickness=None):
    """Noise-free patterns of two thin phase layers ``gap`` Å apart, simulated by the
    simulator's own multislice (ProbeWindow), written with the simulator's metadata
    (field pixel, thickness); returns (path, the two layers' phases (2, FIELD, FIELD))."""
    from ptyengine import io
    from ptyengine.calibration import Calibration
    from ptyengine.multislice import transmission_functions

    rng = np.random.default_rng(5)
    phases = np.stack([_layer(rng, 14), _layer(rng, 14)])
    sigma = physics.interaction_constant(ENERGY)
    t = transmission_functions(phases / sigma, ENERGY, (D, D))  # band-limited exp(iφ)
    dk = 1 / (W * D)
    window = ProbeWindow.build(W, (D, D), ENERGY, SEMIANGLE, {"C10": defocus}, [gap, 1.0],
                               (W, W), (dk, dk))  # fmt: skip
    iy, ix = np.meshgrid(np.arange(SCAN), np.arange(SCAN), indexing="ij")
    pos = ORIGIN + STEP * np.stack([iy.ravel(), ix.ravel()], axis=1)
    patterns = window.diffraction(t, pos).reshape(SCAN, SCAN, W, W).astype(np.float32)
    cal = Calibration(energy=ENERGY, semiangle=SEMIANGLE, scan_shape=(SCAN, SCAN),
                      scan_step=(STEP, STEP), detector_shape=(W, W), dk=(dk, dk),
                      detector_center=(W // 2, W // 2), aberrations={"C10": defocus},
                      scan_origin=(ORIGIN, ORIGIN))  # fmt: skip
    meta = {"field_sampling": [D, D],
            "simulation": {"thickness": gap + 1.0 if thickness is None else thickness}}
    with io.create_dataset(path, cal, np.float32, rows_per_chunk=2, metadata=meta) as w:
        w.write_rows(0, patterns)
    return path, np.angle(t)


def _layer_ncc(res, truth):
    """NCC of every reconstructed slice's phase with every layer's over the scanned area:
    (S, layers)."""
    g = res.geometry
    lead = np.round(np.asarray(g.object_origin) / D).astype(int)
    first = g.corners.min(axis=0) + W // 2
    n = int(round(SCAN * STEP / D))
    rows = (lead[0] + first[0] + np.arange(n)) % FIELD
    cols = (lead[1] + first[1] + np.arange(n)) % FIELD
    out = np.zeros((res.slice_phase.shape[0], len(truth)))
    for s, ph in enumerate(res.slice_phase):
        a = ph[first[0]:first[0] + n, first[1]:first[1] + n]
        for k, tr in enumerate(truth):
            b = tr[np.ix_(rows, cols)]
            out[s, k] = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    return out


@pytest.fixture(scope="module")
def two_layers(tmp_path_factory):
    return two_layer_dataset(tmp_path_factory.mktemp("mepie") / "two.zarr")


@pytest.mark.parametrize("batch", [1, 16])
def test_mepie_single_slice_equals_epie(two_layers, batch):
    """S = 1: the same arithmetic as ePIE (same seed, same data), probe refined too."""
    path, _ = two_layers
    common = dict(iterations=3, batch_size=batch, seed=3)
    e = epie(path, EpieParameters(**common))
    m = mepie(path, MepieParameters(slices=1, slice_thickness=81.0, **common))
    assert m.object.shape == (1, *e.object.shape)
    np.testing.assert_array_equal(m.object[0], e.object)
    np.testing.assert_array_equal(m.probe, e.probe)
    assert m.errors == e.errors
    np.testing.assert_array_equal(m.phase, e.phase)


def test_mepie_puts_each_layer_in_its_own_slice(two_layers):
    """Two thin phase layers 80 Å apart: with S = 2 slices 80 Å apart each slice's phase
    correlates with its own layer and not with the other (measured: 0.972 and 0.979 on the
    diagonal, −0.064 and −0.040 off it, after 20 iterations; the same run with one slice:
    0.92 with the first layer, −0.26 with the second)."""
    path, truth = two_layers
    res = mepie(path, MepieParameters(slices=2, slice_thickness=(GAP, 1.0), iterations=20,
                                      batch_size=16, phase_only=True,
                                      probe_update_start=100))  # fmt: skip
    ncc = _layer_ncc(res, truth)
    assert ncc[0, 0] > 0.95 and ncc[1, 1] > 0.95, ncc
    assert abs(ncc[0, 1]) < 0.15 and abs(ncc[1, 0]) < 0.15, ncc
    assert res.extra["slice_positions_A"] == [0.0, GAP]
    np.testing.assert_allclose(res.phase, res.slice_phase.sum(axis=0))


def _ml_data(two_layers, dose=1e4):
    """The two-layer patterns as ML's counts: noise-free, a dose of ``dose`` e/Å² (2025
    counts per pattern at 10⁴), in memory with the dataset's metadata."""
    import dataclasses

    from ptyengine import io
    from ptyengine.dataset import InMemoryDataset

    with io.open_dataset(two_layers[0]) as ds:
        mem = InMemoryDataset(ds.read_rows(0, SCAN), dataclasses.replace(ds.calibration,
                                                                         dose=dose))
        mem.metadata = ds.metadata
    return mem


def test_ml_puts_each_layer_in_its_own_slice(two_layers):
    """Multislice ML, S = 2 slices 80 Å apart, the probe started 30 Å from the data's
    defocus and refined with the slices: each slice's phase correlates with its own layer
    and not with the other (measured: 0.997 and 0.997 on the diagonal, 0.019 and 0.032 off
    it, C10 −40.0 Å for the true −40 Å; the same run with one slice: 0.90 with the first
    layer, −0.25 with the second)."""
    from ptyengine.reconstruct.ml import MLParameters, ml

    path, truth = two_layers
    res = ml(_ml_data(two_layers), MLParameters(slices=2, slice_thickness=(GAP, 1.0),
                                                iterations=20, holdout=0.0, defocus=-70.0,
                                                defocus_search=0,
                                                single_slice_iterations=0))  # fmt: skip
    ncc = _layer_ncc(res, truth)
    assert ncc[0, 0] > 0.95 and ncc[1, 1] > 0.95, ncc
    assert abs(ncc[0, 1]) < 0.15 and abs(ncc[1, 0]) < 0.15, ncc
    assert abs(res.extra["refined"]["C10"] + 40.0) < 2.0, res.extra["refined"]
    assert res.extra["slice_positions_A"] == [0.0, GAP]
    assert res.object.shape == res.slice_phase.shape == (2, *res.phase.shape)
    np.testing.assert_allclose(res.phase, res.slice_phase.sum(axis=0))


def test_ml_slices_start_from_single_slice_ml(two_layers):
    """single_slice_iterations K: the S slices start as φ/S of K single-slice ML iterations
    (their sum is that phase), the probe's defocus moved from the single-slice plane to the
    first slice's entrance (by the mean slice depth, 40 Å here), its astigmatism kept."""
    from ptyengine.reconstruct.ml import MLParameters, ml

    mem = _ml_data(two_layers)
    common = dict(holdout=0.0, defocus_search=0)
    # the start holds the positions (its single-slice run has refine_positions "off")
    single = ml(mem, MLParameters(iterations=3, refine_positions="off", **common))
    res = ml(mem, MLParameters(slices=2, slice_thickness=(GAP, 1.0), iterations=0,
                               single_slice_iterations=3, **common))  # fmt: skip
    np.testing.assert_allclose(res.phase, single.phase, atol=1e-6)
    np.testing.assert_allclose(res.slice_phase[0], res.slice_phase[1])
    ref = single.extra["refined"]
    assert res.extra["refined"]["C10"] == pytest.approx(ref["C10"] - GAP / 2)
    assert res.extra["refined"]["C12a"] == pytest.approx(ref["C12a"])
    assert res.extra["single_slice_start"]["iterations"] == 3
    with pytest.raises(PtyengineError, match="--single-slice-iterations must be a whole "
                                             "number ≥ 0, got -1"):  # fmt: skip
        MLParameters(single_slice_iterations=-1)


def test_ml_depth_prior_pulls_the_slices_together(two_layers):
    """The depth prior ½ μ_z Σ|φ_1 − φ_0|²: strong, it makes the two slices alike (their
    phases correlate 0.999, measured; 0.026 without it) and each correlates with both
    layers (measured 0.52-0.59)."""
    from ptyengine.reconstruct.ml import MLParameters, ml

    path, truth = two_layers
    res = ml(_ml_data(two_layers), MLParameters(slices=2, slice_thickness=(GAP, 1.0),
                                                iterations=12, holdout=0.0,
                                                defocus_search=0, refine_probe="none",
                                                single_slice_iterations=0,
                                                depth_smoothness=1e4))  # fmt: skip
    inner = res.slice_phase[:, 30:-30, 30:-30]
    assert np.corrcoef(inner[0].ravel(), inner[1].ravel())[0, 1] > 0.99
    ncc = _layer_ncc(res, truth)
    assert (ncc > 0.4).all(), ncc

def assert_resume_equals_whole(mem, params, tmp_path):
    """ML stopped after 2 iterations and resumed from its checkpoint ends as the
    uninterrupted run of ``params``: the same object, errors and refined probe, bit for bit."""
    from ptyengine.reconstruct.ml import MLParameters, ml

    whole = ml(mem, params)
    ck = str(tmp_path / "ck.npz")
    ml(mem, MLParameters(**{**params.__dict__, "iterations": 2}), checkpoint=ck,
       checkpoint_every=1)  # fmt: skip
    resumed = ml(mem, params, checkpoint=ck, checkpoint_every=1, resume=True)
    np.testing.assert_array_equal(resumed.object, whole.object)
    assert resumed.errors == whole.errors and resumed.extra["refined"] == whole.extra["refined"]


@pytest.mark.parametrize("slices", [1, 2])
def test_ml_resume_with_probe_refinement(two_layers, tmp_path, slices):
    """ML with the probe refined, one slice or two (started from 3 single-slice
    iterations, which a resumed run does not repeat): checkpoint/resume gives the
    uninterrupted run bit for bit (the preconditioner's illumination, which depends on the
    probe and, for S > 1, on the slices in front, travels with the checkpoint)."""
    from ptyengine.reconstruct.ml import MLParameters

    mem = _ml_data(two_layers)
    params = MLParameters(slices=slices, slice_thickness=(GAP, 1.0)[:slices], iterations=4,
                          defocus_search=0, single_slice_iterations=3)  # fmt: skip
    assert_resume_equals_whole(mem, params, tmp_path)


def test_mepie_resume_and_streaming(two_layers, tmp_path):
    """Checkpoint/resume gives the uninterrupted run; a memory limit below the data's size
    streams them, with the same result (S = 3)."""
    path, _ = two_layers
    params = MepieParameters(slices=3, slice_thickness=27.0, iterations=4, batch_size=16)
    whole = mepie(path, params)
    ck = str(tmp_path / "ck.npz")
    first = MepieParameters(**{**params.__dict__, "iterations": 2})
    mepie(path, first, checkpoint=ck, checkpoint_every=1)
    resumed = mepie(path, params, checkpoint=ck, checkpoint_every=1, resume=True)
    np.testing.assert_array_equal(resumed.object, whole.object)
    assert resumed.errors == whole.errors
    streamed = mepie(path, params, memory_limit=2_000_000)  # blocks of 2 scan rows
    assert streamed.extra["streamed"]
    np.testing.assert_array_equal(streamed.object, whole.object)


@pytest.mark.parametrize("kw, match", [
    (dict(slices=0), "--slices must be a whole number ≥ 1, got 0"),
    (dict(slices=2.5), "--slices must be a whole number"),
    (dict(slice_thickness=0.0), "--slice-thickness must be positive Å, got 0.0"),
    (dict(slice_thickness=-3.0), "--slice-thickness must be positive"),
    (dict(slices=3, slice_thickness=(2.0, 3.0)), "has 2 values for 3 slices"),
])  # fmt: skip
def test_bad_slices(kw, match):
    with pytest.raises(PtyengineError, match=match) as exc:
        MepieParameters(**kw)
    assert "\n" not in str(exc.value)


def test_thickness_far_from_the_datasets_warns(two_layers):
    from ptyengine.reconstruct.ml import MLParameters, ml

    path, _ = two_layers
    match = r"4 slices × 100 Å = 400 Å, but the dataset's specimen is 81 Å thick"
    with pytest.warns(UserWarning, match=match):
        mepie(path, MepieParameters(slices=4, slice_thickness=100.0, iterations=0))
    with pytest.warns(UserWarning, match=match):
        ml(_ml_data(two_layers), MLParameters(slices=4, slice_thickness=100.0, iterations=0,
                                              defocus_search=0,
                                              single_slice_iterations=0))  # fmt: skip
    with pytest.raises(PtyengineError, match="has 2 values for 3 slices"):
        MLParameters(slices=3, slice_thickness=(2.0, 3.0))


def test_window_narrower_than_the_beam_warns(two_layers):
    """The bright-field cone 2α·max(|C10|, |C10 + t|) much wider than the probe window
    (W·d = 7.2 Å here): multislice cannot model the wave (benchmarks/RESULTS.md, SrTiO3 at
    400 Å); the two layers' own slicing (t = 81 Å, 2.1 Å wide) draws no such warning."""
    path, _ = two_layers
    match = (r"the beam is 13\.05 Å wide at the exit of the 301 Å the slices model "
             r"\(2α·max\(\|C10\|, \|C10 \+ t\|\), C10 -40 Å\), the probe window 7\.2 Å "
             r"\(1/detector pixel\): multislice .*; record at least 87 detector pixels")
    with pytest.warns(UserWarning, match=match):
        mepie(path, MepieParameters(slices=2, slice_thickness=(300.0, 1.0), iterations=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mepie(path, MepieParameters(slices=2, slice_thickness=(80.0, 1.0), iterations=0))


def test_no_recorded_thickness_needs_one(two_layers):
    from ptyengine import io
    from ptyengine.dataset import InMemoryDataset

    with io.open_dataset(two_layers[0]) as ds:
        mem = InMemoryDataset(ds.read_rows(0, SCAN), ds.calibration)
    with pytest.raises(PtyengineError, match="records no specimen thickness: give "
                                             "--slice-thickness"):  # fmt: skip
        mepie(mem, MepieParameters(slices=2, iterations=0))


def test_cli_mepie_writes_slices_and_depth_montage(two_layers, tmp_path, capsys):
    from cli_helpers import run

    from ptyengine.results import read_result

    out = tmp_path / "ms.zarr"
    code, _, err = run(capsys, "reconstruct", two_layers[0], "--method", "mepie", "--slices",
                       "2", "--slice-thickness", "80,1", "--iterations", "2", "--batch-size",
                       "16", "--single-slice-iterations", "1", "-o", out)  # fmt: skip
    assert code == 0, err
    arrays, attrs = read_result(out)
    assert arrays["object"].shape[0] == 2 and arrays["slice_phase"].shape == arrays[
        "object"].shape  # fmt: skip
    np.testing.assert_allclose(arrays["phase"], arrays["slice_phase"].sum(axis=0), atol=1e-5)
    assert attrs["slice_positions_A"] == [0.0, 80.0]
    assert attrs["slice_thicknesses_A"] == [80.0, 1.0]
    assert attrs["parameters"]["slices"] == 2
    assert attrs["parameters"]["single_slice_iterations"] == 1
    assert (tmp_path / "ms_preview.png").exists() and (tmp_path / "ms_depth.png").exists()


@pytest.mark.parametrize("method", ["mepie", "ml"])
@pytest.mark.parametrize("args, message", [
    (("--slices", "0"), "--slices must be a whole number ≥ 1, got 0"),
    (("--slice-thickness", "-2"), "--slice-thickness must be positive Å, got -2.0"),
    (("--slice-thickness", "2,x"), "--slice-thickness takes Å, one value or one per slice"),
    (("--slices", "3", "--slice-thickness", "1,2"), "has 2 values for 3 slices"),
    (("--slices", "x"), "--slices takes a whole number ≥ 1 or 'rule', not 'x'"),
])  # fmt: skip
def test_cli_bad_slices(two_layers, tmp_path, capsys, args, message, method):
    from cli_helpers import run

    code, _, err = run(capsys, "reconstruct", two_layers[0], "--method", method,
                       "--iterations", "1", "-o", tmp_path / "bad.zarr", *args)  # fmt: skip
    assert code == 2
    assert err.strip().count("\n") == 0 and message in err, err
    assert not (tmp_path / "bad.zarr").exists()


def test_cli_ml_slices_write_a_stack_and_depth_montage(tmp_path, capsys):
    """reconstruct --method ml --slices 2 on simulated counts: the slice stack, its sum as
    ``phase``, the slice depths (the recorded 4 Å split in two), the depth montage, the
    NCC of the summed phase."""
    from cli_helpers import TINY_SIMULATION, run

    from ptyengine.results import read_result

    data = tmp_path / "tiny.zarr"
    assert run(capsys, *TINY_SIMULATION, "--dose", "5000", "-o", data)[0] == 0
    out = tmp_path / "ms.zarr"
    code, stdout, err = run(capsys, "reconstruct", data, "--method", "ml", "--slices", "2",
                            "--iterations", "3", "--defocus-search", "0",
                            "--single-slice-iterations", "2", "-o", out)  # fmt: skip
    assert code == 0, err
    arrays, attrs = read_result(out)
    assert arrays["slice_phase"].shape == arrays["object"].shape
    assert arrays["slice_phase"].shape[0] == 2
    np.testing.assert_allclose(arrays["phase"], arrays["slice_phase"].sum(axis=0), atol=1e-5)
    assert attrs["slice_positions_A"] == [0.0, 2.0]
    assert attrs["slice_thicknesses_A"] == [2.0, 2.0]
    assert attrs["parameters"]["slices"] == 2
    assert attrs["single_slice_start"]["iterations"] == 2
    assert "NCC of the ml phase" in stdout and "2 slices" in err
    assert "single-slice start: 2 iterations" in err
    assert (tmp_path / "ms_depth.png").exists()
    single = tmp_path / "one.zarr"  # the default: one slice, no stack, no montage
    assert run(capsys, "reconstruct", data, "--method", "ml", "--iterations", "1",
               "--defocus-search", "0", "-o", single)[0] == 0  # fmt: skip
    arrays, attrs = read_result(single)
    assert "slice_phase" not in arrays and "slice_positions_A" not in attrs
    assert not (tmp_path / "one_depth.png").exists()


def test_cli_slices_is_not_an_epie_option(two_layers, tmp_path, capsys):
    from cli_helpers import run

    code, _, err = run(capsys, "reconstruct", two_layers[0], "--slices", "2", "-o",
                       tmp_path / "e.zarr")  # fmt: skip
    assert code == 2 and "--slices: not an option of --method epie" in err


def test_slices_start_from_single_slice_epie(two_layers):
    """single_slice_iterations K: the S slices start as the S-th root of the object of K
    ePIE iterations (their product is that object) and the probe as ePIE left it."""
    path, truth = two_layers
    common = dict(batch_size=16, seed=2)
    e = epie(path, EpieParameters(iterations=3, **common))
    m = mepie(path, MepieParameters(slices=3, slice_thickness=27.0, iterations=0,
                                    single_slice_iterations=3, **common))  # fmt: skip
    np.testing.assert_allclose(np.prod(m.object, axis=0), e.object, rtol=2e-5, atol=2e-5)
    np.testing.assert_allclose(m.slice_phase[0], m.slice_phase[2], atol=1e-6)
    np.testing.assert_array_equal(m.probe, e.probe)
    assert m.errors == []
    with pytest.raises(PtyengineError, match="--single-slice-iterations must be a whole "
                                             "number ≥ 0, got -1"):  # fmt: skip
        MepieParameters(single_slice_iterations=-1)


@pytest.mark.parametrize("method", ["mepie", "ml"])
def test_turned_detector_gives_slices_in_the_specimen_frame(two_layers, method):
    """Data of a detector turned by 90° with the calibration that says so: the slice stack
    is resampled into the specimen frame slice by slice, and each slice matches the one
    reconstructed from the aligned data."""
    import dataclasses

    from test_detector import _turned

    from ptyengine import io
    from ptyengine.dataset import InMemoryDataset
    from ptyengine.reconstruct.ml import MLParameters, ml

    with io.open_dataset(two_layers[0]) as ds:
        data, cal, meta = ds.read_rows(0, SCAN), ds.calibration, ds.metadata
    common = dict(slices=2, slice_thickness=(GAP, 1.0), iterations=6)
    if method == "mepie":
        run, params = mepie, MepieParameters(batch_size=16, probe_update_start=100, **common)
    else:
        run = ml
        params = MLParameters(refine_probe="none", defocus_search=0, holdout=0.0,
                              single_slice_iterations=0, **common)  # fmt: skip
        cal = dataclasses.replace(cal, dose=1e4)
    results = []
    for d, c in [(data, cal), _turned(data, cal, 1, False)]:
        mem = InMemoryDataset(d, c)
        mem.metadata = meta
        results.append(run(mem, params))
    aligned, turned = results
    assert turned.reconstruction_frame is not None
    assert turned.object.shape == aligned.object.shape == (2, *aligned.phase.shape)
    assert turned.slice_phase.shape == aligned.slice_phase.shape
    inner = (slice(None), slice(30, -30), slice(30, -30))  # the scanned area
    for s in range(2):
        a, t = aligned.slice_phase[inner][s], turned.slice_phase[inner][s]
        assert np.corrcoef(a.ravel(), t.ravel())[0, 1] > 0.9, s


# ------------------------------------------------------------- the k_z filter (depth)


def _stack(rng, s=6, n=40):
    """Random slice phases (S, n, n), smooth over a few pixels, and their transmissions."""
    k2 = np.fft.fftfreq(n)[:, None] ** 2 + np.fft.fftfreq(n)[None, :] ** 2
    noise = rng.normal(size=(s, n, n))
    phase = np.fft.ifft2(np.fft.fft2(noise) * np.exp(-k2 * 200)).real
    return 0.5 * phase / phase.std()


def test_kz_filter_keeps_the_projection_and_removes_pure_depth_modulation():
    """W = 1 on k_z = 0: the summed phase (and log-amplitude) is unchanged to float
    precision; slices alternating ±φ with no lateral structure (k_r = 0, k_z ≠ 0) are
    removed, and with a slow lateral modulation (k_r small, β = 40) damped ≥ 10× (measured
    16×); a depth-constant stack passes unchanged."""
    from ptyengine.reconstruct.depth_filter import filter_stack, kz_filter

    rng = np.random.default_rng(11)
    phase = _stack(rng)
    sampling, dz = (0.2, 0.2), 20.0
    out = filter_stack(phase, dz, sampling, 3.0, np)
    np.testing.assert_allclose(out.sum(axis=0), phase.sum(axis=0), atol=1e-12)
    assert np.abs(out - phase).max() > 0.05  # it did change the slices
    obj = (np.exp(0.2 * phase[::-1]) * np.exp(1j * phase)).astype(np.complex64)
    ref = obj.copy()
    kz_filter(obj, [dz * s for s in range(6)], sampling, 3.0, np)
    np.testing.assert_allclose(np.angle(obj).sum(axis=0), np.angle(ref).sum(axis=0),
                               atol=2e-5)  # fmt: skip
    np.testing.assert_allclose(np.log(np.abs(obj)).sum(axis=0),
                               np.log(np.abs(ref)).sum(axis=0), atol=2e-5)  # fmt: skip
    signs = np.array([1.0, -1.0] * 3)[:, None, None]
    flat = filter_stack(0.3 * signs * np.ones((6, 40, 40)), dz, sampling, 3.0, np)
    assert np.abs(flat).max() < 1e-12
    slow = 0.3 * signs * (1 + np.cos(2 * np.pi * np.arange(40) / 40))[None, None, :]
    damped = filter_stack(slow, dz, sampling, 40.0, np)  # k_r = 0.125/Å, β k_z/k_r ≲ 8
    assert np.abs(damped).max() < 0.1 * np.abs(slow).max(), np.abs(damped).max()
    same = np.repeat(phase[:1], 6, axis=0)
    np.testing.assert_allclose(filter_stack(same, dz, sampling, 3.0, np), same, atol=1e-12)
    np.testing.assert_array_equal(filter_stack(phase, dz, sampling, 0.0, np), phase)


@pytest.mark.parametrize("kw, match", [
    (dict(kz_filter=-1.0), "--kz-filter must be a finite number ≥ 0 .*, got -1.0"),
    (dict(kz_filter=float("nan")), "--kz-filter must be a finite number ≥ 0 .*, got nan"),
    (dict(kz_every=0), "--kz-every must be a whole number ≥ 1, got 0"),
])  # fmt: skip
def test_bad_kz_filter(kw, match):
    with pytest.raises(PtyengineError, match=match) as exc:
        MepieParameters(**kw)
    assert "\n" not in str(exc.value)


def test_mepie_with_kz_filter_still_separates_the_layers(two_layers, tmp_path):
    """The two-layer run of test_mepie_puts_each_layer_in_its_own_slice with the k_z
    filter (β = 10, every iteration): each slice still correlates with its own layer (no
    worse than without the filter by more than 0.02; measured 0.968 and 0.977 against 0.972
    and 0.979) and not with the other (0.054 against 0.064); the filter is part of what a
    checkpoint must match."""
    path, truth = two_layers
    common = dict(slices=2, slice_thickness=(GAP, 1.0), iterations=20, batch_size=16,
                  phase_only=True, probe_update_start=100)  # fmt: skip
    plain = _layer_ncc(mepie(path, MepieParameters(**common)), truth)
    res = mepie(path, MepieParameters(kz_filter=10.0, **common))
    ncc = _layer_ncc(res, truth)
    assert ncc[0, 0] > plain[0, 0] - 0.02 and ncc[1, 1] > plain[1, 1] - 0.02, (ncc, plain)
    assert abs(ncc[0, 1]) < 0.15 and abs(ncc[1, 0]) < 0.15, ncc
    ck = str(tmp_path / "ck.npz")
    short = dict(common, iterations=1)
    mepie(path, MepieParameters(**short), checkpoint=ck, checkpoint_every=1)
    with pytest.raises(PtyengineError, match="written for other data or parameters"):
        mepie(path, MepieParameters(kz_filter=10.0, **short), checkpoint=ck, resume=True)


def test_cli_mepie_kz_filter(two_layers, tmp_path, capsys):
    """--kz-filter / --kz-every reach mepie (recorded in the result's parameters); a bad β
    is one line on stderr, exit status 2, nothing written; not an option of ePIE."""
    from cli_helpers import run

    from ptyengine.results import read_result

    out = tmp_path / "kz.zarr"
    code, _, err = run(capsys, "reconstruct", two_layers[0], "--method", "mepie", "--slices",
                       "2", "--slice-thickness", "80,1", "--iterations", "2", "--batch-size",
                       "16", "--kz-filter", "10", "--kz-every", "2", "-o", out)  # fmt: skip
    assert code == 0, err
    _, attrs = read_result(out)
    assert attrs["parameters"]["kz_filter"] == 10.0 and attrs["parameters"]["kz_every"] == 2
    for args, message in [(("--kz-filter", "-1"), "--kz-filter must be a finite number ≥ 0"),
                          (("--kz-filter", "nan"), "got nan"),
                          (("--kz-every", "0"), "--kz-every must be a whole number ≥ 1")]:
        code, _, err = run(capsys, "reconstruct", two_layers[0], "--method", "mepie",
                           "--iterations", "1", "-o", tmp_path / "bad.zarr", *args)  # fmt: skip
        assert code == 2 and err.strip().count("\n") == 0 and message in err, err
        assert not (tmp_path / "bad.zarr").exists()
    code, _, err = run(capsys, "reconstruct", two_layers[0], "--kz-filter", "5", "-o",
                       tmp_path / "e.zarr")  # fmt: skip
    assert code == 2 and "--kz-filter: not an option of --method epie" in err


def test_cli_slices_by_the_rule(two_layers, tmp_path, capsys):
    """--slices rule: S from the dataset's recorded thickness (slices.rule_slices), said on
    stderr and stored as the run's S; a dataset that records no thickness is refused."""
    from cli_helpers import run

    from ptyengine import io
    from ptyengine.reconstruct.slices import recorded_thickness, rule_slices
    from ptyengine.results import read_result

    with io.open_dataset(two_layers[0]) as ds:
        t, cal = recorded_thickness(ds), ds.calibration
    expected = rule_slices(cal.wavelength, cal.semiangle, t)
    assert expected > 1  # 81 Å at 25 mrad: Δz = λ/(2α²) = 15.8 Å
    out = tmp_path / "rule.zarr"
    code, _, err = run(capsys, "reconstruct", two_layers[0], "--method", "mepie", "--slices",
                       "rule", "--iterations", "1", "--batch-size", "16", "-o", out)  # fmt: skip
    assert code == 0, err
    assert f"slices: {expected} by the rule (specimen {t:g} Å" in err
    arrays, attrs = read_result(out)
    assert attrs["parameters"]["slices"] == expected == arrays["slice_phase"].shape[0]
    assert attrs["slice_thicknesses_A"] == pytest.approx([t / expected] * expected)
    assert (tmp_path / "rule_depth.png").exists()


def test_slices_rule_needs_a_recorded_thickness(two_layers):
    from ptyengine import io
    from ptyengine.cli.slicing import resolve_rule
    from ptyengine.dataset import InMemoryDataset

    with io.open_dataset(two_layers[0]) as ds:
        mem = InMemoryDataset(ds.read_rows(0, SCAN), ds.calibration)
    with pytest.raises(PtyengineError, match="records no specimen thickness; give --slices S"):
        resolve_rule(mem, {"slices": "rule"})
    assert resolve_rule(mem, {"slices": 3}) == {"slices": 3}  # a number passes as given
