"""``ptyengine convert``: every input format on a small file written by the format's own
writer or by a generator that follows the format's layout byte for byte (Merlin MIB,
EMPAD, DM4, Arina), cropping and binning, resumption after an interruption and after a
real kill, checksum verification, and one-line errors."""

import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import zarr
from cli_helpers import run

from ptyengine import convert as cv
from ptyengine import io
from ptyengine.calibration import Calibration
from ptyengine.errors import PtyengineError

GIVEN = {"energy": 300e3, "semiangle": 20.0, "scan_step": (0.5, 0.5), "dk": (0.3, 0.3),
         "detector_center": (7.0, 8.0)}  # fmt: skip


def counts(shape, seed=0, high=4000, dtype=np.uint16):
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


def read(path):
    with io.open_dataset(path) as ds:
        return ds.read_rows(0, ds.shape[0]), ds.calibration, ds.metadata


def convert(path, out, given=GIVEN, **kwargs):
    source = cv.open_source(path, **{k: kwargs.pop(k) for k in
                                     ("format", "shape", "dtype", "offset", "order",
                                      "scan_shape") if k in kwargs})  # fmt: skip
    try:
        return cv.convert(source, out, dict(given), **kwargs)
    finally:
        source.close()


# ------------------------------------------------------------------ format generators
def write_mib(path: Path, frames: np.ndarray, per_line: int, hdr: bool = True) -> None:
    """Merlin/Quantum Detectors MIB: each frame is a 384-byte ASCII header (the layout of
    a Merlin 1x1 U16 frame header, zero padded) and big-endian pixels; the time stamps jump
    at each scan line (fly-back), and the .hdr acquisition header gives the scan."""
    n, ky, kx = frames.shape
    with open(path, "wb") as f:
        t = 0.0
        for i, frame in enumerate(frames):
            t += 0.001 + (0.01 if i and i % per_line == 0 else 0.0)
            s = f"{t:09.6f}"
            head = (f"MQ1,{i + 1:06d},00384,01,{kx:04d},{ky:04d},U16,   1x1,01,"
                    f"2024-05-18 16:51:{s},0.001000,0,0,0,1.200000E+2,5.110000E+2,"
                    "0.000000E+0,0.000000E+0,0.000000E+0,0.000000E+0,0.000000E+0,"
                    "0.000000E+0,3RX,175,511,000,000,000,000,000,000,125,255,125,125,100,"
                    "100,082,100,087,030,128,004,255,129,128,176,168,511,511,MQ1A,"
                    f"2024-05-18T14:51:{s}000Z,1000000ns,12,")  # fmt: skip
            f.write(head.encode("ascii").ljust(384, b"\0") + frame.astype(">u2").tobytes())
    if hdr:
        path.with_suffix(".hdr").write_text(
            "HDR,\t\nTime and Date Stamp (day, mnth, yr, hr, min, s):\t18/05/2024 16:51:49\n"
            "Chip ID:\tW530_L8\nAssembly Size (NX1, 2X2):\t   1x1\nCounter Depth (number):\t12\n"
            f"Frames in Acquisition (Number):\t{n}\nFrames per Trigger (Number):\t{per_line}\n"
            "End\t")  # fmt: skip


def write_empad(folder: Path, data: np.ndarray) -> Path:
    """EMPAD: float32 frames of 130 × 128 (the last two rows a footer) in
    scan_x{Sx}_y{Sy}.raw, and the acquisition XML that names it (scan step 1 nm,
    detector pixel 0.2 1/nm with k = 0 at pixel 64)."""
    sy, sx = data.shape[:2]
    record = np.full((sy, sx, 130, 128), -7.0, np.float32)
    record[:, :, :128] = data
    raw = folder / f"scan_x{sx}_y{sy}.raw"
    record.tofile(raw)
    xml = folder / "acquisition.xml"
    xml.write_text(
        f'<root><raw_file filename="{raw.name}"/><pix_x>{sx}</pix_x><pix_y>{sy}</pix_y>'
        f"<iom_measurements><full_scan_field_of_view><x>{sx}e-9</x><y>{sx}e-9</y>"
        "<scale_factor>1</scale_factor></full_scan_field_of_view>"
        "<calibrated_pixelsize>2e-10</calibrated_pixelsize></iom_measurements></root>")
    return xml


def _dm_tag(kind: int, name: str, body: bytes) -> bytes:  # DM4: id, name, size, body
    return struct.pack(">bh", kind, len(name)) + name.encode() + struct.pack(">q", len(body)) + body


def _dm_group(name, tags):  # sorted, open, number of tags, tags
    return _dm_tag(20, name, struct.pack(">bbq", 0, 1, len(tags)) + b"".join(tags))


def _dm_data(name, info, payload):  # "%%%%", info array length, info array, value(s)
    return _dm_tag(21, name, b"%%%%" + struct.pack(f">{len(info) + 1}q", len(info), *info)
                   + payload)  # fmt: skip


def _dm_num(name, code, fmt, value):  # simple types: 3 long, 5 ulong, 6 float, 7 double
    return _dm_data(name, [code], struct.pack("<" + fmt, value))


def _dm_text(name, text):  # strings: arrays (20) of UTF-16 code units (4)
    return _dm_data(name, [20, 4, len(text)], np.array([ord(c) for c in text], "<u2").tobytes())


def write_dm4(path: Path, data: np.ndarray, scales, units, origins, voltage: float) -> None:
    """A DigitalMicrograph 4 file (big-endian tag structure, little-endian values) holding
    one uint16 image (DataType 10) with its dimension calibrations and the microscope
    voltage. Checked during development to read identically with ncempy's DM reader."""
    dims = [_dm_group("", [_dm_num("Origin", 6, "f", o), _dm_num("Scale", 6, "f", s),
                           _dm_text("Units", u)])
            for s, u, o in list(zip(scales, units, origins, strict=True))[::-1]]  # x first
    image_data = _dm_group("ImageData", [
        _dm_group("Calibrations", [
            _dm_group("Brightness", [_dm_num("Origin", 6, "f", 0.0),
                                     _dm_num("Scale", 6, "f", 1.0), _dm_text("Units", "")]),
            _dm_group("Dimension", dims)]),
        _dm_data("Data", [20, 4, data.size], data.astype("<u2").tobytes()),
        _dm_num("DataType", 3, "i", 10),
        _dm_group("Dimensions", [_dm_num("", 5, "I", n) for n in data.shape[::-1]]),
        _dm_num("PixelDepth", 5, "I", 2)])  # fmt: skip
    tags = _dm_group("ImageTags", [_dm_group("Microscope Info", [
        _dm_num("Voltage", 7, "d", voltage), _dm_text("Illumination Mode", "STEM")])])
    root = struct.pack(">bbq", 1, 0, 1) + _dm_group(
        "ImageList", [_dm_group("", [image_data, tags, _dm_text("Name", "4D-STEM")])])
    path.write_bytes(struct.pack(">iqi", 4, len(root) + 8, 1) + root + b"\0" * 8)


def write_arina(folder: Path, frames: np.ndarray, per_file: int) -> Path:
    """Dectris Arina: NAME_master.h5 links /entry/data/data_00000k to NAME_data_00000k.h5
    (/entry/data/data, frames bitshuffle-LZ4 compressed as the detector writes them)."""
    import h5py
    import hdf5plugin

    master = folder / "scan_master.h5"
    with h5py.File(master, "w") as m:
        for i, a in enumerate(range(0, len(frames), per_file)):
            name = f"scan_data_{i + 1:06d}.h5"
            with h5py.File(folder / name, "w") as f:
                f.create_dataset("entry/data/data", data=frames[a:a + per_file],
                                 chunks=(1, *frames.shape[1:]),
                                 **hdf5plugin.Bitshuffle(cname="lz4"))  # fmt: skip
            m[f"entry/data/data_{i + 1:06d}"] = h5py.ExternalLink(name, "entry/data/data")
        m["entry/instrument/beam/incident_wavelength"] = 0.0196875  # Å, 300 kV
    return master


# ------------------------------------------------------------------ npy and raw binary
def test_npy_round_trip(tmp_path):
    data = counts((7, 5, 16, 18))
    np.save(tmp_path / "a.npy", data)
    given = {**GIVEN, "rotation": 12.5, "transpose": True, "scan_step": (0.5, 0.25)}
    rep = convert(tmp_path / "a.npy", tmp_path / "a.zarr", given, rows_per_chunk=3)
    got, cal, meta = read(tmp_path / "a.zarr")
    assert got.dtype == np.uint16 and np.array_equal(got, data)
    dose = data.sum() / (7 * 5) / (0.5 * 0.25)  # integer counts: e/Å² inferred
    assert cal == Calibration(energy=300e3, semiangle=20.0, scan_shape=(7, 5),
                              scan_step=(0.5, 0.25), detector_shape=(16, 18), dk=(0.3, 0.3),
                              detector_center=(7.0, 8.0), rotation=12.5, transpose=True,
                              dose=dose)
    assert rep.rows_per_chunk == 3 and len(meta["chunk_crc32"]) == 3
    assert rep.verified.startswith("3 chunks") and "every CRC32 matches" in rep.verified
    assert meta["conversion"]["center_from"] == "given"


@pytest.mark.parametrize("dtype, offset, order", [("uint16", 0, "C"), (">f4", 100, "C"),
                                                  ("uint8", 7, "F")])  # fmt: skip
def test_raw_round_trip(tmp_path, dtype, offset, order):
    data = counts((4, 3, 10, 12), high=200).astype(dtype)
    raw = tmp_path / "scan.bin"
    raw.write_bytes(b"H" * offset + data.tobytes(order=order))
    convert(raw, tmp_path / "r.zarr", shape=data.shape, dtype=dtype, offset=offset, order=order)
    got, cal, _ = read(tmp_path / "r.zarr")
    assert got.dtype == np.dtype(dtype).newbyteorder("=") and np.array_equal(got, data)
    assert cal.detector_center == (7.0, 8.0) and cal.dk == (0.3, 0.3)


def test_crop_and_bin(tmp_path):
    data = counts((3, 4, 20, 22), high=65535)
    np.save(tmp_path / "a.npy", data)
    rep = convert(tmp_path / "a.npy", tmp_path / "b.zarr", crop=(2, 19, 3, 22), binning=3)
    got, cal, _ = read(tmp_path / "b.zarr")
    # rows 2..19 -> 17 -> 5 binned rows (2 dropped), columns 3..22 -> 19 -> 6 (1 dropped)
    ref = data[:, :, 2:17, 3:21].astype(np.uint64).reshape(3, 4, 5, 3, 6, 3).sum(axis=(3, 5))
    assert got.dtype == np.uint32 and got.shape == (3, 4, 5, 6) and np.array_equal(got, ref)
    assert cal.detector_shape == (5, 6) and cal.dk == pytest.approx((0.9, 0.9))
    # input pixel 7 = output (7 - 2 - 1) / 3: the middle of a 3-pixel bin maps to its centre
    assert cal.detector_center == pytest.approx(((7 - 2 - 1) / 3, (8 - 3 - 1) / 3))
    assert any("trailing pixels dropped" in n for n in rep.notes)
    floats = data.astype(np.float32) / 7
    np.save(tmp_path / "f.npy", floats)
    convert(tmp_path / "f.npy", tmp_path / "f.zarr", binning=2)
    got, cal, _ = read(tmp_path / "f.zarr")
    ref = floats.astype(np.float64).reshape(3, 4, 10, 2, 11, 2).sum(axis=(3, 5))
    assert got.dtype == np.float32 and np.allclose(got, ref, rtol=1e-6)
    assert cal.detector_center == pytest.approx((3.25, 3.75))


def test_default_centre_is_the_mean_pattern_centre_of_mass(tmp_path):
    data = np.zeros((4, 4, 32, 32), np.uint16)
    data[:, :, 10:15, 19:24] = 50  # a disk centred on (12, 21)
    np.save(tmp_path / "a.npy", data)
    given = {k: v for k, v in GIVEN.items() if k != "detector_center"}
    convert(tmp_path / "a.npy", tmp_path / "a.zarr", given, crop="2:30,1:31", binning=2)
    _, cal, meta = read(tmp_path / "a.zarr")
    assert cal.detector_center == pytest.approx(((12 - 2 - 0.5) / 2, (21 - 1 - 0.5) / 2))
    assert meta["conversion"]["center_from"] == "mean-pattern COM"


def test_mask_is_cropped_binned_and_kept_out_of_the_centre(tmp_path):
    """convert --mask (input pixels): stored as detector_mask, cropped and binned like the
    data (a binned pixel counts only if all its input pixels do), and its hot pixel is
    left out of the default centre (the mean pattern's centre of mass)."""
    data = np.zeros((4, 4, 32, 32), np.uint16)
    data[:, :, 10:15, 19:24] = 50  # a disk centred on (12, 21)
    data[:, :, 27, 4] = 60000  # a hot pixel
    np.save(tmp_path / "a.npy", data)
    mask = np.ones((32, 32), bool)
    mask[27, 4] = mask[11, 20] = False
    given = {k: v for k, v in GIVEN.items() if k != "detector_center"}
    convert(tmp_path / "a.npy", tmp_path / "a.zarr", given, crop="2:30,1:31", binning=2,
            mask=mask)
    with io.open_dataset(tmp_path / "a.zarr") as ds:
        stored, cal = ds.read_array("detector_mask")[0], ds.calibration
    assert stored.shape == (14, 15) and stored.dtype == np.uint8
    # input (11, 20) -> output ((11 - 2) // 2, (20 - 1) // 2); (27, 4) -> (12, 1)
    assert set(zip(*np.nonzero(stored == 0), strict=True)) == {(4, 9), (12, 1)}
    assert cal.detector_center == pytest.approx(((12 - 2 - 0.5) / 2, (21 - 1 - 0.5) / 2),
                                                abs=0.05)  # fmt: skip
    convert(tmp_path / "a.npy", tmp_path / "b.zarr", given, crop="2:30,1:31", binning=2)
    assert read(tmp_path / "b.zarr")[1].detector_center[0] > 6.0  # pulled by the hot pixel


# ------------------------------------------------------------------ rosettasciio formats
rsciio = pytest.importorskip  # each format test skips cleanly without its reader


def test_mib(tmp_path):
    rsciio("rsciio")
    data = counts((4, 5, 12, 16))
    write_mib(tmp_path / "scan.mib", data.reshape(-1, 12, 16), per_line=5)
    convert(tmp_path / "scan.mib", tmp_path / "m.zarr")
    got, cal, meta = read(tmp_path / "m.zarr")
    # rosettasciio flips Merlin frames vertically (its orientation is kept)
    assert np.array_equal(got, data[:, :, ::-1]) and cal.scan_shape == (4, 5)
    assert [Path(f[0]).suffix for f in meta["source"]["files"]] == [".mib", ".hdr"]
    # without the .hdr: the scan from --scan-shape (the time stamps would also tell)
    os.remove(tmp_path / "scan.hdr")
    convert(tmp_path / "scan.mib", tmp_path / "m2.zarr", scan_shape=(2, 10))
    assert np.array_equal(read(tmp_path / "m2.zarr")[0], data[:, :, ::-1].reshape(2, 10, 12, 16))


@pytest.mark.parametrize("entry", ["acquisition.xml", "scan_x4_y3.raw"])
def test_empad(tmp_path, entry):
    rsciio("rsciio")
    data = np.random.default_rng(1).normal(5, 1, (3, 4, 128, 128)).astype(np.float32)
    write_empad(tmp_path, data)
    given = {"energy": 300e3, "semiangle": 20.0}
    rep = convert(tmp_path / entry, tmp_path / "e.zarr", given, binning=2)
    got, cal, _ = read(tmp_path / "e.zarr")
    ref = data.astype(np.float64).reshape(3, 4, 64, 2, 64, 2).sum(axis=(3, 5))
    assert np.allclose(got, ref, rtol=1e-6) and got.shape == (3, 4, 64, 64)
    # from the XML: 1 nm scan step, 0.2 1/nm pixels, k = 0 at pixel 64 (then binned by 2)
    assert cal.scan_step == pytest.approx((10.0, 10.0))
    assert cal.dk == pytest.approx((0.04, 0.04)) and cal.detector_center == (31.75, 31.75)
    assert [n for n in rep.notes if "bright-field disc" not in n] == []
    with open(tmp_path / "scan_x4_y3.raw", "r+b") as f:  # an acquisition cut short
        f.truncate(1000)
    with pytest.raises(PtyengineError, match="needs 798720 bytes; the file has 1000 bytes"):
        cv.open_source(tmp_path / entry)


def test_dm4(tmp_path):
    rsciio("rsciio")
    data = counts((3, 4, 10, 12), seed=3)
    write_dm4(tmp_path / "cube.dm4", data, [0.05, 0.05, 3.0, 3.0], ["nm", "nm", "1/nm", "1/nm"],
              [0, 0, 5, 6], voltage=200e3)  # fmt: skip
    convert(tmp_path / "cube.dm4", tmp_path / "d.zarr", {"semiangle": 25.0})
    got, cal, _ = read(tmp_path / "d.zarr")
    assert np.array_equal(got, data)
    assert cal.energy == 200e3 and cal.semiangle == 25.0
    assert cal.scan_step == pytest.approx((0.5, 0.5)) and cal.dk == pytest.approx((0.3, 0.3))
    assert cal.detector_center == pytest.approx((5.0, 6.0))
    rep = convert(tmp_path / "cube.dm4", tmp_path / "e.zarr", {"semiangle": 25.0, "energy": 3e5})
    assert read(tmp_path / "e.zarr")[1].energy == 3e5
    assert rep.notes[0] == "energy 300000.0 given: the file's 200000.0 is not used"


def test_emd_ncem(tmp_path):
    rsciio("rsciio")
    from rsciio.emd import file_writer

    data = counts((3, 4, 10, 12), seed=4)
    axes = [dict(name=n, size=s, scale=sc, offset=o, units=u, navigate=nav)
            for n, s, sc, o, u, nav in [("y", 3, 0.05, 0, "nm", True),
                                        ("x", 4, 0.05, 0, "nm", True),
                                        ("ky", 10, 2.0, -10.0, "1/nm", False),
                                        ("kx", 12, 2.0, -12.0, "1/nm", False)]]  # fmt: skip
    file_writer(str(tmp_path / "cube.emd"), {"data": data, "axes": axes, "original_metadata": {},
                                             "metadata": {"General": {"title": "cube"},
                                                          "Signal": {}}})  # fmt: skip
    convert(tmp_path / "cube.emd", tmp_path / "n.zarr", {"energy": 80e3, "semiangle": 30.0})
    got, cal, _ = read(tmp_path / "n.zarr")
    assert np.array_equal(got, data) and cal.scan_step == pytest.approx((0.5, 0.5))
    assert cal.dk == pytest.approx((0.2, 0.2)) and cal.detector_center == pytest.approx((5, 6))


def test_py4dstem_emd(tmp_path):
    rsciio("rsciio")
    emdfile = pytest.importorskip("emdfile")  # py4DSTEM's own EMD 1.0 writer
    data = counts((3, 4, 10, 12), seed=5)
    cube = emdfile.Array(data=data, name="datacube", units="pixel intensity",
                         dim_names=["Rx", "Ry", "Qx", "Qy"],
                         dims=[np.array([0, 0.5]), np.array([0, 0.5]), np.array([0, 0.3]),
                               np.array([0, 0.3])], dim_units=["A", "A", "A^-1", "A^-1"])
    root = emdfile.Root(name="4DSTEM")
    root.tree(cube)
    emdfile.save(str(tmp_path / "cube.h5"), root, mode="o")
    rep = convert(tmp_path / "cube.h5", tmp_path / "p.zarr", {"energy": 300e3, "semiangle": 20,
                                                              "detector_center": (5, 6)})
    got, cal, meta = read(tmp_path / "p.zarr")
    assert meta["source"]["format"] == "emd" and rep.dtype == "uint16"
    assert np.array_equal(got, data) and cal.scan_step == pytest.approx((0.5, 0.5))
    assert cal.dk == pytest.approx((0.3, 0.3))


def test_arina(tmp_path):
    pytest.importorskip("hdf5plugin")
    frames = counts((16, 10, 10), seed=6, high=50)
    master = write_arina(tmp_path, frames, per_file=10)
    given = {k: v for k, v in GIVEN.items() if k != "energy"}
    convert(master, tmp_path / "a.zarr", given, rows_per_chunk=1)
    got, cal, _ = read(tmp_path / "a.zarr")
    assert np.array_equal(got, frames.reshape(4, 4, 10, 10))  # square scan by default
    assert cal.energy == pytest.approx(300e3, rel=1e-5)  # from the wavelength
    convert(master, tmp_path / "b.zarr", given, scan_shape=(2, 8))
    assert np.array_equal(read(tmp_path / "b.zarr")[0], frames.reshape(2, 8, 10, 10))


# ------------------------------------------------------------------ interruption
class Stop(Exception):
    pass


def test_interrupted_conversion_resumes_to_the_same_dataset(tmp_path):
    data = counts((9, 4, 16, 16))
    np.save(tmp_path / "a.npy", data)
    convert(tmp_path / "a.npy", tmp_path / "ref.zarr", crop="1:15,1:15", binning=2,
            rows_per_chunk=2)  # fmt: skip
    calls = []

    def stop_after_two_chunks(n):
        calls.append(n)
        if len(calls) == 2:
            raise Stop

    out = tmp_path / "out.zarr"
    with pytest.raises(Stop):
        convert(tmp_path / "a.npy", out, crop="1:15,1:15", binning=2, rows_per_chunk=2,
                progress=stop_after_two_chunks)  # fmt: skip
    partial = Path(str(out) + ".partial")
    with io.open_dataset(partial, allow_incomplete=True) as ds:
        assert ds.rows_written == 4 and len(ds.metadata["chunk_crc32"]) == 2
    first = partial / "data" / "c" / "0" / "0" / "0" / "0"
    stamp = first.stat().st_mtime_ns
    done = []
    rep = convert(tmp_path / "a.npy", out, crop="1:15,1:15", binning=2, rows_per_chunk=2,
                  resume=True, progress=done.append)  # fmt: skip
    assert rep.resumed_at == 4 and done == [4, 2, 2, 1]
    assert (out / "data" / "c" / "0" / "0" / "0" / "0").stat().st_mtime_ns == stamp  # not rewritten
    (a, cal_a, meta_a), (b, cal_b, meta_b) = read(out), read(tmp_path / "ref.zarr")
    assert np.array_equal(a, b) and cal_a == cal_b
    assert meta_a["chunk_crc32"] == meta_b["chunk_crc32"]


def test_killed_conversion_resumes(tmp_path):
    data = counts((12, 3, 10, 10))
    np.save(tmp_path / "a.npy", data)
    script = textwrap.dedent(f"""
        import os, signal
        from ptyengine import convert as cv
        src, seen = cv.open_source({str(tmp_path / "a.npy")!r}), []
        def progress(n):
            seen.append(n)
            if len(seen) == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        cv.convert(src, {str(tmp_path / "k.zarr")!r}, {GIVEN!r}, rows_per_chunk=2,
                   progress=progress)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    rep = convert(tmp_path / "a.npy", tmp_path / "k.zarr", rows_per_chunk=2, resume=True)
    assert rep.resumed_at == 6 and rep.verified
    got, cal, _ = read(tmp_path / "k.zarr")
    assert np.array_equal(got, data) and cal.detector_center == (7.0, 8.0)


def test_changed_options_start_afresh(tmp_path):
    np.save(tmp_path / "a.npy", counts((6, 2, 10, 10)))
    with pytest.raises(Stop):
        convert(tmp_path / "a.npy", tmp_path / "o.zarr", rows_per_chunk=2,
                progress=lambda n: (_ for _ in ()).throw(Stop))  # fmt: skip
    rep = convert(tmp_path / "a.npy", tmp_path / "o.zarr", rows_per_chunk=2, resume=True,
                  crop="0:9,0:9")  # fmt: skip
    assert rep.resumed_at == 0 and any("fingerprint differs" in n for n in rep.notes)


# ------------------------------------------------------------------ verification, CLI, errors
def test_verification_catches_a_chunk_that_differs(tmp_path):
    np.save(tmp_path / "a.npy", counts((4, 2, 10, 10)))
    convert(tmp_path / "a.npy", tmp_path / "v.zarr", rows_per_chunk=2)
    root = zarr.open_group(str(tmp_path / "v.zarr"), mode="r+")
    root["data"][3, 1, 2, 2] += 1  # a change that every codec accepts
    with pytest.raises(PtyengineError, match=r"scan rows 2:4 read back with CRC32"):
        cv.verify(tmp_path / "v.zarr")
    attrs = dict(root.attrs["ptyengine"])
    attrs["metadata"] = {k: v for k, v in attrs["metadata"].items() if k != "chunk_crc32"}
    root.attrs["ptyengine"] = attrs
    with pytest.raises(PtyengineError, match="no chunk checksums"):
        cv.verify(tmp_path / "v.zarr")


def test_cli(tmp_path, capsys, monkeypatch):
    data = counts((5, 4, 16, 16))
    np.save(tmp_path / "a.npy", data)
    monkeypatch.setenv("PTYENGINE_PROGRESS", "1")
    code, _, err = run(capsys, "convert", tmp_path / "a.npy", "-o", tmp_path / "c.zarr",
                       "--energy", "200", "--semiangle", "25", "--scan-step", "0.4,0.3",
                       "--detector-angle", "4", "--center", "8,7.5", "--crop", "0:16,0:16",
                       "--bin", "2", "--rotation", "-3")  # fmt: skip
    assert code == 0, err
    assert "verified: 1 chunks" in err and "MB/s" in err and "convert" in err
    got, cal, _ = read(tmp_path / "c.zarr")
    assert got.shape == (5, 4, 8, 8) and cal.energy == 200e3 and cal.rotation == -3
    assert cal.scan_step == (0.4, 0.3) and cal.detector_center == (3.75, 3.5)
    assert cal.detector_angle_per_pixel == pytest.approx((8.0, 8.0))
    code, _, err = run(capsys, "convert", tmp_path / "a.npy", "-o", tmp_path / "c.zarr",
                       "--energy", "200", "--semiangle", "25", "--scan-step", "0.4",
                       "--dk", "0.15", "--overwrite", "--no-verify")  # fmt: skip
    assert code == 0 and "verification skipped" in err
    meta = json.loads((tmp_path / "c.zarr" / "zarr.json").read_text())["attributes"]
    assert meta["ptyengine"]["calibration"]["dk"] == [0.15, 0.15]


@pytest.mark.parametrize("case, expect", [
    ("no_energy", "calibration field 'energy' is missing (give --energy (kV))"),
    ("no_dk", "calibration field 'dk' is missing (give --dk (1/Å per pixel) or "
              "--detector-angle (mrad per pixel))"),
    ("raw_size", "shape (4, 3, 10, 11) of uint16 at offset 0 needs 2640 bytes; the file has "
                 "2400 bytes"),
    ("unknown", "unknown format '.xyz'; give --format, one of npy, raw, mib"),
    ("raw_no_shape", "raw binary needs --shape Sy,Sx,Ky,Kx and --dtype"),
    ("frames", "scan shape (2, 5) needs 10 frames; the file has 12"),
    ("overflow", "binned values up to 17179869180 do not fit in uint32"),
    ("kv_ev", "calibration field 'energy' is 3e+08 eV (300000 kV), outside 10 kV – 1.5 MV"),
    ("disc", "the bright-field disc (20 mrad = 1.016 1/Å) is larger than the detector"),
    ("centre", "'detector_center' (12, 3) px lies outside the 10 × 10 px detector"),
])  # fmt: skip
def test_errors_are_one_line(tmp_path, capsys, case, expect):
    np.save(tmp_path / "a.npy", counts((4, 3, 10, 10)))
    counts((4, 3, 10, 10)).tofile(tmp_path / "a.bin")
    (tmp_path / "a.xyz").write_bytes(b"?")
    np.save(tmp_path / "f.npy", counts((12, 10, 10)))
    np.save(tmp_path / "big.npy", np.full((2, 2, 8, 8), 2**32 - 1, np.uint32))
    cal = ["--semiangle", "20", "--scan-step", "0.5"]
    args = {
        "no_energy": ["a.npy", *cal, "--dk", "0.1"],
        "no_dk": ["a.npy", *cal, "--energy", "300"],
        "raw_size": ["a.bin", "--shape", "4,3,10,11", "--dtype", "uint16"],
        "unknown": ["a.xyz"],
        "raw_no_shape": ["a.bin"],
        "frames": ["f.npy", "--scan-shape", "2,5"],
        "overflow": ["big.npy", *cal, "--energy", "300", "--dk", "0.3", "--bin", "2"],
        "kv_ev": ["a.npy", *cal, "--energy", "300000", "--dk", "0.3"],
        "disc": ["a.npy", *cal, "--energy", "300", "--dk", "0.1"],
        "centre": ["a.npy", *cal, "--energy", "300", "--dk", "0.3", "--center", "12,3"],
    }[case]
    code, out, err = run(capsys, "convert", tmp_path / args[0], "-o", tmp_path / "x.zarr",
                         *args[1:])  # fmt: skip
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and expect in last, last
    assert "Traceback" not in out + err and not (tmp_path / "x.zarr").exists()


# ------------------------------------------------------------------ calibration (issue 13)
def test_every_missing_field_is_named_at_once(tmp_path, capsys):
    np.save(tmp_path / "a.npy", counts((4, 3, 10, 10)))
    code, _, err = run(capsys, "convert", tmp_path / "a.npy", "-o", tmp_path / "x.zarr",
                       "--dk", "0.3")  # fmt: skip
    last = err.strip().splitlines()[-1]
    assert code == 2 and "Traceback" not in err and last.startswith("error: "), err
    assert ("calibration fields 'energy', 'semiangle', 'scan_step' are missing (give "
            "--energy (kV), --semiangle (mrad) and --scan-step (Å))") in last, err


@pytest.mark.parametrize("content, expect", [
    (b"", "a.npy is empty (0 bytes): not a .npy file"),
    ("zero_rows", "a.npy holds no data: shape (0, 4, 8, 8)"),
    ("truncated", "a.npy is truncated: its header says (4, 4, 8, 8) uint16, 2048 bytes of data "
                  "after 128 bytes of header; the file has 1000 bytes"),
    (b"\x93NUMPY garbage", "a.npy: not a .npy file"),
])  # fmt: skip
def test_empty_or_truncated_npy(tmp_path, capsys, content, expect):
    path = tmp_path / "a.npy"
    if content == "zero_rows":
        np.save(path, np.zeros((0, 4, 8, 8), np.uint16))
    elif content == "truncated":
        np.save(path, np.zeros((4, 4, 8, 8), np.uint16))
        with open(path, "r+b") as f:
            f.truncate(1000)
    else:
        path.write_bytes(content)
    code, out, err = run(capsys, "convert", path, "-o", tmp_path / "x.zarr", "--energy", "300",
                         "--semiangle", "20", "--scan-step", "0.5", "--dk", "0.3")  # fmt: skip
    assert code == 2 and "interrupted" not in err and "resume" not in err, err
    assert err.count("\n") == 1 and expect in err, err


@pytest.mark.parametrize("order, dtype, shape, scan_shape", [
    ("C", "<u2", (5, 4, 6, 7), None), ("C", ">f4", (5, 4, 6, 7), None),
    ("F", "<u2", (5, 4, 6, 7), None), ("C", "<u2", (20, 6, 7), (5, 4)),
    ("C", "<u2", (5, 4, 6, 7), (2, 10)),
])  # fmt: skip
def test_npy_block_reads(tmp_path, order, dtype, shape, scan_shape):
    """.npy inputs are read with explicit block reads (no memory map whose pages stay
    resident): the converted data are the array's, in every layout."""
    data = np.asarray(counts(shape, high=3000).astype(dtype), order=order)
    np.save(tmp_path / "a.npy", data)
    source = cv.open_source(tmp_path / "a.npy", scan_shape=scan_shape)
    try:
        assert not isinstance(source._data, np.memmap)
        rows = source.read_rows(1, 2)
    finally:
        source.close()
    expect = data.reshape(*(scan_shape or shape[:2]), *shape[-2:])
    assert rows.dtype.isnative and np.array_equal(rows, expect[1:2])
    given = {**GIVEN, "dk": (0.4, 0.4), "detector_center": (3.0, 3.0)}
    convert(tmp_path / "a.npy", tmp_path / "a.zarr", given, rows_per_chunk=2,
            scan_shape=scan_shape)  # fmt: skip
    assert np.array_equal(read(tmp_path / "a.zarr")[0], expect)


def test_aberration_dose_and_origin_options(tmp_path, capsys):
    np.save(tmp_path / "a.npy", counts((4, 3, 16, 16)))
    base = ["convert", tmp_path / "a.npy", "--energy", "300", "--semiangle", "20",
            "--scan-step", "0.5", "--dk", "0.2"]  # fmt: skip
    code, _, err = run(capsys, *base, "-o", tmp_path / "a.zarr", "--defocus", "500",
                       "--c12", "20,0.5", "--cs", "-1e4", "--aberration", "C23=300",
                       "--aberration", "phi23=0.1", "--dose", "1000", "--scan-origin", "1,-2")
    assert code == 0, err
    _, cal, meta = read(tmp_path / "a.zarr")
    assert cal.aberrations == {"C10": 500.0, "C12": 20.0, "phi12": 0.5, "C30": -1e4,
                               "C23": 300.0, "phi23": 0.1}  # fmt: skip
    assert cal.dose == 1000.0 and cal.scan_origin == (1.0, -2.0)
    assert meta["conversion"]["dose_from"] == "given"
    code, out, _ = run(capsys, "info", tmp_path / "a.zarr")
    assert "C10 = 500 Å" in out and "1000 e/Å² (250 counts/pattern)" in out
    for bad, expect in [(["--defocus", "5", "--aberration", "C10=4"], "C10 is given twice"),
                        (["--aberration", "C99=1"], "unknown aberration 'C99'"),
                        (["--aberration", "C10"], "--aberration takes NAME=VALUE"),
                        (["--defocus", "1e7"], "C10 = 1e+07 Å (1 mm) exceeds"),
                        (["--dose", "-3"], "'dose' must be positive"),
                        (["--dose", "lots"], "--dose takes e/Å² or 'none'")]:
        code, _, err = run(capsys, *base, "-o", tmp_path / "b.zarr", *bad)
        last = err.strip().splitlines()[-1]  # after the "converting ..." line, if any
        assert code == 2 and last.startswith("error: ") and expect in last, (bad, err)
        assert not (tmp_path / "b.zarr").exists()


def test_dose_inferred_from_integer_counts(tmp_path, capsys):
    data = np.random.default_rng(2).poisson(3.0, (6, 5, 16, 16)).astype(np.uint16)
    np.save(tmp_path / "a.npy", data)
    convert(tmp_path / "a.npy", tmp_path / "a.zarr", rows_per_chunk=4)
    _, cal, meta = read(tmp_path / "a.zarr")
    per_pattern = data.sum() / (6 * 5)  # mean counts per pattern, ≈ 768
    assert cal.dose == pytest.approx(per_pattern / 0.25, rel=1e-12)
    assert meta["conversion"]["dose_from"] == "inferred from the counts"
    code, out, _ = run(capsys, "info", tmp_path / "a.zarr")
    assert f"{cal.dose:.4g} e/Å² (inferred from the counts: {per_pattern:.4g} counts/pattern)" \
        in out, out
    # given wins; 'none' records no dose; float data are intensities, not counts
    convert(tmp_path / "a.npy", tmp_path / "b.zarr", {**GIVEN, "dose": 50.0})
    assert read(tmp_path / "b.zarr")[1].dose == 50.0
    convert(tmp_path / "a.npy", tmp_path / "c.zarr", {**GIVEN, "dose": "none"})
    assert read(tmp_path / "c.zarr")[1].dose is None
    np.save(tmp_path / "f.npy", data.astype(np.float32))
    convert(tmp_path / "f.npy", tmp_path / "f.zarr")
    _, cal, meta = read(tmp_path / "f.zarr")
    assert cal.dose is None and "dose_from" not in meta["conversion"]
    assert "dose             none (noise-free intensities)" in run(capsys, "info",
                                                                   tmp_path / "f.zarr")[1]


def _disc_data(radius=6.0, n=32, scan=(3, 4)):
    y, x = np.indices((n, n))
    disc = np.clip(radius + 0.5 - np.hypot(y - 15, x - 16), 0, 1) * 200 + 2
    return np.random.default_rng(0).poisson(disc, (*scan, n, n)).astype(np.uint16)


@pytest.mark.parametrize("semiangle, outcome", [(20.0, "ok"), (24.0, "warn"), (45.0, "refuse"),
                                                (8.0, "refuse")])  # fmt: skip
def test_bright_field_disc_checked_at_convert(tmp_path, capsys, semiangle, outcome):
    from ptyengine import physics

    np.save(tmp_path / "a.npy", _disc_data())
    dk = 20e-3 / physics.wavelength(300e3) / 6  # a 20 mrad disc is 6 px in radius
    code, _, err = run(capsys, "convert", tmp_path / "a.npy", "-o", tmp_path / "a.zarr",
                       "--energy", "300", "--semiangle", semiangle, "--scan-step", "0.5",
                       "--dk", dk)  # fmt: skip
    if outcome == "refuse":
        assert code == 2 and err.count("\n") == 2, err  # the "converting" line and the error
        assert "bright-field disc in the mean pattern has a radius of" in err
        assert not (tmp_path / "a.zarr").exists() and not list(tmp_path.glob("*.partial"))
    else:
        assert code == 0, err
        assert ("bright-field disc" in err) == (outcome == "warn"), err


def test_defocused_simulation_converted_with_and_without_defocus(tmp_path, capsys):
    """A defocused simulation's array converted from .npy: without --defocus the calibration
    records no aberrations (reconstruct warns; ePIE starts focused), with it the calibration
    carries C10 and ePIE starts from the simulator's probe. Integer counts give the dose."""
    from ptyengine.reconstruct.epie import EpieParameters, epie
    from ptyengine.simulate import SimulationParameters, simulate

    p = SimulationParameters(structure="srtio3", zone_axis=(0, 0, 1), field=(7.81, 7.81),
                             thickness=3.905, scan_step=0.5, scan_size=(2.0, 2.0),
                             max_angle=40.0, detector_pixels=32, phonons=0, defocus=150.0,
                             dose=1e4)  # fmt: skip
    sim = simulate(p, str(tmp_path / "sim.zarr"))["output"]
    with io.open_dataset(sim) as ds:
        np.save(tmp_path / "sim.npy", ds.read_rows(0, ds.shape[0]))
        truth = ds.calibration
    opts = ["--energy", "300", "--semiangle", "20", "--scan-step", "0.5", "--dk", truth.dk[0],
            "--center", "16,16"]  # fmt: skip
    for name, extra in (("plain", []), ("df", ["--defocus", "150"])):
        code, _, err = run(capsys, "convert", tmp_path / "sim.npy", "-o",
                           tmp_path / f"{name}.zarr", *opts, *extra)  # fmt: skip
        assert code == 0, err
    plain, df = read(tmp_path / "plain.zarr")[1], read(tmp_path / "df.zarr")[1]
    assert plain.aberrations == {} and df.aberrations == {"C10": 150.0}
    # Poisson counts of noise-free patterns normalised to 1: the dose comes back (the
    # detector misses a few electrons scattered beyond 40 mrad)
    assert df.dose == pytest.approx(1e4, rel=0.02)
    zero = EpieParameters(iterations=0)
    probes = {k: epie(tmp_path / f"{k}.zarr", zero).probe for k in ("plain", "df")}
    reference = epie(sim, zero).probe  # the simulator's calibration: C10 = 150 Å
    assert np.allclose(probes["df"], reference, atol=1e-6 * np.abs(reference).max())
    assert not np.allclose(probes["plain"], reference, atol=0.05 * np.abs(reference).max())
    code, _, err = run(capsys, "reconstruct", tmp_path / "plain.zarr", "--iterations", "1",
                       "-o", tmp_path / "r.zarr")  # fmt: skip
    assert code == 0 and "warning: " in err and "records no probe aberrations" in err, err
    assert "Warning" not in err and "warnings.warn" not in err
    code, _, err = run(capsys, "reconstruct", tmp_path / "df.zarr", "--iterations", "1",
                       "-o", tmp_path / "r2.zarr")  # fmt: skip
    assert code == 0 and "aberrations" not in err, err


def test_non_numeric_attributes_of_an_input_file(tmp_path, capsys):
    """A file whose calibration attributes are strings: each becomes a note, not a
    traceback, and the field is asked for when nobody gives it."""
    import h5py

    pytest.importorskip("hdf5plugin")
    master = write_arina(tmp_path, counts((16, 10, 10), seed=6, high=50), per_file=16)
    with h5py.File(master, "r+") as m:
        del m["entry/instrument/beam/incident_wavelength"]
        m["entry/instrument/beam/incident_wavelength"] = "300 kV"
    given = {k: v for k, v in GIVEN.items() if k != "energy"}
    with pytest.raises(PtyengineError, match="calibration field 'energy' is missing"):
        convert(master, tmp_path / "a.zarr", given)
    rep = convert(master, tmp_path / "a.zarr", GIVEN)
    assert any("incident_wavelength" in n and "not a positive number" in n for n in rep.notes)
    assert read(tmp_path / "a.zarr")[1].energy == 300e3
