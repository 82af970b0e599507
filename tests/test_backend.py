"""FFT provider and device selection."""

import numpy as np
import pytest

from ptyengine import backend
from ptyengine.errors import PtyengineError


@pytest.mark.parametrize("dtype, tol", [(np.complex64, 2e-5), (np.complex128, 1e-12)])
def test_fft_matches_numpy(dtype, tol):
    rng = np.random.default_rng(0)
    a = (rng.normal(size=(5, 48, 40)) + 1j * rng.normal(size=(5, 48, 40))).astype(dtype)
    ref = np.fft.fft2(a)
    got = backend.fft2(a)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, ref, atol=tol * np.abs(ref).max())
    np.testing.assert_allclose(backend.ifft2(got), a, atol=tol * np.abs(a).max() * 10)
    np.testing.assert_array_equal(a, a.copy())  # input untouched (out of place)


def test_fft_into_out_and_in_place():
    rng = np.random.default_rng(1)
    a = (rng.normal(size=(3, 32, 32)) + 1j * rng.normal(size=(3, 32, 32))).astype(np.complex64)
    ref = np.fft.fft2(a)
    out = backend.empty(a.shape, np.complex64)
    assert backend.fft2(a, out=out) is out
    np.testing.assert_allclose(out, ref, atol=1e-4)
    # an unaligned output view still gets the right answer
    buf = np.empty(a.size + 1, np.complex64)[1:].reshape(a.shape)
    backend.fft2(a, out=buf)
    np.testing.assert_allclose(buf, ref, atol=1e-4)
    b = a.copy()
    assert backend.fft2(b, out=b) is b
    np.testing.assert_allclose(b, ref, atol=1e-4)
    backend.ifft2(b, out=b)
    np.testing.assert_allclose(b, a, atol=1e-5)


def test_device_selection():
    assert backend.get_xp("cpu") is np
    with pytest.raises(PtyengineError, match="device must be one of"):
        backend.get_xp("tpu")
    if not backend.gpu_available():
        with pytest.raises(PtyengineError, match="GPU was asked for"):
            backend.get_xp("gpu")
        assert backend.get_xp("auto") is np


def test_memory_sizes():
    from ptyengine.backend import available_memory, memory_limit, parse_bytes

    assert parse_bytes("8GB") == 8 * 10**9 and parse_bytes("512 MiB") == 512 * 2**20
    assert parse_bytes("1.5e9") == 1_500_000_000 and parse_bytes(2000) == 2000
    for bad in ("lots", "-1GB", "0", "5 parsecs", "inf", "1e400"):
        with pytest.raises(PtyengineError, match="size|positive"):
            parse_bytes(bad)
    assert memory_limit("2GB") == 2 * 10**9
    assert memory_limit() == available_memory() // 2 > 0


def test_memory_limit_of_a_job_cgroup(tmp_path):
    """A SLURM job's limit sits in its own cgroup (named in /proc/self/cgroup), not the
    root; v1 and v2 layouts, 'max' and v1's 'unlimited' number ignored."""
    from ptyengine.backend import _cgroup_limits

    root = tmp_path / "cgroup"
    job = root / "slurm" / "uid_1" / "job_7"
    job.mkdir(parents=True)
    (job / "memory.max").write_text("4294967296\n")
    (root / "slurm" / "memory.max").write_text("max\n")
    (tmp_path / "v2").write_text("0::/slurm/uid_1/job_7\n")
    assert _cgroup_limits(str(tmp_path / "v2"), str(root)) == [4294967296]
    v1 = root / "memory" / "slurm" / "job_8"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text("8589934592\n")
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (tmp_path / "v1").write_text("4:memory:/slurm/job_8\n1:cpu:/\n")
    assert _cgroup_limits(str(tmp_path / "v1"), str(root)) == [8589934592]
    assert _cgroup_limits(str(tmp_path / "none"), str(root)) == []
