"""On-disk datasets: round trips, streamed and resumed writes, and one-line errors."""

import json
import signal
import subprocess
import sys
import textwrap
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
                       detector_shape=SHAPE[2:], dk=(0.15, 0.16), detector_center=(8.0, 7.5),
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
        assert [s for s, _ in ds.iter_row_blocks()] == [0, 2, 4]  # inner chunks
    assert len(list((path / "data" / "c").iterdir())) == 2  # two shard files along the scan


# ---------------------------------------------------------------- streamed shard files
def sharded(cal, rows):
    """A scan of ``rows`` rows; 2 rows per chunk, 3 chunks (6 rows) per shard file."""
    data = np.random.default_rng(rows).poisson(30.0, (rows, *SHAPE[1:])).astype(np.uint16)
    return cal.replace(scan_shape=(rows, SHAPE[1])), data, 3 * 2 * data[0].nbytes


def write_sharded(path, cal, data, shard_bytes, block=2, **kw):
    with io.create_dataset(path, cal, data.dtype, rows_per_chunk=2, metadata=META,
                           shard_bytes=shard_bytes, **kw) as w:  # fmt: skip
        for start in range(w.rows_written, len(data), block):
            w.write_rows(start, data[start:start + block])
    return w


def shard_files(path):
    return sorted(str(p.relative_to(path / "data")) for p in (path / "data").rglob("*")
                  if p.is_file() and p.name != "zarr.json")  # fmt: skip


@pytest.mark.parametrize("rows, block", [(12, 2), (13, 4), (7, 6), (17, 8)])
def test_streamed_shards_are_the_files_zarr_writes(tmp_path, cal, rows, block):
    """Chunks streamed into shard files read back bit for bit (also through zarr itself),
    one file per shard, each byte-identical to the shard zarr-python writes from memory —
    also the last, partial shard (absent chunks, and a padded edge chunk when the row count
    is not a multiple of the chunk rows)."""
    cal, data, shard_bytes = sharded(cal, rows)
    path = tmp_path / "s.zarr"
    write_sharded(path, cal, data, shard_bytes, block=block)
    with io.open_dataset(path) as ds:
        assert ds.data.shards == (6, *SHAPE[1:]) and ds.data.chunks == (2, *SHAPE[1:])
        np.testing.assert_array_equal(ds.read_rows(0, rows), data)
        np.testing.assert_array_equal(ds.read_rows(5, rows - 1), data[5:rows - 1])
        assert "in shard files of (6, 5, 16, 16)" in io.describe(path)
    np.testing.assert_array_equal(zarr.open_array(path / "data", mode="r")[...], data)
    n_shards = -(-rows // 6)
    assert shard_files(path) == [f"c/{i}/0/0/0" for i in range(n_shards)]
    layout = io.storage_layout(data.shape, data.dtype, 2, shard_bytes)
    ref = zarr.open_group(tmp_path / "ref.zarr", mode="w", zarr_format=3).create_array(
        "data", shape=data.shape, chunks=layout.chunks, shards=layout.shards, dtype=data.dtype,
        fill_value=0, compressors=layout.zarr_compressors, config={"write_empty_chunks": True})
    ref[...] = data
    for name in shard_files(path):
        assert (path / "data" / name).read_bytes() == \
            (tmp_path / "ref.zarr" / "data" / name).read_bytes(), name  # fmt: skip


def test_sharding_is_the_default_for_data_larger_than_a_shard(tmp_path, cal, monkeypatch):
    layout = io.storage_layout((2048, 256, 256, 256), "uint16")  # 32 MiB chunks of one row
    assert layout.chunks == (1, 256, 256, 256) and layout.shards == (8, 256, 256, 256)
    assert io.storage_layout((2048, 256, 256, 256), "uint16", shard_bytes=0).shards is None
    assert io.storage_layout(SHAPE, "float32").shards is None  # smaller than one shard
    with pytest.raises(PtyengineError, match="shard_bytes must be a non-negative integer"):
        io.storage_layout(SHAPE, "float32", shard_bytes=-1)
    cal, data, shard_bytes = sharded(cal, 13)
    monkeypatch.setattr(io, "SHARD_TARGET_BYTES", shard_bytes)  # the default, read per call
    write_sharded(tmp_path / "d.zarr", cal, data, None)
    write_sharded(tmp_path / "plain.zarr", cal, data, 0)
    with io.open_dataset(tmp_path / "d.zarr") as ds, io.open_dataset(tmp_path / "plain.zarr") as p:
        assert ds.data.shards == (6, *SHAPE[1:]) and p.data.shards is None
        np.testing.assert_array_equal(ds.read_rows(0, 13), p.read_rows(0, 13))
    assert len(shard_files(tmp_path / "plain.zarr")) == 7  # one file per chunk


@pytest.mark.parametrize("how", ["close", "sigkill"])
def test_interrupted_shard_is_rewritten_on_resume(tmp_path, cal, how):
    """Stopped mid-shard (closed without finishing, or killed): the completed shard stays,
    the half-written one is discarded and rewritten from its first row; the result equals an
    uninterrupted write file for file."""
    cal, data, shard_bytes = sharded(cal, 17)
    path, partial = tmp_path / "s.zarr", tmp_path / "s.zarr.partial"
    if how == "close":
        w = io.create_dataset(path, cal, "uint16", rows_per_chunk=2, metadata=META,
                              shard_bytes=shard_bytes)  # fmt: skip
        w.write_rows(0, data[0:4])
        assert w.rows_written == 0  # part of a shard: nothing durable yet
        w.write_rows(4, data[4:8])  # completes shard 0, starts shard 1
        assert w.rows_written == 6
        w.write_rows(8, data[8:10])
        w.close()
    else:
        np.save(tmp_path / "data.npy", data)
        script = textwrap.dedent(f"""
            import os, signal
            import numpy as np
            from ptyengine import io
            from ptyengine.calibration import Calibration
            cal = Calibration.from_dict({cal.to_dict()!r})
            data = np.load({str(tmp_path / "data.npy")!r})
            w = io.create_dataset({str(path)!r}, cal, "uint16", rows_per_chunk=2,
                                  metadata={META!r}, shard_bytes={shard_bytes})
            for start in (0, 2, 4, 6, 8):
                w.write_rows(start, data[start:start + 2])
            os.kill(os.getpid(), signal.SIGKILL)
        """)
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert r.returncode == -signal.SIGKILL, r.stderr
    assert shard_files(partial) == ["c/0/0/0/0", "c/1/0/0/0.inprogress"]
    with io.open_dataset(partial, allow_incomplete=True) as ds:
        assert ds.rows_written == 6
        np.testing.assert_array_equal(ds.read_rows(0, 6), data[:6])
    w = io.create_dataset(path, cal, "uint16", rows_per_chunk=2, metadata=META, resume=True,
                          shard_bytes=shard_bytes)  # fmt: skip
    assert w.resumed and "at scan row 6 of 17" in w.resume_note and w.rows_written == 6
    assert shard_files(partial) == ["c/0/0/0/0"]  # the half-written shard is gone
    for start in range(6, 17, 4):
        w.write_rows(start, data[start:start + 4])
    w.finish()
    write_sharded(tmp_path / "ref.zarr", cal, data, shard_bytes)
    assert shard_files(path) == shard_files(tmp_path / "ref.zarr") == \
        ["c/0/0/0/0", "c/1/0/0/0", "c/2/0/0/0"]  # fmt: skip
    for name in shard_files(path):
        assert (path / "data" / name).read_bytes() == \
            (tmp_path / "ref.zarr" / "data" / name).read_bytes(), name  # fmt: skip
    with io.open_dataset(path) as ds:
        np.testing.assert_array_equal(ds.read_rows(0, 17), data)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_shard_file_is_named(tmp_path, cal, damage):
    cal, data, shard_bytes = sharded(cal, 13)
    path = tmp_path / "s.zarr"
    write_sharded(path, cal, data, shard_bytes)
    shard = path / "data" / "c" / "1" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    if damage == "truncate":
        shard.write_bytes(raw[:len(raw) // 2])
    elif damage == "flip":
        raw[len(raw) // 2] ^= 0x10
        shard.write_bytes(bytes(raw))
    else:
        shard.unlink()
    with io.open_dataset(path) as ds:
        np.testing.assert_array_equal(ds.read_rows(0, 6), data[:6])  # other shards are fine
        what = "is missing" if damage == "delete" else "is corrupt or truncated"
        with pytest.raises(PtyengineError, match=rf"s\.zarr: data shard \(1, 0, 0, 0\) {what}"):
            ds.read_rows(0, 13)
        with pytest.raises(PtyengineError, match=r"data shard \(1, 0, 0, 0\)"):
            list(ds.iter_row_blocks(rows=2))


def test_resume_with_other_chunk_rows_starts_afresh(tmp_path, cal):
    """Shards of 6 rows hold 3 chunks of 2 rows or 2 of 3: the same shard shape, but a
    resume must not mix the two chunkings (it would misplace rows)."""
    cal, data, shard_bytes = sharded(cal, 17)
    path = tmp_path / "s.zarr"
    w = io.create_dataset(path, cal, "uint16", rows_per_chunk=2, metadata=META,
                          shard_bytes=shard_bytes)  # fmt: skip
    for start in (0, 2, 4, 6):
        w.write_rows(start, data[start:start + 2])
    w.close()
    w = io.create_dataset(path, cal, "uint16", rows_per_chunk=3, metadata=META, resume=True,
                          shard_bytes=shard_bytes)  # fmt: skip
    assert not w.resumed and "chunking differs" in w.resume_note
    for start in range(0, 17, 3):
        w.write_rows(start, data[start:start + 3])
    w.finish()
    with io.open_dataset(path) as ds:
        np.testing.assert_array_equal(ds.read_rows(0, 17), data)


def test_unchunked_hdf5_is_read_in_row_blocks(tmp_path, cal):
    """HDF5 from elsewhere may be contiguous (no chunks): read in ~16 MiB blocks of rows."""
    import h5py

    data = np.random.default_rng(3).poisson(5.0, SHAPE).astype(np.uint16)
    with io.create_dataset(tmp_path / "c.h5", cal, "uint16") as w:
        w.write_rows(0, data)
    with h5py.File(tmp_path / "c.h5", "a") as f:  # rewrite the data without chunks
        del f["data"]
        f.create_dataset("data", data=data)
    with io.open_dataset(tmp_path / "c.h5") as ds:
        assert ds.data.chunks is None
        np.testing.assert_array_equal(ds.read_rows(1, 3), data[1:3])
        blocks = list(ds.iter_row_blocks())
        np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), data)
