"""Array module (numpy | cupy) and FFTs: the one place that knows which device runs.

Every algorithm in ptyengine is written once against an array module ``xp``. This module
chooses it (:func:`get_xp`), moves arrays between host and device, and provides 2-D FFTs
over the last two axes with numpy's normalisation (forward unnormalised, inverse 1/N):

* CPU: FFTW through pyfftw, with plans cached per (shape, dtype, direction) and planned
  once with ``FFTW_MEASURE`` (set ``PTYENGINE_FFTW_PLANNER=FFTW_ESTIMATE`` for quick runs);
  threads = usable cores (``PTYENGINE_FFT_THREADS`` overrides). scipy.fft is used, with a
  warning, only where pyfftw cannot be imported.
* GPU: cupy.fft (cuFFT, whose plans cupy caches).

A GPU that was asked for (``device="gpu"``) and cannot be had is an error, never a silent
fallback to numpy; ``device="auto"`` takes the GPU when cupy and a device are present.
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

import numpy as np
from threadpoolctl import ThreadpoolController

from .errors import PtyengineError

DEVICES = ("cpu", "gpu", "auto")


@functools.cache
def _cupy() -> tuple[ModuleType | None, str]:
    """(cupy, "") when cupy imports and sees a CUDA device, else (None, reason)."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install raising anything
        return None, f"cupy cannot be imported ({exc.__class__.__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return None, f"cupy finds no usable CUDA device ({exc})"
    if n < 1:
        return None, "cupy finds no CUDA device"
    return cupy, ""


def gpu_available() -> bool:
    return _cupy()[0] is not None


def get_xp(device: str = "cpu") -> ModuleType:
    """The array module for ``device`` ("cpu", "gpu" or "auto")."""
    device = str(device).lower()
    if device not in DEVICES:
        raise PtyengineError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "cpu":
        return np
    cp, reason = _cupy()
    if cp is not None:
        return cp
    if device == "gpu":
        raise PtyengineError(
            f"a GPU was asked for but {reason}: install the 'gpu' extra "
            "(pip install 'ptyengine[gpu]') with a CUDA driver, or use --device cpu"
        )
    return np


def xp_of(array) -> ModuleType:
    """numpy or cupy, whichever owns ``array``."""
    if type(array).__module__.startswith("cupy"):
        return _cupy()[0]
    return np


def to_numpy(array) -> np.ndarray:
    """A host (numpy) copy of ``array``; numpy arrays pass through unchanged."""
    if type(array).__module__.startswith("cupy"):
        return array.get()
    return np.asarray(array)


def asarray(array, xp: ModuleType, dtype=None):
    """``array`` on the device of ``xp`` (a host->device copy where needed)."""
    return xp.asarray(array, dtype=dtype)


def complex_dtype(double: bool = False):
    return np.complex128 if double else np.complex64


def real_dtype(double: bool = False):
    return np.float64 if double else np.float32


# ----------------------------------------------------------------------------- FFTs


_local = threading.local()


@contextlib.contextmanager
def fft_threads(n: int):
    """Within this block (this thread only), CPU FFTs use ``n`` threads."""
    old = getattr(_local, "threads", None)
    _local.threads = n
    try:
        yield
    finally:
        _local.threads = old


def cpu_workers() -> int:
    """Worker threads for CPU batch parallelism (``PTYENGINE_THREADS`` overrides)."""
    env = os.environ.get("PTYENGINE_THREADS")
    return max(1, int(env)) if env else max(1, len(os.sched_getaffinity(0)))


@functools.cache
def _blas() -> ThreadpoolController:
    """Found once: scanning the loaded libraries costs milliseconds per call."""
    return ThreadpoolController()


@functools.cache
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="ptyengine")


def split_map(fn, n_items: int, xp: ModuleType = np) -> list:
    """[fn(slice) for contiguous slices covering range(n_items)], in parallel on the CPU.

    On the CPU the batch is split into one part per core, each run in its own thread with
    single-threaded FFTs (pyfftw and the numba kernels release the GIL). One pool of
    threads that each own a part beats handing every FFT and every kernel to a thread pool
    of its own: on a 2-core machine the hand-offs cost as much as the work. On the GPU
    there is one part.
    """
    workers = cpu_workers() if xp is np else 1
    parts = min(workers, n_items)
    if parts <= 1:
        return [fn(slice(0, n_items))]
    edges = [n_items * i // parts for i in range(parts + 1)]

    def run(i):
        with fft_threads(1):
            return fn(slice(edges[i], edges[i + 1]))

    # BLAS (matrix products in the parts) would start threads of its own on top of ours
    with _blas().limit(limits=1, user_api="blas"):
        return list(_pool(parts).map(run, range(parts)))


def _fft_threads(n_elements: int) -> int:
    override = getattr(_local, "threads", None)
    if override:
        return override
    env = os.environ.get("PTYENGINE_FFT_THREADS")
    if env:
        return max(1, int(env))
    if n_elements < 1 << 15:  # threading a small transform costs more than it saves
        return 1
    return max(1, len(os.sched_getaffinity(0)))


try:
    import pyfftw

    _HAVE_PYFFTW = True
except ImportError:  # pragma: no cover - pyfftw is a declared dependency
    _HAVE_PYFFTW = False


_plan_lock = threading.Lock()


def _fftw_plan(shape: tuple[int, ...], dtype: str, inverse: bool, inplace: bool):
    threads = _fft_threads(int(np.prod(shape)))
    # A plan object holds its arrays, so each calling thread gets its own plans; FFTW's
    # planner itself is not thread-safe, hence the lock.
    with _plan_lock:
        return _fftw_plan_cached(shape, dtype, inverse, inplace, threads, threading.get_ident())


@functools.cache
def _fftw_plan_cached(shape, dtype, inverse, inplace, threads, thread_id):
    """A cached FFTW plan for a 2-D transform over the last two axes of ``shape``."""
    effort = os.environ.get("PTYENGINE_FFTW_PLANNER", "FFTW_MEASURE")
    a = pyfftw.empty_aligned(shape, dtype=dtype)
    b = a if inplace else pyfftw.empty_aligned(shape, dtype=dtype)
    return pyfftw.FFTW(
        a,
        b,
        axes=(-2, -1),
        direction="FFTW_BACKWARD" if inverse else "FFTW_FORWARD",
        flags=(effort,),
        threads=threads,
    )


def _is_aligned(a: np.ndarray, alignment: int) -> bool:
    return a.ctypes.data % alignment == 0


def _cpu_fft2(a: np.ndarray, out: np.ndarray | None, inverse: bool) -> np.ndarray:
    if a.dtype not in (np.complex64, np.complex128):
        a = a.astype(np.complex64)
    if not _HAVE_PYFFTW:  # pragma: no cover
        import scipy.fft

        warnings.warn("pyfftw is missing: using scipy.fft (slower)", stacklevel=3)
        res = (scipy.fft.ifft2 if inverse else scipy.fft.fft2)(a, workers=-1)
        res = res.astype(a.dtype, copy=False)
        if out is None:
            return res
        out[...] = res
        return out
    a = np.ascontiguousarray(a)
    inplace = out is a
    plan = _fftw_plan(a.shape, a.dtype.str, inverse, inplace)
    align = max(plan.input_alignment, plan.output_alignment)
    if inplace and not _is_aligned(a, align):
        res = _cpu_fft2(a, None, inverse)
        a[...] = res
        return a
    if out is None:
        out = pyfftw.empty_aligned(a.shape, dtype=a.dtype)
    if not (out.flags.c_contiguous and out.dtype == a.dtype and _is_aligned(out, align)):
        out[...] = _cpu_fft2(a, None, inverse)
        return out
    plan(a, out, normalise_idft=True)
    return out


def fft2(a, out=None):
    """Forward 2-D FFT over the last two axes (unnormalised, as numpy)."""
    if xp_of(a) is np:
        return _cpu_fft2(a, out, inverse=False)
    res = xp_of(a).fft.fft2(a, axes=(-2, -1))
    if out is None:
        return res
    out[...] = res
    return out


def ifft2(a, out=None):
    """Inverse 2-D FFT over the last two axes (normalised by 1/N, as numpy)."""
    if xp_of(a) is np:
        return _cpu_fft2(a, out, inverse=True)
    res = xp_of(a).fft.ifft2(a, axes=(-2, -1))
    if out is None:
        return res
    out[...] = res
    return out


def empty(shape, dtype, xp: ModuleType = np):
    """An uninitialised array; on the CPU aligned for FFTW's SIMD paths."""
    if xp is np and _HAVE_PYFFTW:
        return pyfftw.empty_aligned(shape, dtype=dtype)
    return xp.empty(shape, dtype=dtype)


def describe() -> dict[str, str]:
    """What this process would compute with: for `ptyengine info`/`doctor` style reports."""
    info = {
        "numpy": np.__version__,
        "cpu_fft": f"pyfftw {pyfftw.__version__}" if _HAVE_PYFFTW else "scipy.fft",
        "cpu_threads": str(len(os.sched_getaffinity(0))),
    }
    cp, reason = _cupy()
    if cp is None:
        info["gpu"] = f"unavailable: {reason}"
    else:
        props = cp.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        runtime = cp.cuda.runtime.runtimeGetVersion()
        info["gpu"] = f"{name} (cupy {cp.__version__}, CUDA runtime {runtime})"
    return info
