"""Peak memory of a simulation does not grow with the size of its output.

Runs the same specimen twice in fresh processes, the second scan 10× larger (10× more
output bytes), and compares their peak resident memory (ru_maxrss). The 4-D output is
written block by block, so the peak should be set by the specimen, the batch and one
block, not by the dataset. The larger output (360 MiB) is above the shard size, so it is
written with the default layout's shard files (chunks streamed into each shard file,
``ptyengine/shards.py``); the smaller one (36 MiB) is plain chunks. Target: the larger
run's peak < 1.1× the smaller one's.

    python benchmarks/bench_memory.py [--rows 16] [--factor 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

CHILD = """
import json, os, resource, sys
from ptyengine import io
from ptyengine.simulate import SimulationParameters, simulate
rows, out = int(sys.argv[1]), sys.argv[2]
p = SimulationParameters(structure="srtio3", zone_axis=(0, 0, 1), field=(15.62, 15.62),
                         thickness=8.0, scan_step=0.25, scan_size=(rows * 0.25, 16.0),
                         max_angle=30.0, detector_pixels=96, dose=100.0)
s = simulate(p, out, rows_per_block=8)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
with io.open_dataset(out) as ds:
    layout = {"chunks": list(ds.data.chunks), "shards": ds.data.shards and list(ds.data.shards)}
files = sum(f != "zarr.json" for _, _, fs in os.walk(os.path.join(out, "data")) for f in fs)
print(json.dumps({"peak_MiB": peak, "scan": s["scan_shape"], "seconds": s["seconds"],
                  "files": files, **layout}))
"""


def run(rows, out):
    r = subprocess.run([sys.executable, "-c", CHILD, str(rows), out], capture_output=True,
                       text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--factor", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        small = run(args.rows, f"{tmp}/small.zarr")
        large = run(args.rows * args.factor, f"{tmp}/large.zarr")
    out_bytes = [s["scan"][0] * s["scan"][1] * 96 * 96 * 4 for s in (small, large)]
    for name, s, b in (("small", small, out_bytes[0]), ("large", large, out_bytes[1])):
        print(f"{name}: scan {s['scan']}, output {b / 2**20:.0f} MiB uncompressed, "
              f"chunks {s['chunks']}, shards {s['shards']} ({s['files']} data files), "
              f"peak RSS {s['peak_MiB']:.0f} MiB, {s['seconds']:.1f} s")
    print(f"output ratio {out_bytes[1] / out_bytes[0]:.1f}x, "
          f"peak-memory ratio {large['peak_MiB'] / small['peak_MiB']:.3f}x (target < 1.1)")


if __name__ == "__main__":
    main()
