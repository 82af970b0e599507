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
