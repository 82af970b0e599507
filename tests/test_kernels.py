"""Every hand-written GPU kernel against its CPU twin and a numpy reference.

Without a GPU the CUDA kernels run in numba's CUDA simulator (conftest sets
NUMBA_ENABLE_CUDASIM=1); with one, they run on the device.
"""

import numpy as np
import pytest
from ptyengine.kernels import windows

from ptyengine.multislice import ProbeWindow

cuda = pytest.importorskip("numba.cuda")


def _waves(rng, shape):
    return (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)



def _reference_window_multiply(psi, t, corners):
    out = psi.copy()
    w0, w1 = psi.shape[1:]
    for b, (cy, cx) in enumerate(corners):
        iy = (cy + np.arange(w0)) % t.shape[0]
        ix = (cx + np.arange(w1)) % t.shape[1]
        out[b] *= t[np.ix_(iy, ix)]
    return out


def _run_gpu(fn, psi, *args):
    """Launch a CUDA kernel on copies of the host arrays; return psi from the device."""
    d_args = [cuda.to_device(a) for a in (psi, *args)]
    fn(*d_args)
    return d_args[0].copy_to_host()


@pytest.mark.parametrize("window, field", [((6, 5), (7, 9)), ((12, 10), (7, 9))])
def test_window_multiply_twins(window, field):
    rng = np.random.default_rng(0)
    psi = _waves(rng, (3, *window))
    t = _waves(rng, field)
    corners = np.array([[0, 0], [5, 8], [6, 3]], dtype=np.int64)  # wraps, also more than once
    ref = _reference_window_multiply(psi, t, corners)
    pw = ProbeWindow(None, None, None, None, None, (1.0, 1.0), max(window))
    t = pw.prepare(t[None]).padded[0]  # the kernels read windows of the extended slice
    cpu = psi.copy()
    windows.window_multiply_cpu(cpu, t, corners)
    np.testing.assert_allclose(cpu, ref, rtol=1e-6)
    gpu = _run_gpu(windows.window_multiply_cuda, psi, t, corners)
    np.testing.assert_allclose(gpu, ref, rtol=1e-6)
    # the public dispatcher takes the CPU twin for numpy arrays
    np.testing.assert_allclose(windows.window_multiply(psi.copy(), t, corners), ref, rtol=1e-6)


def test_broadcast_multiply_twins():
    rng = np.random.default_rng(1)
    psi = _waves(rng, (2, 5, 7))
    p = _waves(rng, (5, 7))
    ref = psi * p
    cpu = psi.copy()
    windows.broadcast_multiply_cpu(cpu, p)
    np.testing.assert_allclose(cpu, ref, rtol=1e-6)
    np.testing.assert_allclose(_run_gpu(windows.broadcast_multiply_cuda, psi, p), ref, rtol=1e-6)


def test_masked_intensity_twins():
    rng = np.random.default_rng(2)
    psi = _waves(rng, (2, 6, 5))
    mask = (rng.uniform(size=(6, 5)) > 0.3).astype(np.float32)
    ref = (np.abs(psi) ** 2 * mask * 0.25).astype(np.float32)
    cpu = np.empty(psi.shape, np.float32)
    windows.masked_intensity_cpu(psi, mask, 0.25, cpu)
    np.testing.assert_allclose(cpu, ref, rtol=1e-6)
    d = [cuda.to_device(a) for a in (psi, mask, np.empty(psi.shape, np.float32))]
    windows.masked_intensity_cuda(d[0], d[1], 0.25, d[2])
    np.testing.assert_allclose(d[2].copy_to_host(), ref, rtol=1e-6)


def test_fourier_modulus_twins():
    """CPU kernel against numpy and the CUDA twin; where the detector mask is 0 the wave
    keeps its own modulus (times the scale) and adds nothing to the error."""
    rng = np.random.default_rng(3)
    psi = _waves(rng, (3, 6, 5))
    psi[1, 2, 3] = 0  # a zero: takes the amplitude with zero phase
    amp_all = rng.uniform(0.1, 2.0, size=(5, 6, 5)).astype(np.float32)
    index = np.array([4, 0, 2])  # psi[b] was measured as pattern index[b]
    amp, scale = amp_all[index], 0.25
    mask = np.ones((6, 5), np.uint8)
    mask[0, 1] = mask[4, 4] = 0  # a dead and a hot pixel
    mag = np.abs(psi)
    ref = np.where(mag > 0, psi * amp / np.where(mag > 0, mag, 1), amp) * scale
    ref = np.where(mask == 0, psi * scale, ref)
    ref_err = ((mag - amp) ** 2 * mask).sum(axis=(1, 2))
    cpu, err = psi.copy(), np.zeros(3)
    from ptyengine.kernels import ptycho
    ptycho.fourier_modulus(cpu, amp_all, index, err, scale, mask=mask)
    np.testing.assert_allclose(cpu, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(err, ref_err, rtol=1e-5)
    d = [cuda.to_device(a) for a in (psi, amp_all, index, mask, np.zeros(3))]
    ptycho.fourier_modulus_cuda(*d, np.float32(scale))
    np.testing.assert_allclose(d[0].copy_to_host(), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(d[4].copy_to_host(), ref_err, rtol=1e-5)
    # no mask: every pixel is data
    full, err = psi.copy(), np.zeros(3)
    ptycho.fourier_modulus(full, amp_all, index, err, scale)
    np.testing.assert_allclose(err, ((mag - amp) ** 2).sum(axis=(1, 2)), rtol=1e-5)


def _gpu_outputs(fn, args, outputs):
    """Run a CUDA twin on device copies of ``args``; return host copies of args[outputs]."""
    d = [cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in args]
    fn(*d)
    return [d[i].copy_to_host() for i in outputs]


def test_ramp_kernels_twins():
    from ptyengine.kernels import ptycho

    rng = np.random.default_rng(5)
    wave = _waves(rng, (6, 5))
    ry, rx = _waves(rng, (3, 6)), _waves(rng, (3, 5))
    ref = wave[None] * ry[:, :, None] * rx[:, None, :] * 0.5
    out = np.empty((3, 6, 5), np.complex64)
    ptycho.ramp_multiply(out, wave, ry, rx, 0.5)
    np.testing.assert_allclose(out, ref, rtol=1e-5)
    (gpu,) = _gpu_outputs(ptycho.ramp_multiply_cuda,
                          [np.empty_like(out), wave, ry, rx, np.float32(0.5)], [0])
    np.testing.assert_allclose(gpu, ref, rtol=1e-5)
    u = _waves(rng, (3, 6, 5))
    acc0 = _waves(rng, (6, 5))
    ref = acc0 + (u * ry[:, :, None] * rx[:, None, :]).sum(axis=0)
    acc = acc0.copy()
    ptycho.ramp_reduce_cpu(acc, u, ry, rx)
    np.testing.assert_allclose(acc, ref, rtol=1e-5, atol=1e-5)
    (gpu,) = _gpu_outputs(ptycho.ramp_reduce_cuda, [acc0.copy(), u, ry, rx], [0])
    np.testing.assert_allclose(gpu, ref, rtol=1e-5, atol=1e-5)


def test_exit_wave_and_difference_kernels_twins():
    from ptyengine.kernels import ptycho

    rng = np.random.default_rng(6)
    obj = _waves(rng, (9, 10))
    probes = _waves(rng, (3, 4, 5))
    corners = np.array([[1, 1], [3, 4], [3, 4]], dtype=np.int64)
    o_ref = np.stack([obj[cy:cy + 4, cx:cx + 5] for cy, cx in corners])
    psi_ref = probes * o_ref
    w_ref = (np.abs(o_ref) ** 2).sum(axis=0)
    bufs = [np.empty_like(probes), np.zeros((4, 5), np.float32)]
    ptycho.exit_waves_cpu(probes, obj, corners, *bufs)
    for got, ref in zip(bufs, (psi_ref, w_ref), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5)
    gpu = _gpu_outputs(ptycho.exit_waves_cuda,
                       [probes, obj, corners, np.empty_like(probes),
                        np.zeros((4, 5), np.float32)], [3, 4])
    for got, ref in zip(gpu, (psi_ref, w_ref), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5)
    # the revised exit waves; sums on a box whose origin is (1, 1) in the object
    psi_new = _waves(rng, probes.shape)
    origin = np.array([1, 1], dtype=np.int64)
    d = psi_new - psi_ref
    num_ref = np.zeros((8, 9), np.complex64)
    den_ref = np.zeros((8, 9), np.float32)
    for b, (cy, cx) in enumerate(corners - origin):
        num_ref[cy:cy + 4, cx:cx + 5] += np.conj(probes[b]) * d[b]
        den_ref[cy:cy + 4, cx:cx + 5] += np.abs(probes[b]) ** 2
    term_ref = np.conj(o_ref) * d
    num, den, term = np.zeros_like(num_ref), np.zeros_like(den_ref), psi_new.copy()
    ptycho.difference_updates(num, den, probes, obj, term, corners, origin)
    for got, ref in zip((num, den, term), (num_ref, den_ref, term_ref), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    gpu = _gpu_outputs(ptycho.difference_updates_cuda,
                       [np.zeros_like(num_ref), np.zeros_like(den_ref), probes, obj,
                        psi_new.copy(), corners, origin], [0, 1, 4])
    for got, ref in zip(gpu, (num_ref, den_ref, term_ref), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_fft_buffer_round_trip():
    """In-place forward, unnormalised inverse: N times the input, as numpy's transforms."""
    from ptyengine import backend

    rng = np.random.default_rng(7)
    x = _waves(rng, (3, 8, 6))
    buf = backend.fft_buffer(x.shape, np.complex64, np, slot="test")
    buf.a[...] = x
    buf.forward()
    np.testing.assert_allclose(buf.a, np.fft.fft2(x), rtol=1e-4, atol=1e-4)
    buf.inverse()
    np.testing.assert_allclose(buf.a, x * 48, rtol=1e-4, atol=1e-4)
    assert backend.fft_buffer(x.shape, np.complex64, np, slot="test") is buf
    assert backend.fft_buffer(x.shape, np.complex64, np, slot="other") is not buf


@pytest.mark.parametrize("phase_only", [False, True])
def test_object_step_fused_equals_array_ops(phase_only):
    from ptyengine.kernels import ptycho

    rng = np.random.default_rng(8)
    box = _waves(rng, (7, 9))
    nums = [_waves(rng, (7, 9)) for _ in range(2)]
    dens = [rng.uniform(0, 2, (7, 9)).astype(np.float32) for _ in range(2)]
    ref = box + 0.7 * (nums[0] + nums[1]) / (dens[0] + dens[1]).max()
    if phase_only:
        ref /= np.abs(ref)
    fused, plain = box.copy(), box.copy()
    ptycho.object_step(fused, [n.copy() for n in nums], [d.copy() for d in dens], 0.7,
                       phase_only)  # fmt: skip
    scale = 0.7 / (dens[0] + dens[1]).max()
    ptycho.object_step_xp(plain, nums[0] + nums[1], scale, phase_only)
    np.testing.assert_allclose(fused, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain, ref, rtol=1e-5, atol=1e-6)


def _poisson_inputs(rng, nb=3, w=(6, 5)):
    psi = _waves(rng, (nb, *w))
    amp = np.sqrt(rng.poisson(1.5, size=(4, *w))).astype(np.float32)
    index = np.array([2, 0, 3], dtype=np.int64)[:nb]
    positions = np.array([17, 3, 40], dtype=np.int64)[:nb]
    mask = np.ones(w, np.uint8)
    mask[1, 2] = 0
    return psi, amp, index, positions, mask


# the CUDA simulator runs the hash in numpy scalars, which warn where uint64 wraps (wanted)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.parametrize("modes", [1, 3])
def test_poisson_kernels_twins(modes):
    """The Poisson ratio and curvature kernels: CPU twin = numpy reference = CUDA kernel,
    with a dead pixel, 30 % of the pixels held out, and M incoherent probe modes (waves
    mode-major: I = Σ_m |Ψ_m|², every mode revised by the same n/(I + ε))."""
    from ptyengine.kernels import poisson

    rng = np.random.default_rng(5)
    _, amp, index, positions, mask = _poisson_inputs(rng)
    psi = _waves(rng, (modes * 3, *amp.shape[1:]))
    d_k = _waves(rng, psi.shape)
    cscale, eps, scale, seed, frac = 2.0, 1e-3, 0.25, 11, 0.3
    held = poisson.holdout_mask(positions, psi.shape[1:], seed, frac) & (mask[None] > 0)
    fitted = ~held & (mask[None] > 0)
    n = cscale * amp[index].astype(np.float64) ** 2
    by_mode = psi.astype(np.complex128).reshape(modes, 3, *psi.shape[1:])
    inten = (np.abs(by_mode) ** 2).sum(axis=0)
    sat = np.where(n > 0, n - n * np.log(np.where(n > 0, n, 1)), 0)
    term = inten - n * np.log(inten + eps) - sat
    ref_psi = (np.where(fitted, by_mode * (n / (inten + eps)), by_mode) * scale).reshape(
        psi.shape)
    ref_nll = (term * fitted).sum(axis=(1, 2))
    ref_held = (term * held).sum(axis=(1, 2))
    ip = 2 * (by_mode.conj() * d_k.reshape(by_mode.shape)).real.sum(axis=0)
    ref_d1 = ((1 - n / (inten + eps)) * ip * fitted).sum(axis=(1, 2))
    ref_d2 = (ip**2 / (inten + eps) * fitted).sum(axis=(1, 2))
    thr = np.uint64(poisson.threshold(frac))
    m = np.int64(modes)
    args = (amp, index, positions, mask)
    cpu = [psi.copy(), np.zeros(3), np.zeros(3)]
    poisson.poisson_ratio_cpu(cpu[0], *args, cpu[1], cpu[2], np.float32(cscale),
                              np.float32(eps), np.float32(scale), np.uint64(seed), thr, m)
    gpu = _gpu_outputs(poisson.poisson_ratio_cuda,
                       [psi.copy(), *args, np.zeros(3), np.zeros(3), np.float32(cscale),
                        np.float32(eps), np.float32(scale), np.uint64(seed), thr, m],
                       [0, 5, 6])  # fmt: skip
    for got in (cpu, gpu):
        np.testing.assert_allclose(got[0], ref_psi, rtol=2e-4, atol=1e-6)
        np.testing.assert_allclose(got[1], ref_nll, rtol=1e-4)
        np.testing.assert_allclose(got[2], ref_held, rtol=1e-4)
    cpu = [np.zeros(3), np.zeros(3)]
    poisson.poisson_curvature_cpu(psi, d_k, *args, *cpu, np.float32(cscale), np.float32(eps),
                                  np.uint64(seed), thr, m)
    gpu = _gpu_outputs(poisson.poisson_curvature_cuda,
                       [psi, d_k, *args, np.zeros(3), np.zeros(3), np.float32(cscale),
                        np.float32(eps), np.uint64(seed), thr, m], [6, 7])
    for got in (cpu, gpu):
        np.testing.assert_allclose(got[0], ref_d1, rtol=1e-4)
        np.testing.assert_allclose(got[1], ref_d2, rtol=1e-4)


def test_transmit_twins():
    """The multislice forward model's transmission through a slice beyond the first:
    out = ψ · O[window], out of place and in place, without the first slice's Σ|O|²."""
    from ptyengine.kernels import ptycho

    rng = np.random.default_rng(9)
    obj = _waves(rng, (9, 10))
    incident = _waves(rng, (3, 4, 5))
    corners = np.array([[1, 1], [3, 4], [5, 0]], dtype=np.int64)
    ref = incident * np.stack([obj[cy:cy + 4, cx:cx + 5] for cy, cx in corners])
    out = np.empty_like(incident)
    ptycho.transmit(incident, obj, corners, out)
    np.testing.assert_allclose(out, ref, rtol=1e-6)
    in_place = incident.copy()
    ptycho.transmit(in_place, obj, corners, in_place)
    np.testing.assert_allclose(in_place, ref, rtol=1e-6)
    gpu = _gpu_outputs(ptycho.transmit_cuda,
                       [incident, obj, corners, np.empty_like(incident)], [3])
    np.testing.assert_allclose(gpu[0], ref, rtol=1e-6)


def test_slice_updates_twins():
    """The multislice adjoint's kernel: a slice's overlap sums from its incident waves and
    the back-propagated exit-wave correction, which then passes on through conj(O)."""
    from ptyengine.kernels import ptycho

    rng = np.random.default_rng(8)
    obj = _waves(rng, (9, 10))
    incident = _waves(rng, (3, 4, 5))
    delta = _waves(rng, (3, 4, 5))
    corners = np.array([[1, 1], [3, 4], [3, 4]], dtype=np.int64)
    origin = np.array([1, 1], dtype=np.int64)
    o_ref = np.stack([obj[cy:cy + 4, cx:cx + 5] for cy, cx in corners])
    num_ref = np.zeros((8, 9), np.complex64)
    den_ref = np.zeros((8, 9), np.float32)
    for b, (cy, cx) in enumerate(corners - origin):
        num_ref[cy:cy + 4, cx:cx + 5] += np.conj(incident[b]) * delta[b]
        den_ref[cy:cy + 4, cx:cx + 5] += np.abs(incident[b]) ** 2
    term_ref = np.conj(o_ref) * delta
    num, den, term = np.zeros_like(num_ref), np.zeros_like(den_ref), delta.copy()
    ptycho.slice_updates(num, den, incident, obj, term, corners, origin)
    for got, ref in zip((num, den, term), (num_ref, den_ref, term_ref), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    gpu = _gpu_outputs(ptycho.slice_updates_cuda,
                       [np.zeros_like(num_ref), np.zeros_like(den_ref), incident, obj,
                        delta.copy(), corners, origin], [0, 1, 4])
    for got, ref in zip(gpu, (num_ref, den_ref, term_ref), strict=True):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_the_launch_covers_windows_larger_than_a_block():
    """Windows of more rows and columns than a thread block spans (32 × 8), a batch of 3:
    every element is computed once, in the right place, by a row-wise kernel (a complex
    multiply), one with per-row ramps (rows ≠ columns) and one that adds overlapping
    windows with atomics (the launch's index order must match the kernels')."""
    from ptyengine.kernels import ptycho

    rng = np.random.default_rng(11)
    nb, w0, w1 = 3, 40, 36
    psi = _waves(rng, (nb, w0, w1))
    p = _waves(rng, (w0, w1))
    np.testing.assert_allclose(_run_gpu(windows.broadcast_multiply_cuda, psi, p), psi * p,
                               rtol=1e-6)  # fmt: skip
    ry, rx = _waves(rng, (nb, w0)), _waves(rng, (nb, w1))
    ref = p[None] * ry[:, :, None] * rx[:, None, :] * 0.5
    (gpu,) = _gpu_outputs(ptycho.ramp_multiply_cuda,
                          [np.empty_like(psi), p, ry, rx, np.float32(0.5)], [0])  # fmt: skip
    np.testing.assert_allclose(gpu, ref, rtol=1e-5)
    obj = _waves(rng, (50, 47))
    corners = np.array([[0, 0], [7, 3], [10, 11]], dtype=np.int64)
    origin = np.zeros(2, np.int64)
    num, den, delta = np.zeros((50, 47), np.complex64), np.zeros((50, 47), np.float32), psi.copy()
    ptycho.slice_updates_cpu(num, den, p[None].repeat(nb, 0), obj, delta, corners, origin)
    out = _gpu_outputs(ptycho.slice_updates_cuda,
                       [np.zeros((50, 47), np.complex64), np.zeros((50, 47), np.float32),
                        p[None].repeat(nb, 0), obj, psi.copy(), corners, origin],
                       [0, 1, 4])  # fmt: skip
    for g, c in zip(out, (num, den, delta), strict=True):
        np.testing.assert_allclose(g, c, rtol=1e-4, atol=1e-4)


def test_fourier_modulus_on_rows_the_cpu_vectorises():
    """Rows of 64 (the CPU twin's vector loop, not its remainder): zeros of Ψ and masked
    pixels inside the vectors give the amplitude with zero phase and Ψ times the scale."""
    from ptyengine.kernels import ptycho

    rng = np.random.default_rng(12)
    psi = _waves(rng, (2, 4, 64))
    psi[0, 1, 17] = psi[1, 3, 40] = psi[1, 0, 0] = 0
    amp = rng.uniform(0.1, 2.0, size=(2, 4, 64)).astype(np.float32)
    mask = np.ones((4, 64), np.uint8)
    mask[1, 9] = mask[3, 40] = mask[2, 63] = 0
    mag = np.abs(psi)
    ref = np.where(mag > 0, psi * amp / np.where(mag > 0, mag, 1), amp) * 0.5
    ref = np.where(mask == 0, psi * 0.5, ref)
    err = np.zeros(2)
    out = psi.copy()
    ptycho.fourier_modulus(out, amp, np.arange(2), err, 0.5, mask=mask)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(err, ((mag - amp) ** 2 * mask).sum(axis=(1, 2)), rtol=1e-5)
