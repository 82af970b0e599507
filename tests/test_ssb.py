"""SSB: a weak phase grating's amplitude, aberration correction, bad input."""

import numpy as np
import pytest
from direct_helpers import atoms, calibration, forward

from ptyengine.dataset import InMemoryDataset
from ptyengine.errors import PtyengineError
from ptyengine.reconstruct.ssb import SsbParameters, ssb

N, STEP = 24, 0.5


def grating(amplitude, m=(3, 2)):
    """φ = a cos(2π (m_y y + m_x x) / L), periodic over the scanned field L = N·STEP."""
    length = N * STEP

    def phase(y, x):
        return amplitude * np.cos(2 * np.pi * (m[0] * y + m[1] * x) / length)

    return phase


def ncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.mark.parametrize("ab, rotation, transpose",
                         [({}, 0.0, False), ({"C10": 150.0}, 30.0, False),
                          ({"C10": 150.0, "C12": 30.0, "phi12": 0.5}, 205.0, True)])  # fmt: skip
def test_ssb_recovers_a_weak_grating(ab, rotation, transpose):
    """The amplitude of a 0.05 rad grating within 5 %, in focus and with known aberrations
    and detector rotation/transpose (all in the calibration)."""
    cal = calibration(N, STEP, 48, 9, aberrations=ab, rotation=rotation, transpose=transpose)
    data = forward(grating(0.05), cal, ab, rotation, transpose)
    res = ssb(InMemoryDataset(data, cal))
    spec = np.fft.fft2(res.phase)
    amp = 2 * abs(spec[3, 2]) / N**2
    print(f"grating amplitude {amp:.4f} rad (0.05)")
    assert abs(amp - 0.05) < 0.05 * 0.05
    others = np.abs(spec).ravel()
    others[[3 * N + 2, (N - 3) * N + (N - 2)]] = 0
    assert others.max() < 0.05 * abs(spec[3, 2])  # nothing else in the image
    # phase sign: φ > 0 where cos > 0
    iy, ix = np.meshgrid(np.arange(N) * STEP, np.arange(N) * STEP, indexing="ij")
    assert ncc(res.phase, grating(0.05)(iy, ix)) > 0.99


def truth_image(phase):
    iy, ix = np.meshgrid(np.arange(N) * STEP, np.arange(N) * STEP, indexing="ij")
    return phase(iy, ix)


def test_ssb_corrects_a_defocused_probe():
    """Atoms imaged in focus and 150 Å out of focus: the corrected NCC stays within 0.1 of
    the in-focus one; without the correction it does not."""
    phase = atoms(width=0.7)
    truth = truth_image(phase)
    nccs = {}
    for c10 in (0.0, 150.0):
        cal = calibration(N, STEP, 48, 9, aberrations={"C10": c10})
        data = forward(phase, cal, {"C10": c10})
        nccs[c10] = ncc(ssb(InMemoryDataset(data, cal)).phase, truth)
        if c10:
            nccs["uncorrected"] = ncc(ssb(InMemoryDataset(data, cal),
                                          SsbParameters(defocus=0.0)).phase, truth)  # fmt: skip
    print(nccs)
    assert nccs[0.0] > 0.5  # a non-periodic field in a periodic transform: edge artefacts
    assert abs(nccs[150.0] - nccs[0.0]) < 0.1
    assert nccs["uncorrected"] < nccs[0.0] - 0.2


def test_memory_blocks_and_the_disk_stack_give_the_same_phase():
    cal = calibration(N, STEP, 48, 9, aberrations={"C10": 100.0})
    ds = InMemoryDataset(forward(atoms(), cal, {"C10": 100.0}), cal)
    ref = ssb(ds).phase
    small = ssb(ds, SsbParameters(block=7), memory_limit=600_000)  # stack: 574 kB
    assert small.stack_on_disk and np.allclose(small.phase, ref, atol=1e-6)


def test_a_scan_too_small_for_the_trotters_is_refused():
    cal = calibration(2, 0.1, 48, 9)
    with pytest.raises(PtyengineError, match="too small for SSB's trotters"):
        ssb(InMemoryDataset(np.ones((2, 2, 48, 48), np.float32), cal))


def test_a_disc_off_the_detector_is_refused():
    cal = calibration(8, 0.5, 48, 9, center=(4, 24))
    with pytest.raises(PtyengineError, match="reaches outside"):
        ssb(InMemoryDataset(np.ones((8, 8, 48, 48), np.float32), cal))


@pytest.mark.parametrize("scan, ab, rotation, transpose", [
    ((10, 12), {}, 0.0, False),
    ((9, 11), {"C10": 150.0}, 30.0, False),
    ((12, 7), {"C10": -80.0, "C12": 40.0, "phi12": 0.5, "C30": 2e5, "C21": 300.0}, 205.0, True),
    ((8, 17), {"C10": 120.0}, 10.0, False),  # rows of a prime ≥ 17: the DFT-matrix rfft
])  # fmt: skip
def test_the_trotter_kernel_equals_the_array_code(scan, ab, rotation, transpose):
    """The CPU pass (rfft2 of blocks, kernels.direct.trotter_sums_cpu on the half spectrum,
    the other half mirrored) sums exactly the trotter estimates of the array code a GPU
    runs (ssb.trotter_sums_xp on the full FFT): same pixels per Q, sums within float32
    rounding; odd and even scans, aberrations of every kind, rotation and transpose."""
    from ptyengine.reconstruct.direct import bright_field_groups
    from ptyengine.reconstruct.ssb import trotter_pass, trotter_sums_xp, trotter_terms

    cal = calibration(scan[0], 0.4, 32, 7, aberrations=ab, rotation=rotation,
                      transpose=transpose).replace(scan_shape=scan, scan_step=(0.4, 0.5))
    k = bright_field_groups(cal, 1).k
    stack = np.random.default_rng(1).random((len(k), *scan)).astype(np.float32)
    t = trotter_terms(k, cal, ab)
    num, count, dc = trotter_pass(stack, t, block=23)
    ref, ref_count = trotter_sums_xp(np.fft.fft2(stack), t, slice(None), np)
    np.testing.assert_array_equal(count, ref_count)
    assert count.sum() > 0.2 * len(k) * count.size
    np.testing.assert_allclose(num, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    assert dc == pytest.approx(stack[t.use].sum() / t.use.sum(), rel=1e-6)


def test_the_array_code_takes_a_block_without_trotters():
    """A block of only the pixels at k ≈ 0 has no trotter on either side: the array code
    (the GPU's) adds nothing, also with cupy's bincount, which refuses an empty array
    (emulated here on numpy)."""
    import types

    from ptyengine.reconstruct.direct import bright_field_groups
    from ptyengine.reconstruct.ssb import trotter_sums_xp, trotter_terms

    def strict_bincount(x, *args, **kwargs):
        if x.size == 0:
            raise ValueError("zero-size array to reduction operation maximum")
        return np.bincount(x, *args, **kwargs)

    strict = types.SimpleNamespace(**{n: getattr(np, n) for n in dir(np) if n[0] != "_"})
    strict.bincount = strict_bincount
    cal = calibration(9, 0.4, 32, 7)
    k = bright_field_groups(cal, 1).k
    t = trotter_terms(k, cal, {})
    centre = np.flatnonzero(np.hypot(k[:, 0], k[:, 1]) < 0.6 * max(cal.dk))
    assert len(centre) and t.use[centre].all()
    g = np.fft.fft2(np.random.default_rng(0).random((len(k), 9, 9)))
    num, count = trotter_sums_xp(g[centre], t, centre, strict)
    assert not count.any() and not num.any()


def test_the_gather_kernel_and_the_stack_file_keep_every_count(tmp_path):
    """kernels.direct.gather_cpu (uint16 read as stored) equals the gather and indicator
    product of direct.reduce_block, and a StackFile returns the blocks written to it."""
    from ptyengine.reconstruct.direct import (
        StackFile,
        bright_field_groups,
        gather_block,
        group_matrix,
        reduce_block,
    )

    cal = calibration(6, 0.5, 32, 7)
    block = np.random.default_rng(2).integers(0, 60000, (3, 6, 32, 32)).astype(np.uint16)
    for b in (1, 2):
        bf = bright_field_groups(cal, b)
        np.testing.assert_array_equal(gather_block(block, bf),
                                      reduce_block(block, bf.pixels, group_matrix(bf)))
    stack = np.random.default_rng(3).random((5, 7, 4)).astype(np.float32)
    f = StackFile(tmp_path / "stack.f32", 5, (7, 4))
    try:
        for r0 in (0, 3, 6):
            f.write(r0, stack[:, r0:r0 + 3])
        for sl in (slice(0, 5), slice(1, 3), slice(4, 5)):
            np.testing.assert_array_equal(f[sl], stack[sl])
    finally:
        f.close()


def test_the_stack_leaves_out_only_pixels_no_sum_uses():
    """ssb reads only the groups inside α/λ − EDGE (ssb_groups): the same phase as from the
    stack of every bright-field pixel (bin 1 and 2)."""
    from ptyengine.reconstruct.direct import bright_field_groups, bright_field_stack
    from ptyengine.reconstruct.ssb import ssb_from_stack, ssb_groups

    cal = calibration(N, STEP, 48, 9, aberrations={"C10": 100.0})
    ds = InMemoryDataset(forward(atoms(), cal, {"C10": 100.0}), cal)
    for b in (1, 2):
        full = bright_field_groups(cal, b)
        ref = ssb_from_stack(bright_field_stack(ds, full), full.k, cal, SsbParameters(bin=b))
        assert ssb_groups(cal, b).n_groups < full.n_groups
        np.testing.assert_allclose(ssb(ds, SsbParameters(bin=b)).phase, ref.phase,
                                   rtol=0, atol=1e-6 * np.abs(ref.phase).max())  # fmt: skip


@pytest.mark.parametrize("shape", [(6, 47), (5, 48), (7, 101), (4, 17), (3, 257)])
def test_the_scan_rfft2_equals_numpys(shape):
    """ssb.scan_rfft2 (pocketfft, or a DFT-matrix product along rows of a prime ≥ 17):
    numpy's rfft2 in float64 within float32 rounding, uint32 counts as stored."""
    from ptyengine.reconstruct.ssb import scan_rfft2

    a = np.random.default_rng(5).integers(0, 70, (3, *shape)).astype(np.uint32)
    got = scan_rfft2(shape)(a)
    ref = np.fft.rfft2(a.astype(np.float64))
    assert got.dtype == np.complex64 and got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * np.abs(ref).max())
