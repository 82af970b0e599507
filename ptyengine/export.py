"""Results taken elsewhere: a result's images written as calibrated TIFF, HyperSpy, NumPy or
PNG files (``ptyengine export``).

What is written: ``phase`` (rad), and where the result holds them the complex ``object``,
the ``probe`` (real space, centred), its incoherent ``probe_modes`` and every slice's
``slice_phase``; one file per array, ``PREFIX_NAME.EXT``. Every image's pixels are
``sampling`` Å apart (the result's; the probe shares the object's grid).

* ``tiff``: ImageJ hyperstacks (tifffile): float32; the pixel size in the TIFF resolution
  tags and ``unit=angstrom`` in the ImageJ description (ASCII: Å itself cannot be stored
  there), so Fiji/ImageJ opens them calibrated; a complex array is two channels,
  amplitude and phase (rad); a stack of slices is Z (the slice spacing, when even, as
  ImageJ's ``spacing``).
* ``hspy``: one HyperSpy signal per array (rosettasciio's writer): signal axes y, x in Å,
  a stack's first axis a navigation axis (slice, or probe mode); complex arrays stay
  complex (HyperSpy opens them as ComplexSignal2D).
* ``npy``: the arrays as they are, and ``PREFIX_metadata.json`` with the sampling (Å),
  origin (Å), units and the result's method: ``.npy`` has no room for them.
* ``png``: the phase, and the probe amplitude where present, each with a scale bar in Å
  and a colour bar (:func:`ptyengine.preview.image_png`).

Every file is written to a temporary name and renamed (:func:`errors.atomic_file`); all
target names are checked before the first is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import PtyengineError, atomic_file

FORMATS = {"tiff": ".tif", "hspy": ".hspy", "npy": ".npy", "png": ".png"}
#: the arrays exported, in order, when the result holds them: name -> (value unit, what)
ARRAYS = {"phase": ("rad", "phase"), "object": ("", "transmission function"),
          "probe": ("", "probe (real space)"), "probe_modes": ("", "incoherent probe modes"),
          "slice_phase": ("rad", "phase of each slice")}  # fmt: skip
#: the package each format needs, and the extra that installs it
NEEDS = {"tiff": ("tifffile", "formats"), "hspy": ("rsciio", "formats")}


def check_format(fmt: str) -> str:
    """``fmt`` lower-cased, or one :class:`PtyengineError` listing the formats."""
    f = str(fmt).lower()
    if f == "tif":
        f = "tiff"
    if f not in FORMATS:
        raise PtyengineError(f"--to {fmt}: unknown format; choose one of "
                             f"{', '.join(FORMATS)}")  # fmt: skip
    return f


def _need(fmt: str):
    module, extra = NEEDS[fmt]
    try:
        return __import__(module)
    except ImportError:
        raise PtyengineError(f"--to {fmt} needs the package {module!r}, which is not "
                             f"installed: pip install 'ptyengine[{extra}]'") from None


def read_exportable(path) -> tuple[dict, dict]:
    """(arrays, attrs) of the result at ``path``; a dataset or anything else that is not
    a result is one :class:`PtyengineError` saying what export takes."""
    from . import results

    path = Path(path)
    if not path.exists():
        raise PtyengineError(f"{path} does not exist")
    if not results.is_result(path):
        from . import io

        try:
            io.open_dataset(path).close()
            is_dataset = True
        except PtyengineError:
            is_dataset = False
        if is_dataset:
            raise PtyengineError(f"{path} is a dataset, not a result: export writes what "
                                 "`ptyengine reconstruct` made (reconstruct it first, then "
                                 "export the *.zarr result)")  # fmt: skip
    arrays, attrs = results.read_result(path)
    return {k: arrays[k] for k in ARRAYS if k in arrays}, attrs


def targets(path, fmt: str, names, prefix=None) -> dict[str, Path]:
    """{array name: output file}: ``PREFIX_NAME.EXT``, ``prefix`` by default the result's
    path without ``.zarr``."""
    path = Path(path)
    base = Path(prefix) if prefix is not None else path.with_name(path.name.removesuffix(
        ".zarr"))  # fmt: skip
    if fmt == "png":
        names = [n for n in names if n in ("phase", "probe")]
    out = {n: base.with_name(f"{base.name}_{n}{FORMATS[fmt]}") for n in names}
    if fmt == "npy":
        out["metadata"] = base.with_name(f"{base.name}_metadata.json")
    return out


def export_result(path, fmt: str, prefix=None, overwrite: bool = False) -> list[Path]:
    """Write the images of the result at ``path`` as ``fmt`` (tiff, hspy, npy or png) to
    ``PREFIX_NAME.EXT`` (see the module docstring); returns the files written. An existing
    file is refused unless ``overwrite``; nothing is written then."""
    fmt = check_format(fmt)
    arrays, attrs = read_exportable(path)
    if fmt in NEEDS:
        _need(fmt)
    files = targets(path, fmt, list(arrays), prefix)
    if not overwrite:
        for f in files.values():
            if f.exists():
                raise PtyengineError(f"{f} exists; pass --overwrite to replace it")
    for f in files.values():
        if not f.parent.is_dir():
            raise PtyengineError(f"cannot write {f}: folder {f.parent} does not exist")
    sampling = tuple(float(v) for v in attrs["sampling"])
    write = {"tiff": _tiff, "hspy": _hspy, "npy": _npy, "png": _png}[fmt]
    for name, f in files.items():
        if name == "metadata":
            _metadata(f, arrays, attrs)
        else:
            write(f, name, arrays[name], sampling, attrs)
    return list(files.values())


def _spacing(attrs, name: str) -> float | None:
    """Å between slices when the result records them evenly spaced, else None."""
    z = attrs.get("slice_positions_A")
    if name not in ("slice_phase", "object") or not z or len(z) < 2:
        return None
    steps = np.diff(np.asarray(z, dtype=float))
    return float(steps[0]) if np.allclose(steps, steps[0], rtol=1e-6) else None


def _info(name: str, attrs) -> str:
    unit, what = ARRAYS[name]
    return (f"ptyengine {attrs.get('method')} result: {name} ({what}"
            f"{', ' + unit if unit else ''}); pixel {attrs['sampling'][0]:.6g} x "
            f"{attrs['sampling'][1]:.6g} A; {attrs.get('created_by')}")


def _tiff(path: Path, name: str, a, sampling, attrs) -> None:
    """ImageJ hyperstack: axes YX, CYX (complex: amplitude, phase) or Z(C)YX."""
    import tifffile

    a = np.asarray(a)
    axes = "YX"
    labels = None
    if np.iscomplexobj(a):
        a = np.stack([np.abs(a), np.angle(a)], axis=-3)
        axes = "CYX"
        labels = ["amplitude", "phase (rad)"]
    if a.ndim == len(axes) + 1:
        axes = "Z" + axes
    meta = {"axes": axes, "unit": "angstrom", "Info": _info(name, attrs)}
    spacing = _spacing(attrs, name)
    if spacing is not None:
        meta["spacing"] = spacing
    if labels is not None:
        n = int(np.prod(a.shape[:-2]))
        meta["Labels"] = labels * (n // 2)
    with atomic_file(path, ".tmp.tif") as tmp:
        tifffile.imwrite(tmp, a.astype(np.float32), imagej=True, metadata=meta,
                         resolution=(1.0 / sampling[1], 1.0 / sampling[0]))  # fmt: skip


def _hspy(path: Path, name: str, a, sampling, attrs) -> None:
    """One HyperSpy signal: axes y, x in Å; a stack's first axis navigates."""
    from rsciio.hspy import file_writer

    a = np.asarray(a)
    unit, what = ARRAYS[name]
    axes = [{"name": ax, "scale": s, "offset": 0.0, "units": "Å", "size": n,
             "navigate": False}
            for ax, s, n in zip(("y", "x"), sampling, a.shape[-2:], strict=True)]  # fmt: skip
    if a.ndim == 3:
        spacing = _spacing(attrs, name)
        nav = "mode" if name == "probe_modes" else "slice"
        axes.insert(0, {"name": "z" if spacing else nav, "scale": spacing or 1.0,
                        "offset": 0.0, "units": "Å" if spacing else "", "size": a.shape[0],
                        "navigate": True})  # fmt: skip
    quantity = f"{what} ({unit})" if unit else what
    signal = {"data": a, "axes": axes,
              "metadata": {"General": {"title": f"{attrs.get('method')} {name}"},
                           "Signal": {"signal_type": "", "quantity": quantity}},
              "original_metadata": {"ptyengine": json.loads(json.dumps(
                  {k: v for k, v in attrs.items() if k != "run_config"}, default=str))},
              "tmp_parameters": {}, "attributes": {"_lazy": False},
              "learning_results": {}, "models": {},
              "package_info": {"package": "", "package_version": ""}}  # fmt: skip
    with atomic_file(path, ".tmp.hspy") as tmp:
        file_writer(str(tmp), signal, show_progressbar=False)


def _npy(path: Path, name: str, a, sampling, attrs) -> None:
    with atomic_file(path, ".tmp.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(a))


def _metadata(path: Path, arrays: dict, attrs) -> None:
    meta = {"method": attrs.get("method"), "sampling_A": attrs["sampling"],
            "origin_A": attrs["origin"], "created_by": attrs.get("created_by"),
            "arrays": {n: {"file": f"{path.name.removesuffix('_metadata.json')}_{n}.npy",
                           "shape": list(a.shape), "dtype": str(a.dtype),
                           "unit": ARRAYS[n][0] or None, "what": ARRAYS[n][1]}
                       for n, a in arrays.items()},
            "axes": "(..., y, x); pixel (0, 0) at origin_A in the specimen frame"}  # fmt: skip
    with atomic_file(path, ".tmp.json") as tmp:
        tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")


def _png(path: Path, name: str, a, sampling, attrs) -> None:
    from .preview import image_png

    if name == "probe":
        image_png(path, np.abs(a), sampling, "probe amplitude (arb.)", unit="arb.")
    else:
        image_png(path, a, sampling, f"{attrs.get('method')} phase", unit="rad")
