"""Simulation throughput against its FFT floor, on the CPU (or --device gpu).

Throughput = probe positions × slices per second of the multislice core
(`ProbeWindow.diffraction`) on the quick UiO-66 preset's specimen. The floor is the time of
the FFTs alone that the same work must do (1 inverse FFT to form the probes, 2 per slice
boundary, 1 to the detector), on the same batch shape, in the same process, taking the
faster of two ways of using the cores (FFTW's threads on the whole batch, or the batch
split over threads with one FFTW thread each). Target: ≤ 1.5×.

    python benchmarks/bench_simulate.py [--device cpu|gpu] [--batch 64] [--repeat 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import numpy as np

from ptyengine import backend, presets
from ptyengine.calibration import Calibration  # noqa: F401  (documented in the output)
from ptyengine.multislice import ProbeWindow
from ptyengine.simulate import build_specimen, calibration_for, scan_positions, window_for


def _sync(xp):
    if xp is not np:
        xp.cuda.Stream.null.synchronize()


def best_of(fn, repeat, xp):
    fn()  # warm-up: plans, caches
    _sync(xp)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(xp)
        times.append(time.perf_counter() - t0)
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--positions", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--defocus", type=float, default=0.0)
    args = ap.parse_args()
    xp = backend.get_xp(args.device)
    params = dataclasses.replace(presets.uio66_defocus("quick")[0][1], phonons=0,
                                 defocus=args.defocus)
    spec = build_specimen(params, xp)
    shape, origin = scan_positions(params, spec)
    cal = calibration_for(params, shape, origin)
    w = window_for(params, spec.sampling, spec.potential.shape)
    pw = ProbeWindow.build(w, spec.sampling, params.energy, params.semiangle, cal.aberrations,
                           spec.slice_thicknesses, cal.detector_shape, cal.dk, xp)
    t = pw.prepare(spec.transmissions[0], xp)  # periodically extended once, as simulate() does
    n_slices = t.padded.shape[0]
    rng = np.random.default_rng(0)
    pos = rng.uniform(0, 20, size=(args.positions, 2))
    b = args.batch

    def simulate_all():
        for i in range(0, len(pos), b):
            pw.diffraction(t, pos[i:i + b], xp)

    buf = backend.empty((b, w, w), np.complex64, xp)
    buf[...] = 1

    def ffts(part=slice(None)):
        a = buf[part]
        for _ in range(0, len(pos), b):
            backend.ifft2(a, out=a)
            for _ in range(n_slices - 1):
                backend.fft2(a, out=a)
                backend.ifft2(a, out=a)
            backend.fft2(a, out=a)

    def ffts_threaded_fftw():  # one batch, FFTW's own threads
        ffts()

    def ffts_split():  # the batch split over the cores, one FFTW thread each
        backend.split_map(ffts, b, xp)

    t_sim = best_of(simulate_all, args.repeat, xp)
    t_fftw_threads = best_of(ffts_threaded_fftw, args.repeat, xp)
    t_split = best_of(ffts_split, args.repeat, xp)
    t_fft = min(t_fftw_threads, t_split)
    n = len(pos)
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{backend.describe()['cpu_threads']} CPU threads; device {args.device}")
    print(f"problem: UiO-66 quick preset, window {w}x{w}, {n_slices} slices, {n} positions, "
          f"batch {b}, defocus {args.defocus:g} Å")
    print(f"simulation: {t_sim:.3f} s = {n * n_slices / t_sim:,.0f} position-slices/s")
    print(f"FFT floor:  {t_fft:.3f} s ({2 * n_slices} FFTs of {w}x{w} per position; the faster "
          f"of FFTW-threaded {t_fftw_threads:.3f} s and batch-split {t_split:.3f} s)")
    print(f"ratio:      {t_sim / t_fft:.2f} x the FFT floor")


if __name__ == "__main__":
    main()
