"""Writing reconstruction results: a Zarr v3 group (atomically) and PNG previews.

Layout of ``NAME.zarr`` (one per reconstruction)::

    attrs["ptyengine"] = {"format": "ptyengine.result", "format_version": 1, "method": ...,
                          "calibration": {...}, "parameters": {...}, "sampling": [dy, dx],
                          "origin": [y0, x0], "errors": [...], "created_by": ...}
    phase        (ny, nx) float32, rad        (all methods)
    object       (ny, nx) complex64           (ptychography; (S, ny, nx) for mepie)
    probe        (wy, wx) complex64           (ptychography, real space, centred)
    probe_modes  (M, wy, wx) complex64        (ML with M > 1 incoherent pixel modes,
                                              strongest first; ``probe`` is mode 0)
    slice_phase  (S, ny, nx) float32, rad     (mepie: every slice; ``phase`` is their sum;
                                              attrs slice_positions_A, slice_thicknesses_A)
    com_y, com_x (ny, nx) float32, 1/Å        (iCOM)

``sampling`` and ``origin`` place pixel (0, 0) of the images in the specimen (field) frame,
so a result can be compared with the simulator's ground truth. One writer at a time: the
output's lock (:mod:`ptyengine.locks`) is held while ``NAME.partial`` is written and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import zarr

from . import __version__
from .errors import PtyengineError, write_error
from .locks import output_lock

FORMAT, FORMAT_VERSION = "ptyengine.result", 1


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def begin_result(path) -> Path:
    """Create the empty ``path.partial`` a result will be written to, before the work
    that computes it: an output that cannot be written fails at once. The caller holds
    the output's lock (:func:`ptyengine.locks.output_lock`); returns the partial."""
    path = Path(path)
    if path.suffix != ".zarr":
        raise PtyengineError(f"result path {path} must end in .zarr")
    tmp = _partial(path)
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        zarr.open_group(str(tmp), mode="w", zarr_format=3)
    except OSError as exc:
        raise write_error(tmp, exc) from exc
    return tmp


def discard_result(path) -> None:
    """Remove what :func:`begin_result` or a failed :func:`write_result` left in
    ``path.partial`` (nothing there can be resumed)."""
    shutil.rmtree(_partial(Path(path)), ignore_errors=True)


def write_result(path, method: str, arrays: dict, sampling, origin, calibration=None,
                 parameters=None, errors=None, extra=None, overwrite: bool = True) -> Path:
    """Write a result group to ``path`` (.zarr) via ``path.partial`` and a rename, holding
    the output's lock; an ``OSError`` (a full disk) becomes one :class:`PtyengineError`
    naming the file, and removes the partial."""
    path = Path(path)
    if path.suffix != ".zarr":
        raise PtyengineError(f"result path {path} must end in .zarr")
    with output_lock(path):
        if path.exists() and not overwrite:
            raise PtyengineError(f"{path} exists; pass --overwrite to replace it")
        tmp = _partial(path)
        try:
            if tmp.exists():
                shutil.rmtree(tmp)
            root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
            for name, a in arrays.items():
                a = np.asarray(a)
                root.create_array(name, shape=a.shape, dtype=a.dtype)[...] = a
            root.attrs["ptyengine"] = json.loads(json.dumps({
                "format": FORMAT, "format_version": FORMAT_VERSION, "method": method,
                "calibration": calibration.to_dict() if calibration is not None else None,
                "parameters": parameters or {}, "sampling": list(map(float, sampling)),
                "origin": list(map(float, origin)), "errors": list(map(float, errors or [])),
                "created_by": f"ptyengine {__version__}", **(extra or {}),
            }, default=str))  # fmt: skip
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except OSError as exc:
            discard_result(path)
            raise write_error(tmp, exc) from exc
        except BaseException:
            discard_result(path)
            raise
    return path


def read_result(path) -> tuple[dict, dict]:
    """(arrays, attrs) of a result written by :func:`write_result`."""
    path = Path(path)
    if not path.exists():
        raise PtyengineError(f"{path} does not exist")
    try:
        root = zarr.open_group(str(path), mode="r")
        attrs = dict(root.attrs["ptyengine"])
    except Exception as exc:
        raise PtyengineError(f"{path} is not a ptyengine result ({exc})") from None
    if attrs.get("format") != FORMAT:
        raise PtyengineError(f"{path} is not a ptyengine result (format {attrs.get('format')})")
    return {name: np.asarray(a[...]) for name, a in root.arrays()}, attrs


def probe_start(path) -> dict:
    """The probe a result recorded, as an iterative run's start: {"aberrations" (Å, rad,
    scan frame, physics' sign), "rotation_deg", "transpose", "method"} from the attributes
    tcbf/ssb/wdd write (``aberrations``, ``rotation_deg``, ``transpose``) or ML's
    (``aberrations``, the rotation and transpose of its calibration). A missing or bad
    field: one :class:`PtyengineError` naming the file and the field."""
    from .physics import check_aberrations

    path = Path(path)
    _, attrs = read_result(path)
    cal = attrs.get("calibration") or {}
    ab = attrs.get("aberrations")
    if not isinstance(ab, dict):
        raise PtyengineError(f"{path}: the {attrs.get('method')} result records no "
                             "'aberrations' to start a probe from (tcbf, ssb, wdd and ml "
                             "results do)")  # fmt: skip
    if "C10" not in ab:
        raise PtyengineError(f"{path}: its 'aberrations' hold no C10 (defocus): {ab}")
    rotation = attrs.get("rotation_deg", cal.get("rotation"))
    if rotation is None:
        raise PtyengineError(f"{path}: the result records no 'rotation_deg' (nor a "
                             "calibration's rotation)")  # fmt: skip
    try:
        ab = check_aberrations(ab)
        rotation = float(rotation)
    except (PtyengineError, TypeError, ValueError) as exc:
        raise PtyengineError(f"{path}: 'aberrations'/'rotation_deg': {exc}") from None
    transpose = attrs.get("transpose", cal.get("transpose"))
    return {"aberrations": ab, "rotation_deg": rotation,
            "transpose": None if transpose is None else bool(transpose),
            "method": attrs.get("method")}  # fmt: skip


def is_result(path) -> bool:
    """Whether ``path`` holds a result written by :func:`write_result` (not a dataset)."""
    try:
        root = zarr.open_group(str(path), mode="r")
        return dict(root.attrs.get("ptyengine", {})).get("format") == FORMAT
    except Exception:
        return False


def describe_result(path) -> str:
    """A human summary of a result: method, arrays, where it sits, parameters, errors."""
    arrays, attrs = read_result(path)
    lines = [f"path:        {path}",
             f"format:      ptyengine result v{attrs.get('format_version')}, method "
             f"{attrs.get('method')}, by {attrs.get('created_by')}",
             f"sampling:    {attrs['sampling'][0]:.4g} × {attrs['sampling'][1]:.4g} Å, "
             f"origin ({attrs['origin'][0]:.4g}, {attrs['origin'][1]:.4g}) Å"]  # fmt: skip
    lines += [f"  {name:<10} {a.shape} {a.dtype}" for name, a in arrays.items()]
    params = attrs.get("parameters") or {}
    if params:
        lines.append("parameters:  " + ", ".join(f"{k}={v}" for k, v in params.items()))
    errors = attrs.get("errors") or []
    if errors:
        lines.append(f"errors:      {len(errors)} iterations, first {errors[0]:.4g}, "
                     f"last {errors[-1]:.4g}")
    if isinstance(attrs.get("run_config"), str):
        import tomllib

        command = tomllib.loads(attrs["run_config"]).get("ptyengine", {}).get("command")
        lines.append(f"run config:  stored (ptyengine config show {path}; re-run: "
                     f"ptyengine {command} --config {path})")
    if attrs.get("ncc_to_truth") is not None:
        lines.append(f"NCC to the ground truth: {attrs['ncc_to_truth']:.4f}")
    return "\n".join(lines)


def preview_png(path, panels: list[tuple], title: str | None = None) -> Path:
    """:func:`preview_figure` written atomically as PNG to ``path``."""
    from .preview import save_figure

    fig = preview_figure(panels, title)
    import matplotlib.pyplot as plt

    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)


def preview_figure(panels: list[tuple], title: str | None = None):
    """A matplotlib figure of side-by-side panels ``(name, image)`` or ``(name, image,
    options)``. ``options``: ``sampling`` (dy, dx) in ``bar_unit`` (default Å) for a scale
    bar, ``unit`` for a colour bar (rad, V·Å, arb.), ``phase`` True to show a
    phase unwrapped where it has wrapped (:func:`.preview.display_phase`; the name then
    says which), ``xlabel``/``ylabel`` for a 1-D array. A 1-D array is drawn as a line
    against 1, 2, ... (the error per iteration), on a logarithmic axis when positive."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    from .preview import display_phase, draw_image

    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False,
                             layout="constrained")  # fmt: skip
    for ax, panel in zip(axes[0], panels, strict=True):
        name, img = panel[0], panel[1]
        opts = panel[2] if len(panel) > 2 else {}
        if np.ndim(img) == 1:
            ax.set_title(name, fontsize=9)
            ax.plot(np.arange(1, len(img) + 1), img, lw=1.2)
            if np.all(np.asarray(img) > 0):
                ax.set_yscale("log")
                ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
                ax.yaxis.set_minor_formatter(ticker.NullFormatter())
            ax.set_xlabel(opts.get("xlabel", "iteration"), fontsize=8)
            ax.set_ylabel(opts.get("ylabel", name), fontsize=8)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            ax.set_box_aspect(1)
            continue
        if opts.get("phase"):
            img, how = display_phase(img)
            name = f"{name}, {how}"
        ax.set_title(name, fontsize=9)
        draw_image(ax, img, opts.get("sampling"), opts.get("unit"),
                   bar_unit=opts.get("bar_unit", "Å"))  # fmt: skip
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
