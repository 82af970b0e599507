"""The direct methods against the bare read-and-decompress rate of the same data (issue 16):
SSB, tcBF and WDD as fractions of the read loop's throughput, best of N fresh processes.

    python benchmarks/bench_direct_speed.py [--gb 1] [--repeats 3]
        [--methods read,ssb,ssb500,tcbf,wdd] [--memory-limit 4GB] [--dir /tmp/ptyengine-direct]
        [--device cpu|gpu]

Data: ``bench_stream.py``'s counting-detector dataset (the demo's SrTiO3 [001] patterns,
128 × 128 px to 40 mrad, 20 mrad probe: 3205 bright-field pixels, tiled over 256 scan
columns at 0.3 Å, Poisson at 5·10⁴ e/Å², uint16, ptyengine's default Zarr layout), ``--gb``
raw GB (10⁹ bytes); or ``--data`` PATH, e.g. the UiO-66 quick study's 100 nm dataset at
100 e/Å² (52 × 47 × 160² uint32, 0.25 GB, C10 = 1000 Å: the RESULTS "WDD" section's
speed line). Each measurement is a fresh process, in rounds of every method:
"read" is the loop over exactly the blocks the direct methods read (``icom.row_blocks``:
chunks of scan rows, decompressed ahead by the reading threads, nothing else); "ssb" is
``ssb(ds)`` with its defaults (every bright-field pixel, the calibration's C10 = 0);
"ssb500" the same with C10 = 500 Å corrected (the aberration phases then cost); "tcbf" is
``tcbf(ds)`` with its defaults; "wdd" is ``wdd(ds)``. Throughput is raw GB of patterns
per second; each method's ratio is its best rate over the best read rate. The CPU time of
each process (all threads) is printed too: on a shared machine the wall clock depends on
the other load, the CPU time much less ("cpu ratio" = read CPU s / method CPU s).
To measure another version, put it first on ``PYTHONPATH`` (the measured processes run in
the dataset's folder, so the repository's own copy does not shadow it); ``--before PATH``
measures every method also with PATH first on ``PYTHONPATH`` (e.g. a copy of an older
``ptyengine`` package, its ``kernels`` copied into it as ``ptyengine/kernels``), in the same
rounds, as "METHOD@before".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stream import make_dataset  # noqa: E402

CHILD = """
import json, sys, time
from ptyengine.backend import limit_malloc_arenas
limit_malloc_arenas()  # as the ptyengine command does at start
from ptyengine import io
from ptyengine.reconstruct.icom import row_blocks
mode, path, limit, device = sys.argv[1], sys.argv[2], sys.argv[3] or None, sys.argv[4]
with io.open_dataset(path) as ds:
    raw = ds.data.nbytes
    t0, c0 = time.perf_counter(), time.process_time()
    if mode == "read":
        n = sum(b.nbytes for _, b in row_blocks(ds, memory_limit=limit))
        assert n == raw
    elif mode.startswith("ssb"):
        from ptyengine.reconstruct.ssb import SsbParameters, ssb
        c10 = float(mode[3:]) if mode[3:] else None
        ssb(ds, SsbParameters(defocus=c10), device=device, memory_limit=limit)
    elif mode == "tcbf":
        from ptyengine.reconstruct.tcbf import tcbf
        tcbf(ds, device=device, memory_limit=limit)
    elif mode == "wdd":
        from ptyengine.reconstruct.wdd import wdd
        wdd(ds, device=device, memory_limit=limit)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")]
print(json.dumps({"mode": mode, "bytes": raw, "seconds": seconds, "cpu": cpu,
                  "peak_MiB": hwm[0] / 1024}))
"""


def measure(path: Path, label: str, limit: str, before: str | None = None,
            device: str = "cpu") -> dict:
    # run outside the repository: ``python -c`` puts the working directory first on the
    # path, which would shadow a PYTHONPATH pointing at another version of ptyengine
    mode, _, version = label.partition("@")
    env = dict(os.environ)
    if version:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [before, env.get("PYTHONPATH")]))
    r = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), limit, device],
                       capture_output=True, text=True, check=True,
                       cwd=Path(path).resolve().parent, env=env)  # fmt: skip
    m = json.loads(r.stdout.strip().splitlines()[-1])
    m["mode"] = label
    m["GBps"] = m["bytes"] / 1e9 / m["seconds"]
    return m


def warm(path: Path, modes, limit: str, before: str | None = None, device: str = "cpu") -> None:
    """One untimed run of each method: numba's kernels compiled into its on-disk cache."""
    for mode in modes:
        if mode != "read":
            measure(path, mode, limit, before, device)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gb", type=float, default=1.0, help="raw GB (1e9 bytes) of patterns")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of every method")
    ap.add_argument("--methods", default="read,ssb,ssb500,tcbf,wdd")
    ap.add_argument("--memory-limit", default="", help="as --memory-limit (default: half "
                                                       "the available memory)")
    ap.add_argument("--dose", type=float, default=5e4, help="e/Å²")
    ap.add_argument("--dir", default="/tmp/ptyengine-direct")
    ap.add_argument("--device", default="cpu", help="cpu | gpu: where the methods run "
                    "(the read is the same CPU loop either way)")
    ap.add_argument("--data", help="an existing dataset to use instead (any ptyengine reads)")
    ap.add_argument("--no-warm", action="store_true",
                    help="no untimed first run of each method (numba's cache already warm)")
    ap.add_argument("--before", help="another version's path, first on PYTHONPATH for "
                                     "METHOD@before")
    args = ap.parse_args()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    if args.data:
        path, made = Path(args.data), 0.0
    else:
        path = d / f"direct_{args.gb:g}GB_dose{args.dose:g}.zarr"
        made = make_dataset(path, args.gb, args.dose)
    modes = ["read"] + [m for m in args.methods.split(",") if m and m != "read"]
    if args.before:
        modes += [f"{m}@before" for m in modes[1:]]
    how = f"written in {made:.0f} s" if made else "existing"
    print(f"{path.name}: {how}; "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}", flush=True)
    if not args.no_warm:
        warm(path, modes, args.memory_limit, args.before, args.device)
    runs = []
    for _ in range(args.repeats):
        for mode in modes:
            m = measure(path, mode, args.memory_limit, args.before, args.device)
            runs.append(m)
            print(f"  {mode:14s} {m['GBps']:.3f} GB/s ({m['seconds']:6.2f} s, CPU "
                  f"{m['cpu']:6.2f} s), peak RSS {m['peak_MiB']:5.0f} MiB, load "
                  f"{os.getloadavg()[0]:.1f}", flush=True)
    best = {mode: min((m for m in runs if m["mode"] == mode), key=lambda m: m["seconds"])
            for mode in modes}  # fmt: skip
    cpu = {mode: min(m["cpu"] for m in runs if m["mode"] == mode) for mode in modes}
    raw = runs[0]["bytes"]
    print(f"{raw / 1e9:.2f} GB raw; best of {args.repeats}:")
    print("| method | s | GB/s | / read | CPU s | CPU ratio | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|")
    for mode in modes:
        b = best[mode]
        print(f"| {mode} | {b['seconds']:.2f} | {b['GBps']:.3f} | "
              f"{b['GBps'] / best['read']['GBps']:.0%} | {cpu[mode]:.2f} | "
              f"{cpu['read'] / cpu[mode]:.0%} | {b['peak_MiB']:.0f} |")
    print(f"finished {time.strftime('%H:%M')}, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
