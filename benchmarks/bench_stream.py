"""Streaming over large Zarr datasets: iCOM throughput against a bare read loop, and peak
memory of iCOM on a dataset 8× larger than another (issue 6).

Datasets are generated quickly on disk: the patterns of a small simulated scan (SrTiO3,
dose 1000 e/Å²) tiled over a larger scan, with fresh Poisson noise per block (seeded).

    python benchmarks/bench_stream.py --small-gb 0.5 --factor 8 [--dir /tmp/ptyengine-stream]

Throughput is raw (uncompressed) GB of patterns per second; the bare loop only reads and
decompresses the same chunks (``Dataset.iter_row_blocks``) in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = """
import json, resource, sys, time
from ptyengine import io
from ptyengine.reconstruct.icom import icom
path = sys.argv[1]
with io.open_dataset(path) as ds:
    t0 = time.perf_counter(); n = 0
    for _, b in ds.iter_row_blocks():
        n += b.nbytes
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter(); icom(ds); t_icom = time.perf_counter() - t0
print(json.dumps({"bytes": n, "read_s": t_read, "icom_s": t_icom,
                  "peak_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_dataset(path: Path, gigabytes: float, seed: int = 0):
    """A scan of ~``gigabytes`` GB of uint16 patterns tiled from a small simulation."""
    from ptyengine import io, presets
    from ptyengine.simulate import simulate

    if path.exists():
        return
    import dataclasses

    base = path.parent / "base.zarr"
    if not base.exists():
        p = dataclasses.replace(presets.demo()[0][1], detector_pixels=128, dose=None)
        simulate(p, str(base))
    with io.open_dataset(base) as ds:
        clean = np.asarray(ds.read_rows(0, ds.calibration.scan_shape[0]), np.float32)
        cal0 = ds.calibration
    sx, k = clean.shape[1], clean.shape[2]
    row_bytes = sx * k * k * 2
    sy = max(2, int(gigabytes * 1e9 // row_bytes))
    counts = 1000.0 * cal0.scan_step[0] * cal0.scan_step[1]
    cal = cal0.replace(scan_shape=(sy, sx), dose=1000.0)
    rng = np.random.default_rng(seed)
    with io.create_dataset(path, cal, "uint16", overwrite=True) as w:
        rpc = w.chunks[0]
        for r0 in range(0, sy, rpc):
            rows = min(rpc, sy - r0)
            idx = (np.arange(r0, r0 + rows) % clean.shape[0])
            w.write_rows(r0, rng.poisson(clean[idx] * counts).astype(np.uint16))


def measure(path: Path) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-gb", type=float, default=0.5)
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--dir", default="/tmp/ptyengine-stream")
    args = ap.parse_args()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    sizes = {"small": args.small_gb, "large": args.small_gb * args.factor}
    res = {}
    for name, gb in sizes.items():
        path = d / f"{name}_{gb:g}GB.zarr"
        t0 = time.perf_counter()
        make_dataset(path, gb)
        res[name] = measure(path)
        res[name]["make_s"] = time.perf_counter() - t0
        disk = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        m = res[name]
        gb_raw = m["bytes"] / 1e9
        print(f"{name}: {gb_raw:.2f} GB raw ({disk / 1e9:.2f} GB on disk); bare read "
              f"{gb_raw / m['read_s']:.3f} GB/s, iCOM {gb_raw / m['icom_s']:.3f} GB/s "
              f"({m['read_s'] / m['icom_s']:.0%} of the read loop); peak RSS "
              f"{m['peak_MiB']:.0f} MiB", flush=True)
    ratio = res["large"]["peak_MiB"] / res["small"]["peak_MiB"]
    print(f"peak memory ratio large/small: {ratio:.3f} (target < 1.15); machine "
          f"{os.cpu_count()} CPUs; self RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
