"""Is what is on disk what the writer wrote? Checks of a dataset's metadata and files that
cost a listing or a small JSON read, never reading the data.

- :func:`check_json`: a ``zarr.json`` that is there must be JSON (else zarr raises deep
  inside with no file name).
- :func:`storage_record` / :func:`check_storage`: chunk checksums cover the stored bytes,
  not the metadata that says how to read them, so an edited ``data_type`` (float32 ->
  uint32 decodes without an error) would go unnoticed. The writer records dtype, shape,
  chunks, shards and a digest of ``data/zarr.json`` (without its attributes) in the
  ``ptyengine`` attributes; a reader refuses Zarr data that no longer match.
- :func:`missing_chunk_files`: every chunk (or shard) file is stored (``write_empty_chunks``),
  so a missing file means lost data; zarr would read it as zeros.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from .errors import PtyengineError

DATA = "data"


def check_json(meta: Path) -> None:
    """Raise a PtyengineError naming ``meta`` (a zarr.json) if it is there but not JSON."""
    try:
        text = meta.read_bytes() if meta.is_file() else None
        if text is not None:
            json.loads(text)
    except (OSError, ValueError) as exc:
        raise PtyengineError(f"{meta}: not valid JSON ({exc}); the store's metadata is "
                             "damaged: restore it from a copy or write the data again") from None


def _array_json_digest(path: Path) -> str | None:
    """Digest of ``data/zarr.json`` without its attributes: every field that says how the
    stored bytes are read (data type, shape, chunk grid, codecs, fill value)."""
    try:
        meta = json.loads((path / DATA / "zarr.json").read_bytes())
    except (OSError, ValueError):
        return None
    meta.pop("attributes", None)
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:16]


def storage_record(path: Path, kind: str, data) -> dict:
    """How ``data`` of the store ``path`` ("zarr" or "hdf5") is stored: dtype, shape,
    chunks, shards and (Zarr) the digest of ``data/zarr.json``."""
    shards = getattr(data, "shards", None)
    record = {"dtype": data.dtype.str, "shape": [int(s) for s in data.shape],
              "chunks": None if data.chunks is None else [int(c) for c in data.chunks],
              "shards": None if not shards else [int(s) for s in shards]}  # fmt: skip
    if kind == "zarr":
        record["array_json"] = _array_json_digest(path)
    return record


def check_storage(path: Path, kind: str, data, stored) -> None:
    """Zarr: refuse data whose metadata (plain JSON, easily edited) no longer says what
    the writer recorded in ``stored``. HDF5 describes its data in the same binary file and
    datasets written before the record existed (``stored`` None) are not checked."""
    if kind != "zarr" or not isinstance(stored, dict):
        return
    now, meta = storage_record(path, kind, data), f"{DATA}/zarr.json"
    for key in ("dtype", "shape", "chunks", "shards"):
        if stored.get(key) != now[key]:
            show = (lambda v: np.dtype(v).name) if key == "dtype" else (
                lambda v: tuple(v) if isinstance(v, list) else v)  # fmt: skip
            raise PtyengineError(
                f"{path}: {meta} says {key} {show(now[key])} but the data were written as "
                f"{show(stored.get(key))}; the metadata was edited: restore it")
    if stored.get("array_json") not in (None, now["array_json"]):
        raise PtyengineError(f"{path}: {meta} changed after the data were written (its codecs, "
                             "fill value or another field differ): restore it")  # fmt: skip


def missing_chunk_files(path: Path, kind: str, data, rows: int, chunks) -> tuple[list[str], int]:
    """(names of the missing stored chunk files among the first ``rows`` scan rows, how
    many files there should be); ``chunks``: the shape of one stored file (the shard, when
    sharded). Zarr: one walk of ``data/``. HDF5 keeps its chunks inside one file: only
    their count is known (names are then ``chunk N`` placeholders)."""
    shape = tuple(data.shape)
    grid = [math.ceil(rows / chunks[0])] + [math.ceil(s / n) for s, n in
                                            zip(shape[1:], chunks[1:], strict=True)]
    expected = math.prod(grid)
    if kind == "hdf5":
        try:
            stored = data.id.get_num_chunks() if data.chunks else expected
        except (AttributeError, RuntimeError):  # an HDF5 library without the call
            stored = expected
        return [f"chunk {i}" for i in range(max(expected - stored, 0))], expected
    root = Path(path) / DATA
    present = {Path(r, f).relative_to(root).as_posix()
               for r, _, files in os.walk(root) for f in files}  # fmt: skip
    keys = (data.metadata.encode_chunk_key(c) for c in np.ndindex(*grid))
    return [f"{DATA}/{k}" for k in keys if k not in present], expected
