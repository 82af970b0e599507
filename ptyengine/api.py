"""The Python interface for notebooks and scripts: thin wrappers over the functions the
command line calls (no second implementation), re-exported by ``import ptyengine as pe``.

.. code-block:: python

    import ptyengine as pe
    ds = pe.simulate("sto.zarr", structure="srtio3", thickness=40.0, dose=1000.0)
    print(pe.suggest(ds))                     # overlap, counts, ePIE or ML, warnings
    res = pe.reconstruct(ds, method="ml")    # writes sto_ml.zarr and its preview PNG
    res.phase                                 # (ny, nx) float32, rad
    res.show()                                # scale bar in Å, colour bar in rad
    res.export("tiff")                        # sto_ml_phase.tif, ... (ImageJ-calibrated)

Units: lengths Å, angles mrad, energy eV inside parameter objects (kV only on the command
line), dose e/Å², phase rad.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import PtyengineError

METHODS = ("icom", "idpc", "epie", "mepie", "ml", "ssb", "tcbf", "wdd")


def open(path):  # noqa: A001 - pe.open mirrors the built-in on purpose
    """The dataset at ``path`` (``.zarr``/``.h5``), read lazily: ``calibration``
    (:class:`~ptyengine.calibration.Calibration`), ``shape`` (scan_y, scan_x, k_y, k_x),
    ``read_rows``; close it with ``ds.close()`` or use it in a ``with`` block. What
    ``ptyengine info`` describes."""
    from . import io

    return io.open_dataset(path)


def simulate(output, device: str = "cpu", overwrite: bool = False, **parameters):
    """Simulate a dataset by multislice to ``output`` (``.zarr``), as ``ptyengine
    simulate`` does, and open it. ``parameters``: fields of
    :class:`~ptyengine.simulate.SimulationParameters` (structure, zone_axis, field Å,
    thickness Å, energy eV, semiangle mrad, defocus Å, scan_step Å, scan_size Å,
    detector_pixels, max_angle mrad, dose e/Å² or None for noise-free, seed, ...)."""
    from .cli.simulate import _run_simulation
    from .simulate import SimulationParameters

    try:
        params = SimulationParameters(**parameters)
    except TypeError as exc:
        raise PtyengineError(f"simulate: {exc}") from None
    _run_simulation(params, Path(output), device, overwrite, False, None)
    return open(output)


def _path_of(ds) -> Path:
    path = ds if isinstance(ds, str | os.PathLike) else getattr(ds, "path", None)
    if path is None:
        raise PtyengineError("reconstruct takes a dataset on disk (pe.open(path)) or its "
                             "path; write an in-memory dataset with ptyengine.io first")
    return Path(path)


def reconstruct(ds, method: str = "ml", output=None, device: str = "cpu",
                overwrite: bool = False, memory_limit=None, **options) -> Result:  # fmt: skip
    """Reconstruct the dataset ``ds`` (opened with :func:`open`, or its path) by
    ``method`` (icom, idpc, epie, mepie, ml, ssb, tcbf, wdd), as ``ptyengine reconstruct``
    does: writes the result Zarr (``output``, default ``NAME_METHOD.zarr`` next to the data)
    and its preview PNG, prints the NCC with a simulated ground truth, and returns the
    :class:`Result`. ``options``: the method's parameters by their names (the command's
    long options with ``_``: ``iterations``, ``batch_size``, ``defocus`` Å, ``slices``,
    ``refine_probe``, ...); one the method does not take is an error, before any work.
    ``overwrite``: replace an existing result (else an error)."""
    import click

    from .cli.reconstruct import _reconstruct, check_options

    if method not in METHODS:
        raise PtyengineError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    data = _path_of(ds)
    given = {k: v for k, v in options.items() if v is not None}
    try:
        check_options(method, given)
    except click.UsageError as exc:
        raise PtyengineError(re.sub(r"--([a-z][a-z-]*)", lambda m: m.group(1).replace(
            "-", "_"), exc.message)) from None  # fmt: skip
    done = _reconstruct(data, method, Path(output) if output is not None else None,
                        device=device, overwrite=overwrite, epie_options=given,
                        memory_limit=memory_limit)  # fmt: skip
    return load(done["output"])


def load(path) -> Result:
    """The result Zarr at ``path`` (written by :func:`reconstruct` or the command line)."""
    from .results import read_result

    arrays, attrs = read_result(path)
    return Result(Path(path), arrays, attrs)


def suggest(ds, memory_limit=None):
    """Parameter advice (:mod:`ptyengine.suggest`) for a dataset (opened, or a path) or a
    :class:`~ptyengine.calibration.Calibration`; ``print()`` it for the command's text."""
    from .calibration import Calibration
    from .suggest import suggest as advise

    if isinstance(ds, Calibration):
        return _Advice(advise(ds, memory_limit))
    if isinstance(ds, str | os.PathLike):
        with open(ds) as opened:
            return _Advice(advise(opened.calibration, memory_limit))
    return _Advice(advise(ds.calibration, memory_limit))


class _Advice:
    """A :class:`ptyengine.suggest.Suggestion` that prints as ``ptyengine suggest`` does;
    its fields (``overlap``, ``probe_diameter`` Å, ``method``, ``warnings``, ...) read
    through."""

    def __init__(self, s):
        self.suggestion = s

    def __getattr__(self, name):
        return getattr(self.suggestion, name)

    def __str__(self) -> str:
        from .suggest import describe

        return describe(self.suggestion)

    __repr__ = __str__


@dataclass
class Result:
    """A reconstruction result: ``path`` (the Zarr), its ``arrays`` and ``attrs`` (method,
    calibration, parameters, sampling, origin, errors, NCC to the ground truth)."""

    path: Path
    arrays: dict
    attrs: dict

    @property
    def method(self) -> str:
        return self.attrs.get("method")

    @property
    def phase(self) -> np.ndarray:
        """The phase (ny, nx), rad, specimen frame; pixel (0, 0) at ``origin``."""
        return self.arrays["phase"]

    @property
    def object(self) -> np.ndarray | None:
        """The complex transmission function (ptychography), or None."""
        return self.arrays.get("object")

    @property
    def probe(self) -> np.ndarray | None:
        """The probe in real space, centred, on the object's grid (ptychography), or None."""
        return self.arrays.get("probe")

    @property
    def sampling(self) -> tuple[float, float]:
        """(dy, dx) Å between the image's pixels."""
        return tuple(self.attrs["sampling"])

    @property
    def origin(self) -> tuple[float, float]:
        """(y, x) Å of pixel (0, 0) in the specimen frame."""
        return tuple(self.attrs["origin"])

    @property
    def errors(self) -> list[float]:
        """The error of every iteration (iterative methods), else []."""
        return list(self.attrs.get("errors") or [])

    @property
    def ncc(self) -> float | None:
        """NCC of the phase with σ·V of a simulated ground truth, or None."""
        return self.attrs.get("ncc_to_truth")

    def show(self, ax=None, unwrap: bool = True):
        """Draw the phase with a scale bar in Å and a colour bar in rad (unwrapped where it
        has wrapped, as the previews do; ``unwrap=False``: as stored); returns the axes."""
        import matplotlib.pyplot as plt

        from .preview import display_phase, draw_image

        if ax is None:
            _, ax = plt.subplots(figsize=(4.5, 4))
        img, how = display_phase(self.phase) if unwrap else (self.phase, "as stored")
        draw_image(ax, img, self.sampling, "rad")
        ncc = f", NCC {self.ncc:.3f}" if self.ncc is not None else ""
        ax.set_title(f"{self.method} phase, {how}{ncc}", fontsize=9)
        return ax

    def export(self, fmt: str, prefix=None, overwrite: bool = False) -> list[Path]:
        """Write the images as ``fmt`` (tiff, hspy, npy, png), as ``ptyengine export``;
        returns the files."""
        from .export import export_result

        return export_result(self.path, fmt, prefix, overwrite=overwrite)

    def __repr__(self) -> str:
        ncc = f", NCC {self.ncc:.3f}" if self.ncc is not None else ""
        return (f"Result({self.path}, {self.method}, phase {self.phase.shape}, "
                f"{self.sampling[0]:.4g} Å pixels{ncc})")
