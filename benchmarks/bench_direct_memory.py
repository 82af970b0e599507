"""Peak memory of the direct methods does not grow with the data (issue 16): SSB (and
tcBF, WDD on request) on a dataset and on one ``--factor`` times larger, same chunking.

    python benchmarks/bench_direct_memory.py [--small-gb 2] [--factor 8]
        [--memory-limit 1GB] [--methods ssb] [--dir /tmp/ptyengine-stream]

Data: ``bench_stream.py``'s datasets (uint16 counts, 128² px, 256 scan columns, 16 MiB
chunks of two scan rows; the larger one has ``--factor`` times the rows). Each run is a
fresh process that limits glibc's malloc arenas as the ``ptyengine`` command does; its
peak is its own VmHWM. With ``--memory-limit`` M the methods hold scan size × block
(SSB: block·Sy·Sx·16 bytes ≤ M/4) and put the bright-field stack in a file beyond M/2,
so the peak is set by M, not by the data. Target: large / small ≤ 1.15.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_stream import make_dataset  # noqa: E402

CHILD = """
import json, sys, time
from ptyengine.backend import limit_malloc_arenas
limit_malloc_arenas()
from ptyengine import io
mode, path, limit = sys.argv[1], sys.argv[2], sys.argv[3]
extra = {}
with io.open_dataset(path) as ds:
    raw, scan = ds.data.nbytes, ds.shape[:2]
    t0 = time.perf_counter()
    if mode == "ssb":
        from ptyengine.reconstruct.ssb import ssb
        extra["stack_on_disk"] = ssb(ds, memory_limit=limit).stack_on_disk
    elif mode == "tcbf":
        from ptyengine.reconstruct.tcbf import tcbf
        extra["bin"] = tcbf(ds, memory_limit=limit).bin
    elif mode == "wdd":
        from ptyengine.reconstruct.wdd import wdd
        extra["stack_on_disk"] = wdd(ds, memory_limit=limit).stack_on_disk
    seconds = time.perf_counter() - t0
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")]
print(json.dumps({"mode": mode, "bytes": raw, "scan": scan, "seconds": seconds,
                  "peak_MiB": hwm[0] / 1024, **extra}))
"""


def run(mode: str, path: Path, limit: str) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), limit],
                       capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-gb", type=float, default=2.0, help="raw GB (1e9 bytes)")
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--memory-limit", default="1GB")
    ap.add_argument("--methods", default="ssb")
    ap.add_argument("--dose", type=float, default=5e4, help="e/Å²")
    ap.add_argument("--dir", default="/tmp/ptyengine-stream")
    args = ap.parse_args()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, gb in (("small", args.small_gb), ("large", args.small_gb * args.factor)):
        paths[name] = d / f"{name}_{gb:g}GB_dose{args.dose:g}.zarr"
        made = make_dataset(paths[name], gb, args.dose)
        print(f"{name}: {paths[name].name} {f'written in {made:.0f} s' if made else 'existing'}",
              flush=True)  # fmt: skip
    for mode in args.methods.split(","):
        res = {}
        for name in ("small", "large"):
            r = res[name] = run(mode, paths[name], args.memory_limit)
            more = {k: v for k, v in r.items()
                    if k not in ("mode", "bytes", "scan", "seconds", "peak_MiB")}  # fmt: skip
            print(f"  {mode} {name}: {r['bytes'] / 1e9:.2f} GB, scan {r['scan']}, "
                  f"{r['seconds']:.1f} s, peak RSS {r['peak_MiB']:.0f} MiB {more}", flush=True)
        ratio = res["large"]["peak_MiB"] / res["small"]["peak_MiB"]
        print(f"{mode}: peak memory {args.factor}x data / data = {ratio:.3f} (target ≤ 1.15), "
              f"--memory-limit {args.memory_limit}; {time.strftime('%H:%M')}", flush=True)


if __name__ == "__main__":
    main()
