"""Seconds per ePIE iteration against the time of the FFTs the iteration must do.

Problem: a dataset of the quick UiO-66 preset (simulated here if --data is not given:
840 positions, 160 × 160 detector). Every position costs 4 FFTs of the window: one to
form the sub-pixel-shifted probe, the exit wave forward and back, and one to bring the
probe update back from its shift. The floor runs exactly those FFTs on batches of the
same shape (the faster of FFTW's threads over the batch and the batch split over the
cores). Both sides are medians (of the iterations, of 5 runs of the floor), so that a
burst of another process on a shared machine does not decide the ratio. Target: ≤ 1.5×
for the batched update. Sequential ePIE (batch 1) is reported
too: there every position is its own small FFT and Python's per-call cost shows.

    python benchmarks/bench_epie.py [--data uio66_quick_df50nm.zarr] [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from ptyengine import backend, io, presets
from ptyengine.reconstruct.epie import EpieParameters, epie
from ptyengine.simulate import simulate


def fft_floor(n_pos, window, batch, xp, sub_chunk, repeat=5):
    """Seconds for the 4 FFTs of every position's window in one iteration (in place, on
    buffers with bound plans, as ePIE runs them), the fastest of three ways of grouping
    them: whole batches (FFTW's threads), batches split over the cores, and ePIE's own
    cache-sized sub-chunks of the batches split over the cores."""
    sizes = [min(batch, n_pos - b0) for b0 in range(0, n_pos, batch)]

    def ffts(group, n):  # the 4 FFTs of n positions, in groups of at most ``group``
        for s0 in range(0, n, group):
            buf = backend.fft_buffer((min(group, n - s0), *window), np.complex64, xp, "floor")
            for _ in range(2):
                buf.inverse()
                buf.forward()

    def split(group):
        for n in sizes:
            backend.split_map(lambda p: ffts(group, p.stop - p.start), n, xp)

    ways = [lambda: [ffts(n, n) for n in sizes], lambda: split(batch),
            lambda: split(sub_chunk)]
    best = np.inf  # the fastest grouping, each timed by the median of ``repeat`` runs
    for fn in ways if xp is np else ways[:1]:
        fn()
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()
            if xp is not np:
                xp.cuda.Stream.null.synchronize()
            times.append(time.perf_counter() - t0)
        best = min(best, float(np.median(times)))
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--iterations", type=int, default=3)
    args = ap.parse_args()
    xp = backend.get_xp(args.device)
    path = args.data
    if path is None:
        path = os.path.join(tempfile.gettempdir(), "ptyengine-bench-uio66-df50nm.zarr")
        if not os.path.exists(path):
            simulate(presets.uio66_defocus("quick")[1][1], path)
    with io.open_dataset(path) as ds:
        cal = ds.calibration
        n_pos = cal.scan_shape[0] * cal.scan_shape[1]
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPU threads, device "
              f"{args.device}; data {path}: {n_pos} positions, window {cal.detector_shape}")
        for b in (int(v) for v in args.batches.split(",")):
            stamps = []  # time at the end of every iteration: set-up is not counted
            res = epie(ds, EpieParameters(iterations=args.iterations + 1, batch_size=b),
                       device=args.device, progress=lambda k, e, s=stamps: s.append(
                           time.perf_counter()))
            per_it = float(np.median(np.diff(stamps)))  # median iteration: robust to
            # another process's burst on a shared machine, as the floor's median
            sub = max(1, (1 << 20) // (cal.detector_shape[0] * cal.detector_shape[1] * 8))
            floor = fft_floor(n_pos, cal.detector_shape, b, xp, sub)
            print(f"batch {b:4d}: {per_it:.3f} s/iteration, FFT floor {floor:.3f} s, "
                  f"ratio {per_it / floor:.2f}x, final error {res.errors[-1]:.3g}")


if __name__ == "__main__":
    main()
