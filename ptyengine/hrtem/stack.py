"""HRTEM images and dose-fractionated stacks: simulation with a known drift, reading and
writing.

Units: pixel sizes Å, shifts and trajectories in camera pixels (dy, dx) (frame i's content
is moved by +d_i relative to the specimen frame), doses e/pixel per frame.

Simulation (:func:`simulate_frames`): the exit wave of a crystal from the simulator's
plane-wave mode (:func:`crystal_exit_wave`: one orthogonal unit cell, periodic, the same
specimen and multislice as the 4D-STEM simulator), imaged through the objective lens
(:func:`ctf.exit_wave_image`: any exit wave on a periodic grid may be given), then sampled
by the camera at each frame's shift (:func:`ctf.camera_frames`) with Poisson noise.

Files (by suffix): ``.npy`` (N, ny, nx), ``.tif``/``.tiff`` (tifffile; ImageJ pixel size),
``.mrc``/``.mrcs`` (mrcfile; voxel size), and for reading also DigitalMicrograph
``.dm3``/``.dm4``, ``.hspy``, ``.emd`` through rosettasciio. Next to a written stack,
``NAME.json`` holds the pixel size, dose and how it was made, and ``NAME_trajectory.csv``
(frame, dy_px, dx_px) the true drift of a simulated stack; a reader uses them when present.
Every file is written to a temporary name and renamed (:func:`errors.atomic_file`).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PtyengineError, atomic_file
from . import ctf

WRITE_SUFFIXES = (".npy", ".tif", ".tiff", ".mrc", ".mrcs")
RSCIIO = {".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph", ".hspy": "hspy",
          ".emd": "emd"}  # fmt: skip
READ_SUFFIXES = WRITE_SUFFIXES + tuple(RSCIIO)


# ------------------------------------------------------------------------ simulation


def crystal_exit_wave(structure: str = "uio66", zone_axis=(1, 1, 0), thickness: float = 30.0,
                      energy: float = 300e3, sampling: float = 0.1, tilt=(0.0, 0.0),
                      slice_thickness: float = 2.0):
    """The exit wave of a plane wave through one orthogonal unit cell of ``structure``
    along ``zone_axis``, ``thickness`` Å thick, tilted by ``tilt`` (θ_y, θ_x) mrad: the
    simulator's specimen and multislice (:func:`planewave.plane_wave_specimen`,
    :func:`planewave.exit_waves`; Kirkland potentials in slices of ``slice_thickness`` Å,
    static lattice). ``sampling`` bounds the pixel (Å). Returns (ψ complex128 (ny, nx),
    sampling (dy, dx) Å, cell (Ly, Lx) Å); the grid covers the cell exactly, periodic."""
    from .. import planewave

    spec = planewave.plane_wave_specimen(structure, zone_axis, field=(1.0, 1.0),
                                         thickness=thickness, energy=energy,
                                         k_max=1 / (3 * sampling),
                                         slice_thickness=min(slice_thickness, thickness),
                                         sampling=sampling)  # fmt: skip
    (psi,) = planewave.exit_waves(spec, energy, tilt)
    return (np.asarray(psi, dtype=np.complex128), tuple(spec.sampling),
            tuple(spec.cell[:2]))  # fmt: skip


def drift_trajectory(n_frames: int, seed: int = 0, velocity=(0.12, -0.18), curve=2.0,
                     jitter: float = 0.05) -> np.ndarray:
    """A drift (N, 2) in pixels (dy, dx): linear (``velocity`` px/frame) + a slow curve
    (amplitude ``curve`` px: half a sine period over the stack, across the drift) + white
    jitter of rms ``jitter`` px (seeded); frame 0 at 0."""
    t = np.arange(n_frames, dtype=np.float64)
    v = np.asarray(velocity, dtype=np.float64)
    across = np.array([-v[1], v[0]]) / max(np.hypot(*v), 1e-12)
    slow = curve * np.sin(np.pi * t / max(n_frames - 1, 1))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xD1F7]))
    d = t[:, None] * v + slow[:, None] * across + rng.normal(0, jitter, (n_frames, 2))
    return d - d[0]


@dataclass
class Stack:
    """Frames (N, ny, nx) float32 (counts or intensities), pixel size Å (None: unknown),
    the true trajectory (N, 2) px when known, free metadata, and the file it came from."""

    frames: np.ndarray
    pixel_size: float | None = None
    trajectory: np.ndarray | None = None
    metadata: dict = field(default_factory=dict)
    path: Path | None = None


def simulate_frames(image, sampling, pixel: float, shape, n_frames: int,
                    dose_per_pixel: float | None, seed: int = 0, trajectory=None) -> Stack:
    """A dose-fractionated stack of the periodic noise-free ``image`` (sampling (dy, dx) Å,
    vacuum = 1): ``n_frames`` camera frames of ``shape`` at ``pixel`` Å, shifted by
    ``trajectory`` (default :func:`drift_trajectory` of ``seed``), Poisson counts at
    ``dose_per_pixel`` e/pixel per frame (None: noise-free)."""
    if trajectory is None:
        trajectory = drift_trajectory(n_frames, seed)
    trajectory = np.asarray(trajectory, dtype=np.float64)
    frames = ctf.camera_frames(image, sampling, pixel, shape, trajectory, dose_per_pixel, seed)
    meta = {"dose_per_pixel": dose_per_pixel, "seed": seed}
    return Stack(frames, pixel, trajectory, meta)


# ------------------------------------------------------------------------- checking


def check_frames(frames, where: str, min_frames: int = 2) -> np.ndarray:
    """float32 (N, ny, nx) frames, or a one-line error naming ``where``: wrong
    dimensionality, one frame, complex, NaN/inf, no signal (all frames constant)."""
    a = np.asarray(frames)
    if np.iscomplexobj(a):
        raise PtyengineError(f"{where}: holds complex values; a stack of real intensities "
                             "(counts) is needed")
    if a.ndim == 2 and min_frames > 1:
        raise PtyengineError(f"{where}: is one 2-D image {a.shape}, a stack of one frame; "
                             f"drift correction needs at least {min_frames} frames (N, y, x)")
    if a.ndim != 3:
        raise PtyengineError(f"{where}: has shape {a.shape}; a stack is 3-D (frames, y, x)")
    if a.shape[0] < min_frames:
        raise PtyengineError(f"{where}: holds {a.shape[0]} frame(s); drift correction needs "
                             f"at least {min_frames}")
    if min(a.shape[1:]) < 8:
        raise PtyengineError(f"{where}: frames of {a.shape[1:]} pixels are too small "
                             "(at least 8 × 8)")
    if not np.issubdtype(a.dtype, np.number):
        raise PtyengineError(f"{where}: data type {a.dtype} is not numeric")
    a = a.astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise PtyengineError(f"{where}: holds NaN or infinite values "
                             f"({int(np.sum(~np.isfinite(a)))} pixels)")
    if float(a.max()) == float(a.min()):
        raise PtyengineError(f"{where}: holds no signal (every pixel is {float(a.min()):g})")
    return a


def check_image(image, where: str) -> np.ndarray:
    """A float64 2-D image or a one-line error (stack, NaN, constant, complex)."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        raise PtyengineError(f"{where}: has shape {a.shape}; an image is 2-D (y, x) "
                             "(sum a stack first, e.g. with ptyengine hrtem align)")
    if np.iscomplexobj(a) or not np.issubdtype(a.dtype, np.number):
        raise PtyengineError(f"{where}: data type {a.dtype}; a real-valued image is needed")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise PtyengineError(f"{where}: holds NaN or infinite values")
    if np.ptp(a) == 0:
        raise PtyengineError(f"{where}: holds no signal (every pixel is {a.flat[0]:g})")
    return a


# ---------------------------------------------------------------------------- files


def sidecar(path, kind: str) -> Path:
    """``NAME.json`` (kind "json") or ``NAME_trajectory.csv`` (kind "trajectory")."""
    path = Path(path)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    return path.with_name(f"{stem}.json" if kind == "json" else f"{stem}_trajectory.csv")


def check_output(path) -> None:
    """Refuse an output name whose suffix :func:`write_array` cannot write (before work)."""
    _suffix(Path(path), WRITE_SUFFIXES)


def _suffix(path: Path, allowed) -> str:
    suffix = path.suffix.lower()
    if suffix not in allowed:
        raise PtyengineError(f"{path}: unknown format {suffix or '(no suffix)'!r}; use one of "
                             f"{', '.join(allowed)}")
    return suffix


def read_array(path: Path) -> tuple[np.ndarray, float | None]:
    """(data, pixel size Å or None) of an npy, TIFF, MRC or rosettasciio file."""
    suffix = _suffix(path, READ_SUFFIXES)
    if not path.exists():
        raise PtyengineError(f"{path}: no such file")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        if suffix in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                data = tif.asarray()
                tags = tif.pages[0].tags
                res = tags.get("XResolution")
                pixel = None
                if res is not None and tif.is_imagej:
                    num, den = res.value
                    pixel = den / num if num else None
            return data, pixel
        if suffix in (".mrc", ".mrcs"):
            import mrcfile

            with mrcfile.open(path, permissive=True) as mrc:
                data = np.array(mrc.data)
                vx = float(mrc.voxel_size.x)
            return data, vx if vx > 0 else None
        import importlib

        reader = importlib.import_module(f"rsciio.{RSCIIO[suffix]}").file_reader
        found = [d for d in reader(str(path)) if getattr(d["data"], "ndim", 0) in (2, 3)]
    except ImportError as exc:
        raise PtyengineError(f"{path}: reading {suffix} files needs {exc.name}; "
                             "pip install 'ptyengine[formats]'") from None
    except PtyengineError:
        raise
    except Exception as exc:  # the readers raise anything on a foreign file
        raise PtyengineError(f"{path}: not a readable {suffix} file "
                             f"({type(exc).__name__}: {exc})") from None
    if not found:
        raise PtyengineError(f"{path}: holds no 2-D image or 3-D stack")
    d = max(found, key=lambda d: d["data"].ndim)
    axes = d.get("axes") or []
    pixel = None
    if axes:
        ax = axes[-1]
        scale = {"nm": 10.0, "Å": 1.0, "A": 1.0, "angstrom": 1.0, "pm": 0.01}.get(
            str(ax.get("units", "")).strip())
        if scale is not None:
            pixel = float(ax.get("scale", 1.0)) * scale
    return np.asarray(d["data"]), pixel


def read_trajectory(path) -> np.ndarray:
    """(N, 2) pixels from a CSV with columns frame, dy_px, dx_px (header line first)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    try:
        return np.array([[float(r["dy_px"]), float(r["dx_px"])] for r in rows])
    except (KeyError, ValueError) as exc:
        raise PtyengineError(f"{path}: a trajectory CSV needs columns frame, dy_px, dx_px "
                             f"({exc})") from None


def read_stack(path, min_frames: int = 2) -> Stack:
    """Read a stack (see the module docstring for formats), checked by :func:`check_frames`;
    the pixel size comes from the file, else from ``NAME.json``; the true trajectory from
    ``NAME_trajectory.csv`` when present."""
    path = Path(path)
    data, pixel = read_array(path)
    frames = check_frames(data, str(path), min_frames)
    meta = {}
    if sidecar(path, "json").exists():
        meta = json.loads(sidecar(path, "json").read_text())
        pixel = meta.get("pixel_size_A", pixel)
    traj = None
    if sidecar(path, "trajectory").exists():
        traj = read_trajectory(sidecar(path, "trajectory"))
        if traj.shape != (len(frames), 2):
            raise PtyengineError(f"{sidecar(path, 'trajectory')}: {len(traj)} rows for "
                                 f"{len(frames)} frames")
    return Stack(frames, pixel, traj, meta, path)


def read_image(path) -> tuple[np.ndarray, float | None]:
    """A 2-D image and its pixel size (Å or None), checked by :func:`check_image`."""
    path = Path(path)
    data, pixel = read_array(path)
    if sidecar(path, "json").exists():
        pixel = json.loads(sidecar(path, "json").read_text()).get("pixel_size_A", pixel)
    return check_image(data, str(path)), pixel


def write_array(path, data, pixel_size: float | None) -> None:
    """Write a 2-D image or a 3-D stack (float32) as npy, ImageJ TIFF or MRC, atomically."""
    path = Path(path)
    suffix = _suffix(path, WRITE_SUFFIXES)
    a = np.ascontiguousarray(data, dtype=np.float32)
    with atomic_file(path, ".tmp" + suffix) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as fh:
                np.save(fh, a)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            meta = {"axes": "ZYX" if a.ndim == 3 else "YX", "unit": "angstrom"}
            res = (1.0 / pixel_size, 1.0 / pixel_size) if pixel_size else None
            tifffile.imwrite(tmp, a, imagej=True, metadata=meta, resolution=res)
        else:
            import mrcfile

            with mrcfile.new(tmp, overwrite=True) as mrc:
                mrc.set_data(a)
                if a.ndim == 3:
                    mrc.set_image_stack()
                if pixel_size:
                    mrc.voxel_size = pixel_size


def write_trajectory(path, trajectory, columns: dict | None = None) -> None:
    """CSV: frame, dy_px, dx_px (+ further named columns of N values each), atomically."""
    traj = np.asarray(trajectory, dtype=np.float64)
    extra = {k: np.asarray(v, dtype=np.float64) for k, v in (columns or {}).items()}
    with atomic_file(path, ".tmp.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["frame", "dy_px", "dx_px", *extra])
        for i, (dy, dx) in enumerate(traj):
            w.writerow([i, f"{dy:.6f}", f"{dx:.6f}", *(f"{v[i]:.6f}" for v in extra.values())])


def write_json(path, meta: dict) -> None:
    with atomic_file(path, ".tmp.json") as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=1, default=str) + "\n")


def write_stack(path, stack: Stack, metadata: dict | None = None) -> list[Path]:
    """The frames (npy/TIFF/MRC by suffix), ``NAME.json`` (pixel size Å and ``metadata``)
    and, when the trajectory is known, ``NAME_trajectory.csv``; returns the paths."""
    path = Path(path)
    _suffix(path, WRITE_SUFFIXES)
    out = [path, sidecar(path, "json")]
    write_array(path, stack.frames if stack.frames.shape[0] > 1 else stack.frames[0],
                stack.pixel_size)
    write_json(out[1], {"pixel_size_A": stack.pixel_size, **stack.metadata,
                        **(metadata or {})})
    if stack.trajectory is not None:
        out.append(sidecar(path, "trajectory"))
        write_trajectory(out[-1], stack.trajectory)
    return out
