"""Seconds per mepie iteration against the time of the FFTs it must do, for S slices.

Problem (synthetic, so that no simulation is needed: the patterns' content does not change
the work): a ``--scan``² scan of ``--window``² patterns at 300 kV, 20 mrad, 0.1 Å object
pixels, mepie with batches of ``--batch`` positions, the probe refined, S slices 10 Å apart
(``--slices``). Per position an iteration does 4 + 4(S − 1) FFTs of the window: the
probe's sub-pixel shift and the return of its update, the detector pair, and 2 per slice
boundary each way (forward model and adjoint). The floor runs exactly that many FFTs on
batches of the same shape (:func:`bench_epie.fft_floor`, in the same process, medians of
5 runs); the ratio is time per iteration / floor, measured ``--rounds`` times, each run
followed by its floor (a shared machine's speed drifts by ±15 % within minutes), and the
median of the rounds' ratios printed with their range. The issue's floor counts the forward
half only (2 FFTs per slice boundary plus the detector pair, 2 + 2(S − 1)): that ratio is
printed too. Target: ≤ 1.5× the floor of the FFTs done, time linear in S.

    python benchmarks/bench_mepie.py [--slices 1,4,8] [--window 64] [--scan 32] [--rounds 3]
                                     [--device cpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_epie import clocks, fft_floor  # noqa: E402

from ptyengine import backend, physics  # noqa: E402
from ptyengine.calibration import Calibration  # noqa: E402
from ptyengine.dataset import InMemoryDataset  # noqa: E402
from ptyengine.reconstruct.forward import _chunk  # noqa: E402
from ptyengine.reconstruct.mepie import MepieParameters, mepie  # noqa: E402


def synthetic(scan: int, window: int, seed: int = 0) -> InMemoryDataset:
    """Noise-free patterns of a random weak-phase object (0.1 rad rms, smooth over ~0.5 Å)
    under a probe defocused by 50 Å (the content does not change the work, but random
    patterns that no object explains make the steps diverge)."""
    d, step = 0.1, 0.3
    dk = 1 / (window * d)
    cal = Calibration(energy=300e3, semiangle=20.0, scan_shape=(scan, scan),
                      scan_step=(step, step), detector_shape=(window, window), dk=(dk, dk),
                      detector_center=(window // 2, window // 2),
                      aberrations={"C10": 50.0})  # fmt: skip
    p = physics.probe((window, window), (d, d), 300e3, 20.0, {"C10": 50.0}, band_fraction=1.0)
    rng = np.random.default_rng(seed)
    n = int(scan * step / d) + window
    k2 = np.fft.fftfreq(n, d)[:, None] ** 2 + np.fft.fftfreq(n, d)[None, :] ** 2
    phase = np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, n))) * np.exp(-k2 / 2)).real
    obj = np.exp(0.1j * phase / phase.std())
    out = np.empty((scan, scan, window, window), np.float32)
    for i in range(scan):
        for j in range(scan):
            y, x = int(round(i * step / d)), int(round(j * step / d))
            far = np.fft.fftshift(np.fft.fft2(p * obj[y:y + window, x:x + window]))
            out[i, j] = np.abs(far) ** 2
    return InMemoryDataset(out / out[0, 0].sum(), cal)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", default="1,4,8")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--scan", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rounds", type=int, default=3,
                    help="runs per S, each followed by its floor; medians of the rounds' ratios")
    args = ap.parse_args()
    xp = backend.get_xp(args.device)
    ds = synthetic(args.scan, args.window)
    n_pos = args.scan**2
    window = (args.window, args.window)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU threads, device "
          f"{args.device}, load average {os.getloadavg()[0]:.1f}; "
          f"{n_pos} positions, window {args.window}², batch {args.batch}", flush=True)
    rows = []
    for s in (int(v) for v in args.slices.split(",")):
        params = MepieParameters(slices=s, slice_thickness=10.0, iterations=args.iterations + 1,
                                 batch_size=args.batch)  # fmt: skip
        pairs = 2 + 2 * (s - 1)  # FFT pairs done per position
        runs, floors = [], []
        for _ in range(args.rounds):  # run and floor alternated: the machine's drift hits both
            stamps = []
            mepie(ds, params, device=args.device,
                  progress=lambda k, e, t=stamps: t.append(clocks()))  # fmt: skip
            runs.append(np.median(np.diff(stamps, axis=0), axis=0))
            floors.append(fft_floor(n_pos, window, args.batch, xp, _chunk(window, s), pairs=pairs))
        runs, floors = np.array(runs), np.array(floors)
        ratio = runs / floors  # per round, (wall, CPU)
        per_it, floor = np.median(runs, axis=0), np.median(floors, axis=0)
        issue = np.median(ratio, axis=0) * pairs / (1 + (s - 1))  # against 2 + 2(S − 1) FFTs
        rows.append((s, per_it[1]))
        spread = (f" (rounds {ratio[:, 1].min():.2f}–{ratio[:, 1].max():.2f})"
                  if args.rounds > 1 else "")  # fmt: skip
        print(f"S = {s:2d}: wall {per_it[0]:.3f} s/iteration, FFT floor ({2 * pairs} FFTs per "
              f"position) {floor[0]:.3f} s, ratio {np.median(ratio[:, 0]):.2f}x; against the "
              f"issue's floor ({2 * (1 + (s - 1))} FFTs) {issue[0]:.2f}x; CPU {per_it[1]:.3f} "
              f"s, ratio {np.median(ratio[:, 1]):.2f}x{spread}; load average "
              f"{os.getloadavg()[0]:.1f}", flush=True)
    if len(rows) > 1:  # CPU time: what other processes on a shared machine inflate least
        s, t = np.array(rows).T
        slope, icpt = np.polyfit(s, t, 1)
        worst = max(abs(t - (slope * s + icpt)) / t)
        print(f"linear fit of the CPU time: {icpt:.3f} s + {slope:.3f} s per slice (largest "
              f"deviation {100 * worst:.1f} %)")

if __name__ == "__main__":
    main()
