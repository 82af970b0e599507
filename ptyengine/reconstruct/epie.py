"""ePIE: the extended ptychographical iterative engine (Maiden & Rodenburg 2009).

For each probe position j (in a random order every iteration: the stored chunks of scan
rows in random order, the positions inside each in random order, so that data larger than
memory can be streamed a chunk at a time; see :mod:`.patterns`), with object O and
probe P:

    ψ_j  = P_j · O[window_j]                       exit wave
    Ψ'_j = √I_j · Ψ_j / |Ψ_j|,  Ψ_j = F[ψ_j]        Fourier-modulus constraint
    Δψ_j = F⁻¹[Ψ'_j] − ψ_j
    O[window_j] += α conj(P_j) Δψ_j / max|P_j|²
    P           += β conj(O_j) Δψ_j / max|O_j|²     (O_j: the window before its update)

**Batched variant** (``batch_size`` B > 1, for GPUs): the B positions of a batch see the
same O and P; their updates are summed and normalised by the maximum of the summed
weights, O += α Σ conj(P_j)Δψ_j / max Σ|P_j|² and P += β Σ conj(O_j)Δψ_j / max Σ|O_j|²
(sums over the batch; a batch never spans two chunks). For B = 1 this is ePIE exactly;
where the windows of a batch do not overlap, each gets the sequential step; where they
overlap the step shrinks instead of overshooting. Measured on noise-free SrTiO3
(tests/test_epie.py, 400 positions): large batches start slower (B = 64: error 4.4e-3
after the first sweep against 3.0e-3 for sequential ePIE) and then settle lower (1.5e-4
against 2.0e-4 after 12 iterations, where sequential ePIE's full steps keep overshooting);
the phase agrees with the ground truth equally well (NCC 0.987-0.988 for B = 1, 16, 64).

**Probe centring.** Probe and object may move together, P(r) → P(r + c), O(r) → O(r + c),
without changing a single diffraction pattern (every exit wave becomes ψ_j(r + c)), so
nothing in the updates holds them in place and the pair can wander off; the object is
then displaced against the scan positions by as much. After every iteration that refines
the probe, the probe's intensity centroid (the circular mean over the window, so that
tails wrapping round its edges do not bias it) is moved back to the window centre
(Wy//2, Wx//2) by a Fourier phase ramp, and the object by the same shift (an FFT of the
whole object; skipped while the centroid is within 0.01 px). This is the convention of
the simulator's probe (a probe with even aberrations is centred on its position).

Detector pixels that the detector mask hides (:func:`ptyengine.dataset.detector_mask`:
dead or hot) are not data: there Ψ' = Ψ, the model keeps its own modulus.

Geometry: the detector grid fixes the real-space pixel, d = 1/(N dk) Å; the probe window
is the detector size. With a scan–detector rotation or transpose the object is
reconstructed on a grid aligned with the detector axes, and the result resampled onto the
scan-aligned grid (:mod:`.frame`). Positions are sub-pixel: the window sits at the integer pixel and
the fractional remainder shifts the probe by a Fourier phase ramp (the probe is kept in
Fourier space, so this costs one FFT to form and one to return its update).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from .. import backend, physics
from ..calibration import Calibration
from ..errors import PtyengineError
from ..kernels import ptycho as pk
from ..shift import ramps_2d
from . import frame as frm
from .counts import bright_field_pixels, count_scale
from .defocus_search import check_search, estimate_defocus, search_span
from .forward import exit_wave_pass
from .iterative import IterativeState, iteration_rng, load_checkpoint, opened, run
from .patterns import choose_patterns


@dataclass
class EpieParameters:
    """Step sizes α (object) and β (probe), iterations, batch size and the probe model.

    defocus: C10 guess in Å for the initial probe (None: the calibration's).
    probe_update_start: first iteration (0-based) at which the probe is refined.
    defocus_search, defocus_step: the likelihood search for the global defocus before the
        reconstruction (:mod:`.defocus_search`, Å; None: 300 Å when no defocus is known).
    """

    iterations: int = 50
    alpha: float = 1.0
    beta: float = 1.0
    batch_size: int = 1
    defocus: float | None = None
    probe_update_start: int = 1
    seed: int = 0
    margin: int = 8  # extra object pixels round the scanned area
    phase_only: bool = False  # constrain |O| = 1 (weak-phase specimens, low dose)
    defocus_search: float | None = None
    defocus_step: float = 100.0

    def __post_init__(self):
        if self.iterations < 0 or self.batch_size < 1:
            raise PtyengineError(f"iterations ({self.iterations}) must be ≥ 0 and batch size "
                                 f"({self.batch_size}) ≥ 1")
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 < v <= 2):
                raise PtyengineError(f"step size {name} must lie in (0, 2], got {v}")
        check_search(self.defocus_search, self.defocus_step)


@dataclass
class PtychoGeometry:
    """Where every diffraction pattern's window sits in the object array.

    The object grid is aligned with the detector axes as the engines see them (swapped if
    the calibration's ``transpose``); with a scan–detector ``rotation`` θ the scan
    positions are turned by −θ into that frame (:mod:`.frame`), and ``object_origin`` is
    in that turned frame too. ``frame="specimen"`` gives the grid of the same window and
    pixel with the positions not turned (``rotation`` 0): where results are presented.
    """

    window: tuple[int, int]  # (Wy, Wx) = detector shape (swapped if transposed)
    sampling: tuple[float, float]  # object pixel (Å)
    object_shape: tuple[int, int]
    object_origin: tuple[float, float]  # coordinates (Å) of object pixel (0, 0), see above
    corners: np.ndarray  # (N, 2) int: window corner in object pixels
    frac: np.ndarray  # (N, 2) sub-pixel remainder
    rotation: float = 0.0  # degrees: the scan positions were turned by −rotation

    @classmethod
    def from_calibration(cls, cal: Calibration, margin: int = 8, frame: str = "reconstruction",
                         positions=None) -> PtychoGeometry:  # fmt: skip
        """The geometry of the calibration's scan grid, or of measured ``positions``
        ((N, 2) Å, scan frame, row-major scan order, as the grid's scan_origin +
        (i·dy, j·dx)): the object grid then holds those positions with the same margin."""
        if frame not in ("reconstruction", "specimen"):
            raise ValueError(f"frame must be 'reconstruction' or 'specimen', not {frame!r}")
        w, dk, _ = frm.detector_axes(cal)
        d = (1 / (w[0] * dk[0]), 1 / (w[1] * dk[1]))
        theta = float(cal.rotation) if frame == "reconstruction" else 0.0
        if positions is None:  # relative to the first position
            pos = scan_grid(cal, relative=True)
        else:
            pos = check_positions(positions, cal) - np.asarray(cal.scan_origin)
        pos = frm.scan_to_frame(pos, theta)
        base = pos.min(axis=0)
        # object pixel (0, 0) lies margin + W//2 pixels before the lowest position
        lead = np.array([margin + w[0] // 2, margin + w[1] // 2])
        pos_px = (pos - base) / np.asarray(d) + lead
        corners = np.floor(pos_px).astype(np.int64) - np.array([w[0] // 2, w[1] // 2])
        frac = pos_px - np.floor(pos_px)
        shape = tuple(int(corners[:, i].max() + w[i] + margin) for i in range(2))
        start = frm.scan_to_frame(np.asarray(cal.scan_origin, dtype=np.float64), theta) + base
        origin = (float(start[0] - lead[0] * d[0]), float(start[1] - lead[1] * d[1]))
        return cls(tuple(w), d, shape, origin, corners, frac, theta)


def scan_grid(cal: Calibration, relative: bool = False) -> np.ndarray:
    """(N, 2) positions in Å (scan frame, row-major) of the calibration's regular scan:
    scan_origin + (i·dy, j·dx); ``relative``: without scan_origin."""
    iy, ix = np.meshgrid(np.arange(cal.scan_shape[0]), np.arange(cal.scan_shape[1]),
                         indexing="ij")  # fmt: skip
    pos = np.stack([iy.ravel() * cal.scan_step[0], ix.ravel() * cal.scan_step[1]], axis=1)
    return pos if relative else pos + np.asarray(cal.scan_origin)


def check_positions(positions, cal: Calibration) -> np.ndarray:
    """Measured positions as float64 (N, 2), or one error naming what is wrong."""
    pos = np.asarray(positions, dtype=np.float64)
    n = cal.scan_shape[0] * cal.scan_shape[1]
    if pos.shape != (n, 2):
        raise PtyengineError(f"positions: shape {pos.shape}, but the scan has "
                             f"{cal.scan_shape[0]} × {cal.scan_shape[1]} = {n} positions: "
                             f"give ({n}, 2) (y, x) in Å, in scan order")  # fmt: skip
    if not np.isfinite(pos).all():
        raise PtyengineError("positions: NaN or inf among them; give finite (y, x) in Å")
    return pos


@dataclass
class EpieResult:
    object: np.ndarray  # complex (Ny, Nx); phase in rad, transmission amplitude
    probe: np.ndarray  # complex (Wy, Wx), real space, centred at (Wy//2, Wx//2)
    errors: list[float]
    geometry: PtychoGeometry
    parameters: EpieParameters
    calibration: Calibration
    extra: dict = field(default_factory=dict)
    reconstruction_frame: dict | None = None  # rotated data: see frame.present

    @property
    def phase(self) -> np.ndarray:
        """The object's phase (rad); of a multislice object (S, Ny, Nx), the sum of the
        slices' phases (the projected phase)."""
        if self.object.ndim == 3:
            return self.slice_phase.sum(axis=0)
        return np.angle(self.object)

    @property
    def slice_phase(self) -> np.ndarray:
        """(S, Ny, Nx) phase of every slice (rad); (1, Ny, Nx) for a single slice."""
        return np.angle(self.object if self.object.ndim == 3 else self.object[None])


def initial_probe(cal: Calibration, defocus: float | None, mean_intensity: float, xp,
                  dtype=np.complex64):  # fmt: skip
    """Fourier-space probe (FFT order) from the calibration's aperture and aberrations,
    scaled so that its diffraction pattern holds the mean measured intensity; on the
    engines' detector grid, in the reconstruction frame (:mod:`.frame`: axes swapped if
    transposed, aberration angles turned by −rotation)."""
    ab = frm.rotated_aberrations(cal.aberrations, cal.rotation)
    if defocus is not None:
        ab["C10"] = float(defocus)
    shape, dk, _ = frm.detector_axes(cal)
    sampling = (1 / (shape[0] * dk[0]), 1 / (shape[1] * dk[1]))
    p = physics.probe(shape, sampling, cal.energy, cal.semiangle, ab, xp=xp, dtype=dtype,
                      fourier=True, band_fraction=1.0)  # fmt: skip
    n = shape[0] * shape[1]
    # Σ_k |Ψ|² = N Σ_r |ψ|² = N (probe normalised to 1): scale to the data
    return p * np.float32(math.sqrt(mean_intensity / n))


#: counts per bright-field pixel below which the amplitude projection is biased (E[√n] ≪ √λ)
LOW_COUNTS = 1.0


def _warn_low_counts(ds, cal: Calibration, mean_sum: float, params: EpieParameters) -> None:
    """Amplitude projection is biased far below one count per bright-field pixel
    (E[√n] ≪ √λ): say so, with the settings that measured better (benchmarks/RESULTS.md).
    Counts as ML reads them (:func:`.counts.count_scale`): integer data as stored,
    real-valued data as dose × step² per pattern (their own scale is arbitrary)."""
    if cal.dose is None:
        return
    counts = mean_sum * count_scale(ds, cal, mean_sum)
    per_pixel = counts / max(bright_field_pixels(cal), 1.0)
    if per_pixel < LOW_COUNTS and not (params.phase_only and params.probe_update_start > 0):
        warnings.warn(
            f"only {per_pixel:.3g} counts per bright-field pixel: plain ePIE's amplitude "
            "update is biased at such counts and can collapse the object; for weak-phase "
            "specimens try --phase-only, a fixed probe (--probe-update-start larger than "
            "--iterations) and --alpha 0.1", stacklevel=3)


def fingerprint(cal: Calibration, params: EpieParameters, data_id: str) -> str:
    """What a checkpoint must match to be resumed: data and every parameter but the number
    of iterations (a finished run may be continued to more iterations)."""
    p = {k: v for k, v in params.__dict__.items() if k != "iterations"}
    blob = json.dumps([cal.to_dict(), p, data_id], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


CENTRE_TOLERANCE = 0.01  # pixels: a probe centroid closer to the centre is left alone


def probe_centroid(probe_k, xp) -> tuple[float, float]:
    """Offset (y, x) in pixels of the probe's intensity centroid from the window centre
    (Wy//2, Wx//2): the circular mean W/2π · arg Σ I(y) exp(2πi (y − W//2)/W) per axis,
    exact under sub-pixel Fourier shifts and blind to the window's periodic wrap."""
    p = xp.fft.ifft2(probe_k)
    intensity = p.real * p.real + p.imag * p.imag
    out = []
    for axis, n in enumerate(intensity.shape):
        profile = intensity.sum(axis=1 - axis)
        phase = xp.exp(2j * math.pi * (xp.arange(n) - n // 2) / n)
        out.append(float(xp.angle(xp.sum(profile * phase))) * n / (2 * math.pi))
    return out[0], out[1]


def centre_probe(obj, probe_k, xp, phase_only: bool = False) -> tuple[float, float]:
    """Move the probe's intensity centroid back to the window centre and the object by the
    same shift, in place (see the module docstring: every exit wave moves by the same
    amount, so no diffraction pattern changes; a multislice object (S, Ny, Nx) moves
    every slice: free-space propagation commutes with the shift). Returns the shift
    applied (pixels).
    The FFTs of the whole object (once an iteration, no plan to make for its shape) are
    scipy.fft's on the CPU: numpy's took 4× its time on 16 slices of 164² (20 against 5 ms,
    one thread), ~5 % of a 64² mepie iteration's FFTs; cupy's on a GPU."""
    cy, cx = probe_centroid(probe_k, xp)
    if max(abs(cy), abs(cx)) < CENTRE_TOLERANCE:
        return 0.0, 0.0
    if xp is np:
        import scipy.fft as fft
    else:
        fft = xp.fft
    shift = np.array([[-cy, -cx]])
    for a, fourier in ((probe_k, True), (obj, False)):
        ry, rx = ramps_2d(shift, a.shape[-2:], xp, a.dtype)  # every slice alike
        spectrum = a if fourier else fft.fft2(a)
        spectrum *= ry[0][:, None]
        spectrum *= rx[0][None, :]
        if not fourier:
            a[...] = fft.ifft2(spectrum)
    if phase_only:  # the shifted phase object, interpolated, is no longer exactly |O| = 1
        obj /= xp.abs(obj).clip(1e-12)
    return -cy, -cx


def _sweep_factory(patterns, geom: PtychoGeometry, params: EpieParameters, xp,
                   propagators=None):  # fmt: skip
    corners_dev = xp.asarray(geom.corners)
    w0, w1 = geom.window
    inv_n = 1.0 / (w0 * w1)  # the inverse FFTs are unnormalised: 1/N folded into kernels

    def batch_update(state, block, idx, iteration):
        """One batch through the shared forward model (:func:`.forward.exit_wave_pass`)
        with ePIE's Fourier-modulus revision, then the object and probe steps; of a
        multislice object (``propagators``), every slice's step from its own overlap sums
        ((α/S) conj(ψ_s)Δφ_s / max Σ|ψ_s|²)."""
        obj, probe_k = state.arrays["object"], state.arrays["probe_k"]
        with_probe = iteration >= params.probe_update_start
        # object: overlap sum over the batch, applied on the batch's bounding box
        lo = geom.corners[idx].min(axis=0)
        hi = geom.corners[idx].max(axis=0) + np.array([w0, w1])
        box_shape = (int(hi[0] - lo[0]), int(hi[1] - lo[1]))
        err = xp.zeros(len(idx), dtype=np.float64)

        def revise(psi_k, local, positions, s0, s1):  # Ψ → √I Ψ/|Ψ|, times 1/N
            pk.fourier_modulus(psi_k, block.amplitudes, local, err[s0:s1], inv_n, patterns.mask)

        num, den, upd, weight = exit_wave_pass(obj, probe_k, block, idx, corners_dev, lo,
                                               box_shape, revise, with_probe, xp,
                                               propagators, with_weight=with_probe)  # fmt: skip
        # O += α Σ num / max Σ den on the box; |O| = 1 for a pure phase object (phase_only)
        box = (..., slice(lo[0], hi[0]), slice(lo[1], hi[1]))
        if obj.ndim == 2:
            pk.object_step(obj[box], [num], [den], params.alpha, params.phase_only)
        for s in range(obj.shape[0] if obj.ndim == 3 else 0):  # α/S each: see .mepie
            pk.object_step(obj[s][box], [num[s]], [den[s]], params.alpha / obj.shape[0],
                           params.phase_only)  # fmt: skip
        if with_probe:  # P += β Σ conj(O)Δψ / max Σ|O|²
            upd *= np.float32(params.beta / float(weight.max()))
            probe_k += upd
        return float(err.sum())

    def sweep(state: IterativeState, iteration: int) -> float:
        """One pass: the blocks in random order, batches of positions within each."""
        err, bs = 0.0, params.batch_size
        order = patterns.order(iteration_rng(params.seed, iteration))
        for block, positions in patterns.iterate(order):
            for b0 in range(0, len(positions), bs):
                err += batch_update(state, block, positions[b0:b0 + bs], iteration)
        if iteration >= params.probe_update_start:  # the probe moved: centre it
            centre_probe(state.arrays["object"], state.arrays["probe_k"], xp, params.phase_only)
        return err / patterns.total

    return sweep


def epie(
    data,
    params: EpieParameters | None = None,
    device: str = "cpu",
    checkpoint: str | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress=None,
    data_id: str = "",
    memory_limit: int | None = None,
    report=None,
) -> EpieResult:
    """Reconstruct object and probe from a calibrated dataset (path, io.Dataset or
    InMemoryDataset) by ePIE.

    The measured amplitudes are held on the device when they take at most half of
    ``memory_limit`` bytes (default: half the machine's memory, see
    :func:`backend.memory_limit`), and streamed from the dataset every iteration otherwise,
    with an identical result (:mod:`.patterns`).

    ``progress(iteration, error)`` is called after every iteration. ``checkpoint`` (a .npz
    path) is written every ``checkpoint_every`` iterations; ``resume=True`` continues from
    it and gives the same result as an uninterrupted run. ``report(line)`` receives one
    line on the defocus search when it runs.
    """
    params = params or EpieParameters()
    with opened(data, device) as (ds, xp):
        return frm.present(_epie(ds, params, xp, checkpoint, checkpoint_every, resume,
                                 progress, data_id, memory_limit, report=report))  # fmt: skip


def split_object(obj, n_slices: int, root: bool, xp):
    """S slices of a single-slice object: each its S-th root |O|^(1/S) exp(i arg(O)/S)
    (their product is O), or, without ``root``, S copies (of a flat object: flat)."""
    if root:
        obj = (xp.abs(obj) ** (1 / n_slices) * xp.exp(1j * xp.angle(obj) / n_slices))
    return xp.repeat(obj[None].astype(np.complex64), n_slices, axis=0)  # a copy


def _constrained(sweep, apply):
    """``sweep`` followed by ``apply(object, iteration)``."""
    def constrained(state: IterativeState, iteration: int) -> float:
        err = sweep(state, iteration)
        apply(state.arrays["object"], iteration)
        return err

    return constrained


def _epie(ds, params, xp, checkpoint, checkpoint_every, resume, progress, data_id,
          memory_limit, slices=None, report=None, regulariser=None) -> EpieResult:  # fmt: skip
    """ePIE, or with ``slices(ds, geom, xp)`` -> :class:`.forward.SlicePropagators` the
    multislice ePIE of :mod:`.mepie` (an object of S slices); ``regulariser(geom, props,
    xp)`` -> ``apply(object, iteration)``: a constraint on the object after every
    iteration (mepie's k_z filter)."""
    cal = ds.calibration
    geom = PtychoGeometry.from_calibration(cal, params.margin)
    props = slices(ds, geom, xp) if slices is not None else None
    patterns = choose_patterns(ds, geom, xp, memory_limit)
    mean_int = patterns.total / len(geom.corners)
    if mean_int <= 0:
        raise PtyengineError(f"{getattr(ds, 'path', 'data')}: every pattern is empty")
    _warn_low_counts(ds, cal, mean_int, params)
    # the rows per stored chunk (the visiting order) and the mask: part of what a resume matches
    fp = fingerprint(cal, params, f"{data_id or getattr(ds, 'path', '')}|{patterns.key}")
    defocus = params.defocus
    if resume and checkpoint:
        state = load_checkpoint(checkpoint, fp, xp)
    else:
        if (span := search_span(params.defocus_search, defocus, cal)) > 0:
            defocus = estimate_defocus(ds, patterns, defocus, span, params.defocus_step, xp,
                                       margin=params.margin, report=report)  # fmt: skip
        obj = xp.ones(geom.object_shape, dtype=np.complex64)
        state = IterativeState({"object": obj,
                                "probe_k": initial_probe(cal, defocus, mean_int, xp)})
        if props is not None:  # mepie: S slices, flat or from single-slice iterations
            pre = getattr(params, "single_slice_iterations", 0)
            if pre:
                run(state, _sweep_factory(patterns, geom, params, xp), pre, xp)
            state = IterativeState({"object": split_object(state.arrays["object"],
                                                           props.n_slices, bool(pre), xp),
                                    "probe_k": state.arrays["probe_k"]})  # fmt: skip
    sweep = _sweep_factory(patterns, geom, params, xp, props)
    if regulariser is not None:
        sweep = _constrained(sweep, regulariser(geom, props, xp))
    run(state, sweep, params.iterations, xp, fp, checkpoint, checkpoint_every, progress)
    probe = backend.to_numpy(xp.fft.ifft2(state.arrays["probe_k"]))
    extra = {"streamed": patterns.streamed}
    if defocus is not None and defocus != params.defocus:  # found by the defocus search
        extra["start_defocus"] = defocus
    if props is not None:
        extra.update(slice_positions_A=props.positions,
                     slice_thicknesses_A=list(props.thicknesses))  # fmt: skip
    return EpieResult(backend.to_numpy(state.arrays["object"]), probe, list(state.errors),
                      geom, params, cal, extra)  # fmt: skip
