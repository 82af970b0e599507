"""Convert 4D-STEM data from detector formats into a ptyengine dataset, as a stream.

A :class:`Source` reads scan rows lazily: ``.npy`` and raw binary (a given shape, dtype,
offset and order) with explicit reads of each block's bytes (:class:`FileArray`; not a memory
map, whose pages would stay resident and count against RSS limits), and through
rosettasciio (``lazy=True``: a dask array of which only the requested rows are computed)
Merlin ``.mib``, EMPAD ``.xml``/``.raw``, DigitalMicrograph ``.dm3``/``.dm4`` and EMD
(NCEM/py4DSTEM) ``.emd``/``.h5``. Dectris Arina ``*_master.h5`` files are read with h5py
directly (rosettasciio's reader loads the whole scan into memory). :func:`convert` crops
and bins the detector per block of scan rows and writes them through
:func:`io.create_dataset`: memory holds about one stored chunk (plus one input sub-block of
at most ~64 MiB), whatever the size of the data.

Calibration: what the reader gives (scan step, detector pixel size, detector origin,
energy, convergence angle) seeds it; the caller's values win, including the probe's
aberrations (Krivanek coefficients, Å), the dose (e/Å²) and the scan origin (Å). Integer
data are taken as electron counts: without a given dose, the dose is inferred as the mean
counts per pattern / (scan step area), summed exactly while converting, and marked
``metadata["conversion"]["dose_from"] = "inferred from the counts"``. The calibration is
range-checked (:class:`Calibration`), and the bright-field disc of the mean pattern is
compared with semiangle/(λ·dk) before anything is written
(:func:`calibration.check_bright_field_disc`: a note beyond 10 %, an error beyond 2×).
Detector options (``dk``,
``detector_angle``, ``detector_center``) are in pixels of the *input* detector; cropping
and binning transform them: pixel p of the output is input pixels p·N … p·N+N−1 (after the
crop), so ``center' = (center − crop_origin − (N−1)/2) / N`` and ``dk' = N·dk``. The mean
pattern is that of up to 16 scan rows spread over the scan (at most ~256 MiB of them); without
a centre from the caller or the reader, the centre is its centre of mass (the unscattered
disk dominates it).

A detector mask of dead and hot pixels (``mask``, in input pixels: 1 a pixel that counts)
is cropped and binned like the data (a binned pixel counts only if all of its input pixels
do), checked against the output calibration (:func:`dataset.check_mask`) and stored as the
dataset's ``detector_mask`` array; its hidden pixels are left out of the mean pattern that
gives the default centre and the disc check.

Each stored chunk's CRC32 (of its C-order bytes, as written) is kept in the metadata
(``chunk_crc32``); :func:`verify` re-reads every chunk and compares. An interrupted
conversion resumes at the first unwritten chunk when the fingerprint (source files with
their sizes and modification times, reading and conversion options) is unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from . import io, physics
from .calibration import Calibration, CalibrationError, check_bright_field_disc, missing_message
from .dataset import MASK_ARRAY, check_mask
from .errors import PtyengineError
from .filearray import FileArray, npy_array

FORMATS = ("npy", "raw", "mib", "empad", "dm", "emd", "arina")
SUFFIXES = {".npy": "npy", ".bin": "raw", ".dat": "raw", ".mib": "mib", ".xml": "empad",
            ".dm3": "dm", ".dm4": "dm", ".emd": "emd"}  # fmt: skip
SUB_BLOCK_BYTES = 64 * 2**20  # input read per step while filling one output chunk
COM_ROWS = 16  # scan rows averaged for the mean pattern (default centre, disc check) ...
MEAN_BYTES = 256 * 2**20  # ... but no more than this much input
HOW = {"energy": "--energy (kV)", "semiangle": "--semiangle (mrad)",
       "scan_step": "--scan-step (Å)",
       "dk": "--dk (1/Å per pixel) or --detector-angle (mrad per pixel)"}  # fmt: skip
INFERRED = "inferred from the counts"  # metadata["conversion"]["dose_from"] of such a dose


class Source(Protocol):
    """Lazily read 4D-STEM data: ``shape`` (Sy, Sx, Ky, Kx), ``dtype`` (native byte order),
    ``read_rows(start, stop)`` → numpy array of those scan rows, ``hints`` (calibration
    fields the file holds, in ptyengine units), ``identity`` (JSON: format, files with size
    and mtime, reading options; for resumption), ``close()``."""

    path: Path
    format: str
    shape: tuple[int, int, int, int]
    dtype: np.dtype
    hints: dict
    identity: dict

    def read_rows(self, start: int, stop: int) -> np.ndarray: ...

    def close(self) -> None: ...


class ArraySource:
    """A :class:`Source` over a row-sliceable array (memmap, h5py dataset, dask array, or
    :class:`_Frames`); a 3-D stack of frames (N, Ky, Kx) is read as ``scan_shape`` rows."""

    def __init__(self, data, path, fmt: str, scan_shape=None, hints=None, files=(),
                 options=None, closer=None, notes=()):  # fmt: skip
        self.path, self.format, self._data, self._closer = Path(path), fmt, data, closer
        self.hints = {k: v for k, v in (hints or {}).items() if v is not None}
        self.notes = list(notes)  # about the file's calibration (e.g. unusable attributes)
        shape = tuple(int(s) for s in data.shape)
        if 0 in shape:
            raise PtyengineError(f"{path} holds no data: shape {shape}")
        if len(shape) == 4 and scan_shape is not None and tuple(scan_shape) != shape[:2]:
            data = self._data = data.reshape((-1, *shape[2:]))
            shape = data.shape
        if len(shape) == 3:
            if scan_shape is None:
                side = math.isqrt(shape[0])
                if side * side != shape[0]:
                    raise PtyengineError(f"{path}: {shape[0]} frames with no scan shape; "
                                         "give --scan-shape Sy,Sx")  # fmt: skip
                scan_shape = (side, side)
            if math.prod(scan_shape) != shape[0]:
                raise PtyengineError(f"{path}: scan shape {tuple(scan_shape)} needs "
                                     f"{math.prod(scan_shape)} frames; the file has {shape[0]}")
            shape, self._frames = (*scan_shape, *shape[1:]), True
        elif len(shape) == 4:
            self._frames = False
        else:
            raise PtyengineError(f"{path}: expected 4-D data (or 3-D frames), got {shape}")
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(data.dtype).newbyteorder("=")
        if self.dtype.kind not in "biuf":
            raise PtyengineError(f"{path}: data of dtype {self.dtype} are not intensities")
        files = [Path(f) for f in (files or [path])]
        self.identity = {"format": fmt, "options": options or {}, "files": [
            [str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]}

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        sx = self.shape[1] if self._frames else 1
        try:
            block = self._data[start * sx:stop * sx]
            if hasattr(block, "compute"):  # dask: read only these rows
                block = block.compute()
        except (OSError, ValueError) as exc:  # truncated files, missing HDF5 filters, ...
            hint = " (pip install hdf5plugin)" if "filter" in str(exc) else ""
            raise PtyengineError(f"{self.path}: reading scan rows {start}:{stop} failed "
                                 f"({exc}){hint}") from None  # fmt: skip
        block = np.asarray(block).reshape(stop - start, *self.shape[1:])
        return block.astype(self.dtype, copy=False)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()
        self._data = self._closer = None


class _Frames:
    """Frames of several (N_i, Ky, Kx) h5py datasets seen as one stack (Arina data files)."""

    def __init__(self, parts):
        self.parts = parts
        self.starts = np.cumsum([0] + [p.shape[0] for p in parts])
        self.shape, self.dtype = (int(self.starts[-1]), *parts[0].shape[1:]), parts[0].dtype

    def __getitem__(self, sl: slice) -> np.ndarray:
        out, (lo, hi) = [], (sl.start, sl.stop)
        for p, s in zip(self.parts, self.starts[:-1], strict=True):
            a, b = max(lo - s, 0), min(hi - s, p.shape[0])
            if a < b:
                out.append(p[a:b])
        return np.concatenate(out)


def _pair(value, name: str, kind=float):
    if value is None:
        return None
    vals = tuple(kind(v) for v in np.atleast_1d(value))
    if len(vals) not in (1, 2):
        raise PtyengineError(f"{name} takes one or two values, got {value!r}")
    return vals * (3 - len(vals))


def _num(value) -> float | None:
    """A file's attribute as a finite number, None when it is not one (e.g. a string)."""
    try:
        v = float(np.asarray(value).ravel()[0])
    except (TypeError, ValueError, IndexError):
        return None
    return v if math.isfinite(v) else None


def _length_A(units) -> float | None:
    u = str(units or "").replace(" ", "").replace("µ", "u")
    return {"Å": 1.0, "A": 1.0, "nm": 10.0, "pm": 0.01, "um": 1e4, "m": 1e10}.get(u)


def _axes_hints(axes, shape) -> dict:
    """scan_step, dk or detector_angle, detector_center from rosettasciio axes dicts."""
    axes = sorted(axes, key=lambda a: a.get("index_in_array", 0))
    if len(axes) != len(shape) or len(shape) not in (3, 4):
        return {}
    hints, det = {}, axes[-2:]
    steps = [(_length_A(a.get("units")), _num(a.get("scale"))) for a in axes[:-2]]
    if len(steps) == 2 and all(f and s and s > 0 for f, s in steps):
        hints["scan_step"] = tuple(f * s for f, s in steps)
    units = {str(a.get("units") or "").replace(" ", "") for a in det}
    scales = [_num(a.get("scale")) or 0.0 for a in det]
    per = {"1/Å": 1.0, "Å^-1": 1.0, "1/A": 1.0, "A^-1": 1.0, "1/nm": 0.1, "nm^-1": 0.1}
    if len(units) == 1 and min(scales) > 0 and units & {*per, "mrad"}:
        (u,) = units
        key = "detector_angle" if u == "mrad" else "dk"
        hints[key] = tuple(s * per.get(u, 1.0) for s in scales)
        offsets = [_num(a.get("offset")) or 0.0 for a in det]
        if any(offsets):  # an origin that is not the first pixel: k = 0 lies there
            hints["detector_center"] = tuple(-o / s for o, s in zip(offsets, scales, strict=True))
    return hints


def _rsciio_source(path: Path, fmt: str, scan_shape) -> ArraySource:
    import importlib

    module = {"mib": "quantumdetector", "empad": "empad", "dm": "digitalmicrograph"}.get(fmt, fmt)
    try:
        reader = importlib.import_module(f"rsciio.{module}").file_reader
    except ImportError as exc:
        raise PtyengineError(f"{path}: reading {fmt} files needs rosettasciio ({exc}); "
                             "pip install 'ptyengine[formats]'") from None  # fmt: skip
    files, kwargs = [path], {"lazy": True}
    if fmt == "mib":
        if scan_shape is not None:
            kwargs["navigation_shape"] = tuple(scan_shape)[::-1]  # rosettasciio: (x, y)
        files += [p for p in [path.with_suffix(".hdr")] if p.exists()]
    elif fmt == "empad":
        files.append(path.parent / _empad_raw(path))
    elif fmt == "emd":
        kwargs["stack_group"] = False
    try:
        found = reader(str(path), **kwargs)
    except Exception as exc:  # the readers raise anything on a foreign file
        raise PtyengineError(f"{path}: not a readable {fmt} file "
                             f"({type(exc).__name__}: {exc})") from None  # fmt: skip
    found = [d for d in found if getattr(d["data"], "ndim", 0) in (3, 4)]
    if not found:
        raise PtyengineError(f"{path}: holds no 3-D or 4-D data")
    d = max(found, key=lambda d: d["data"].ndim)  # the first 4-D data set
    if fmt == "empad":  # frames of 130 × 128 float32 (two footer rows)
        need, size = math.prod(d["data"].shape[:-2]) * 130 * 128 * 4, files[1].stat().st_size
        if size < need:
            raise PtyengineError(f"{files[1]}: the scan in {path.name} needs {need} bytes; "
                                 f"the file has {size} bytes (truncated?)")  # fmt: skip
    hints = _axes_hints(d.get("axes") or [], d["data"].shape)
    tem = ((d.get("metadata") or {}).get("Acquisition_instrument") or {}).get("TEM") or {}
    inst = {k: tem.get(k) for k in ("beam_energy", "convergence_angle")}
    for tag, (name, fn) in (d.get("mapping") or {}).items():  # DM tags -> those names
        value, name = d.get("original_metadata") or {}, name.rsplit(".", 1)[-1]
        for key in tag.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if name in inst and inst[name] is None and isinstance(value, int | float):
            inst[name] = fn(value) if fn else value
    notes = []
    for name, key, scale in (("beam_energy", "energy", 1e3), ("convergence_angle", "semiangle",
                                                              1.0)):  # kV -> eV; mrad
        value = inst[name]
        if value is not None and _num(value) is None:
            notes.append(f"the file's {name} {value!r} is not a number: not used")
        elif value:
            hints[key] = _num(value) * scale
    return ArraySource(d["data"], path, fmt, scan_shape, hints, files,
                       {"scan_shape": scan_shape}, notes=notes)  # fmt: skip


def _empad_raw(xml: Path) -> str:
    import xml.etree.ElementTree as ET

    try:
        node = ET.parse(xml).getroot().find("raw_file")
    except ET.ParseError as exc:
        raise PtyengineError(f"{xml}: not an EMPAD XML file ({exc})") from None
    if node is None or not node.get("filename"):
        raise PtyengineError(f"{xml}: no <raw_file filename=...> (not an EMPAD XML file)")
    return Path(node.get("filename")).name


def _empad_xml(raw: Path) -> Path | None:
    """The EMPAD XML file beside ``raw`` that names it, if any."""
    for xml in sorted(raw.parent.glob("*.xml")):
        try:
            if _empad_raw(xml) == raw.name:
                return xml
        except PtyengineError:
            continue
    return None


def _arina_source(path: Path, scan_shape) -> ArraySource:
    import h5py

    try:
        import hdf5plugin  # noqa: F401  (bitshuffle/LZ4 filter of the detector's files)
    except ImportError:
        pass
    f = h5py.File(path, "r")
    try:
        group = f["entry/data"]
        names = sorted(n for n in group if n.startswith("data_"))
        parts = [group[n] for n in names]
        files = [path] + [Path(group.get(n, getlink=True).filename) for n in names
                          if isinstance(group.get(n, getlink=True), h5py.ExternalLink)]
        files = [p if p.is_absolute() else path.parent / p for p in files]
        hints, notes = {}, []
        wl = f.get("entry/instrument/beam/incident_wavelength")
        lam = None if wl is None else _num(wl[()])
        if wl is not None and not (lam and lam > 0):
            notes.append(f"the file's incident_wavelength {wl[()]!r} is not a positive "
                         "number: not used")  # fmt: skip
        elif lam:  # Å -> kinetic energy (relativistic)
            m0c2, hc = 510998.95, 12398.419843320026
            hints["energy"] = m0c2 * (math.sqrt(1 + (hc / lam / m0c2) ** 2) - 1)
        meta = path.with_name(path.name.replace("_master.h5", ".h5"))
        if meta != path and meta.exists():
            with h5py.File(meta, "r") as m:
                step = m["STEM Metadata"].attrs.get("Pixel Size") if "STEM Metadata" in m else None
            if step is not None and not (_num(step) or 0) > 0:
                notes.append(f"{meta.name}'s Pixel Size {step!r} is not a positive number: "
                             "not used")  # fmt: skip
            elif step is not None:
                hints["scan_step"] = (_num(step) * 10,) * 2  # nm -> Å
                files.append(meta)
        if not parts:
            raise PtyengineError(f"{path}: no /entry/data/data_* datasets (not an Arina master)")
        return ArraySource(_Frames(parts), path, "arina", scan_shape, hints, files,
                           {"scan_shape": scan_shape}, closer=f.close, notes=notes)  # fmt: skip
    except KeyError as exc:
        f.close()
        raise PtyengineError(f"{path}: not an Arina master file ({exc})") from None
    except BaseException:
        f.close()
        raise


def detect_format(path: Path) -> str:
    """The format of ``path`` from its suffix (HDF5 files: from their contents)."""
    suffix = path.suffix.lower()
    if suffix == ".raw":  # EMPAD when an XML beside it names it, else plain raw binary
        return "raw" if _empad_xml(path) is None else "empad"
    if suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if "entry/data" in f:
                    return "arina"
                if "version_major" in f.attrs:
                    return "emd"
        except OSError as exc:
            raise PtyengineError(f"{path}: not an HDF5 file ({exc})") from None
        raise PtyengineError(f"{path}: unknown HDF5 layout (neither EMD nor Arina); "
                             f"give --format, one of {', '.join(FORMATS)}")  # fmt: skip
    if suffix not in SUFFIXES:
        raise PtyengineError(f"{path}: unknown format {suffix or '(no suffix)'!r}; "
                             f"give --format, one of {', '.join(FORMATS)}")  # fmt: skip
    return SUFFIXES[suffix]


def _file_source(data: FileArray, path: Path, fmt: str, scan_shape, options) -> ArraySource:
    try:
        return ArraySource(data, path, fmt, scan_shape, options=options, closer=data.close)
    except BaseException:
        data.close()
        raise


def open_source(path, format: str | None = None, shape=None, dtype=None, offset: int = 0,
                order: str = "C", scan_shape=None) -> ArraySource:  # fmt: skip
    """Open ``path`` lazily as a :class:`Source`. ``shape`` (Sy, Sx, Ky, Kx), ``dtype``,
    ``offset`` (bytes) and ``order`` describe raw binary; ``scan_shape`` (Sy, Sx) lays a
    stack of frames (or a differently shaped scan) out as scan rows."""
    path = Path(path)
    if not path.is_file():
        raise PtyengineError(f"{path} does not exist or is not a file")
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise PtyengineError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
    if fmt != "raw" and (shape is not None or dtype is not None or offset):
        raise PtyengineError(f"{path}: shape, dtype and offset are for raw binary input only")
    scan_shape = None if scan_shape is None else tuple(int(s) for s in scan_shape)
    if fmt == "npy":
        return _file_source(npy_array(path), path, fmt, scan_shape,
                            {"scan_shape": scan_shape})  # fmt: skip
    if fmt == "raw":
        if shape is None or dtype is None or scan_shape is not None:
            raise PtyengineError(f"{path}: raw binary needs --shape Sy,Sx,Ky,Kx and --dtype "
                                 "(and no --scan-shape)")  # fmt: skip
        shape = tuple(int(s) for s in shape)
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise PtyengineError(f"{path}: unknown dtype {dtype!r}") from None
        if len(shape) != 4 or min(shape) < 1 or order not in ("C", "F") or offset < 0:
            raise PtyengineError(f"{path}: raw needs a 4-D shape of positive sizes, order C "
                                 f"or F and offset ≥ 0 (got {shape}, {order!r}, {offset})")
        expected, actual = offset + math.prod(shape) * dt.itemsize, path.stat().st_size
        if expected != actual:
            raise PtyengineError(
                f"{path}: shape {shape} of {dt} at offset {offset} needs {expected} bytes; the "
                f"file has {actual} bytes")  # fmt: skip
        return _file_source(FileArray(path, dt, shape, offset, order), path, fmt, scan_shape,
                            {"shape": shape, "dtype": dt.str, "offset": offset, "order": order,
                             "scan_shape": scan_shape})  # fmt: skip
    if fmt == "arina":
        return _arina_source(path, scan_shape)
    if fmt == "empad" and path.suffix.lower() != ".xml":
        xml = _empad_xml(path)
        if xml is None:
            raise PtyengineError(f"{path}: no EMPAD XML file beside it names it")
        path = xml
    return _rsciio_source(path, fmt, scan_shape)


@dataclass(frozen=True)
class Geometry:
    """Detector crop ``(y0, y1, x0, x1)`` in input pixels, then ``binning`` × ``binning``."""

    crop: tuple[int, int, int, int]
    binning: int = 1

    @property
    def shape(self) -> tuple[int, int]:
        y0, y1, x0, x1 = self.crop
        return ((y1 - y0) // self.binning, (x1 - x0) // self.binning)

    def apply(self, block: np.ndarray, dtype: np.dtype) -> np.ndarray:
        y0, y1, x0, x1 = self.crop
        n, (ky, kx) = self.binning, self.shape
        block = block[:, :, y0:y0 + ky * n, x0:x0 + kx * n]
        if n > 1:  # uint16 sums of up to 65537 pixels fit in uint32
            small = block.dtype.itemsize <= 2 and n * n <= 65537
            acc = {"f": np.float64, "i": np.int64}.get(block.dtype.kind,
                                                       np.uint32 if small else np.uint64)
            block = block.reshape(*block.shape[:2], ky, n, kx, n).sum(axis=(3, 5), dtype=acc)
        if dtype.kind == "u" and block.dtype.itemsize > dtype.itemsize and block.size:
            top = block.max()
            if top > np.iinfo(dtype).max:
                raise PtyengineError(f"binned values up to {top} do not fit in {dtype}")
        return np.ascontiguousarray(block, dtype=dtype)


def parse_crop(text: str | None, detector_shape) -> tuple[int, int, int, int]:
    """``"y0:y1,x0:x1"`` (Python slices; empty ends allowed) → (y0, y1, x0, x1)."""
    ky, kx = detector_shape
    if not text:
        return (0, ky, 0, kx)
    try:
        parts = [slice(*[int(v) if v.strip() else None for v in p.split(":")])
                 for p in text.split(",")]  # fmt: skip
        (y0, y1, sy), (x0, x1, sx) = (s.indices(k) for s, k in zip(parts, (ky, kx), strict=True))
    except (ValueError, TypeError):
        raise PtyengineError(f"crop must be y0:y1,x0:x1, got {text!r}") from None
    if sy != 1 or sx != 1 or y1 <= y0 or x1 <= x0:
        raise PtyengineError(f"crop {text!r} is empty or strided on a {ky} × {kx} detector")
    return (y0, y1, x0, x1)


def output_dtype(dtype: np.dtype, binning: int) -> np.dtype:
    """Counts stay unsigned integers (uint32 once binned), floats stay float, signed
    integers become float32 (int64: float64)."""
    if dtype.kind in "bu":
        if binning > 1 or dtype.itemsize > 4:
            return np.dtype("uint32")
        return np.dtype("uint8") if dtype.kind == "b" else dtype
    return np.dtype("float64" if dtype.itemsize > 4 else "float32")


def mean_pattern(source: Source, rows: int = COM_ROWS) -> np.ndarray:
    """Mean pattern (input pixels, float64) of up to ``rows`` evenly spaced scan rows, and
    of no more than :data:`MEAN_BYTES` of input (at least one row)."""
    row_bytes = math.prod(source.shape[1:]) * source.dtype.itemsize
    rows = max(1, min(rows, source.shape[0], MEAN_BYTES // max(row_bytes, 1)))
    picks = np.unique(np.linspace(0, source.shape[0] - 1, rows).round()).astype(int)
    total = np.zeros(source.shape[2:], np.float64)
    for r in picks:
        total += np.nan_to_num(source.read_rows(r, r + 1).astype(np.float64)).sum(axis=(0, 1))
    return total / (len(picks) * source.shape[1])


def center_of_mass(pattern: np.ndarray, path) -> tuple[float, float]:
    """Centre of mass (pixels) of a mean pattern (negative values count as zero)."""
    total = np.clip(pattern, 0, None)
    if not total.sum() > 0:
        raise CalibrationError(f"{path}: the mean pattern holds no counts; give "
                               "--center cy,cx")  # fmt: skip
    ky, kx = np.indices(total.shape)
    return (float((ky * total).sum() / total.sum()), float((kx * total).sum() / total.sum()))


def build_calibration(source: Source, geometry: Geometry, given: dict | None = None,
                      pattern: np.ndarray | None = None):  # fmt: skip
    """(Calibration of the output, where the centre came from, notes). ``given`` (caller's
    values, they win over the file's): energy (eV), semiangle (mrad), scan_step (Å), dk
    (1/Å per input pixel) or detector_angle (mrad per input pixel), detector_center (input
    pixels), rotation (°), transpose, aberrations ({name: Å or rad}), dose (e/Å², or
    "none": no dose, not even inferred), scan_origin (Å). ``pattern``: the mean pattern in
    input pixels (:func:`mean_pattern`; read here if None), for the default centre and the
    bright-field disc check. Every missing field is named at once."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    notes = [f"{k} {given[k]} given: the file's {v} is not used" for k, v in source.hints.items()
             if k in given and not np.allclose(np.asarray(given[k], float), v, rtol=1e-6)]
    notes += getattr(source, "notes", [])
    fields = {**source.hints, **given}
    if given.get("dk") is None and given.get("detector_angle") is not None:
        fields.pop("dk", None)  # the caller's angle beats the file's dk
    if fields.get("dk") is None and fields.get("detector_angle") is not None \
            and fields.get("energy") is not None:
        lam = physics.wavelength(float(fields["energy"]))
        fields["dk"] = tuple(a * 1e-3 / lam for a in _pair(fields["detector_angle"], "angle"))
    missing = [k for k in ("energy", "semiangle", "scan_step", "dk") if fields.get(k) is None]
    if missing and not (missing == ["dk"] and fields.get("detector_angle") is not None):
        raise CalibrationError(f"{source.path}: {missing_message(missing, HOW)}")
    if pattern is None:
        pattern = mean_pattern(source)
    center_from = "given" if "detector_center" in given else "file"
    if fields.get("detector_center") is None:
        fields["detector_center"] = center_of_mass(pattern, source.path)
        center_from = "mean-pattern COM"
    n, (y0, _, x0, _) = geometry.binning, geometry.crop
    cy, cx = _pair(fields["detector_center"], "detector_center")
    dk = _pair(fields["dk"], "dk")
    dose = fields.get("dose")
    try:
        cal = Calibration(
            energy=float(fields["energy"]), semiangle=float(fields["semiangle"]),
            scan_shape=source.shape[:2], scan_step=_pair(fields["scan_step"], "scan_step"),
            detector_shape=geometry.shape, dk=(dk[0] * n, dk[1] * n),
            detector_center=((cy - y0 - (n - 1) / 2) / n, (cx - x0 - (n - 1) / 2) / n),
            rotation=float(fields.get("rotation") or 0.0),
            transpose=bool(fields.get("transpose")),
            aberrations=dict(fields.get("aberrations") or {}),
            dose=None if dose == "none" else dose,
            scan_origin=_pair(fields.get("scan_origin", (0.0, 0.0)), "scan_origin"))
        out_pattern = geometry.apply(pattern[None, None], np.dtype(np.float64))[0, 0]
        disc = check_bright_field_disc(cal, out_pattern)
    except CalibrationError as exc:
        raise CalibrationError(f"{source.path}: {exc}") from None
    if disc:
        notes.append(disc)
    return cal, center_from, notes


@dataclass
class Report:
    """What :func:`convert` did."""

    output: Path
    shape: tuple
    dtype: str
    rows_per_chunk: int
    resumed_at: int
    seconds: float
    bytes_read: int
    verified: str | None
    notes: list[str] = field(default_factory=list)


def _crc(block: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(block)).cast("B"))


def convert(source: Source, output, calibration: dict | None = None, crop=None,
            binning: int = 1, resume: bool = False, overwrite: bool = False,
            verify_after: bool = True, rows_per_chunk: int | None = None, progress=None,
            log=None, mask=None) -> Report:  # fmt: skip
    """Stream ``source`` into the dataset ``output`` (``.zarr``/``.h5``); see the module
    docstring. ``crop``: (y0, y1, x0, x1) or a ``"y0:y1,x0:x1"`` string; ``progress(n)``:
    n more scan rows are on disk; ``log(text)``: notes (also in the report). ``mask``: a
    detector mask in input pixels (:func:`output_mask`), stored as the dataset's
    ``detector_mask``. ``seconds`` in the report leave the verification out."""
    import time

    log = log or (lambda text: None)
    t0 = time.perf_counter()
    if not isinstance(binning, int) or binning < 1:
        raise PtyengineError(f"bin must be a positive integer, got {binning!r}")
    if crop is not None and not isinstance(crop, str):
        crop = "{}:{},{}:{}".format(*crop)
    geometry = Geometry(parse_crop(crop, source.shape[2:]), binning)
    if min(geometry.shape) < 1:
        raise PtyengineError(f"bin {binning} leaves no pixels of the {crop} detector crop")
    notes = []
    y0, y1, x0, x1 = geometry.crop
    if (y1 - y0) % binning or (x1 - x0) % binning:
        notes.append(f"the crop is not a multiple of bin {binning}: trailing pixels dropped")
    pattern = None
    if mask is not None:  # dead and hot pixels out of the default centre and disc check
        in_mask = _input_mask(mask, source)
        pattern = mean_pattern(source) * in_mask
    cal, center_from, more = build_calibration(source, geometry, calibration, pattern)
    notes += more
    out_mask = None if mask is None else output_mask(in_mask, geometry, cal)
    dtype = output_dtype(source.dtype, binning)
    dose_from = "given" if (calibration or {}).get("dose") not in (None, "none") else None
    infer_dose = cal.dose is None and (calibration or {}).get("dose") != "none" \
        and dtype.kind in "bu"  # integers: electron counts
    fingerprint = hashlib.sha256(json.dumps(
        [source.identity, geometry.crop, binning, dtype.str], sort_keys=True).encode()).hexdigest()
    output, old = Path(output), []
    partial = Path(str(output) + ".partial")
    old_sums = []
    if resume and partial.exists():
        try:
            with io.open_dataset(partial, allow_incomplete=True) as ds:
                old = list(ds.metadata.get("chunk_crc32") or [])
                old_sums = list(ds.metadata.get("chunk_sums") or [])
        except PtyengineError:
            pass
    rpc = io.storage_layout((*cal.scan_shape, *cal.detector_shape), dtype,
                            rows_per_chunk).chunks[0]  # fmt: skip
    metadata = {"fingerprint": fingerprint, "source": source.identity,
                "conversion": {"crop": list(geometry.crop), "bin": binning,
                               "center_from": center_from,
                               **({"dose_from": dose_from} if dose_from else {})},
                "rows_per_chunk": rpc, "chunk_crc32": old,
                "checksum": "zlib.crc32 of each chunk's C-order bytes"}  # fmt: skip
    if infer_dose:  # the sum of each chunk's counts, for the dose (kept for a resume)
        metadata["chunk_sums"] = old_sums
    writer = io.create_dataset(output, cal, dtype, rpc, metadata, overwrite, resume)
    sy, start = cal.scan_shape[0], writer.rows_written
    if writer.resumed and len(old) < math.ceil(start / rpc):
        writer.close()
        notes.append(f"{partial} lacks the checksums of its chunks; starting fresh")
        writer = io.create_dataset(output, cal, dtype, rpc, {**metadata, "chunk_crc32": []},
                                   overwrite)  # fmt: skip
        start = 0
    elif writer.resume_note:
        notes.append(writer.resume_note)
    done = math.ceil(start / rpc)
    writer.metadata["chunk_crc32"] = old[:done] if writer.resumed else []
    if infer_dose:
        sums = writer.metadata["chunk_sums"] = old_sums[:done] if writer.resumed else []
        if len(sums) < done:  # a partial from before sums were kept: no dose from it
            infer_dose = False
            del writer.metadata["chunk_sums"]
    for n in notes:
        log(n)
    if start and progress:
        progress(start)
    row_bytes = math.prod(source.shape[1:]) * source.dtype.itemsize
    sub = max(1, SUB_BLOCK_BYTES // row_bytes)
    negative = nonfinite = 0
    try:
        for r0 in range(start, sy, rpc):
            r1 = min(r0 + rpc, sy)
            block = np.empty((r1 - r0, *cal.scan_shape[1:], *cal.detector_shape), dtype)
            for a in range(r0, r1, sub):
                b = min(a + sub, r1)
                try:
                    block[a - r0:b - r0] = geometry.apply(source.read_rows(a, b), dtype)
                except PtyengineError as exc:
                    raise PtyengineError(f"{source.path}: scan rows {a}:{b}: {exc}") from None
            if dtype.kind == "f":
                nonfinite += int(block.size - np.count_nonzero(np.isfinite(block)))
                negative += int(np.count_nonzero(block < 0))
            writer.metadata["chunk_crc32"].append(_crc(block))
            if infer_dose:
                writer.metadata["chunk_sums"].append(int(block.sum(dtype=np.uint64)))
            writer.write_rows(r0, block)
            if progress:
                progress(r1 - r0)
        if infer_dose:
            _record_inferred_dose(writer, notes, log)
        if out_mask is not None:
            writer.write_array(MASK_ARRAY, out_mask, {
                "description": "detector mask: 1 a pixel that counts, 0 a dead or hot one",
                "hidden_pixels": int((out_mask == 0).sum())})
        writer.finish()
    finally:
        writer.close()
    seconds = time.perf_counter() - t0
    if negative or nonfinite:
        notes.append(f"the data hold {negative} negative and {nonfinite} non-finite values "
                     "(reconstructions refuse them: subtract less background or clip)")
        log(notes[-1])
    verified = verify(output) if verify_after else None
    return Report(output, (*cal.scan_shape, *cal.detector_shape), dtype.name, rpc, start,
                  seconds, (sy - start) * row_bytes, verified, notes)


def _input_mask(mask, source) -> np.ndarray:
    """The caller's mask as (Ky, Kx) bool on the input detector, or an error naming both
    shapes."""
    m = np.asarray(mask)
    if m.shape != tuple(source.shape[2:]):
        raise PtyengineError(f"the mask has shape {m.shape} but the detector of {source.path} "
                             f"has {tuple(source.shape[2:])} pixels: give a mask of the input "
                             "detector's shape (before --crop and --bin)")  # fmt: skip
    if m.dtype.kind not in "biu" or (m.dtype.kind != "b" and not np.isin(m, (0, 1)).all()):
        raise PtyengineError(f"the mask must hold booleans or 0/1 integers (1: a pixel that "
                             f"counts, 0: dead or hot), got {m.dtype} values")  # fmt: skip
    return m != 0


def output_mask(in_mask, geometry: Geometry, cal) -> np.ndarray:
    """The input-pixel mask cropped and binned like the data: an output pixel counts only
    if all of its N × N input pixels do (a dead or hot one spoils the sum); then checked
    against the output calibration (:func:`dataset.check_mask`: enough of the bright
    field left)."""
    y0, _, x0, _ = geometry.crop
    n, (ky, kx) = geometry.binning, geometry.shape
    m = in_mask[y0:y0 + ky * n, x0:x0 + kx * n]
    m = m.reshape(ky, n, kx, n).all(axis=(1, 3))
    return check_mask(m.astype(np.uint8), cal, "the mask (after crop and bin)")


def _record_inferred_dose(writer, notes: list, log) -> None:
    """Integer counts: dose = mean counts per pattern / scan step area (e/Å²), into the
    calibration the writer publishes, marked as inferred in the metadata; values that
    cannot be electron counts (no counts, or an implausible dose) leave no dose."""
    cal, total = writer.calibration, sum(writer.metadata.pop("chunk_sums"))
    per_pattern = total / (cal.scan_shape[0] * cal.scan_shape[1])
    area = cal.scan_step[0] * cal.scan_step[1]
    try:
        writer.calibration = cal.replace(dose=per_pattern / area)
    except CalibrationError as exc:
        text = f"no dose recorded: {per_pattern:.4g} counts per pattern do not give one ({exc})"
    else:
        writer.metadata["conversion"]["dose_from"] = INFERRED
        text = (f"dose {writer.calibration.dose:.4g} e/Å² {INFERRED} ({per_pattern:.4g} per "
                f"pattern over {area:.4g} Å² per position); give --dose if the values are "
                "not electron counts (--dose none: no dose)")  # fmt: skip
    notes.append(text)
    log(text)


def verify(path) -> str:
    """Re-read every chunk of a converted dataset and compare its CRC32 with the one
    recorded while writing; returns a summary, raises :class:`PtyengineError` on a mismatch."""
    import time

    t0 = time.perf_counter()
    with io.open_dataset(path) as ds:
        crcs, rpc = ds.metadata.get("chunk_crc32"), ds.metadata.get("rows_per_chunk")
        n = math.ceil(ds.shape[0] / rpc) if isinstance(rpc, int) and rpc > 0 else None
        if not isinstance(crcs, list) or len(crcs) != n:
            raise PtyengineError(f"{path}: no chunk checksums to verify against")
        for i, (r0, block) in enumerate(ds.iter_row_blocks(rpc)):
            if _crc(block) != crcs[i]:
                raise PtyengineError(
                    f"{path}: verification failed: scan rows {r0}:{r0 + len(block)} read back "
                    f"with CRC32 {_crc(block):08x}, written as {crcs[i]:08x}")  # fmt: skip
        nbytes = math.prod(ds.shape) * ds.dtype.itemsize
    return (f"{n} chunks ({nbytes / 2**20:.1f} MiB) read back in "
            f"{time.perf_counter() - t0:.1f} s, every CRC32 matches")
