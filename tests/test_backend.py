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


def test_fft_threads_follow_the_work(monkeypatch):
    """One FFTW thread for a single detector-sized transform (sequential ePIE on 192² and
    256² patterns ran ~20× slower on two threads of a loaded machine); a batch is split
    over the threads only when each gets about a million elements of whole transforms; a
    single transform only from ~2048² on. Checked on the plans ptyengine makes."""
    monkeypatch.delenv("PTYENGINE_FFT_THREADS", raising=False)
    monkeypatch.setattr(backend.os, "sched_getaffinity", lambda pid: set(range(4)))
    made = []  # the thread count of every FFTW plan made

    def plan(*args, threads=1, **kw):
        made.append(threads)
        return real(*args, threads=threads, **kw)

    real = backend.pyfftw.FFTW
    monkeypatch.setattr(backend.pyfftw, "FFTW", plan)
    backend.clear_fft_buffers()
    for w in (160, 192, 256, 512):
        backend.fft_buffer((1, w, w), np.complex64, np, "threads")  # sequential ePIE
        backend.fft2(np.zeros((w, w), np.complex64))
    assert made and set(made) == {1}, made
    backend.fft_buffer((64, 256, 256), np.complex64, np, "threads")
    assert made[-1] == 4
    backend.clear_fft_buffers()
    choose = backend.fft_threads_for
    assert choose((64, 160, 160)) == 1  # 1.6e6 elements: one thread's worth
    assert choose((16, 256, 256)) == 1 and choose((32, 256, 256)) == 2
    assert choose((3, 1024, 1024)) == 3  # at most one thread per transform
    assert choose((2048, 2048)) == 2 and choose((8192, 8192)) == 4  # at most the cores
    with backend.fft_threads(1):  # split_map's parts: one thread each
        assert choose((64, 256, 256)) == 1
    monkeypatch.setenv("PTYENGINE_FFT_THREADS", "3")
    assert choose((1, 192, 192)) == 3
    monkeypatch.setenv("PTYENGINE_FFT_THREADS", "many")
    with pytest.raises(PtyengineError, match="PTYENGINE_FFT_THREADS.*many"):
        choose((1, 192, 192))


def test_estimated_plans_ignore_threads_and_batching(monkeypatch):
    """With PTYENGINE_FFTW_PLANNER=FFTW_ESTIMATE a transform's numbers depend neither on
    the FFT threads nor on how many transforms are batched with it (odd, prime and
    power-of-two sizes). The single transforms are views at offsets FFTW's SIMD
    alignment does not divide: each result stays what it was when returned."""
    monkeypatch.setenv("PTYENGINE_FFTW_PLANNER", "FFTW_ESTIMATE")
    rng = np.random.default_rng(2)
    for w in (45, 101, 128):
        a = (rng.normal(size=(6, w, w)) + 1j * rng.normal(size=(6, w, w))).astype(np.complex64)
        ref = np.stack([backend.fft2(x) for x in a])
        for threads in (1, 2, 3):
            monkeypatch.setenv("PTYENGINE_FFT_THREADS", str(threads))
            np.testing.assert_array_equal(backend.fft2(a), ref)
            np.testing.assert_array_equal(backend.ifft2(a[:4]),
                                          np.stack([backend.ifft2(x) for x in a[:4]]))


def test_unusable_wisdom_file_falls_back_to_estimate(monkeypatch, tmp_path):
    """Plans measured by timing and not kept would differ between processes: without a
    usable wisdom file the planner estimates instead, and says so once."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.delenv("PTYENGINE_FFTW_PLANNER", raising=False)
    monkeypatch.setenv("PTYENGINE_FFTW_WISDOM", str(blocker / "wisdom.json"))
    monkeypatch.setattr(backend, "_warned_wisdom", [])
    with pytest.warns(UserWarning, match="cannot keep FFT plans in .*wisdom.json.*ESTIMATE"):
        with backend._planning() as effort:
            assert effort == "FFTW_ESTIMATE"
    monkeypatch.setenv("PTYENGINE_FFTW_PLANNER", "fast")
    with pytest.raises(PtyengineError, match="PTYENGINE_FFTW_PLANNER='FAST': use one of"):
        backend.fftw_planner()


def test_split_map_keeps_small_work_in_one_part(monkeypatch):
    """Parts of at least ``min_part`` items: small batches stay on the calling thread
    (a pass over small windows, where the hand-off costs more than a core saves), and the
    parts always cover every item once, in order."""
    from ptyengine.reconstruct.forward import SPLIT_MIN_ELEMENTS, _min_part

    monkeypatch.setenv("PTYENGINE_THREADS", "2")
    spans = lambda n, m=1: backend.split_map(lambda p: (p.start, p.stop), n, np, m)  # noqa: E731
    assert spans(64) == [(0, 32), (32, 64)]
    assert spans(64, 40) == [(0, 64)] and spans(64, 32) == [(0, 32), (32, 64)]
    assert spans(1, 0) == [(0, 1)]
    assert _min_part((16, 16), 1, 1) * 256 >= SPLIT_MIN_ELEMENTS  # 16²: 64 positions
    assert spans(64, _min_part((16, 16), 1, 1)) == [(0, 64)]  # batch 64 of 16²: one part
    assert len(spans(64, _min_part((64, 64), 1, 1))) == 2  # of 64²: both cores
    assert len(spans(64, _min_part((16, 16), 8, 1))) == 2  # 8 slices: enough work again


def test_sub_chunks_cover_a_part_in_few_shapes():
    """The CPU's fixed sub-chunks, and the GPU's powers of two (largest first): every
    position once, in order; parts of 1-64 positions make 7 batch shapes in all."""
    from ptyengine.reconstruct.forward import sub_chunks

    assert sub_chunks(37, 8) == [(0, 8), (8, 16), (16, 24), (24, 32), (32, 37)]
    assert sub_chunks(37, None) == [(0, 32), (32, 36), (36, 37)]
    assert sub_chunks(64, None) == [(0, 64)] and sub_chunks(0, None) == []
    shapes = set()
    for n in range(1, 65):
        bounds = sub_chunks(n, None)
        assert [b for s in bounds for b in range(*s)] == list(range(n))
        shapes |= {s1 - s0 for s0, s1 in bounds}
    assert shapes == {1, 2, 4, 8, 16, 32, 64}
