"""Streamed ePIE: peak memory and seconds per iteration on a dataset 8× larger than another,
and streamed against resident on the smaller one (issue 6).

    python benchmarks/bench_stream_epie.py SMALL.zarr LARGE.zarr [--iterations 2]
        [--memory-limit 1GB] [--batch-size 64] [--check-resident]

The datasets are those of ``bench_stream.py`` (e.g. /tmp/ptyengine-stream/large_2GB_*.zarr
and large_16GB_*.zarr). Each run is a fresh process: ePIE for ``--iterations`` with the
memory limit, which is below the size of the amplitudes of both, so both stream a stored
chunk at a time (malloc arenas limited as the ``ptyengine`` command limits them). Printed:
peak RSS (the process's own VmHWM), seconds of the pre-pass (the data's total intensity),
seconds per iteration, raw GB per second streamed, and the large/small memory ratio (target
< 1.15). ``--check-resident`` also runs the small dataset with the amplitudes held in
memory and checks that object, probe and errors are identical (both runs in one process;
across processes the FFT plans kept in the machine's wisdom file keep them identical too).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

CHILD = """
import json, resource, sys, time
from ptyengine.backend import limit_malloc_arenas
limit_malloc_arenas()  # as the ptyengine command does at start
from ptyengine import io
from ptyengine.reconstruct.epie import EpieParameters, epie
path, iterations, batch, limit = sys.argv[1:5]
stamps = [time.perf_counter()]
with io.open_dataset(path) as ds:
    raw = ds.data.nbytes
    res = epie(ds, EpieParameters(iterations=int(iterations), batch_size=int(batch)),
               memory_limit=limit, progress=lambda k, e: stamps.append(time.perf_counter()))
per_it = (stamps[-1] - stamps[1]) / max(1, len(stamps) - 2) if len(stamps) > 2 else \\
    stamps[-1] - stamps[0]
print(json.dumps({"raw_GB": raw / 1e9, "streamed": res.extra["streamed"],
                  "first_s": stamps[1] - stamps[0], "per_iteration_s": per_it,
                  "peak_MiB": [int(x.split()[1]) for x in open("/proc/self/status")
                                if x.startswith("VmHWM")][0] / 1024,
                  "errors": res.errors}))
"""


CHECK = """
import json, sys
import numpy as np
from ptyengine.reconstruct.epie import EpieParameters, epie
path, iterations, batch, limit = sys.argv[1:5]
p = EpieParameters(iterations=int(iterations), batch_size=int(batch))
a, b = epie(path, p, memory_limit=limit), epie(path, p, memory_limit="1TB")
print(json.dumps({"streamed": [a.extra["streamed"], b.extra["streamed"]],
                  "identical": bool(np.array_equal(a.object, b.object) and
                                    np.array_equal(a.probe, b.probe) and a.errors == b.errors),
                  "max_diff": float(np.abs(a.object - b.object).max())}))
"""


def run(path, iterations, batch, limit):
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(iterations), str(batch),
                          str(limit)], capture_output=True, text=True)  # fmt: skip
    if out.returncode:
        sys.exit(f"ePIE on {path} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("small")
    ap.add_argument("large")
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--memory-limit", default="1GB")
    ap.add_argument("--check-resident", action="store_true")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPU threads; ePIE "
          f"{args.iterations} iterations, batch {args.batch_size}, memory limit "
          f"{args.memory_limit}")
    rows = {}
    for name, path in (("small", args.small), ("large", args.large)):
        r = run(path, args.iterations, args.batch_size, args.memory_limit)
        rows[name] = r
        # the first iteration's time includes the pre-pass over the data
        print(f"{name}: {r['raw_GB']:.2f} GB raw, streamed={r['streamed']}, first iteration "
              f"(+ pre-pass) {r['first_s']:.1f} s, then {r['per_iteration_s']:.1f} s/iteration "
              f"({r['raw_GB'] / r['per_iteration_s']:.2f} GB/s), peak RSS "
              f"{r['peak_MiB']:.0f} MiB")
    print(f"peak memory large/small: {rows['large']['peak_MiB'] / rows['small']['peak_MiB']:.3f}x"
          " (target < 1.15)")
    if args.check_resident:
        out = subprocess.run([sys.executable, "-c", CHECK, args.small, str(args.iterations),
                              str(args.batch_size), args.memory_limit], capture_output=True,
                             text=True, check=True)  # fmt: skip
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"small, streamed / resident (streamed={r['streamed']}): object, probe and "
              f"errors identical: {r['identical']} (max |ΔO| {r['max_diff']:.3g})")


if __name__ == "__main__":
    main()
