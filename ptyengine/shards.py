"""Zarr v3 shard files written chunk by chunk, with bounded memory.

A sharded Zarr v3 array (codec ``sharding_indexed``, Zarr v3 specification:
https://zarr-specs.readthedocs.io/en/latest/v3/codecs/sharding-indexed/index.html) stores
each shard, a grid of inner chunks, in one file::

    [chunk bytes][chunk bytes]...[chunk bytes][index]

Every inner chunk is encoded on its own with the sharding codec's ``codecs`` (ptyengine:
bytes, Blosc zstd + bitshuffle, CRC32C). The index (``index_location = "end"``) is an
array of shape ``(*chunks_per_shard, 2)`` of little-endian uint64 ``(offset, nbytes)``
pairs, offsets counted from the start of the file, ``(2**64-1, 2**64-1)`` for an absent
chunk, encoded with the ``index_codecs`` (by default bytes + CRC32C: the 16·n index bytes
followed by their 4-byte checksum). Chunks may lie in any order; zarr writes them in Morton
order, which for ptyengine's shards (chunks stacked along the scan axis only) is scan
order, so the files written here are byte for byte those zarr writes.

zarr-python encodes a shard with all of it in memory. :class:`ShardStreamer` encodes each
chunk as it arrives and appends it to ``KEY.inprogress`` beside the shard's file ``KEY``;
once the shard's last chunk (or the array's last row) is in, it appends the index and
renames the file to ``KEY`` (``os.replace``), so a shard file is complete or absent. The
last shard of an array may reach past its end: like zarr, it is stored full-size, with
the chunks wholly past the end absent and the edge chunk padded to the full chunk shape
with the fill value. Codecs, chunk shapes and chunk keys all come from the array's own
metadata (set by :func:`ptyengine.io.storage_layout`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs.sharding import MAX_UINT_64, ShardingCodec, ShardingCodecIndexLocation, _ShardIndex
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from .errors import PtyengineError

INPROGRESS = ".inprogress"  # suffix of a shard file still being written


class ShardStreamer:
    """Writes whole chunks of leading-axis rows into the shard files of ``array``, a
    sharded zarr array whose chunks and shards span every axis but the first; the files
    go under ``directory`` (the array's directory in a local store)."""

    def __init__(self, array: zarr.Array, directory: Path):
        meta = array.metadata
        codec = meta.codecs[0] if len(meta.codecs) == 1 else None
        self.shape, self.shard_shape = tuple(array.shape), tuple(meta.chunk_grid.chunk_shape)
        if not isinstance(codec, ShardingCodec) or \
                codec.index_location != ShardingCodecIndexLocation.end or \
                tuple(codec.chunk_shape)[1:] != self.shape[1:] or \
                self.shard_shape[1:] != self.shape[1:]:  # fmt: skip
            raise PtyengineError(f"{directory}: not a layout the shard writer handles "
                                 f"({meta.codecs})")  # fmt: skip
        self.codec, self.chunk_shape = codec, tuple(codec.chunk_shape)
        self._per_shard = tuple(s // c for s, c in zip(self.shard_shape, self.chunk_shape,
                                                       strict=True))  # fmt: skip
        shard_spec = meta.get_chunk_spec((0,) * len(self.shape), array.config,
                                         default_buffer_prototype())  # fmt: skip
        self._spec = codec._get_chunk_spec(shard_spec)  # the spec of one inner chunk
        self._pipeline = codec.codec_pipeline
        self._meta, self._dir = meta, Path(directory)
        self._file = self._shard = self._index = None

    def path(self, shard: int) -> Path:
        """The file of shard number ``shard`` along the first axis."""
        return self._dir / self._meta.encode_chunk_key((shard, *[0] * (len(self.shape) - 1)))

    def discard_unfinished(self) -> None:
        """Delete shard files left half-written (by an interrupted run)."""
        self.close()
        for p in self._dir.rglob("*" + INPROGRESS):
            p.unlink()

    def write(self, row_start: int, block: np.ndarray) -> int | None:
        """Append rows ``row_start : row_start + len(block)`` (whole chunks, or ending at the
        array's end; in order, each shard from its first row). Returns the end row of the
        last shard this completed, else None."""
        rps, sy, done = self.shard_shape[0], self.shape[0], None
        row, stop = row_start, row_start + len(block)
        while row < stop:
            shard = row // rps
            end = min(stop, (shard + 1) * rps)
            self._append(shard, row, block[row - row_start:end - row_start])
            if end == min((shard + 1) * rps, sy):
                self._finish_shard()
                done = end
            row = end
        return done

    def _append(self, shard: int, row: int, rows: np.ndarray) -> None:
        rpc = self.chunk_shape[0]
        if self._shard != shard:
            if row != shard * self.shard_shape[0]:
                raise PtyengineError(f"{self.path(shard)}: a shard must be written from its "
                                     f"first row; got row {row}")  # fmt: skip
            self.close()
            tmp = Path(str(self.path(shard)) + INPROGRESS)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            self._file, self._shard = open(tmp, "wb"), shard
            self._index = np.full((*self._per_shard, 2), MAX_UINT_64, dtype="<u8")
        chunks = []
        for c0 in range(0, len(rows), rpc):
            chunk = rows[c0:c0 + rpc]
            if len(chunk) < rpc:  # the array's edge: stored padded with the fill value
                chunk = np.concatenate([chunk, np.full((rpc - len(chunk), *chunk.shape[1:]),
                                                       self._spec.fill_value, chunk.dtype)])
            nd = self._spec.prototype.nd_buffer.from_numpy_array(np.ascontiguousarray(chunk))
            chunks.append((nd, self._spec))
        first = row % self.shard_shape[0] // rpc
        for i, buf in enumerate(sync(self._pipeline.encode(chunks))):  # zarr's codecs: async
            raw = buf.as_numpy_array()
            self._index[first + i] = (self._file.tell(), raw.nbytes)
            self._file.write(raw)

    def _finish_shard(self) -> None:
        index = sync(self.codec._encode_shard_index(_ShardIndex(self._index)))
        self._file.write(index.as_numpy_array())
        self._file.close()
        tmp, self._file = self._file.name, None
        os.replace(tmp, self.path(self._shard))
        self._shard = self._index = None

    def close(self) -> None:
        """Close the open shard file, if any (it stays, unfinished, until discarded)."""
        if self._file is not None:
            self._file.close()
        self._file = self._shard = self._index = None
