"""On-disk datasets: round trips, streamed and resumed writes, and one-line errors."""

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from ptyengine import io
from ptyengine.calibration import Calibration, CalibrationError
from ptyengine.errors import PtyengineError

SHAPE = (6, 5, 16, 16)
SUFFIXES = [".zarr", ".h5"]


@pytest.fixture
def cal():
    return Calibration(energy=300e3, semiangle=20.0, scan_shape=SHAPE[:2], scan_step=(0.4, 0.5),
                       detector_shape=SHAPE[2:], dk=(0.05, 0.06), detector_center=(8.0, 7.5),
                       rotation=3.5, transpose=True, dose=50.0, scan_origin=(1.0, -2.0),
                       aberrations={"C10": 500.0, "C12": 10.0, "phi12": 0.3})  # fmt: skip


def make_data(dtype="float32", seed=0):
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "u":
        return rng.poisson(30.0, SHAPE).astype(dtype)
    return rng.random(SHAPE, dtype=np.float32).astype(dtype)


POTENTIAL = np.linspace(0, 1, 12 * 10, dtype=np.float32).reshape(12, 10)
PROBE = (np.arange(64).reshape(8, 8) * (1 - 2j) / 7).astype(np.complex64)
PROBE_ATTRS = {"sampling": [0.1, 0.12], "origin": [0.0, 0.5], "units": "V·Å"}
META = {"fingerprint": "abc123", "simulation": {"slices": 20, "defocus": [0, 500.0]}}


def write(path, cal, data, block=2, metadata=META, **kw):
    with io.create_dataset(path, cal, data.dtype, rows_per_chunk=2, metadata=metadata, **kw) as w:
        w.write_array("ground_truth/potential", POTENTIAL, {"sampling": [0.2, 0.2]})
        w.write_array("ground_truth/probe", PROBE, PROBE_ATTRS)
        for start in range(w.rows_written, SHAPE[0], block):
            w.write_rows(start, data[start:start + block])
    return w


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_round_trip(tmp_path, cal, suffix, dtype):
    path, data = tmp_path / f"d{suffix}", make_data(dtype)
    assert write(path, cal, data).finish() == path  # finish is idempotent
    assert path.exists() and not Path(str(path) + ".partial").exists()
    with io.open_dataset(path) as ds:
        assert ds.shape == SHAPE and ds.dtype == np.dtype(dtype) and ds.complete
        assert tuple(ds.data.chunks) == (2, *SHAPE[1:])
        np.testing.assert_array_equal(ds.read_rows(0, 6), data)
        assert ds.calibration.to_dict() == cal.to_dict() and ds.calibration == cal
        assert ds.metadata == META
        assert ds.arrays() == ["ground_truth/potential", "ground_truth/probe"]
        probe, attrs = ds.read_array("ground_truth/probe")
        assert probe.dtype == np.complex64 and attrs == PROBE_ATTRS
        np.testing.assert_array_equal(probe, PROBE)
        pot, attrs = ds.read_array("/ground_truth/potential")
        assert pot.dtype == np.float32 and attrs == {"sampling": [0.2, 0.2]}
        np.testing.assert_array_equal(pot, POTENTIAL)
        with pytest.raises(PtyengineError, match="no array 'nope'.*ground_truth/probe"):
            ds.read_array("nope")
    text = io.describe(path)
    for needle in ["300 keV", "0.019687 Å", "20 mrad", "0.4 × 0.5 Å", "1/Å", "mrad/pixel",
                   "(8, 7.5) px", "3.5°", "transpose yes", "C10 = 500 Å", "phi12 = 0.3 rad",
                   "50 e/Å² (10 counts/pattern)", "fingerprint, simulation", "complete",
                   "ground_truth/probe  (8, 8) complex64", "V·Å", "on disk"]:  # fmt: skip
        assert needle in text, needle


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_streamed_blocks_and_iteration(tmp_path, cal, suffix):
    path, data = tmp_path / f"d{suffix}", make_data()
    with io.create_dataset(path, cal, "float32", rows_per_chunk=2) as w:
        w.write_rows(0, data[0:4])  # two chunks at once
        assert w.rows_written == 4
        w.write_rows(4, data[4:6].astype(np.float64))  # cast to float32
    with io.open_dataset(path) as ds:
        blocks = list(ds.iter_row_blocks())
        assert [s for s, _ in blocks] == [0, 2, 4]
        np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), data)
        blocks = list(ds.iter_row_blocks(rows=4))
        assert [(s, len(b)) for s, b in blocks] == [(0, 4), (4, 2)]
        np.testing.assert_array_equal(ds.read_rows(1, 5), data[1:5])  # across chunks
        assert ds.read_rows(3, 3).shape == (0, *SHAPE[1:])
        with pytest.raises(PtyengineError, match=r"rows 4:7 are outside the scan \(0:6\)"):
            ds.read_rows(4, 7)


def test_default_chunks_are_whole_scan_rows():
    layout = io.storage_layout((2048, 256, 256, 256), "uint16")
    assert layout.chunks == (1, 256, 256, 256)
    assert io.storage_layout((6, 5, 16, 16), "float32").chunks == (6, 5, 16, 16)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_write_rows_checks(tmp_path, cal, suffix):
    data = make_data()
    w = io.create_dataset(tmp_path / f"d{suffix}", cal, "uint16", rows_per_chunk=2)
    with pytest.raises(PtyengineError, match=r"expected a block of shape \(n_rows, 5, 16, 16\), "
                                             r"got \(2, 5, 16, 15\)"):  # fmt: skip
        w.write_rows(0, np.zeros((2, 5, 16, 15), np.uint16))
    with pytest.raises(PtyengineError, match="row_start 1 is not at a chunk boundary"):
        w.write_rows(1, np.zeros((2, *SHAPE[1:]), np.uint16))
    with pytest.raises(PtyengineError, match="in order; expected row_start 0, got 2"):
        w.write_rows(2, np.zeros((2, *SHAPE[1:]), np.uint16))
    with pytest.raises(PtyengineError, match="must end at a chunk boundary"):
        w.write_rows(0, np.zeros((3, *SHAPE[1:]), np.uint16))
    with pytest.raises(PtyengineError, match="cannot store float32 values in a uint16"):
        w.write_rows(0, data[:2])
    with pytest.raises(PtyengineError, match=r"values -1\.\.0 do not fit in uint16"):
        w.write_rows(0, np.repeat([[[[-1]]], [[[0]]]], 5, axis=1).repeat(16, 2).repeat(16, 3))
    w.write_rows(0, np.full((2, *SHAPE[1:]), 7, np.int64))  # integers that fit are fine
    with pytest.raises(PtyengineError, match="rows 2:8 run past the scan"):
        w.write_rows(2, np.zeros((6, *SHAPE[1:]), np.uint16))
    with pytest.raises(PtyengineError, match="cannot finish: only 2 of 6 scan rows"):
        w.finish()
    w.close()


def test_create_checks(tmp_path, cal):
    with pytest.raises(PtyengineError, match=r"d\.npy: unknown dataset format; name it \*\.zarr"):
        io.create_dataset(tmp_path / "d.npy", cal, "float32")
    with pytest.raises(PtyengineError, match="dtype must be one of .*got complex64"):
        io.create_dataset(tmp_path / "d.zarr", cal, "complex64")
    with pytest.raises(PtyengineError, match="metadata must be JSON-serialisable"):
        io.create_dataset(tmp_path / "d.zarr", cal, "float32", metadata={"x": object()})
    with pytest.raises(PtyengineError, match="rows_per_chunk must be a positive integer"):
        io.create_dataset(tmp_path / "d.zarr", cal, "float32", rows_per_chunk=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_existing_output_needs_overwrite(tmp_path, cal, suffix):
    path = tmp_path / f"d{suffix}"
    write(path, cal, make_data(seed=1))
    with pytest.raises(PtyengineError, match=f"d{suffix} already exists.*overwrite"):
        io.create_dataset(path, cal, "float32")
    assert not Path(str(path) + ".partial").exists()  # refused before any work
    data = make_data(seed=2)
    write(path, cal, data, overwrite=True)
    with io.open_dataset(path) as ds:
        np.testing.assert_array_equal(ds.read_rows(0, 6), data)


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_interrupted_write_and_resume(tmp_path, cal, suffix):
    path, data = tmp_path / f"d{suffix}", make_data("uint16")
    partial = Path(str(path) + ".partial")
    with pytest.raises(Interrupt):
        with io.create_dataset(path, cal, "uint16", rows_per_chunk=2, metadata=META) as w:
            w.write_array("ground_truth/probe", PROBE, PROBE_ATTRS)
            w.write_rows(0, data[0:2])
            w.write_rows(2, data[2:4])
            raise Interrupt
    assert partial.exists() and not path.exists()
    with pytest.raises(PtyengineError, match=r"d\S*\.partial is incomplete: 4 of 6 scan rows "
                                             r"were written.*--resume or delete it"):  # fmt: skip
        io.open_dataset(partial)
    with pytest.raises(PtyengineError, match=r"does not exist \(.*\.partial holds an interrupted"):
        io.open_dataset(path)
    assert "INCOMPLETE: 4 of 6 scan rows written" in io.describe(partial)

    w = write(path, cal, data, resume=True)  # same fingerprint: continues at row 4
    assert w.resumed and "resuming" in w.resume_note and w.rows_written == 6
    reference = tmp_path / f"ref{suffix}"
    write(reference, cal, data)
    with io.open_dataset(path) as ds, io.open_dataset(reference) as ref:
        np.testing.assert_array_equal(ds.read_rows(0, 6), ref.read_rows(0, 6))
        assert ds.arrays() == ref.arrays() and ds.metadata == ref.metadata
        np.testing.assert_array_equal(ds.read_array("ground_truth/probe")[0], PROBE)


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("change", ["fingerprint", "calibration", "dtype"])
def test_resume_mismatch_starts_fresh(tmp_path, cal, suffix, change):
    path, data = tmp_path / f"d{suffix}", make_data("uint16")
    w = io.create_dataset(path, cal, "uint16", rows_per_chunk=2, metadata=META)
    w.write_rows(0, data[:2])
    w.close()
    meta = {**META, "fingerprint": "other"} if change == "fingerprint" else META
    cal2 = cal.replace(rotation=4.0) if change == "calibration" else cal
    dtype = "uint32" if change == "dtype" else "uint16"
    w = io.create_dataset(path, cal2, dtype, rows_per_chunk=2, metadata=meta, resume=True)
    assert not w.resumed and w.rows_written == 0
    assert f"its {change} differs; starting fresh" in w.resume_note
    w.close()
    with io.open_dataset(Path(str(path) + ".partial"), allow_incomplete=True) as ds:
        assert ds.rows_written == 0 and ds.metadata == meta and ds.dtype == np.dtype(dtype)


# ---------------------------------------------------------------------- reader errors
def edit_attrs(path, edit):
    if path.suffix == ".zarr":
        group = zarr.open_group(path, mode="r+")
        group.attrs["ptyengine"] = edit(dict(group.attrs["ptyengine"]))
    else:
        with h5py.File(path, "r+") as f:
            f.attrs["ptyengine"] = json.dumps(edit(json.loads(f.attrs["ptyengine"])))


def drop(d, *keys):
    for k in keys[:-1]:
        d = d[k]
    del d[keys[-1]]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("edit, error, match", [
    (lambda a: drop(a, "calibration", "dk") or a, CalibrationError,
     r"d\.(zarr|h5): calibration field 'dk' is missing"),
    (lambda a: drop(a, "calibration") or a, PtyengineError,
     r"d\.(zarr|h5): calibration is missing"),
    (lambda a: a["calibration"].update(scan_shape=[7, 5]) or a, CalibrationError,
     r"data has scan shape \(6, 5\) but the calibration says \(7, 5\)"),
    (lambda a: a["calibration"].update(detector_shape=[16, 32]) or a, CalibrationError,
     r"data has detector shape \(16, 16\) but the calibration says \(16, 32\)"),
    (lambda a: a["calibration"].update(energy=-3) or a, CalibrationError,
     "'energy' must be positive"),
    (lambda a: a.update(format_version=2) or a, PtyengineError, "format_version 2 is newer"),
    (lambda a: a.update(format="other") or a, PtyengineError, "unknown format 'other'"),
    (lambda a: a.update(complete=False, rows_written=2) or a, PtyengineError,
     r"d\.(zarr|h5) is incomplete: 2 of 6 scan rows were written"),
])  # fmt: skip
def test_invalid_attributes(tmp_path, cal, suffix, edit, error, match):
    path = tmp_path / f"d{suffix}"
    write(path, cal, make_data())
    edit_attrs(path, edit)
    with pytest.raises(error, match=match):
        io.open_dataset(path)


def test_not_a_dataset(tmp_path, cal):
    with pytest.raises(PtyengineError, match=r"nothing\.zarr does not exist$"):
        io.open_dataset(tmp_path / "nothing.zarr")
    (tmp_path / "plain").mkdir()
    with pytest.raises(PtyengineError, match=r"plain: not a zarr group \(no zarr.json\)"):
        io.open_dataset(tmp_path / "plain")
    zarr.open_group(tmp_path / "bare.zarr", mode="w", zarr_format=3)
    with pytest.raises(PtyengineError, match="not a ptyengine dataset: no 'ptyengine' attributes"):
        io.open_dataset(tmp_path / "bare.zarr")
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(PtyengineError, match=r"text\.h5: not an HDF5 file"):
        io.open_dataset(tmp_path / "text.h5")
    path = tmp_path / "d.zarr"
    write(path, cal, make_data())
    del zarr.open_group(path, mode="r+")["data"]
    with pytest.raises(PtyengineError, match=r"d\.zarr: no 'data' array"):
        io.open_dataset(path)


def test_truncated_and_missing_zarr_chunks(tmp_path, cal):
    path = tmp_path / "d.zarr"
    write(path, cal, make_data())
    chunk = path / "data" / "c" / "1" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    with io.open_dataset(path) as ds:  # opening reads no chunks
        np.testing.assert_array_equal(ds.read_rows(0, 2), make_data()[:2])
        with pytest.raises(PtyengineError, match=r"d\.zarr: data chunk \(1, 0, 0, 0\) is corrupt "
                                                 r"or truncated \(.*checksum"):  # fmt: skip
            ds.read_rows(0, 6)
        with pytest.raises(PtyengineError, match=r"data chunk \(1, 0, 0, 0\)"):
            list(ds.iter_row_blocks())
        chunk.unlink()
        with pytest.raises(PtyengineError, match=r"data chunk \(1, 0, 0, 0\) is missing"):
            ds.read_rows(3, 4)


def test_flipped_byte_in_a_zarr_chunk(tmp_path, cal):
    """A single corrupted byte is caught by the chunk's CRC32C, not read as data."""
    path = tmp_path / "d.zarr"
    write(path, cal, make_data())
    chunk = path / "data" / "c" / "2" / "0" / "0" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    chunk.write_bytes(bytes(raw))
    with io.open_dataset(path) as ds:
        with pytest.raises(PtyengineError, match=r"data chunk \(2, 0, 0, 0\) is corrupt"):
            ds.read_rows(0, 6)


def test_truncated_hdf5(tmp_path, cal):
    path = tmp_path / "d.h5"
    write(path, cal, make_data())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(PtyengineError, match=r"d\.h5: truncated HDF5 file"):
        io.open_dataset(path)


def test_corrupt_hdf5_chunk(tmp_path, cal):
    path = tmp_path / "d.h5"
    write(path, cal, make_data())
    with h5py.File(path) as f:
        info = f["data"].id.get_chunk_info(2)  # the third stored chunk: rows 4:6
    raw = bytearray(path.read_bytes())
    raw[info.byte_offset + 8: info.byte_offset + info.size] = bytes(info.size - 8)
    path.write_bytes(bytes(raw))
    with io.open_dataset(path) as ds:
        with pytest.raises(PtyengineError, match=r"d\.h5: data chunk \(2, 0, 0, 0\) is corrupt"):
            ds.read_rows(3, 6)


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_prefetching_reader_gives_the_same_blocks(tmp_path, cal, prefetch):
    path = tmp_path / "d.zarr"
    write(path, cal, make_data())
    with io.open_dataset(path) as ds:
        blocks = list(ds.iter_row_blocks(prefetch=prefetch))
    assert [s for s, _ in blocks] == list(range(0, 6, 2))
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), make_data())


def test_prefetching_reader_reports_a_corrupt_chunk(tmp_path, cal):
    path = tmp_path / "d.zarr"
    write(path, cal, make_data())
    chunk = path / "data" / "c" / "2" / "0" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:10])
    with io.open_dataset(path) as ds, pytest.raises(PtyengineError, match=r"chunk \(2, 0, 0, 0\)"):
        list(ds.iter_row_blocks(prefetch=2))


def test_sharded_zarr_round_trip_and_resume(tmp_path, cal):
    """Data larger than a shard go into shard files of whole chunks; rows become durable a
    shard at a time, and a resumed write gives the same dataset."""
    data = make_data()  # 6 rows, 2 rows per chunk; a shard of 2 chunks = 4 rows
    chunk_bytes = 2 * int(np.prod(data.shape[1:])) * 4
    path = tmp_path / "s.zarr"
    with pytest.raises(RuntimeError, match="stop"):
        with io.create_dataset(path, cal, "float32", rows_per_chunk=2, overwrite=True,
                               metadata={"fingerprint": "x"},
                               shard_bytes=2 * chunk_bytes) as w:
            w.write_rows(0, data[:2])
            assert w.rows_written == 0  # half a shard: nothing durable yet
            w.write_rows(2, data[2:4])
            assert w.rows_written == 4
            raise RuntimeError("stop")
    w = io.create_dataset(path, cal, "float32", rows_per_chunk=2, metadata={"fingerprint": "x"},
                          resume=True, shard_bytes=2 * chunk_bytes)
    assert w.resumed and w.rows_written == 4
    w.write_rows(4, data[4:])
    w.finish()
    with io.open_dataset(path) as ds:
        assert ds.data.shards == (4, *data.shape[1:]) and ds.data.chunks == (2, *data.shape[1:])
        np.testing.assert_array_equal(ds.read_rows(0, 6), data)
        assert [s for s, _ in ds.iter_row_blocks()] == [0, 4]
    assert len(list((path / "data" / "c").iterdir())) == 2  # two shard files along the scan
