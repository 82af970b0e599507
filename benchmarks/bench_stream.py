"""Streaming over large Zarr datasets: iCOM throughput against a bare read loop, and peak
memory of iCOM on a dataset 8× larger than another (issue 6).

    python benchmarks/bench_stream.py --small-gb 2 --factor 8 [--repeats 2] [--dose 5e4]
        [--blosc-threads 0] [--cold] [--arena-max 2] [--dir /tmp/ptyengine-stream]

Data. Counts of a photon-/electron-counting detector: the noise-free patterns of the demo
simulation (SrTiO3 [001], 2 nm, 300 kV, 20 mrad, 26 × 26 positions, 0.3 Å step,
128 × 128 detector pixels to 40 mrad) tiled periodically over a scan of 256 columns and
as many rows as the size needs, with Poisson noise at ``--dose`` e/Å² (default 5·10⁴
e/Å² = 4.4·10³ counts per pattern, i.e. ~0.7 pA at a 1 ms dwell: a typical counting-
detector 4D-STEM scan of a robust crystal), stored as uint16 by ptyengine's own writer
(:func:`ptyengine.io.create_dataset` with its default layout, printed with the results:
~16 MiB chunks of whole scan rows, Blosc zstd-3 + bitshuffle + CRC32C).

Fast, seeded noise. Fresh ``numpy`` Poisson draws cost ~20 ns per pixel, i.e. minutes per
16 GB on 2 cores. Instead a pool of ``POOL`` independent Poisson realisations at HALF the
dose is drawn once for each of the 676 base positions; each stored pattern is the sum of
two different realisations of its position, chosen at random. A sum of two independent
Poisson(λ/2) draws is exactly Poisson(λ), so every pattern has the right per-pixel
statistics; POOL = 12 gives 66 distinct noisy versions of every position. Repeats are
never close enough to help the compressor: Blosc compresses blocks of 128 KiB (here)
independently, and the nearest possible repeat of a noisy pattern is 26 patterns
(832 KiB) away. ``compression_check`` prints the ratio of a block made this way
next to one with fresh Poisson draws, to show that the trick does not change it.

Measurements. Each one runs in a fresh process on the same dataset, in rounds of
``read, icom, read-default`` (``--repeats`` rounds): "read" is the bare loop over exactly the
blocks iCOM reads (``icom.row_blocks``: one chunk per block, ``READ_WORKERS`` threads
reading and decompressing ahead; nothing else), "icom" is ``icom(ds)`` (the same reader,
the moments in the reading threads, then the integration), "read-default" is
``Dataset.iter_row_blocks()`` with its defaults (one reading thread). Throughput is raw
(uncompressed) GB (10⁹ bytes) of patterns per second; the ratio is taken against the
faster of the two read loops. Both use the same Blosc/zarr settings: ``--blosc-threads 0``
is zarr's default (zarr sets ``numcodecs.blosc.use_threads = False``: one Blosc thread per
chunk, chunks decompressed in parallel only by zarr's or our threads); N > 1 turns on
Blosc's own N threads in every process. Peak memory is the process's own VmHWM. The
measured processes limit glibc's malloc arenas to ``--arena-max`` (default 2, what the
``ptyengine`` command sets at start: :func:`ptyengine.backend.limit_malloc_arenas`; 0
leaves glibc's default of 8 per core, whose arenas keep freed chunk buffers). The
page-cache state is printed (``fincore``): datasets just written are cached; ``--cold``
evicts the dataset's files (only these, ``posix_fadvise(DONTNEED)``) before each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

POOL = 12  # noise realisations at half dose per base position
SCAN_COLUMNS = 256

CHILD = """
import json, resource, sys, time
mode, path, blosc_threads, arenas = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if arenas:  # as the ptyengine command does at start
    from ptyengine.backend import limit_malloc_arenas
    assert limit_malloc_arenas(arenas)
import numcodecs.blosc
import zarr.codecs  # zarr sets numcodecs.blosc.use_threads = False on import
if blosc_threads > 1:
    numcodecs.blosc.use_threads = True
    numcodecs.blosc.set_nthreads(blosc_threads)
from ptyengine import io
from ptyengine.reconstruct.icom import icom, row_blocks
with io.open_dataset(path) as ds:
    raw = ds.data.nbytes
    t0 = time.perf_counter()
    if mode == "icom":
        icom(ds)
    else:
        n = 0
        for _, b in (row_blocks(ds) if mode == "read" else ds.iter_row_blocks()):
            n += b.nbytes
        assert n == raw
    seconds = time.perf_counter() - t0
    layout = {"chunks": ds.data.chunks, "shards": ds.data.shards}
# VmHWM: this process's own peak RSS (ru_maxrss would include the parent's RSS at fork)
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")]
print(json.dumps({"mode": mode, "bytes": raw, "seconds": seconds, "layout": layout,
                  "peak_MiB": (hwm or [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss])[0]
                  / 1024}))
"""
#: one repeat: iCOM between two reading loops, in fresh processes. "read": the blocks iCOM
#: reads (icom.row_blocks: one chunk per block, READ_WORKERS decompressing ahead);
#: "read-default": ``Dataset.iter_row_blocks()`` with its defaults (one stored chunk or
#: shard per block, one reader thread)
MODES = ("read", "icom", "read-default")


# ------------------------------------------------------------------ data


def base_patterns(d: Path):
    """(clean (26, 26, 128, 128) float32 patterns summing to ~1, calibration) of the demo."""
    import dataclasses

    from ptyengine import io, presets
    from ptyengine.simulate import simulate

    base = d / "base.zarr"
    if not base.exists():
        p = dataclasses.replace(presets.demo()[0][1], detector_pixels=128, dose=None)
        simulate(p, str(base))
    with io.open_dataset(base) as ds:
        return np.asarray(ds.read_rows(0, ds.shape[0]), np.float32), ds.calibration


def noise_pool(clean, counts: float, rng) -> np.ndarray:
    """(POOL, *clean.shape) uint16 Poisson draws at half of ``counts`` per pattern."""
    return np.stack([rng.poisson(clean * (counts / 2)).astype(np.uint16) for _ in range(POOL)])


def noisy_rows(pool, rows, rng) -> np.ndarray:
    """(len(rows), SCAN_COLUMNS, Ky, Kx) uint16 patterns: for each, the sum of two different
    pool realisations of its base position (exactly Poisson at the full dose)."""
    by, bx = np.meshgrid(np.asarray(rows) % pool.shape[1],
                         np.arange(SCAN_COLUMNS) % pool.shape[2], indexing="ij")  # fmt: skip
    k1 = rng.integers(0, POOL, by.shape)
    k2 = (k1 + rng.integers(1, POOL, by.shape)) % POOL
    return pool[k1, by, bx] + pool[k2, by, bx]


def make_dataset(path: Path, gigabytes: float, dose: float, seed: int = 0) -> float:
    """Write ~``gigabytes`` GB (raw) of uint16 counts to ``path`` (kept if it exists);
    returns the seconds it took (0 if kept)."""
    from ptyengine import io

    if path.exists():
        return 0.0
    t0 = time.perf_counter()
    clean, cal0 = base_patterns(path.parent)
    rng = np.random.default_rng(seed)
    pool = noise_pool(clean, dose * cal0.scan_step[0] * cal0.scan_step[1], rng)
    row_bytes = SCAN_COLUMNS * clean.shape[2] * clean.shape[3] * 2
    sy = max(2, round(gigabytes * 1e9 / row_bytes))
    cal = cal0.replace(scan_shape=(sy, SCAN_COLUMNS), dose=dose)
    meta = {"benchmark": "bench_stream", "dose": dose, "seed": seed, "pool": POOL}
    with io.create_dataset(path, cal, "uint16", overwrite=True, metadata=meta) as w:
        rpc = w.chunks[0]
        for r0 in range(0, sy, rpc):
            w.write_rows(r0, noisy_rows(pool, range(r0, min(r0 + rpc, sy)), rng))
    return time.perf_counter() - t0


def compression_check(d: Path, dose: float) -> tuple[float, float]:
    """Compression ratios (pool pairs, fresh Poisson) of one 16 MiB block, same codecs."""
    from ptyengine.io import storage_layout

    clean, cal = base_patterns(d)
    counts = dose * cal.scan_step[0] * cal.scan_step[1]
    rng = np.random.default_rng(1)
    pooled = noisy_rows(noise_pool(clean, counts, rng), range(2), rng)
    by, bx = np.meshgrid(np.arange(2) % 26, np.arange(SCAN_COLUMNS) % 26, indexing="ij")
    fresh = rng.poisson(clean[by, bx] * counts).astype(np.uint16)
    blosc = storage_layout(pooled.shape, pooled.dtype).zarr_compressors[0]._blosc_codec
    return tuple(b.nbytes / len(blosc.encode(np.ascontiguousarray(b)))
                 for b in (pooled, fresh))  # fmt: skip


# ------------------------------------------------------------------ measurement


def warm_kernel_cache(d: Path) -> None:
    """Compile iCOM's numba kernels for uint16 once, so that no measurement includes the
    one-off compilation (each still loads them from numba's on-disk cache, ~0.1 s)."""
    from ptyengine.dataset import InMemoryDataset
    from ptyengine.reconstruct.icom import icom

    clean, cal = base_patterns(d)
    icom(InMemoryDataset(np.ones((3, 3, *clean.shape[2:]), np.uint16),
                         cal.replace(scan_shape=(3, 3))))  # fmt: skip


def files_of(path: Path) -> list[Path]:
    return [f for f in path.rglob("*") if f.is_file()]


def evict(path: Path) -> None:
    """Drop this dataset's files (only these) from the page cache."""
    for f in files_of(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def cached_fraction(path: Path) -> float | None:
    """Fraction of the dataset's bytes in the page cache (``fincore``), None if unknown."""
    files = [str(f) for f in files_of(path)]
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw",
                              "--output", "RES,SIZE", *files], capture_output=True,
                             text=True, check=True).stdout.split()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    res, size = np.array(out, dtype=np.int64).reshape(-1, 2).sum(axis=0)
    return float(res / max(size, 1))


def measure(path: Path, mode: str, args) -> dict:
    """One measurement in a fresh process (settings from the command line ``args``)."""
    if args.cold:
        evict(path)
    cached = cached_fraction(path)
    r = subprocess.run([sys.executable, "-c", CHILD, mode, str(path), str(args.blosc_threads),
                        str(args.arena_max)], capture_output=True, text=True,
                       check=True)  # fmt: skip
    m = json.loads(r.stdout.strip().splitlines()[-1])
    m["cached_before"] = cached
    m["GBps"] = m["bytes"] / 1e9 / m["seconds"]
    return m


def run_size(path: Path, args) -> dict:
    """Alternating measurements on one dataset; GB/s lists per mode, iCOM's peak RSS."""
    runs = [measure(path, mode, args) for _ in range(args.repeats) for mode in MODES]
    for m in runs:
        c = "?" if m["cached_before"] is None else f"{m['cached_before']:.0%}"
        print(f"  {m['mode']:12s} {m['GBps']:.3f} GB/s ({m['seconds']:5.1f} s), peak RSS "
              f"{m['peak_MiB']:5.0f} MiB, page cache before {c}", flush=True)
    out = {mode: [m["GBps"] for m in runs if m["mode"] == mode] for mode in MODES}
    out["peak_MiB"] = max(m["peak_MiB"] for m in runs if m["mode"] == "icom")
    out["bytes"], out["layout"] = runs[0]["bytes"], runs[0]["layout"]
    return out


def fmt(values) -> str:
    return ", ".join(f"{v:.3f}" for v in values)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small-gb", type=float, default=2.0, help="raw GB (1e9 bytes)")
    ap.add_argument("--factor", type=int, default=8)
    ap.add_argument("--dose", type=float, default=5e4, help="e/Å²")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of all modes per size")
    ap.add_argument("--blosc-threads", type=int, default=0,
                    help="0: zarr's default (1 per chunk); N > 1: Blosc's own N threads")
    ap.add_argument("--cold", action="store_true", help="evict the files before each run")
    ap.add_argument("--arena-max", type=int, default=2,
                    help="glibc malloc arenas of the measured processes, set as the ptyengine "
                         "command sets them (backend.limit_malloc_arenas); 0: glibc's default")
    ap.add_argument("--dir", default="/tmp/ptyengine-stream")
    args = ap.parse_args()
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    warm_kernel_cache(d)
    pooled, fresh = compression_check(d, args.dose)
    print(f"dose {args.dose:g} e/Å²; one 16 MiB block compresses {pooled:.1f}x with pooled "
          f"noise, {fresh:.1f}x with fresh Poisson draws", flush=True)
    res = {}
    for name, gb in (("small", args.small_gb), ("large", args.small_gb * args.factor)):
        path = d / f"{name}_{gb:g}GB_dose{args.dose:g}.zarr"
        made = make_dataset(path, gb, args.dose)
        disk = sum(f.stat().st_size for f in files_of(path))
        how = f"written in {made:.0f} s" if made else "existing"
        print(f"{name}: {path.name}, {how}, {disk / 1e9:.2f} GB on disk", flush=True)
        r = res[name] = run_size(path, args)
        best_read = max(r["read"] + r["read-default"])
        print(f"{name}: {r['bytes'] / 1e9:.2f} GB raw, compression {r['bytes'] / disk:.1f}x, "
              f"{r['layout']}; GB/s read {fmt(r['read'])}, read-default "
              f"{fmt(r['read-default'])}, iCOM {fmt(r['icom'])}; iCOM / best read "
              f"{min(r['icom']) / best_read:.0%}..{max(r['icom']) / best_read:.0%} "
              f"(target ≥ 80 %); iCOM peak RSS {r['peak_MiB']:.0f} MiB", flush=True)
    mem = res["large"]["peak_MiB"] / res["small"]["peak_MiB"]
    print(f"iCOM peak memory large/small: {mem:.3f} (target < 1.15); {os.cpu_count()} CPUs; "
          f"blosc threads {args.blosc_threads or 'zarr default'}; malloc arenas "
          f"{args.arena_max or 'glibc default'}; "
          f"{'cold' if args.cold else 'warm'} page cache")


if __name__ == "__main__":
    main()
