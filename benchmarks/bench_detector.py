"""Real detectors (issue 14): NCC with the truth of ePIE and ML on turned, transposed and
masked data, against the aligned clean data, on the noise-free MoS2 set of
tests/test_detector.py (whose helpers make the data: exact quarter turns and transposes,
a 37° turn by cubic interpolation of the intensities, 4 dead and 3 hot pixels). Also the
controls that must fail: the rotation's sign flipped, the transpose ignored, and the
probe's aberration angles left unturned. Runs in ~10 s on 2 cores.

    python benchmarks/bench_detector.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from ptyengine import io, physics
from ptyengine.reconstruct import frame
from ptyengine.simulate import simulate

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
import test_detector as T  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mos2.zarr"
        simulate(T.MOS2, str(path))
        with io.open_dataset(path) as ds:
            data, cal = ds.read_rows(0, ds.shape[0]), ds.calibration
            pot, attrs = ds.read_array("ground_truth/potential")
    mos2 = (data, cal, physics.interaction_constant(cal.energy) * pot, attrs["sampling"])

    def row(name, d, c, mask=None):
        e, m = T._both(T._dataset(d, c, mask), mos2)
        print(f"| {name} | {e:.3f} | {m:.3f} |", flush=True)

    print("| data | ePIE NCC | ML NCC |\n|---|---|---|")
    row("aligned", data, cal)
    for q, t in [(1, False), (2, False), (3, False), (0, True), (1, True)]:
        row(f"turned {90 * q}°" + (", transposed" if t else ""), *T._turned(data, cal, q, t))
    d, c = T._turned(data, cal, 1, False)
    row("turned 90°, calibration says −90° (wrong sign)", d, c.replace(rotation=-90.0))
    d, c = T._turned(data, cal, 0, True)
    row("transposed, calibration says not", d, c.replace(transpose=False))
    r = T._rotate_patterns(data, cal, 37.0)
    row("turned 37° (interpolated)", r, cal.replace(rotation=37.0))
    row("turned 37°, calibration says −37°", r, cal.replace(rotation=-37.0))
    bad, mask = T._bad_pixels(data, cal)
    row("4 dead + 3 hot pixels, masked", bad, cal, mask)
    row("4 dead + 3 hot pixels, no mask", bad, cal)
    turn = frame.rotated_aberrations
    frame.rotated_aberrations = lambda ab, theta: dict(ab)
    try:
        row("turned 90°, aberration angles not turned", *T._turned(data, cal, 1, False))
    finally:
        frame.rotated_aberrations = turn


if __name__ == "__main__":
    main()
