"""``ptyengine doctor``: check the CPU and GPU set-up with a tiny ePIE on each device."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click


@click.command()
def doctor():
    """Check the installation: Python, numpy, FFTs, numba kernels, CuPy/CUDA and the GPU
    (a tiny ePIE on each device). Exit status 0 when the CPU path works (GPU problems are
    warnings), 1 when something the CPU path needs is broken."""
    import platform
    import tempfile
    import time

    import numpy as np

    from .. import __version__, backend

    failures, warnings_ = [], []
    found: dict = {}

    def check(name, fn, needed=True):
        try:
            text = fn()
        except Exception as exc:  # a doctor reports every failure
            text = f"FAILED: {type(exc).__name__}: {exc}".splitlines()[0]
            (failures if needed else warnings_).append(f"{name}: {text[8:]}")
        click.echo(f"{name + ':':<15}{text}")

    info = backend.describe()
    check("ptyengine", lambda: __version__)
    check("python", lambda: f"{platform.python_version()} ({platform.python_implementation()}, "
                            f"{platform.platform()})")  # fmt: skip

    check("numpy", lambda: np.__version__)

    def fft_check():
        rng = np.random.default_rng(0)
        a = (rng.standard_normal((4, 64, 64)) + 1j * rng.standard_normal((4, 64, 64)))
        a = a.astype(np.complex64)
        ref = np.fft.fft2(a)
        err = float(np.abs(backend.fft2(a) - ref).max() / np.abs(ref).max())
        back = float(np.abs(backend.ifft2(backend.fft2(a)) - a).max())
        if not (err < 1e-4 and back < 1e-4):
            raise RuntimeError(f"{info['cpu_fft']} disagrees with numpy.fft ({err:.2g})")
        if not info["cpu_fft"].startswith("pyfftw"):
            warnings_.append("pyfftw is missing: CPU FFTs fall back to scipy.fft (2-3x "
                             "slower); pip install pyfftw")  # fmt: skip
        return f"{info['cpu_fft']}: ok (matches numpy.fft to {err:.1g})"

    check("FFT backend", fft_check)
    threads = info["cpu_threads"]
    env = [f"{k}={os.environ[k]}" for k in ("PTYENGINE_THREADS", "PTYENGINE_FFT_THREADS",
                                            "OMP_NUM_THREADS") if k in os.environ]  # fmt: skip
    check("CPU threads", lambda: threads + (f" ({', '.join(env)})" if env else ""))

    def numba_check():
        import numba

        from ..kernels import windows

        t = time.perf_counter()
        psi = np.ones((2, 3, 3), np.complex64)
        tr = np.arange(36, dtype=np.complex64).reshape(6, 6)
        corners = np.array([[0, 0], [2, 3]], np.int64)
        windows.window_multiply_cpu(psi, tr, corners)
        if not (np.array_equal(psi[0], tr[:3, :3]) and np.array_equal(psi[1], tr[2:5, 3:6])):
            raise RuntimeError("the window kernel computes wrong numbers")
        return f"{numba.__version__}: CPU kernels compile and run ({time.perf_counter() - t:.1f} s)"

    check("numba", numba_check)

    def tiny_dataset(tmp):
        from ..simulate import SimulationParameters, simulate

        p = SimulationParameters(structure="srtio3", zone_axis=(0, 0, 1), field=(7.81, 7.81),
                                 thickness=4.0, scan_step=0.4, scan_size=(2.4, 2.4),
                                 max_angle=40.0, detector_pixels=32)  # fmt: skip
        path = Path(tmp) / "tiny.zarr"
        simulate(p, str(path))
        return path

    def epie_check(device, tmp):
        from ..reconstruct.epie import EpieParameters, epie

        path = found.get("data") or tiny_dataset(tmp)
        found["data"] = path
        params = EpieParameters(iterations=3, batch_size=4)
        t = time.perf_counter()
        res = epie(path, params, device=device)
        first = time.perf_counter() - t
        if not (np.isfinite(res.object).all() and np.isfinite(res.errors).all()):
            raise RuntimeError("NaN or inf in the result")
        found[device] = res
        text = f"ok: 3 iterations on a 6 x 6 scan of 32 x 32 patterns in {first:.2f} s"
        if device == "gpu":
            t = time.perf_counter()
            epie(path, params, device=device)
            text += f" ({time.perf_counter() - t:.2f} s once compiled)"
            if "cpu" in found:
                diff = float(np.abs(res.object - found["cpu"].object).max())
                text += f"; max |object difference| to the CPU: {diff:.1g}"
                if diff > 1e-2:
                    raise RuntimeError(f"GPU and CPU results differ by {diff:.2g}")
        return text

    with tempfile.TemporaryDirectory(prefix="ptyengine-doctor-") as tmp:
        check("CPU ePIE", lambda: epie_check("cpu", tmp))
        cupy_text = _cupy_report(warnings_)
        click.echo(f"{'cupy:':<15}{cupy_text}")
        check("GPU", lambda: info["gpu"], needed=False)
        check("numba.cuda", _numba_cuda_report, needed=False)
        if backend.gpu_available():
            check("GPU ePIE", lambda: epie_check("gpu", tmp), needed=False)
        else:
            click.echo(f"{'GPU ePIE:':<15}skipped (no usable GPU)")
            warnings_.append(
                "no usable GPU: everything runs on the CPU. For a GPU, install the gpu "
                "extra, pip install 'ptyengine[gpu]' (CuPy for CUDA 12: needs an NVIDIA "
                "driver for CUDA 12, i.e. >= 525)")  # fmt: skip
    for w in warnings_:
        click.echo(f"warning: {w}")
    if failures:
        click.echo("CPU path: BROKEN (" + "; ".join(failures) + ")")
        sys.exit(1)
    click.echo("CPU path: ok")


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def _cupy_report(warnings_: list) -> str:
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        return f"not installed ({type(exc).__name__}: {exc})".splitlines()[0]
    text = f"{cupy.__version__}"
    try:
        text += (f", CUDA runtime {_cuda_version(cupy.cuda.runtime.runtimeGetVersion())}, "
                 f"driver {_cuda_version(cupy.cuda.runtime.driverGetVersion())}")
    except Exception as exc:  # anything a broken driver raises
        warnings_.append(f"cupy cannot talk to the CUDA driver ({exc})")
        text += f" (CUDA driver unreachable: {exc})"
    return text


def _numba_cuda_report() -> str:
    from numba import config

    if config.ENABLE_CUDASIM:
        return "CUDA simulator (NUMBA_ENABLE_CUDASIM=1): kernels run on the CPU, no device"
    from numba import cuda

    if not cuda.is_available():
        return "no CUDA device seen"
    name = cuda.get_current_device().name
    return f"sees {name.decode() if isinstance(name, bytes) else name}"
