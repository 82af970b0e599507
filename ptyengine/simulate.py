"""4D-STEM simulation: structure -> Kirkland slices -> multislice -> dose noise -> Zarr.

:func:`simulate` runs one dataset from a :class:`SimulationParameters`; :mod:`presets`
holds named recipes (the UiO-66 defocus study). The output is written scan-row block by
block (the 4-D array never sits in memory), together with the ground-truth projected
potential of the field and the probe. An interrupted run resumes from its last finished
block (``resume=True``): the noise of each block is seeded by (seed, block), so a resumed
run writes the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import backend, io, physics, potentials, structures
from .calibration import Calibration
from .errors import PtyengineError
from .multislice import ProbeWindow, ceil_size, smooth_size, transmission_functions, window_size


@dataclass
class SimulationParameters:
    """One simulated 4D-STEM dataset. Lengths Å, angles mrad, energy eV, dose e/Å².

    structure: builtin name ("uio66", "srtio3", "mos2") or a structure file (CIF, ...).
    zone_axis: beam direction [uvw]. field: lateral size (Ly, Lx) of the periodic
    specimen model (rounded to whole unit cells). thickness: slab thickness.
    defocus: C10 (> 0: crossover above the entrance surface; see physics). aberrations:
    further Krivanek coefficients. scan_size: (h, w) of the scanned area (None: one unit
    cell); scan_margin: Å added to that area on every side (None: :func:`dose_margin`, the
    probe's geometric radius α·|C10| + 1 Å, so that every point of the area receives the
    full dose: a defocused probe spreads each pattern's electrons over a disc of that
    radius); scan_origin: the (y, x) of its first position in the field (None: centred;
    positions wrap round the periodic field). max_angle: the detector's half-width;
    detector_pixels: its size; dk: its pixel in 1/Å (when given it fixes the detector and
    max_angle is ignored: see :meth:`detector_dk`); detector_oversampling: points per pixel
    and axis of the detector rule (1: the far field at the pixel centre; see multislice).
    sampling: an upper bound on the field pixel (None: 1/(3 k_max), just fine enough for
    the detector and the aperture); the pixel used is Ly/n (and the same along x), n the
    smallest FFT-friendly count ≥ Ly/sampling (see :func:`field_sampling`). phonons: frozen-phonon
    configurations (0 = static lattice); sigmas: thermal σ per element, the rms
    displacement along each Cartesian axis in Å (U_iso = σ², B = 8π²σ²), overriding the
    structure's values (structures.default_sigmas). dose: None for noise-free intensities.
    """

    structure: str = "srtio3"
    zone_axis: tuple[int, int, int] = (0, 0, 1)
    field: tuple[float, float] = (20.0, 20.0)
    thickness: float = 30.0
    hydrogen: bool = True
    energy: float = 300e3
    semiangle: float = 20.0
    defocus: float = 0.0
    aberrations: dict[str, float] = dataclasses.field(default_factory=dict)
    scan_step: float = 0.4
    scan_size: tuple[float, float] | None = None
    scan_origin: tuple[float, float] | None = None
    scan_margin: float | None = 0.0
    max_angle: float = 50.0
    detector_pixels: int = 64
    dk: float | None = None
    detector_oversampling: int = 1
    sampling: float | None = None
    slice_thickness: float = 2.0
    phonons: int = 0
    sigmas: dict[str, float] | None = None
    dose: float | None = None
    seed: int = 0
    double: bool = False

    def fingerprint(self) -> str:
        """A hash of every parameter that changes the numbers (for resume)."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def detector_dk(self) -> float:
        """Detector pixel (1/Å): ``dk`` when given, else 2 k_max / n with k_max = θ_max/λ."""
        if self.dk is not None:
            return float(self.dk)
        return 2 * self.max_angle * 1e-3 / physics.wavelength(self.energy) / self.detector_pixels

    def detector_max_angle(self) -> float:
        """Detector half-width (mrad): n·dk·λ/2 when ``dk`` is given, else ``max_angle``."""
        if self.dk is None:
            return float(self.max_angle)
        return self.detector_pixels * self.dk * physics.wavelength(self.energy) / 2 * 1e3

    def check(self) -> None:
        """Refuse values that cannot be meant (PtyengineError naming the value and why)."""
        check_parameters(self)


#: Accepted ranges of the simulation parameters, (low, high, why).
LIMITS = {
    "energy": (1e3, 3e6, "eV (1 kV to 3 MV; on the command line --energy is in kV, "
                         "e.g. 300)"),
    "semiangle": (0.1, 200.0, "mrad"),
    "max_angle": (0.1, 300.0, "mrad (the multislice's small-angle approximation)"),
    "detector_pixels": (4, 4096, "pixels per side"),
    "thickness": (0.1, 1e4, "Å (up to 1 µm)"),
    "slice_thickness": (0.1, 1e3, "Å"),
    "scan_step": (1e-3, 1e3, "Å"),
    "defocus": (-1e6, 1e6, "Å (±100 µm)"),
    "phonons": (0, 1000, "configurations (0: a static lattice)"),
    "detector_oversampling": (1, 16, "points per pixel and axis"),
    "sigma": (0.0, 0.5, "Å rms per axis (room-temperature values are ~0.05-0.15 Å)"),
}


def _check_range(name: str, value, option: str | None = None, integer: bool = False) -> None:
    low, high, why = LIMITS[name]
    label = option or name
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if integer:
        ok = ok and float(value) == int(value)
    if not ok or not low <= value <= high:
        kind = "an integer" if integer else "a number"
        shown = f"{value:g}" if isinstance(value, numbers.Real) else repr(value)
        raise PtyengineError(f"{label} = {shown} is out of range: it must be {kind} from "
                             f"{low:g} to {high:g} {why}")  # fmt: skip


def _check_positive(label: str, values) -> None:
    for v in values:
        if not (isinstance(v, numbers.Real) and math.isfinite(v) and v > 0):
            raise PtyengineError(f"{label} must be positive finite length(s) in Å, got {values!r}")


def check_parameters(p: SimulationParameters) -> None:
    """Range checks of :class:`SimulationParameters`, each with its reason."""
    _check_range("energy", p.energy)
    for name in ("semiangle", "thickness", "slice_thickness", "scan_step", "defocus"):
        _check_range(name, getattr(p, name))
    _check_range("detector_pixels", p.detector_pixels, integer=True)
    _check_range("phonons", p.phonons, integer=True)
    _check_range("detector_oversampling", p.detector_oversampling, integer=True)
    if p.dk is not None and not (isinstance(p.dk, numbers.Real) and math.isfinite(p.dk)
                                 and p.dk > 0):  # fmt: skip
        raise PtyengineError(f"detector pixel dk = {p.dk!r} 1/Å must be a positive number")
    _check_range("max_angle", p.detector_max_angle(),
                 "max_angle" if p.dk is None else "the detector half-width n·dk·λ/2")
    if p.semiangle >= p.detector_max_angle():
        raise PtyengineError(
            f"the detector reaches {p.detector_max_angle():.4g} mrad but the bright-field disc "
            f"{p.semiangle:g} mrad: it would not hold the disc; use a max angle above "
            f"{p.semiangle:g} mrad (or a larger dk)")
    _check_positive("field", p.field)
    if p.scan_size is not None:
        _check_positive("scan size", p.scan_size)
    if p.scan_margin is not None and not (isinstance(p.scan_margin, numbers.Real)
                                          and math.isfinite(p.scan_margin)
                                          and p.scan_margin >= 0):  # fmt: skip
        raise PtyengineError(f"scan margin = {p.scan_margin!r} Å must be a number ≥ 0 (or "
                             "None: the probe's radius)")  # fmt: skip
    if p.scan_origin is not None and not (
            len(p.scan_origin) == 2 and all(math.isfinite(v) for v in p.scan_origin)):
        raise PtyengineError(f"scan origin must be two finite numbers (y, x) in Å, got "
                             f"{p.scan_origin!r}")  # fmt: skip
    if p.sampling is not None:
        _check_positive("sampling", [p.sampling])
    if p.dose is not None and not (math.isfinite(p.dose) and p.dose > 0):
        raise PtyengineError(f"dose = {p.dose!r} e/Å² must be positive (omit it for noise-free "
                             "intensities)")  # fmt: skip
    if not (isinstance(p.seed, numbers.Integral) and p.seed >= 0):
        raise PtyengineError(f"seed = {p.seed!r} must be an integer >= 0")
    for element, sigma in (p.sigmas or {}).items():
        _check_range("sigma", sigma, f"thermal sigma of {element}")


@dataclass
class Specimen:
    """The sliced, phonon-averaged specimen on the field grid."""

    transmissions: list  # per phonon configuration: (n_slices, ny, nx) complex, on xp
    potential: np.ndarray  # (ny, nx) projected potential (V·Å), mean over configurations
    sampling: tuple[float, float]
    slice_thicknesses: list[float]
    cell: tuple[float, float, float]  # (Ly, Lx, thickness) Å
    unit_cell: tuple[float, float]  # lateral (Ly, Lx) of the orthogonal unit cell
    n_atoms: int
    sigmas: dict[str, float]  # thermal σ (Å, rms per axis) used; empty for a static lattice


def field_sampling(params: SimulationParameters, cell_yx) -> tuple[tuple[int, int], tuple]:
    """Grid (ny, nx) and sampling (dy, dx) Å covering the field exactly.

    The default pixel is 1/(3 k_max) for the detector's largest angle: then k_max sits at
    the 2/3 anti-aliasing limit, and nothing the detector records is aliased. A given
    ``params.sampling`` is an upper bound: the pixel is L/n with n the smallest
    FFT-friendly (2^a 3^b 5^c 7^d, even) count ≥ L/sampling (counts within 1e-9 of an
    integer rounded to it, multislice.ceil_size and smooth_size).
    """
    lam = physics.wavelength(params.energy)
    max_angle = params.detector_max_angle()
    k_max = max(max_angle, params.semiangle) * 1e-3 / lam
    d_max = params.sampling or 1 / (3 * k_max)
    # FFT-friendly pixel counts: the window is the field itself where that holds the probe
    gpts = tuple(smooth_size(ceil_size(length / d_max)) for length in cell_yx)
    sampling = (cell_yx[0] / gpts[0], cell_yx[1] / gpts[1])
    if 1 / (2 * max(sampling)) * 2 / 3 < k_max * (1 - 1e-9):
        raise PtyengineError(
            f"sampling {max(sampling):.4g} Å is too coarse for the detector's "
            f"{max_angle:.6g} mrad inside the 2/3 anti-aliasing limit; use a sampling of "
            f"at most {1 / (3 * k_max):.4g} Å"
        )
    physics.check_sampling(sampling, params.energy, params.semiangle)
    return gpts, sampling


def thermal_sigmas(params: SimulationParameters, atoms, slab) -> dict[str, float]:
    """σ (Å, rms per axis) per element of ``slab``: the structure's values
    (structures.default_sigmas), overridden by ``params.sigmas``; an element given there
    that the structure lacks is an error (a typo would otherwise be ignored)."""
    given = dict(params.sigmas or {})
    present = set(atoms.get_chemical_symbols())
    unknown = sorted(set(given) - present)
    if unknown:
        raise PtyengineError(
            f"thermal sigma given for {', '.join(unknown)}, which {params.structure} does not "
            f"contain (its elements: {', '.join(sorted(present))})")
    table = structures.default_sigmas(slab, structure=params.structure)
    return {el: float(given.get(el, table[el])) for el in sorted(set(slab.get_chemical_symbols()))}


def memory_estimate(params: SimulationParameters, gpts, n_slices: int, width: int) -> int:
    """Bytes a simulation holds at its peak: every configuration's transmission functions
    (field and window-extended copies), one configuration's potentials and FFT buffers
    while it is built, and the window's propagators and probe batch."""
    cplx = 16 if params.double else 8
    n_configs = max(1, params.phonons)
    ny, nx = gpts
    field = n_slices * ny * nx * cplx
    padded = n_slices * (ny + width) * (nx + width) * cplx
    window = (n_slices + 4) * width * width * cplx + (64 << 20)
    return n_configs * (field + padded) + 3 * field + window


def check_memory(params: SimulationParameters, gpts, sampling, n_slices: int, width: int,
                 xp=np) -> None:  # fmt: skip
    """Refuse a simulation that cannot fit in memory, saying which parameters set its size."""
    need = memory_estimate(params, gpts, n_slices, width)
    # the machine's memory (cgroup limits included); on a GPU its free memory as well
    have = backend.memory_limit(backend.available_memory(), xp)
    if need > have:
        raise PtyengineError(
            f"this simulation needs about {io.format_bytes(need)} but "
            f"{io.format_bytes(have)} is available: field {gpts[0]} × {gpts[1]} px of "
            f"{max(sampling):.3g} Å (the pixel is 1/(3 k_max): --energy and --max-angle set "
            f"it, --sampling bounds it), {n_slices} slices (--thickness, --slice-thickness), "
            f"{max(1, params.phonons)} configuration(s) (--phonons), window {width} px "
            f"(--defocus, --thickness, --max-angle); reduce these or --field")


def build_specimen(params: SimulationParameters, xp=np) -> Specimen:
    """Structure -> orthogonal slab -> frozen-phonon slices -> transmission functions.

    Before any large allocation the memory the run will need is compared with what the
    machine has (:func:`check_memory`)."""
    atoms = structures.load_structure(params.structure)
    unit = structures.orthogonal_cell(atoms, params.zone_axis)
    slab = structures.build_specimen(atoms, params.zone_axis, size=params.field,
                                     thickness=params.thickness, hydrogen=params.hydrogen)
    lx, ly, t = (float(v) for v in np.diag(slab.cell.array))
    gpts, sampling = field_sampling(params, (ly, lx))
    n_slices = potentials.slice_count(t, params.slice_thickness)
    check_memory(params, gpts, sampling, n_slices, window_for(params, sampling, gpts), xp)
    sigmas = thermal_sigmas(params, atoms, slab)
    if params.phonons > 0:
        configs = structures.frozen_phonon_configurations(slab, sigmas, params.phonons, params.seed)
    else:
        configs = [slab]
    real = backend.real_dtype(params.double)
    cplx = backend.complex_dtype(params.double)
    transmissions, v_sum = [], np.zeros(gpts, np.float64)
    edges = None
    for config in configs:
        v, edges = potentials.slice_potentials(config, gpts, sampling, params.slice_thickness,
                                               xp=xp, dtype=real)  # fmt: skip
        v_sum += backend.to_numpy(v.sum(axis=0))
        transmissions.append(transmission_functions(v, params.energy, sampling, xp, cplx))
    thicknesses = list(np.diff(np.asarray(edges, dtype=float)))
    ucell = (float(unit.cell.array[1, 1]), float(unit.cell.array[0, 0]))
    return Specimen(transmissions, (v_sum / len(transmissions)).astype(np.float32), sampling,
                    thicknesses, (ly, lx, t), ucell, len(slab),
                    sigmas if params.phonons > 0 else {})  # fmt: skip


def window_for(params: SimulationParameters, sampling, field_pixels) -> int:
    """The probe window (pixels) of this simulation (multislice.window_size)."""
    return window_size(sampling, params.energy, params.semiangle, params.defocus,
                       params.thickness, params.detector_max_angle(),
                       detector_fov=1 / params.detector_dk(), field_pixels=field_pixels)


#: Å added to the probe's geometric radius by :func:`dose_margin` (the focused probe's own
#: width: its Airy radius 0.61 λ/α is 0.6 Å at 300 kV and 20 mrad).
DOSE_MARGIN = 1.0


def dose_margin(params: SimulationParameters) -> float:
    """Å by which a scan must reach beyond an area for every point of it to receive the
    full dose: ``scan_margin`` when it is set, else α·|C10| + DOSE_MARGIN.

    Each pattern's electrons land on a disc of radius α·|C10| (semi-angle α, defocus C10):
    a point at the centre of a scan smaller than that disc receives only about the fraction
    scan area / disc area of the dose per scanned area (21–25 % of it on a scan of one
    21 × 15 Å UiO-66 cell at C10 = 1000 Å, 20 mrad: tests/test_simulate.py)."""
    if params.scan_margin is not None:
        return float(params.scan_margin)
    return params.semiangle * 1e-3 * abs(params.defocus) + DOSE_MARGIN


def scan_positions(params: SimulationParameters, spec: Specimen):
    """Scan shape (ny, nx) and origin (y0, x0) Å in the field frame: the area
    (``scan_size`` or one unit cell) with :func:`dose_margin` on every side."""
    margin = dose_margin(params)
    size = tuple(s + 2 * margin for s in (params.scan_size or spec.unit_cell))
    if min(size) <= 0 or params.scan_step <= 0:
        raise PtyengineError(f"scan size {size} and step {params.scan_step} Å must be positive")
    shape = tuple(max(1, int(round(s / params.scan_step))) for s in size)
    if params.scan_origin is None:
        origin = tuple((spec.cell[i] - shape[i] * params.scan_step) / 2 for i in range(2))
    else:
        origin = tuple(float(v) for v in params.scan_origin)
    return shape, origin


def calibration_for(params: SimulationParameters, scan_shape, scan_origin) -> Calibration:
    n = params.detector_pixels
    dk = params.detector_dk()
    aberrations = {**params.aberrations, "C10": params.defocus}
    return Calibration(energy=params.energy, semiangle=params.semiangle, scan_shape=scan_shape,
                       scan_step=(params.scan_step, params.scan_step), detector_shape=(n, n),
                       dk=(dk, dk), detector_center=(n // 2, n // 2), aberrations=aberrations,
                       dose=params.dose, scan_origin=scan_origin)  # fmt: skip


def apply_dose(intensity: np.ndarray, cal: Calibration, seed: int, block: int) -> np.ndarray:
    """Poisson counts with mean intensity × dose × step² (noise seeded per block)."""
    if cal.dose is None:
        return intensity.astype(np.float32)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED, block]))
    lam = np.clip(intensity, 0, None) * cal.counts_per_pattern
    return rng.poisson(lam).astype(np.uint32)


def check_resumable(params: SimulationParameters, output) -> None:
    """Refuse to resume ``output.partial`` when it was simulated with other parameters,
    naming each that differs (a different run would otherwise silently start over)."""
    partial = Path(str(output) + io.PARTIAL)
    if not partial.exists():
        return
    try:
        with io.open_dataset(partial, allow_incomplete=True) as ds:
            old = ds.metadata.get("simulation")
    except PtyengineError:
        return  # unreadable: the writer starts it afresh and says why
    new = json.loads(json.dumps(dataclasses.asdict(params), default=str))
    if not isinstance(old, dict):
        return
    changed = [f"{k} = {json.dumps(old.get(k))} there, {json.dumps(new.get(k))} now"
               for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if changed:
        raise PtyengineError(
            f"cannot resume {partial}: it was simulated with other parameters ("
            f"{'; '.join(changed)}); give the same parameters, or drop --resume to start over")


def simulate(
    params: SimulationParameters,
    output: str,
    device: str = "cpu",
    overwrite: bool = False,
    resume: bool = False,
    batch_size: int | None = None,
    rows_per_block: int | None = None,
    progress: Callable[[int], None] | None = None,
    log: Callable[[str], None] | None = None,
    total: Callable[[int], None] | None = None,
) -> dict:
    """Simulate one dataset into ``output`` (.zarr or .h5); returns a summary dict.

    ``progress(n)`` is called with the number of probe positions × configurations done,
    ``total(n)`` once with the number to do, ``log(text)`` with one-line reports.
    With ``resume``, an interrupted ``output.partial`` of the same parameters is continued
    (the log says from which scan row); one of other parameters is refused, naming them.
    """
    params.check()
    if resume:
        check_resumable(params, output)
    xp = backend.get_xp(device)
    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    spec = build_specimen(params, xp)
    scan_shape, scan_origin = scan_positions(params, spec)
    cal = calibration_for(params, scan_shape, scan_origin)
    width = window_for(params, spec.sampling, spec.potential.shape)
    cplx = backend.complex_dtype(params.double)
    window = ProbeWindow.build(width, spec.sampling, params.energy, params.semiangle,
                               cal.aberrations, spec.slice_thicknesses, cal.detector_shape,
                               cal.dk, xp, cplx, params.detector_oversampling)  # fmt: skip
    # each configuration's slices, periodically extended once for the window (the
    # unextended copies are dropped so the field is held once)
    slabs = [window.prepare(t, xp) for t in spec.transmissions]
    n_configs = len(slabs)
    spec.transmissions.clear()
    if batch_size is None:  # ~32 MiB of complex wave per batch (fastest on the CI CPU)
        batch_size = max(1, min(1024, (32 << 20) // (width * width * np.dtype(cplx).itemsize)))
    ny, nx = scan_shape
    if rows_per_block is None:  # ~32 MiB blocks on disk, at least one row
        row_bytes = nx * cal.detector_shape[0] * cal.detector_shape[1] * 4
        rows_per_block = max(1, min(ny, (32 << 20) // max(row_bytes, 1)))
    log(f"field {spec.cell[0]:.2f} x {spec.cell[1]:.2f} x {spec.cell[2]:.2f} Å, "
        f"{spec.n_atoms} atoms, {len(spec.slice_thicknesses)} slices, sampling "
        f"{spec.sampling[0]:.4f} Å; window {width} px; scan {ny} x {nx}; "
        f"{n_configs} configuration(s)")  # fmt: skip
    if spec.sigmas:
        log("thermal sigma (Å, rms per axis): " + ", ".join(
            f"{el} {v:.4g}" for el, v in spec.sigmas.items()))  # fmt: skip
    metadata = {
        "fingerprint": params.fingerprint(),
        "simulation": json.loads(json.dumps(dataclasses.asdict(params), default=str)),
        "window_pixels": width,
        "scan_margin_A": dose_margin(params),
        "field_sampling": list(spec.sampling),
        "n_atoms": spec.n_atoms,
        "thermal_sigmas": spec.sigmas,
    }
    dtype = np.float32 if params.dose is None else np.uint32
    if total:
        total(ny * nx * n_configs)
    iy, ix = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    with io.create_dataset(output, cal, dtype, rows_per_chunk=rows_per_block, metadata=metadata,
                           overwrite=overwrite, resume=resume) as writer:  # fmt: skip
        first_row = writer.rows_written
        if writer.resume_note:
            log(writer.resume_note + (f" (block {first_row // rows_per_block} of "
                                      f"{-(-ny // rows_per_block)})" if writer.resumed else ""))
        elif resume:
            log(f"nothing to resume ({output}{io.PARTIAL} does not exist): starting at scan "
                "row 0")
        if progress and first_row:
            progress(first_row * nx * n_configs)
        for row0 in range(first_row, ny, rows_per_block):
            rows = slice(row0, min(ny, row0 + rows_per_block))
            pos = np.stack([scan_origin[0] + iy[rows].ravel() * params.scan_step,
                            scan_origin[1] + ix[rows].ravel() * params.scan_step], axis=1)
            acc = xp.zeros((len(pos), *cal.detector_shape), dtype=np.float64)
            for slab in slabs:
                for b0 in range(0, len(pos), batch_size):
                    acc[b0:b0 + batch_size] += window.diffraction(slab, pos[b0:b0 + batch_size],
                                                                  xp)
                    if progress:
                        progress(len(pos[b0:b0 + batch_size]))
            mean = backend.to_numpy(acc / n_configs)
            block = apply_dose(mean, cal, params.seed, row0 // rows_per_block)
            writer.write_rows(row0, block.reshape(rows.stop - rows.start, nx,
                                                  *cal.detector_shape))  # fmt: skip
        writer.write_array("ground_truth/potential", spec.potential,
                           {"sampling": list(spec.sampling), "origin": [0.0, 0.0], "units": "V·Å",
                            "description": "projected potential of the whole field, mean "
                            "over frozen-phonon configurations"})  # fmt: skip
        probe = backend.to_numpy(xp.fft.ifft2(window.probe_k))
        writer.write_array("ground_truth/probe", probe.astype(np.complex64),
                           {"sampling": list(spec.sampling), "units": "sqrt(electrons)",
                            "description": "probe at the entrance surface, centred"})
        writer.finish()
    return {"output": str(output), "scan_shape": scan_shape, "window": width,
            "seconds": time.perf_counter() - t0, "calibration": cal}  # fmt: skip

