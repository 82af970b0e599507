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
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import backend, io, physics, potentials, structures
from .calibration import Calibration
from .errors import PtyengineError
from .multislice import ProbeWindow, transmission_functions, window_size


@dataclass
class SimulationParameters:
    """One simulated 4D-STEM dataset. Lengths Å, angles mrad, energy eV, dose e/Å².

    structure: builtin name ("uio66", "srtio3", "mos2") or a structure file (CIF, ...).
    zone_axis: beam direction [uvw]. field: lateral size (Ly, Lx) of the periodic
    specimen model (rounded to whole unit cells). thickness: slab thickness.
    defocus: C10 (> 0: crossover above the entrance surface; see physics). aberrations:
    further Krivanek coefficients. scan_size: (h, w) of the scanned area (None: one unit
    cell); scan_origin: its corner in the field (None: centred). max_angle: the detector's
    half-width; detector_pixels: its size. sampling: field pixel size (None: just fine
    enough for max_angle and the aperture). phonons: frozen-phonon configurations (0 =
    static lattice); sigmas: rms displacement per element and direction (None: the UiO-66
    study's values, see structures). dose: None for noise-free intensities.
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
    max_angle: float = 50.0
    detector_pixels: int = 64
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


def field_sampling(params: SimulationParameters, cell_yx) -> tuple[tuple[int, int], tuple]:
    """Grid (ny, nx) and sampling (dy, dx) Å covering the field exactly.

    The default pixel is 1/(3 k_max) for the detector's largest angle: then k_max sits at
    the 2/3 anti-aliasing limit, and nothing the detector records is aliased.
    """
    lam = physics.wavelength(params.energy)
    k_max = max(params.max_angle, params.semiangle) * 1e-3 / lam
    d_max = params.sampling or 1 / (3 * k_max)
    gpts = tuple(int(math.ceil(length / d_max)) for length in cell_yx)
    sampling = (cell_yx[0] / gpts[0], cell_yx[1] / gpts[1])
    if 1 / (2 * max(sampling)) * 2 / 3 < k_max * (1 - 1e-9):
        raise PtyengineError(
            f"sampling {max(sampling):.4g} Å is too coarse for the detector's "
            f"{params.max_angle:g} mrad inside the 2/3 anti-aliasing limit; use a sampling of "
            f"at most {1 / (3 * k_max):.4g} Å"
        )
    physics.check_sampling(sampling, params.energy, params.semiangle)
    return gpts, sampling


def build_specimen(params: SimulationParameters, xp=np) -> Specimen:
    """Structure -> orthogonal slab -> frozen-phonon slices -> transmission functions."""
    atoms = structures.load_structure(params.structure)
    unit = structures.orthogonal_cell(atoms, params.zone_axis)
    slab = structures.build_specimen(atoms, params.zone_axis, size=params.field,
                                     thickness=params.thickness, hydrogen=params.hydrogen)
    lx, ly, t = (float(v) for v in np.diag(slab.cell.array))
    gpts, sampling = field_sampling(params, (ly, lx))
    if params.phonons > 0:
        sigmas = params.sigmas or structures.default_sigmas(slab)
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
                    thicknesses, (ly, lx, t), ucell, len(slab))  # fmt: skip


def scan_positions(params: SimulationParameters, spec: Specimen):
    """Scan shape (ny, nx) and origin (y0, x0) Å in the field frame."""
    size = params.scan_size or spec.unit_cell
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
    k_max = params.max_angle * 1e-3 / physics.wavelength(params.energy)
    dk = 2 * k_max / n
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
    """
    xp = backend.get_xp(device)
    log = log or (lambda msg: None)
    t0 = time.perf_counter()
    spec = build_specimen(params, xp)
    scan_shape, scan_origin = scan_positions(params, spec)
    cal = calibration_for(params, scan_shape, scan_origin)
    width = window_size(spec.sampling, params.energy, params.semiangle, params.defocus,
                        params.thickness, params.max_angle, detector_fov=1 / cal.dk[0],
                        field_pixels=spec.potential.shape)
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
    metadata = {
        "fingerprint": params.fingerprint(),
        "simulation": json.loads(json.dumps(dataclasses.asdict(params), default=str)),
        "window_pixels": width,
        "field_sampling": list(spec.sampling),
        "n_atoms": spec.n_atoms,
    }
    dtype = np.float32 if params.dose is None else np.uint32
    if total:
        total(ny * nx * n_configs)
    iy, ix = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    with io.create_dataset(output, cal, dtype, rows_per_chunk=rows_per_block, metadata=metadata,
                           overwrite=overwrite, resume=resume) as writer:  # fmt: skip
        first_row = writer.rows_written
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

