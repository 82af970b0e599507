"""Calibrated 4D-STEM datasets on disk: Zarr v3 (a ``.zarr`` directory) or HDF5 (``.h5``).

Data are ``(scan_y, scan_x, k_y, k_x)`` and never need to fit in memory: a writer takes
blocks of whole scan rows, a reader hands back lazily read blocks of rows.

Zarr v3 layout::

    NAME.zarr/                    group, zarr_format=3
      attrs["ptyengine"] = {"format": "ptyengine.dataset", "format_version": 1,
                            "calibration": Calibration.to_dict(),
                            "complete": bool, "rows_written": int,
                            "storage": {"dtype", "shape", "chunks", "shards",
                                        "array_json": digest of data/zarr.json},
                            "created_by": "ptyengine <version>", "metadata": {free JSON}}
      data                        (Sy, Sx, Ky, Kx) float32 intensities or uint16/uint32 counts;
                                  chunks of whole scan rows, Blosc zstd + bitshuffle,
                                  then a CRC32C checksum per chunk
                                  (see :func:`storage_layout`); every chunk is stored;
                                  data larger than ~256 MiB are sharded: whole chunks
                                  grouped into one shard file each, streamed chunk by
                                  chunk (:mod:`ptyengine.shards`)
      <extra arrays>              e.g. ground_truth/potential (Ny, Nx) float32,
                                  ground_truth/probe (Wy, Wx) complex64, each with its own
                                  attrs, e.g. {"sampling": [dy, dx], "origin": [y0, x0]}

HDF5 (``.h5``/``.hdf5``) holds the same tree, ``data`` chunked the same way (gzip + shuffle);
the ``ptyengine`` attributes of the root, and the attrs of each extra array, are stored as
one JSON string attribute named ``ptyengine``.

Writes go to ``NAME.partial`` (a sibling); ``finish()`` marks the dataset complete and
renames it to ``NAME`` (``os.replace``). A writer holds the output's lock
(:mod:`ptyengine.locks`, ``NAME.lock``) from its start to the rename, so a second writer to
the same output is refused; an ``OSError`` while writing (a full disk, a read-only folder)
becomes one :class:`PtyengineError` naming the file. After every block (with sharding:
every shard), ``rows_written`` records the scan rows on disk, so an interrupted run can
resume where it stopped. Readers refuse an incomplete dataset unless asked
(``allow_incomplete=True``).
``storage`` records how the bytes of ``data`` are to be read (checksums cover the bytes,
not the metadata that interprets them): a reader refuses Zarr data whose dtype, shape or
chunking, or whose ``data/zarr.json`` apart from its attributes, changed after the writer
recorded them (HDF5 keeps that metadata in its own binary file); see
:mod:`ptyengine.integrity`. Datasets written before this record existed are read as they are.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from . import __version__, integrity, locks
from .calibration import Calibration
from .errors import PtyengineError, write_error
from .shards import ShardStreamer

FORMAT, FORMAT_VERSION = "ptyengine.dataset", 1
ATTRS, DATA, PARTIAL = "ptyengine", "data", ".partial"
DTYPES = ("float32", "float64", "uint8", "uint16", "uint32")
CHUNK_TARGET_BYTES = 16 * 2**20  # default chunk: about 16 MiB of whole scan rows
SHARD_TARGET_BYTES = 256 * 2**20  # default shard: ~256 MiB of whole chunks per file


@dataclass(frozen=True)
class Layout:
    """How ``data`` is chunked and compressed, for each backend."""

    chunks: tuple[int, int, int, int]
    zarr_compressors: tuple
    hdf5_options: dict
    shards: tuple[int, int, int, int] | None = None  # Zarr: chunks grouped into one file


def storage_layout(shape, dtype, rows_per_chunk: int | None = None,
                   shard_bytes: int | None = None) -> Layout:
    """Chunking and codecs of the ``data`` array: the one place to change them.

    Zarr data larger than one shard are sharded: whole chunks of scan rows grouped into
    one file of about ``shard_bytes`` (None: :data:`SHARD_TARGET_BYTES`, ~256 MiB; 0: no
    sharding), so a terabyte is a few thousand files rather than tens of thousands of
    chunk files. The writer streams each chunk into its shard file as it arrives
    (:mod:`ptyengine.shards`): memory holds one block of rows, never a whole shard.
    """
    if shard_bytes is None:
        shard_bytes = SHARD_TARGET_BYTES
    if not isinstance(shard_bytes, int | np.integer) or shard_bytes < 0:
        raise PtyengineError(f"shard_bytes must be a non-negative integer (0: no sharding), "
                             f"got {shard_bytes!r}")  # fmt: skip
    sy, row_bytes = int(shape[0]), math.prod(shape[1:]) * np.dtype(dtype).itemsize
    if rows_per_chunk is None:
        rows = max(1, min(sy, CHUNK_TARGET_BYTES // max(row_bytes, 1)))
    elif isinstance(rows_per_chunk, int | np.integer) and rows_per_chunk >= 1:
        rows = min(int(rows_per_chunk), sy)
    else:
        raise PtyengineError(f"rows_per_chunk must be a positive integer, got {rows_per_chunk!r}")
    chunk_bytes = rows * row_bytes
    per_shard = max(1, int(shard_bytes) // max(chunk_bytes, 1)) if shard_bytes else 1
    n_chunks = math.ceil(sy / rows)
    shards = (rows * per_shard, *(int(s) for s in shape[1:])) \
        if 1 < per_shard < n_chunks else None  # data smaller than a shard: plain chunks
    return Layout(
        shards=shards,
        chunks=(rows, *(int(s) for s in shape[1:])),
        # CRC32C of every compressed chunk: a truncated or corrupted chunk fails its checksum
        # on reading (Blosc alone does not always notice a truncated buffer)
        zarr_compressors=(BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
                          Crc32cCodec()),
        # gzip + shuffle + Fletcher32 checksums: readable by every HDF5 build (Blosc would
        # need hdf5plugin)
        hdf5_options={"compression": "gzip", "compression_opts": 3, "shuffle": True,
                      "fletcher32": True},
    )


def _partial(path: Path) -> Path:
    return path if path.name.endswith(PARTIAL) else Path(str(path) + PARTIAL)


def _kind(path: Path) -> str:
    name = path.name.removesuffix(PARTIAL).lower()
    if name.endswith((".h5", ".hdf5")):
        return "hdf5"
    if not name.endswith(".zarr"):
        raise PtyengineError(f"{path}: unknown dataset format; name it *.zarr, *.h5 or *.hdf5")
    return "zarr"


def _json(value, what: str):
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise PtyengineError(f"{what} must be JSON-serialisable ({exc})") from None
    return value


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        if not (path / "zarr.json").exists():
            raise PtyengineError(f"refusing to delete {path}: it is not a zarr store")
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _cast(block: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """``block`` as ``dtype``; refuses float -> int and integers that do not fit."""
    if block.dtype == dtype:
        return block
    if dtype.kind == "u" and block.dtype.kind in "biu" and block.size:
        lo, hi = block.min(), block.max()
        if lo < 0 or hi > np.iinfo(dtype).max:
            raise PtyengineError(f"{where}: values {lo}..{hi} do not fit in {dtype}")
    if block.dtype.kind in ("biuf" if dtype.kind == "f" else "biu"):
        return block.astype(dtype)
    raise PtyengineError(f"{where}: cannot store {block.dtype} values in a {dtype} dataset")


def _sharded(data) -> bool:
    return bool(getattr(data, "shards", None))


def chunk_shape(data) -> tuple:
    """Shape of one chunk of ``data`` (an inner chunk when sharded); for unchunked
    (contiguous) HDF5 from elsewhere, ~16 MiB of whole scan rows, the unit it is read in."""
    if data.chunks:
        return tuple(data.chunks)
    row_bytes = math.prod(data.shape[1:]) * data.dtype.itemsize
    rows = max(1, min(data.shape[0], CHUNK_TARGET_BYTES // max(row_bytes, 1)))
    return (rows, *data.shape[1:])


def storage_chunks(data) -> tuple:
    """Shape of one stored chunk file (the shard, once data are sharded)."""
    return tuple(getattr(data, "shards", None) or chunk_shape(data))


def _writes(method):
    """Turn an OSError of a writer's method into one error naming the ``.partial``."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except OSError as exc:
            raise write_error(self.partial, exc) from exc

    return wrapper


def _open_tree(path: Path, kind: str, writable: bool = False):
    """(root, data array or None, ptyengine attrs or None); raises on unreadable stores."""
    mode = "r+" if writable else "r"
    if kind == "zarr":
        if not (path / "zarr.json").is_file():
            v2 = " (a Zarr v2 store; ptyengine reads v3)" if (path / ".zgroup").exists() else ""
            raise PtyengineError(f"{path}: not a zarr group (no zarr.json){v2}")
        for meta in (path / "zarr.json", path / DATA / "zarr.json"):
            integrity.check_json(meta)
        try:
            root = zarr.open_group(path, mode=mode, zarr_format=3)
            attrs = root.attrs.get(ATTRS)
        except Exception as exc:
            raise PtyengineError(f"{path}: not a readable zarr v3 group ({exc})") from None
        try:
            data = root.get(DATA)
        except Exception as exc:
            raise PtyengineError(f"{path / DATA / 'zarr.json'}: invalid array metadata "
                                 f"({type(exc).__name__}: {exc})") from None  # fmt: skip
        return root, (data if isinstance(data, zarr.Array) else None), attrs
    try:
        root = h5py.File(path, mode)
    except OSError as exc:
        what = "truncated HDF5 file" if "truncated" in str(exc) else "not an HDF5 file"
        raise PtyengineError(f"{path}: {what} ({exc})") from None
    try:
        attrs = root.attrs.get(ATTRS)
        attrs = None if attrs is None else json.loads(attrs)
    except (ValueError, TypeError) as exc:
        root.close()
        raise PtyengineError(f"{path}: attribute {ATTRS!r} is not valid JSON ({exc})") from None
    data = root.get(DATA)
    return root, (data if isinstance(data, h5py.Dataset) else None), attrs


class DatasetWriter:
    """Streams scan rows into ``path + '.partial'``; :meth:`finish` publishes ``path``.

    Made by :func:`create_dataset`. Holds the output's lock (:mod:`ptyengine.locks`) until
    :meth:`finish` or :meth:`close`. As a context manager it finishes on a clean exit and,
    on an exception, closes and leaves the ``.partial`` in place for ``resume``.
    ``resumed``: whether an earlier partial write is being continued; ``resume_note`` says
    why or why not (empty when there was nothing to resume).
    """

    def __init__(self, path: Path, calibration: Calibration, dtype: np.dtype, layout: Layout,
                 metadata: dict, overwrite: bool, resume: bool):  # fmt: skip
        self.path, self.partial, self.kind = path, _partial(path), _kind(path)
        self.calibration, self.dtype, self.metadata = calibration, dtype, metadata
        self.shape = (*calibration.scan_shape, *calibration.detector_shape)
        self.chunks, self.overwrite = layout.chunks, overwrite
        # rows become durable a shard at a time (a chunk at a time without sharding)
        self.stored_chunks = layout.shards if self.kind == "zarr" and layout.shards else \
            layout.chunks
        self.resumed, self.resume_note = False, ""
        self._root = self._data = self._shards = None
        self._rows, self._finished, self._locked, self._storage = 0, False, False, None
        locks.acquire(path)  # refuses a second writer before anything is touched
        self._locked = True
        try:
            self._start(layout, resume)
        except BaseException:
            self.close()
            raise

    @_writes
    def _start(self, layout: Layout, resume: bool) -> None:
        if resume and self.partial.exists():
            self._try_resume(self.metadata.get("fingerprint"))
        if not self.resumed:
            _remove(self.partial)
            self._create(layout)
        self._accepted = self._rows  # rows taken by write_rows (on disk once their shard is)
        if self.kind == "zarr" and _sharded(self._data):
            self._shards = ShardStreamer(self._data, self.partial / DATA)
            self._shards.discard_unfinished()  # a shard an interrupted run left half-written
        self._storage = integrity.storage_record(self.partial, self.kind, self._data)
        self._save_attrs()

    def _try_resume(self, fingerprint) -> None:
        try:
            self._root, self._data, attrs = _open_tree(self.partial, self.kind, writable=True)
        except PtyengineError as exc:
            self.resume_note = f"{exc}; starting fresh"
            return
        attrs = attrs if isinstance(attrs, dict) else {}
        old = attrs.get("metadata") if isinstance(attrs.get("metadata"), dict) else {}
        try:
            same_cal = Calibration.from_dict(attrs.get("calibration")) == self.calibration
        except PtyengineError:
            same_cal = False
        rows, data = attrs.get("rows_written"), self._data
        try:
            integrity.check_storage(self.partial, self.kind, data, attrs.get("storage"))
            edited = False
        except PtyengineError:
            edited = True
        why = next((text for bad, text in [
            (fingerprint is None, "no fingerprint was given in metadata"),
            (old.get("fingerprint") != fingerprint, "its fingerprint differs"),
            (not same_cal, "its calibration differs"),
            (data is None or data.dtype != self.dtype, "its dtype differs"),
            (data is None or storage_chunks(data) != tuple(self.stored_chunks)
             or chunk_shape(data) != tuple(self.chunks), "its chunking differs"),
            (not isinstance(rows, int) or not 0 <= rows <= self.shape[0], "bad rows_written"),
            (edited, "its data metadata was edited"),
        ] if bad), None)  # fmt: skip
        if why is None:
            self.resumed, self._rows = True, rows
            self.resume_note = f"resuming {self.partial} at scan row {rows} of {self.shape[0]}"
        else:
            self._close_files()
            self.resume_note = f"{self.partial} not resumed: {why}; starting fresh"

    def _create(self, layout: Layout) -> None:
        if self.kind == "zarr":
            self._root = zarr.open_group(self.partial, mode="w", zarr_format=3)
            self._data = self._root.create_array(
                DATA, shape=self.shape, chunks=layout.chunks, dtype=self.dtype, fill_value=0,
                shards=self.stored_chunks if layout.shards else None,
                compressors=layout.zarr_compressors,
                config={"write_empty_chunks": True})  # every chunk on disk: a gap is an error
        else:
            self._root = h5py.File(self.partial, "w")
            self._data = self._root.create_dataset(
                DATA, shape=self.shape, chunks=layout.chunks, dtype=self.dtype,
                **layout.hdf5_options)  # fmt: skip

    @_writes
    def _save_attrs(self, complete: bool = False) -> None:
        attrs = {"format": FORMAT, "format_version": FORMAT_VERSION,
                 "calibration": self.calibration.to_dict(), "complete": complete,
                 "rows_written": self._rows, "created_by": f"ptyengine {__version__}",
                 "storage": self._storage, "metadata": self.metadata}  # fmt: skip
        if self.kind == "zarr":
            self._root.attrs[ATTRS] = attrs
        else:
            self._root.attrs[ATTRS] = json.dumps(attrs)
            self._root.flush()

    def _check_open(self) -> None:
        if self._finished or self._root is None:
            raise PtyengineError(f"{self.partial}: the writer is already finished or closed")

    @property
    def rows_written(self) -> int:
        """Scan rows already on disk (rows are written in order; with sharding a shard at a
        time, so a resumed run restarts at the last complete shard)."""
        return self._rows

    @_writes
    def write_rows(self, row_start: int, block) -> None:
        """Write scan rows ``row_start : row_start + len(block)``.

        ``block`` has shape ``(n_rows, Sx, Ky, Kx)``; it starts at ``rows_written`` (a chunk
        boundary) and ends at a chunk boundary or at the last scan row.
        """
        self._check_open()
        block, row_start = np.asarray(block), int(row_start)
        sy, rpc, where = self.shape[0], self.chunks[0], f"{self.partial}: write_rows"
        if block.ndim != 4 or block.shape[1:] != self.shape[1:] or block.shape[0] < 1:
            expected = ", ".join(str(s) for s in self.shape[1:])
            raise PtyengineError(
                f"{where} expected a block of shape (n_rows, {expected}), got {block.shape}")
        stop = row_start + block.shape[0]
        for bad, text in [
            (row_start % rpc, f"row_start {row_start} is not at a chunk boundary "
                              f"(rows_per_chunk={rpc})"),
            (row_start != self._accepted, f"rows are written in order; expected row_start "
                                          f"{self._accepted}, got {row_start}"),
            (stop > sy, f"rows {row_start}:{stop} run past the scan ({sy} rows)"),
            (stop % rpc and stop != sy, f"block rows {row_start}:{stop} must end at a chunk "
                                        f"boundary (rows_per_chunk={rpc}) or at row {sy}"),
        ]:  # fmt: skip
            if bad:
                raise PtyengineError(f"{where}: {text}")
        block = _cast(block, self.dtype, where)
        if self._shards is None:
            self._data[row_start:stop] = block
            durable = stop
        else:  # each chunk encoded into its shard's file now; durable once the shard is
            durable = self._shards.write(row_start, block)
        self._accepted = stop
        if durable is not None:
            self._rows = durable
            self._save_attrs()

    @_writes
    def write_array(self, name: str, array, attrs: dict | None = None) -> None:
        """Store an extra array (e.g. ``"ground_truth/probe"``), replacing one of that name."""
        self._check_open()
        name, array = str(name).strip("/"), np.asarray(array)
        if not name or name.split("/")[0] == DATA:
            raise PtyengineError(f"{self.partial}: invalid extra array name {name!r}")
        attrs = _json(dict(attrs or {}), f"{self.partial}: attrs of {name!r}")
        if self.kind == "zarr":
            arr = self._root.create_array(name, shape=array.shape, dtype=array.dtype,
                                          overwrite=True)  # fmt: skip
            arr[...] = array
            arr.attrs.update(attrs)
        else:
            if name in self._root:
                del self._root[name]
            self._root.create_dataset(name, data=array).attrs[ATTRS] = json.dumps(attrs)
            self._root.flush()

    def finish(self) -> Path:
        """Mark the dataset complete and rename the ``.partial`` to ``path`` (under the
        output's lock, released then); returns ``path``."""
        if self._finished:
            return self.path
        self._check_open()
        if self._rows < self.shape[0]:
            raise PtyengineError(f"{self.partial}: cannot finish: only {self._rows} of "
                                 f"{self.shape[0]} scan rows were written")  # fmt: skip
        self._save_attrs(complete=True)
        self._close_files()
        try:
            if self.path.exists() or self.path.is_symlink():
                if not self.overwrite:
                    raise PtyengineError(f"{self.path} already exists (pass overwrite to "
                                         "replace it)")  # fmt: skip
                _remove(self.path)
            os.replace(self.partial, self.path)
        except OSError as exc:
            raise write_error(self.path, exc) from exc
        finally:
            self.close()
        self._finished = True
        return self.path

    def _close_files(self) -> None:
        if self.kind == "hdf5" and self._root is not None:
            try:
                self._root.close()
            except OSError as exc:  # HDF5 flushes on close
                self._root = None
                raise write_error(self.partial, exc) from exc
        if self._shards is not None:
            self._shards.close()
        self._root = self._data = self._shards = None

    def close(self) -> None:
        """Release file handles and the output's lock without finishing (the ``.partial``
        stays)."""
        try:
            self._close_files()
        finally:
            if self._locked:
                self._locked = False
                locks.release(self.path)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.close()


def create_dataset(path, calibration: Calibration, dtype, rows_per_chunk: int | None = None,
                   metadata: dict | None = None, overwrite: bool = False,
                   resume: bool = False,
                   shard_bytes: int | None = None) -> DatasetWriter:  # fmt: skip
    """Start writing a dataset at ``path`` (``.zarr``, ``.h5`` or ``.hdf5``).

    An existing ``path`` is an error unless ``overwrite`` (it is then replaced by
    ``finish()``). With ``resume``, a ``path.partial`` whose ``metadata["fingerprint"]``,
    calibration, dtype and chunking match is continued from its ``rows_written`` (skip
    those rows); otherwise, and always without ``resume``, a fresh partial replaces it.
    ``shard_bytes``: the Zarr shard size (None: the default, ~256 MiB; 0: no sharding; see
    :func:`storage_layout`); with sharding, rows become durable, and a resumed run
    restarts, a shard at a time.
    """
    path = Path(path)
    _kind(path)
    if path.name.endswith(PARTIAL):
        raise PtyengineError(f"{path}: give the final name; the writer adds {PARTIAL}")
    if not isinstance(calibration, Calibration):
        raise PtyengineError(f"{path}: calibration must be a Calibration, got {calibration!r}")
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        dtype = None
    if dtype is None or dtype.name not in DTYPES:
        raise PtyengineError(f"{path}: dtype must be one of {', '.join(DTYPES)}, got {dtype}")
    metadata = _json(dict(metadata or {}), f"{path}: metadata")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise PtyengineError(f"{path} already exists (pass overwrite to replace it)")
    layout = storage_layout((*calibration.scan_shape, *calibration.detector_shape), dtype,
                            rows_per_chunk, shard_bytes)  # fmt: skip
    return DatasetWriter(path, calibration, dtype, layout, metadata, overwrite, resume)


class Dataset:
    """A read-only dataset: ``path``, ``calibration``, lazy ``data``, ``metadata``.

    ``data`` is the zarr array or h5py dataset itself (``shape``, ``dtype``, ``chunks``).
    :meth:`read_rows` and :meth:`iter_row_blocks` turn a missing, corrupt or truncated
    chunk into a :class:`PtyengineError` naming the file and the chunk.
    """

    def __init__(self, path: Path, kind: str, root, data, attrs: dict, calibration: Calibration):
        self.path, self.kind, self._root, self.data = path, kind, root, data
        self.attrs, self.calibration = attrs, calibration
        self.metadata: dict = attrs.get("metadata") or {}
        self.complete: bool = attrs.get("complete") is True
        self.rows_written: int = attrs.get("rows_written", 0)
        self.mask = None  # a detector mask overriding the stored one (dataset.detector_mask)

    shape = property(lambda self: tuple(self.data.shape))
    dtype = property(lambda self: self.data.dtype)

    def arrays(self) -> list[str]:
        """Names of the extra arrays (everything but ``data``), sorted."""
        if self.kind == "zarr":
            try:
                names = [p for p, obj in self._root.members(max_depth=None)
                         if isinstance(obj, zarr.Array)]  # fmt: skip
            except Exception as exc:
                raise PtyengineError(f"{self.path}: unreadable array metadata "
                                     f"({type(exc).__name__}: {exc})") from None  # fmt: skip
        else:
            names = []
            self._root.visititems(lambda p, obj: names.append(p)
                                  if isinstance(obj, h5py.Dataset) else None)  # fmt: skip
        return sorted(n for n in names if n != DATA)

    def read_array(self, name: str) -> tuple[np.ndarray, dict[str, Any]]:
        """An extra array and its attrs."""
        name = str(name).strip("/")
        if name not in self.arrays():
            raise PtyengineError(f"{self.path}: no array {name!r} (has: "
                                 f"{', '.join(self.arrays()) or 'none'})")  # fmt: skip
        try:
            values = self._root[name][...]
        except Exception as exc:
            raise PtyengineError(f"{self.path}: array {name!r} is corrupt ({exc})") from exc
        return values, self.array_attrs(name)

    def array_attrs(self, name: str) -> dict[str, Any]:
        """The attrs of an extra array (of HDF5 files from elsewhere: the plain attributes)."""
        obj = self._root[name]
        if self.kind == "zarr":
            return dict(obj.attrs)
        if ATTRS in obj.attrs:
            return json.loads(obj.attrs[ATTRS])
        return {k: v.tolist() if hasattr(v, "tolist") else v for k, v in obj.attrs.items()}

    def missing_chunks(self) -> tuple[list[str], int]:
        """(names of the missing stored chunk files, how many there should be) over the
        rows written: a listing of the store, nothing is read (see
        :func:`integrity.missing_chunk_files`)."""
        rows = self.shape[0] if self.complete else min(int(self.rows_written or 0),
                                                           self.shape[0])  # fmt: skip
        return integrity.missing_chunk_files(self.path, self.kind, self.data, rows,
                                             storage_chunks(self.data))  # fmt: skip

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Scan rows ``start:stop`` as a numpy array."""
        sy = self.shape[0]
        if not 0 <= start <= stop <= sy:
            raise PtyengineError(f"{self.path}: rows {start}:{stop} are outside the scan (0:{sy})")
        chunks, unit = storage_chunks(self.data), "shard" if _sharded(self.data) else "chunk"
        grid = [math.ceil(s / n) for s, n in zip(self.shape, chunks, strict=True)]
        coords = [(c, *rest) for c in range(start // chunks[0], math.ceil(stop / chunks[0]))
                  for rest in np.ndindex(*grid[1:])]  # fmt: skip
        if self.kind == "zarr":  # a missing chunk file would silently read as zeros
            for chunk in coords:
                key = self.data.metadata.encode_chunk_key(chunk)
                if not (self.path / DATA / key).is_file():
                    raise PtyengineError(f"{self.path}: data {unit} {chunk} is missing "
                                         f"({DATA}/{key})")  # fmt: skip
        try:
            return np.asarray(self.data[start:stop])
        except Exception as exc:
            for chunk in coords:  # find the culprit
                try:
                    self.data[tuple(slice(i * n, (i + 1) * n)
                                    for i, n in zip(chunk, chunks, strict=True))]  # fmt: skip
                except Exception as err:
                    raise PtyengineError(f"{self.path}: data {unit} {chunk} is corrupt or "
                                         f"truncated ({type(err).__name__}: {err})") from err
            raise PtyengineError(f"{self.path}: reading scan rows {start}:{stop} failed "
                                 f"({type(exc).__name__}: {exc})") from exc

    def iter_row_blocks(self, rows: int | None = None, prefetch: int = 2, workers: int = 1,
                        transform=None):  # fmt: skip
        """Yield ``(row_start, block)`` over the scan in order, ``rows`` rows per block
        (default: one chunk; in sharded data the inner chunk, not the whole shard file).

        ``prefetch`` blocks are read and decompressed ahead in ``workers`` background
        threads while the caller works on the current one (0: read in the caller's thread);
        memory holds at most ``prefetch + 1`` blocks. With ``workers`` ≥ 2 several blocks
        are decompressed at once (zarr runs Blosc on one thread per chunk), so reading can
        use more than one core; blocks still come in order. ``transform(row_start, block)``,
        if given, runs in the reading thread right after each block is read, and its result
        is yielded in place of the block (e.g. per-pattern sums: the reduction then shares
        the reading threads' cores and the block is freed where it was decompressed).
        """
        rows = int(rows or chunk_shape(self.data)[0])
        if rows < 1:
            raise PtyengineError(f"{self.path}: rows per block must be ≥ 1, got {rows}")
        if int(workers) < 1:
            raise PtyengineError(f"{self.path}: reader workers must be ≥ 1, got {workers}")

        def read(start: int):
            block = self.read_rows(start, min(start + rows, self.shape[0]))
            return block if transform is None else transform(start, block)

        starts = list(range(0, self.shape[0], rows))
        if prefetch < 1 or len(starts) < 2:
            for start in starts:
                yield start, read(start)
            return
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=int(workers),
                                thread_name_prefix="ptyengine-read") as pool:  # fmt: skip
            ahead = deque()
            for start in starts:
                ahead.append((start, pool.submit(read, start)))
                if len(ahead) > prefetch:
                    s0, fut = ahead.popleft()
                    yield s0, fut.result()
            while ahead:
                s0, fut = ahead.popleft()
                yield s0, fut.result()

    def close(self) -> None:
        if self.kind == "hdf5" and self._root is not None:
            self._root.close()
        self._root = None

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Dataset({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


def open_dataset(path, allow_incomplete: bool = False) -> Dataset:
    """Open a dataset read-only, checking its format, calibration, shape and completeness."""
    path = Path(path)
    if not path.exists():
        partial, hint = _partial(path), ""
        if partial != path and partial.exists():
            hint = f" ({partial} holds an interrupted write: re-run with --resume or delete it)"
        raise PtyengineError(f"{path} does not exist{hint}")
    kind = "zarr" if path.is_dir() else "hdf5"
    if kind == "hdf5" and path.suffix.lower() not in (".h5", ".hdf5") and not h5py.is_hdf5(path):
        raise PtyengineError(f"{path} is not a ptyengine dataset (.zarr or .h5); convert it "
                             f"first: ptyengine convert {path} -o NAME.zarr (see "
                             "ptyengine convert --help for the calibration it needs)")  # fmt: skip
    root, data, attrs = _open_tree(path, kind)
    try:
        if attrs is None:
            raise PtyengineError(f"{path}: not a ptyengine dataset: no {ATTRS!r} attributes; "
                                 f"convert it first: ptyengine convert {path} -o NAME.zarr")
        fmt = attrs.get("format") if isinstance(attrs, dict) else attrs
        if fmt != FORMAT:
            raise PtyengineError(f"{path}: unknown format {fmt!r} (expected {FORMAT!r})")
        version = attrs.get("format_version")
        if type(version) is not int or version < 1:
            raise PtyengineError(f"{path}: invalid format_version {version!r}")
        if version > FORMAT_VERSION:
            raise PtyengineError(f"{path}: format_version {version} is newer than this ptyengine "
                                 f"understands ({FORMAT_VERSION}); upgrade ptyengine")  # fmt: skip
        if attrs.get("calibration") is None:
            raise PtyengineError(f"{path}: calibration is missing")
        calibration = Calibration.from_dict(attrs["calibration"], source=str(path))
        if not isinstance(attrs.get("metadata", {}), dict):
            raise PtyengineError(f"{path}: metadata must be a mapping")
        if data is None:
            raise PtyengineError(f"{path}: no {DATA!r} array")
        if data.dtype.kind not in "fiu":
            raise PtyengineError(f"{path}: data has dtype {data.dtype}; expected real numbers")
        calibration.check_data_shape(data.shape, source=f"{path}: {DATA}")
        integrity.check_storage(path, kind, data, attrs.get("storage"))
        if attrs.get("complete") is not True and not allow_incomplete:
            raise PtyengineError(
                f"{path} is incomplete: {attrs.get('rows_written')} of {data.shape[0]} scan rows "
                "were written (the writer was interrupted); re-run with --resume or delete it")
    except BaseException:
        if kind == "hdf5":
            root.close()
        raise
    return Dataset(path, kind, root, data, attrs, calibration)


def format_bytes(n: float) -> str:
    """A size for people: '16 MiB', '1.859 GiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.4g} {unit}"
        n /= 1024
    return f"{n:.4g} TiB"


def _simulation_lines(meta: dict) -> list[str]:
    """The simulator's window and detector rule, for datasets that record them."""
    w, d = meta.get("window_pixels"), meta.get("field_sampling")
    if not isinstance(w, int) or not isinstance(d, list) or not d:
        return []
    m = (meta.get("simulation") or {}).get("detector_oversampling", 1)
    rule = "point samples at pixel centres" if m == 1 else f"mean of {m} × {m} points per pixel"
    return [f"simulation:  window {w} × {w} px ({w * float(d[0]):.4g} Å at {float(d[0]):.5g} Å"
            f"/px), detector {rule}"]


def describe(path) -> str:
    """A human summary of a dataset for ``ptyengine info`` (incomplete ones too)."""
    with open_dataset(path, allow_incomplete=True) as ds:
        c, a, p = ds.calibration, ds.attrs, Path(ds.path)
        raw = math.prod(ds.shape) * ds.dtype.itemsize
        disk = p.stat().st_size if p.is_file() else sum(
            (Path(r) / f).stat().st_size for r, _, files in os.walk(p) for f in files)  # fmt: skip
        status = "complete" if ds.complete else (
            f"INCOMPLETE: {ds.rows_written} of {ds.shape[0]} scan rows written")  # fmt: skip
        missing, expected = ds.missing_chunks()
        if missing:
            unit = "shard" if _sharded(ds.data) else "chunk"
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            status = (f"DAMAGED: {len(missing)} of {expected} data {unit} files missing "
                      f"({shown})" + ("" if ds.complete else f"; {status}"))
        (sy, sx), (dy, dx), (ay, ax) = c.scan_shape, c.scan_step, c.detector_angle_per_pixel
        abers = ", ".join(f"{k} = {v:g} {'rad' if k.startswith('phi') else 'Å'}"
                          for k, v in c.aberrations.items()) or "none"  # fmt: skip
        conv = ds.metadata.get("conversion")
        dose_from = conv.get("dose_from") if isinstance(conv, dict) else None
        dose = ("none (noise-free intensities)" if c.dose is None else
                f"{c.dose:.4g} e/Å² ({dose_from}: {c.counts_per_pattern:.4g} counts/pattern)"
                if dose_from == "inferred from the counts" else
                f"{c.dose:g} e/Å² ({c.counts_per_pattern:g} counts/pattern)")  # fmt: skip
        lines = [
            f"path:        {ds.path}",
            f"format:      {'Zarr v3' if ds.kind == 'zarr' else 'HDF5'}, {a.get('format')} "
            f"v{a.get('format_version')}, by {a.get('created_by', '?')}; {status}",
            f"data:        {ds.shape} (scan_y, scan_x, k_y, k_x) {ds.dtype}, "
            f"chunks {tuple(ds.data.chunks)}"
            + (f" in shard files of {tuple(ds.data.shards)}" if _sharded(ds.data) else ""),
            f"size:        {format_bytes(disk)} on disk, {format_bytes(raw)} raw "
            f"(compression ratio {raw / max(disk, 1):.2f})",
            "calibration:",
            f"  energy           {c.energy / 1e3:g} keV (λ = {c.wavelength:.6f} Å)",
            f"  semi-angle       {c.semiangle:g} mrad",
            f"  scan             {sy} × {sx} positions, step {dy:g} × {dx:g} Å, field "
            f"{sy * dy:g} × {sx * dx:g} Å, origin ({c.scan_origin[0]:.6g}, "
            f"{c.scan_origin[1]:.6g}) Å",
            f"  detector         {c.detector_shape[0]} × {c.detector_shape[1]} px, dk "
            f"{c.dk[0]:g} × {c.dk[1]:g} 1/Å = {ay:.4g} × {ax:.4g} mrad/pixel",
            f"  detector centre  ({c.detector_center[0]:g}, {c.detector_center[1]:g}) px",
            f"  rotation         {c.rotation:g}° (scan to detector), "
            f"transpose {'yes' if c.transpose else 'no'}",
            f"  aberrations      {abers}",
            f"  dose             {dose}",
            f"metadata:    {', '.join(ds.metadata) or 'none'}",
            *_simulation_lines(ds.metadata),
            f"arrays:      {'' if ds.arrays() else 'none'}",
        ]
        for name in ds.arrays():
            obj = ds._root[name]
            lines.append(f"  {name}  {tuple(obj.shape)} {obj.dtype}  "
                         f"{json.dumps(ds.array_attrs(name), ensure_ascii=False)}")  # fmt: skip
    return "\n".join(lines)
