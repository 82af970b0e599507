"""Array module (numpy | cupy) and FFTs: the one place that knows which device runs.

Every algorithm in ptyengine is written once against an array module ``xp``. This module
chooses it (:func:`get_xp`), moves arrays between host and device, and provides 2-D FFTs
over the last two axes with numpy's normalisation (forward unnormalised, inverse 1/N):

* CPU: FFTW through pyfftw, with plans cached per (shape, dtype, direction, threads).
  Plans are measured (``FFTW_MEASURE``) once per machine and kept as FFTW wisdom in a
  file (:func:`wisdom_path`) that every later process reuses, so that every process
  computes with the same plans, hence the same numbers (planning by timing alone let two
  processes round differently). ``PTYENGINE_FFTW_PLANNER=FFTW_ESTIMATE`` plans without
  timing anything and no file: the same numbers on every machine of a CPU type and for
  every thread count, but 1.3-12x slower FFTs (see :data:`PLANNERS`). Threads per call
  follow the work (:func:`fft_threads_for`). scipy.fft is used, with a warning, only
  where pyfftw cannot be imported.
* GPU: cupy.fft (cuFFT, whose plans cupy caches).

Hot loops use :func:`fft_buffer` instead: an array with in-place transforms bound to it
(on the CPU a pair of FFTW plans executed without any per-call checks) whose inverse is
*unnormalised*, so that the 1/N can be folded into a kernel that touches the data anyway.

A GPU that was asked for (``device="gpu"``) and cannot be had is an error, never a silent
fallback to numpy; ``device="auto"`` takes the GPU when cupy and a device are present.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import platform
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
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


def _env_count(name: str) -> int | None:
    """A positive whole number from the environment variable ``name``, or None if unset."""
    text = os.environ.get(name, "").strip()
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise PtyengineError(f"{name}={text!r}: set a whole number of threads ≥ 1, or unset it")
    return value


def cpu_workers() -> int:
    """Worker threads for CPU batch parallelism: ``PTYENGINE_THREADS`` or the usable
    cores. Batched ePIE sums its batch in one part per worker, so its last bits depend on
    this number (sequential ePIE and simulation do not)."""
    return _env_count("PTYENGINE_THREADS") or max(1, len(os.sched_getaffinity(0)))


@functools.cache
def _blas() -> ThreadpoolController:
    """Found once: scanning the loaded libraries costs milliseconds per call."""
    return ThreadpoolController()


def single_blas():
    """A context in which BLAS (numpy's matrix products) runs one thread: for callers
    whose own threads each run products (split_map's parts, SSB's DFT products)."""
    return _blas().limit(limits=1, user_api="blas")


@functools.cache
def _pool(n: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=n, thread_name_prefix="ptyengine")


def split_map(fn, n_items: int, xp: ModuleType = np, min_part: int = 1) -> list:
    """[fn(slice) for contiguous slices covering range(n_items)], in parallel on the CPU,
    in parts of at least ``min_part`` items (fewer parts than cores where the work is too
    small to pay for the hand-offs).

    On the CPU the batch is split into one part per core, each run in its own thread with
    single-threaded FFTs (pyfftw and the numba kernels release the GIL). One pool of
    threads that each own a part beats handing every FFT and every kernel to a thread pool
    of its own: on a 2-core machine the hand-offs cost as much as the work. On the GPU
    there is one part.
    """
    workers = cpu_workers() if xp is np else 1
    parts = min(workers, max(1, n_items // max(1, int(min_part))))
    if parts <= 1:
        return [fn(slice(0, n_items))]
    edges = [n_items * i // parts for i in range(parts + 1)]

    def run(i):
        with fft_threads(1):
            return fn(slice(edges[i], edges[i + 1]))

    # BLAS (matrix products in the parts) would start threads of its own on top of ours;
    # the calling thread works on the first part itself instead of waiting
    with single_blas():
        others = [_pool(parts - 1).submit(run, i) for i in range(1, parts)]
        return [run(0), *(f.result() for f in others)]


# Measured on the 2-core CI-class VM under the load of other processes (load 2.4-3.5;
# benchmarks/RESULTS.md, "ePIE at 160², 192² and 256²"): a single 2-D transform split
# over 2 FFTW threads is slower than one thread up to 1024² (0.08x at 192², 0.16x at
# 256², 0.97x at 1024²) and breaks even near 2048² (1.07x), because its threads meet
# between the row and column passes and a thread that is waiting for a core stalls the
# other; a batch split over the threads (each does whole transforms) pays once a
# thread's share is about a million elements (16 x 256²: 1.95x, 64 x 160²: 2.03x;
# 4-8 x 256²: 0.8-0.9x).
FFT_SINGLE_ELEMENTS_PER_THREAD = 1 << 21  # one transform: elements per FFTW thread
FFT_BATCH_ELEMENTS_PER_THREAD = 1 << 20  # a batch: elements of whole transforms per thread


def fft_threads_for(shape) -> int:
    """FFTW threads for 2-D transforms over the last two axes of an array of ``shape``.

    Inside :func:`split_map`'s parts (which already share the cores) and where
    :func:`fft_threads` says so: that number. Else ``PTYENGINE_FFT_THREADS`` where set.
    Else from the work: a batch gets one thread per ~10⁶ elements of whole transforms
    (at most one per transform and per core), a single transform one thread per
    ~2·10⁶ elements, so a single 192² or 256² transform runs on one thread. Plans of
    other thread counts may round differently (README, "Reproducibility").
    """
    override = getattr(_local, "threads", None)
    if override:
        return override
    env = _env_count("PTYENGINE_FFT_THREADS")
    if env:
        return env
    shape = tuple(int(s) for s in shape)
    n = math.prod(shape[-2:])
    batch = math.prod(shape[:-2])
    if batch > 1:
        want = min(batch, batch * n // FFT_BATCH_ELEMENTS_PER_THREAD)
    else:
        want = n // FFT_SINGLE_ELEMENTS_PER_THREAD
    return max(1, min(len(os.sched_getaffinity(0)), want))


try:
    import pyfftw

    _HAVE_PYFFTW = True
except ImportError:  # pragma: no cover - pyfftw is a declared dependency
    _HAVE_PYFFTW = False


_plan_lock = threading.Lock()

#: FFTW planner efforts ``PTYENGINE_FFTW_PLANNER`` may name; the default is FFTW_MEASURE
#: with the machine's wisdom file. FFTW_ESTIMATE times nothing, so its plans do not depend
#: on the machine's load, but it chooses badly for powers of two: measured per 2-D
#: complex64 transform (forward + inverse, one thread, fresh processes; 2-core VM),
#: ESTIMATE / MEASURE = 198/119 µs at 160², 317/178 at 192², 3380/361 at 256², 718/551
#: at 250², 24250/2022 µs at 512².
PLANNERS = ("FFTW_MEASURE", "FFTW_ESTIMATE", "FFTW_PATIENT", "FFTW_EXHAUSTIVE")


def fftw_planner() -> str:
    """The FFTW planner effort: ``PTYENGINE_FFTW_PLANNER`` or FFTW_MEASURE."""
    name = os.environ.get("PTYENGINE_FFTW_PLANNER", "").strip().upper() or PLANNERS[0]
    if name not in PLANNERS:
        raise PtyengineError(f"PTYENGINE_FFTW_PLANNER={name!r}: use one of "
                             f"{', '.join(PLANNERS)}, or unset it (FFTW_MEASURE)")
    return name


def _machine_key() -> str:
    """Plans fit one CPU model and FFTW build: a short hash of both."""
    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        cpu = "".join(line for line in fh.read().split("\n\n")[0].splitlines(True)
                      if line.startswith(("model name", "flags")))
    blob = f"{pyfftw.__version__}|{platform.machine()}|{cpu}"
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def wisdom_path() -> Path:
    """The FFTW wisdom file of this machine: ``PTYENGINE_FFTW_WISDOM``, or
    ``$XDG_CACHE_HOME/ptyengine/fftw-wisdom-<CPU and FFTW hash>.json`` (~/.cache)."""
    env = os.environ.get("PTYENGINE_FFTW_WISDOM", "").strip()
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or Path.home() / ".cache"
    return Path(base) / "ptyengine" / f"fftw-wisdom-{_machine_key()}.json"


_warned_wisdom = []


@contextlib.contextmanager
def _planning():
    """Yield the planner effort for a new plan, with FFTW's planner held (it is not
    thread-safe) and, for a timed effort, the machine's wisdom file locked (fcntl, so
    that processes plan one at a time) and imported: a problem that any process has
    measured before is planned as it was then. New wisdom is written back (atomically)
    before the lock is released. A wisdom file that cannot be used (a read-only home,
    say) turns the planner to FFTW_ESTIMATE, with a warning, so that the numbers still
    do not depend on timing."""
    import fcntl

    with _plan_lock:
        effort = fftw_planner()
        if effort == "FFTW_ESTIMATE":
            yield effort
            return
        path = wisdom_path()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if not _warned_wisdom:
                _warned_wisdom.append(path)
                warnings.warn(f"cannot keep FFT plans in {path} ({exc.strerror}): planning "
                              "with FFTW_ESTIMATE (slower FFTs); set PTYENGINE_FFTW_WISDOM "
                              "to a writable file", stacklevel=4)
            yield "FFTW_ESTIMATE"
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            before = _read_wisdom(path)
            if before:
                pyfftw.import_wisdom(before)
            yield effort
            after = pyfftw.export_wisdom()
            if after != before:
                _write_wisdom(path, after)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _write_wisdom(path: Path, wisdom) -> None:
    """Replace ``path`` by ``wisdom`` atomically; a failure leaves the old file (the
    plans then stay this process's own: they are measured again next time)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps([w.decode("ascii") for w in wisdom]))
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _read_wisdom(path: Path) -> tuple[bytes, ...] | None:
    """The wisdom of ``path`` (3 strings: double, single, long double), None if absent or
    unreadable (then it is rewritten)."""
    try:
        words = json.loads(path.read_text())
        return tuple(w.encode("ascii") for w in words) if len(words) == 3 else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def _fftw_plan(shape: tuple[int, ...], dtype: str, inverse: bool, inplace: bool):
    threads = fft_threads_for(shape)
    # A plan object holds its arrays, so each calling thread gets its own plans
    key = (shape, dtype, inverse, inplace, threads, threading.get_ident(), fftw_planner())
    plan = _plans.get(key)
    if plan is None:
        with _planning() as effort:
            plan = _plans[key] = _fftw_plan_new(shape, dtype, inverse, inplace, threads, effort)
    return plan


_plans: dict = {}


def _fftw_plan_new(shape, dtype, inverse, inplace, threads, effort):
    """An FFTW plan for a 2-D transform over the last two axes of ``shape``."""
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
    if not _is_aligned(a, align):
        # pyfftw would copy a misaligned input into the array the plan last ran on: the
        # previous caller's input, overwritten (tests/test_backend.py)
        a = pyfftw.byte_align(a, align)
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


def rfft2(a):
    """Forward 2-D FFT of real data over the last two axes (unnormalised, as numpy's
    rfft2): (..., ny, nx) → (..., ny, nx // 2 + 1), complex64 for float32 input.
    CPU: scipy's pocketfft, one thread (no plans: as fast as FFTW's r2c plans on scan
    shapes such as 119 × 256 and 2.7× faster on 236 × 256, measured on the 2-core VM);
    GPU: cupy's."""
    xp = xp_of(a)
    if xp is np:
        import scipy.fft

        return scipy.fft.rfft2(np.asarray(a, np.float32), axes=(-2, -1))
    return xp.fft.rfft2(a, axes=(-2, -1)).astype(np.complex64)


class FFTBuffer:
    """An array ``a`` with in-place 2-D FFTs over its last two axes bound to it.

    ``forward()``: a ← F[a]; ``inverse()``: a ← N·F⁻¹[a], **unnormalised** (N = ny·nx):
    fold the 1/N into a kernel that passes over the data anyway. On the CPU these execute
    two FFTW plans made for ``a`` (no per-call checks, the GIL released); elsewhere cuFFT
    (cupyx.scipy.fft with ``overwrite_x``) or numpy.
    """

    def __init__(self, shape, dtype, xp: ModuleType, threads: int):
        self.a = empty(shape, dtype, xp)
        if xp is np and _HAVE_PYFFTW:
            with _planning() as effort:
                plans = [pyfftw.FFTW(self.a, self.a, axes=(-2, -1), direction=d,
                                     flags=(effort,), threads=threads)
                         for d in ("FFTW_FORWARD", "FFTW_BACKWARD")]  # fmt: skip
            self.forward, self.inverse = plans[0].execute, plans[1].execute
        elif xp is np:  # pragma: no cover - pyfftw is a declared dependency
            self.forward = lambda: self._put(np.fft.fft2(self.a))
            self.inverse = lambda: self._put(np.fft.ifft2(self.a, norm="forward"))
        else:
            import cupyx.scipy.fft as cufft

            self.forward = lambda: self._put(cufft.fft2(self.a, overwrite_x=True))
            self.inverse = lambda: self._put(cufft.ifft2(self.a, norm="forward",
                                                         overwrite_x=True))  # fmt: skip

    def _put(self, result) -> None:
        if result is not self.a:
            self.a[...] = result


_buffers = threading.local()


def fft_buffer(shape, dtype, xp: ModuleType = np, slot: str = "") -> FFTBuffer:
    """A reusable :class:`FFTBuffer` of ``shape``: one per (shape, dtype, slot) and calling
    thread, made (and on the CPU planned) on first use. Its contents are undefined on
    return, and the next call from this thread with the same key returns the same array:
    use distinct ``slot`` names for buffers that must coexist. Each thread keeps its
    buffers until :func:`clear_fft_buffers` (on a GPU they hold device memory)."""
    cache = getattr(_buffers, "cache", None)
    if cache is None:
        cache = _buffers.cache = {}
    key = (shape, dtype, xp, slot, fftw_planner() if xp is np else "")
    buf = cache.get(key)
    if buf is None:  # first use: the FFT threads are fixed when the plans are made
        shape = tuple(int(s) for s in shape)
        threads = fft_threads_for(shape) if xp is np else 1
        buf = cache[key] = FFTBuffer(shape, np.dtype(dtype), xp, threads)
    return buf


def clear_fft_buffers() -> None:
    """Drop this thread's FFT buffers (and their plans or device memory)."""
    _buffers.cache = {}


def empty(shape, dtype, xp: ModuleType = np):
    """An uninitialised array; on the CPU aligned for FFTW's SIMD paths."""
    if xp is np and _HAVE_PYFFTW:
        return pyfftw.empty_aligned(shape, dtype=dtype)
    return xp.empty(shape, dtype=dtype)


# ----------------------------------------------------------------------------- memory


def parse_bytes(text) -> int:
    """'8GB', '512 MiB', '1.5e9' or 2000000000 -> bytes (GB = 10⁹, GiB = 2³⁰)."""
    units = {"": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip
    s = str(text).strip().upper().replace(" ", "")
    number = s.rstrip("KMGTIB")
    unit = s[len(number):]
    try:
        value = float(number) * units[unit]
    except (ValueError, KeyError):
        raise PtyengineError(f"cannot read {text!r} as a size in bytes (e.g. 8GB, 512MiB)") \
            from None
    if not (math.isfinite(value) and value > 0):
        raise PtyengineError(f"a memory size must be positive, got {text!r}")
    return int(value)


def _cgroup_limits(proc="/proc/self/cgroup", root="/sys/fs/cgroup"):
    """Memory limits (bytes) of this process's cgroup and of every cgroup above it, v1 and
    v2 ("max" and the huge "unlimited" values of v1 left out)."""
    try:
        with open(proc) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    places = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: one hierarchy
            places.append((root, path, "memory.max"))
        elif "memory" in controllers.split(","):
            places.append((os.path.join(root, "memory"), path, "memory.limit_in_bytes"))
    limits = []
    for base, path, name in places:
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts), -1, -1):  # the process's cgroup up to the root
            try:
                with open(os.path.join(base, *parts[:depth], name)) as fh:
                    text = fh.read().strip()
            except OSError:
                continue
            if text.isdigit() and int(text) < 2**60:
                limits.append(int(text))
    return limits


def available_memory() -> int:
    """Bytes this process may use: the machine's physical memory, or less where a cgroup
    (a SLURM job, a container) sets a lower limit on it or on a group above it."""
    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return min([total, *_cgroup_limits()])


def memory_limit(limit=None, xp: ModuleType = np) -> int:
    """The memory budget in bytes: ``limit`` (bytes or a string for :func:`parse_bytes`)
    or, by default, half of :func:`available_memory`; on a GPU at most the device's free
    memory as well."""
    if limit is None:
        limit = available_memory() // 2
    limit = parse_bytes(limit) if isinstance(limit, str) else int(limit)
    if limit <= 0:
        raise PtyengineError(f"a memory limit must be positive, got {limit}")
    if xp is not np:  # the device's free memory and what cupy's pool holds for reuse
        free, _ = xp.cuda.runtime.memGetInfo()
        limit = min(limit, int(free) + int(xp.get_default_memory_pool().free_bytes()))
    return limit


MALLOC_ARENAS = 2  # glibc malloc arenas the command line allows (see limit_malloc_arenas)


def limit_malloc_arenas(n: int = MALLOC_ARENAS) -> bool:
    """Let glibc keep at most ``n`` malloc arenas (``mallopt(M_ARENA_MAX)``, as the
    environment variable MALLOC_ARENA_MAX would); returns whether it could.

    Every thread that decompresses chunks otherwise gets an arena of its own, which keeps
    the freed chunk buffers: resident memory then creeps up over a long streaming run
    until every arena is warm (measured: iCOM's peak 1.18× higher on 16 GB than on 2 GB;
    benchmarks/RESULTS.md). The ``ptyengine`` command calls this at start (a process-wide
    setting, so the library itself does not); call it first in scripts and job files
    that stream large data, or set MALLOC_ARENA_MAX=2.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(-8, int(n)))  # M_ARENA_MAX = -8 in glibc's malloc.h
    except (OSError, AttributeError):  # not glibc: nothing to limit
        return False


def to_device_async(host: np.ndarray, xp: ModuleType):
    """``host`` on the device of ``xp``: on a GPU copied through pinned (page-locked)
    memory on a copy stream of its own, so that a background thread's copies overlap the
    kernels of the main thread; returns once the copy is complete. On the CPU: ``host``."""
    if xp is np:
        return host
    pinned = xp.cuda.alloc_pinned_memory(host.nbytes)
    staged = np.frombuffer(pinned, host.dtype, host.size).reshape(host.shape)
    staged[...] = host
    stream = _copy_stream(xp)
    dev = xp.empty(host.shape, host.dtype)
    # the memory may have held an array that kernels queued on the null stream still read:
    # the copy waits for them
    stream.wait_event(xp.cuda.Stream.null.record())
    dev.set(staged, stream=stream)
    stream.synchronize()  # the pinned buffer may be released after this
    return dev


_streams = threading.local()


def _copy_stream(xp):
    if getattr(_streams, "stream", None) is None:
        _streams.stream = xp.cuda.Stream(non_blocking=True)
    return _streams.stream


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
