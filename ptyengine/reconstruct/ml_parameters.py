"""The options of the Poisson ML engine (:mod:`.ml`) and their checks, in one place: the
engine, the CLI (``ptyengine reconstruct --method ml``) and the benchmarks take their
defaults from :class:`MLParameters`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import PtyengineError
from . import position_models as pm
from . import slices as sl
from .defocus_search import check_search
from .priors import EMPIRICAL_FLOOR, EMPIRICAL_SCALE, TV_SCALE
from .probe_coefficients import PROBE_COEFFICIENTS

DEPTH_SMOOTHNESS = 0.0  # μ_z: the depth prior's default, off (module docstring: measured)
MAX_MODES = 8  # incoherent probe modes at most
PRIORS = ("auto", "gaussian", "empirical")
#: "auto" takes the empirical prior up to this dose (e/Å²; measured from 10 to 100, not
#: above) with the crossover at least this far from the specimen (|C10|, Å): in focus and
#: 10 nm from it the prior lowered NCC(1 Å) (benchmarks/RESULTS.md, "ML, eighth part")
EMPIRICAL_UP_TO = 100.0
EMPIRICAL_DEFOCUS = 200.0


@dataclass
class MLParameters:
    """Options of the Poisson ML engine (see the module docstring for the equations).

    iterations: the most iterations; the held-out rule usually stops earlier.
    object_model: "phase" (a = 0) or "complex" (phase and absorption). Phase is the default:
        on the UiO-66 study's noise-free data it gave NCC 0.96 where the complex model gave
        0.95, and on one-cell SrTiO3 0.82 against 0.74 (the absorption takes up part of
        the single-slice model's mismatch and of the noise, not specimen structure).
    smoothness: μ_s, dimensionless; 0 switches it off.
    ridge: μ_r in 1/Å²; 0 switches it off. None (default): from the dose
        (:func:`.priors.prior_strengths`): (3, 8) from 100 e/Å² up, in proportion to the
        dose below. (3, 8) makes the converged result the answer at 100 e/Å²: there weaker
        priors (ridge 0.5–2) reach NCC(1 Å) 0.72–0.75 after ~20 iterations and fall to
        0.55–0.69 by 60; at 20 e/Å² (3, 8) holds the phase back (50 nm: 0.46 against 0.57
        with (0.6, 1.6); benchmarks/RESULTS.md).
    tv: μ_tv, dimensionless: the total-variation prior (:mod:`.priors`), which smooths
        phase gradients below ``tv_scale`` and keeps steps above it (a projected
        potential's peaks on its flat floor); 0 (default): off. Measured on the UiO-66
        quick study (benchmarks/RESULTS.md, "ML, sixth part"): 10 at 20 e/Å² raises the
        plain NCC by ~0.05, NCC(1 Å) by −0.04 … +0.06 over noise draws, and needs more
        iterations (60–80) to converge.
    tv_scale: δ_Å, rad/Å: the phase gradient where the total variation turns from
        quadratic to linear.
    prior: the object's Gaussian prior: "gaussian" (the smoothness and ridge above) or
        "empirical" (:func:`.priors.empirical_spectrum`: a pilot run with the Gaussian
        prior, then the run itself from flat with a prior whose spectrum is the pilot's,
        above its noise; twice the time); "auto" (default): empirical on one slice up to
        EMPIRICAL_UP_TO e/Å² with the crossover ≥ EMPIRICAL_DEFOCUS Å (20 nm) from the
        specimen, else gaussian. Measured on the UiO-66 quick study
        (benchmarks/RESULTS.md, "ML, eighth part").
    prior_scale, prior_floor: c and f of the empirical prior (:mod:`.priors`).
    band_limit: band-limit the search directions to 2α/λ.
    holdout: fraction of the pixels held out for the stopping rule (0: none, then the run
        stops at ``iterations`` or when the objective has converged).
    patience: iterations without a better held-out likelihood (or, without held-out pixels,
        over which L has fallen by less than CONVERGED per iteration) before stopping.
    defocus: C10 in Å of the initial probe (None: the calibration's).
    refine_probe: which probe parameters are refined with the object: "none", "defocus"
        (C10), "aberrations" (C10 and the two-fold astigmatism C12, as Cartesian
        components) or "pixels" (every probe pixel inside the aperture, in ``probe_modes``
        incoherent modes; :mod:`.probe_model`): for counts that determine them; "auto":
        "pixels" on one slice where a pattern holds ≥ 3 counts per bright-field pixel
        (probe_model.PIXEL_COUNTS), else "aberrations".
    probe_modes: M, the incoherent probe modes of the "pixels" probe (1 to MAX_MODES).
    pixel_start_iterations: "pixels" on one slice: the pixels start from the object and
        probe of a run of at most this many iterations that refines C10 and C12 (it moves
        the defocus, the pixels hardly do); 0: from the calibration's probe.
    probe_update_start: first iteration (0-based) that refines them: the object must hold
        some contrast before the data say anything about the probe.
    defocus_search: half-width (Å) of the likelihood search for the global defocus made
        before the reconstruction, around ``defocus`` or the calibration's C10
        (:mod:`.defocus_search`); 0 switches it off; None (default): 300 Å when neither
        ``defocus`` nor the calibration gives C10 (unknown), else off. The search costs
        ~35 iterations on up to 1024 positions (benchmarks/RESULTS.md).
    defocus_step: the search's grid step (Å).
    slices: S, the object's slices along the beam (1: the single-slice model); S > 1 is
        multislice ML (module docstring, "Multislice").
    slice_thickness: Δz in Å between slices, one value or S of them (None: the dataset's
        recorded specimen thickness / S); checked as for mepie (:mod:`.slices`).
    depth_smoothness: μ_z, dimensionless: the prior ½ μ_z Σ_s Σ_pixels |u_{s+1} − u_s|²
        coupling adjacent slices (module docstring, "Multislice"); 0 switches it off.
    refine_positions: refine the scan positions with the object (:mod:`.positions`):
        "on" (every position's own offset), "off", or "auto" (single slice: the own
        offsets at the updates where the data locate a position better than
        ``position_sigma``, their median Cramér–Rao bound ≤ CRB_FRACTION σ, and only if
        the held-out likelihood is no worse after the move; S > 1 refines none).
        True / False mean on / off.
    position_update_start: first iteration (0-based) that moves the positions; then every
        ``position_update_every`` iterations, one extra pass (6 FFTs per position) each.
    position_max_shift: the longest step of a position per update (Å; None: one object
        pixel).
    position_sigma: the rms error (Å) expected of each measured position beyond the scan's
        linear distortion: a Gaussian prior on each position's own offset (None: none).
    position_affine: refine a global linear map of the positions (scale, rotation, shear)
        too, from all positions together (with "on" or "auto"). Off: it is nearly
        degenerate with the object's own scale and rotation (a round probe), and on the
        UiO-66 quick data (50 nm) at 20 e/Å² it moved exact positions by 0.20 Å rms and
        lowered NCC(1 Å) from 0.686 to 0.662 (0.10 Å, no change at 100 e/Å²).
    position_correlated: a model of correlated position errors refined from many patterns
        at once (:mod:`.position_models`): "rows" (one offset per scan row: flyback
        jitter), "drift" (a piecewise-linear path in acquisition time through
        ``position_drift_knots`` knots), "rows+drift", or "none". Its prior σ is
        ``position_sigma``; "auto" moves it where its pooled Cramér–Rao bound is
        ≤ CORRELATED_CRB_FRACTION σ (a fifth: with σ = 0.3 Å, rows of ~35 patterns move
        from ~80 e/Å² up) and the held-out likelihood agrees. Default "rows".
    position_drift_knots: K ≥ 2 knots of the drift path, evenly spread in time.
    single_slice_iterations: S > 1: the slices start from a single-slice ML run of at most
        this many iterations (its defocus search, refinement and stopping rule; module
        docstring, "Multislice"); 0: flat, after a multislice defocus search.
    mepie_start_iterations: S > 1: K > 0 starts the slices and the probe from K iterations
        of mepie on the same slices instead (:func:`.ml_starts.mepie_start`; it replaces
        the single-slice start); 0 (default): off.
    """

    iterations: int = 50
    batch_size: int = 64
    object_model: str = "phase"
    smoothness: float | None = None
    ridge: float | None = None
    tv: float = 0.0
    tv_scale: float = TV_SCALE
    prior: str = "auto"
    prior_scale: float = EMPIRICAL_SCALE
    prior_floor: float = EMPIRICAL_FLOOR
    band_limit: bool = True
    holdout: float = 0.05
    patience: int = 15
    defocus: float | None = None
    refine_probe: str = "auto"
    probe_modes: int = 1
    pixel_start_iterations: int = 20
    probe_update_start: int = 1
    defocus_search: float | None = None
    defocus_step: float = 100.0
    seed: int = 0
    margin: int = 8
    slices: int = 1
    slice_thickness: float | tuple[float, ...] | None = None
    depth_smoothness: float = DEPTH_SMOOTHNESS
    single_slice_iterations: int = 50
    mepie_start_iterations: int = 0
    refine_positions: str = "auto"
    position_update_start: int = 10
    position_update_every: int = 4
    position_max_shift: float | None = None
    position_sigma: float | None = 0.3
    position_affine: bool = False
    position_correlated: str = "rows"
    position_drift_knots: int = 8

    def __post_init__(self):
        self.slices, self.slice_thickness = sl.check_slices(self.slices, self.slice_thickness)
        self.single_slice_iterations = sl.check_single_slice_iterations(
            self.single_slice_iterations)
        k = self.mepie_start_iterations
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise PtyengineError(f"--mepie-start-iterations must be a whole number ≥ 0, "
                                 f"got {k!r}")  # fmt: skip
        if k and self.slices == 1:
            raise PtyengineError(f"--mepie-start-iterations {k} starts the slices of "
                                 f"--slices > 1, got 1; leave it 0 for one slice")
        v = self.depth_smoothness
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise PtyengineError(f"--depth-smoothness must be a finite number ≥ 0, got {v}")
        if self.iterations < 0 or self.batch_size < 1 or self.patience < 1:
            raise PtyengineError(
                f"iterations ({self.iterations}) must be ≥ 0, batch size ({self.batch_size}) "
                f"and patience ({self.patience}) ≥ 1")
        kinds = ("auto", *PROBE_COEFFICIENTS, "pixels")
        if self.refine_probe not in kinds:
            raise PtyengineError(f"probe refinement must be one of {', '.join(kinds)}, got "
                                 f"{self.refine_probe!r}")  # fmt: skip
        if not (isinstance(self.probe_modes, int) and 1 <= self.probe_modes <= MAX_MODES):
            raise PtyengineError(f"--probe-modes must be an integer from 1 to {MAX_MODES}, "
                                 f"got {self.probe_modes!r}")  # fmt: skip
        if self.probe_modes > 1 and self.refine_probe != "pixels":
            raise PtyengineError(f"--probe-modes {self.probe_modes}: incoherent modes are "
                                 f"free pixels; use --refine-probe pixels (got "
                                 f"{self.refine_probe})")  # fmt: skip
        if not (isinstance(self.pixel_start_iterations, int)
                and self.pixel_start_iterations >= 0):
            raise PtyengineError(f"--pixel-start-iterations must be an integer ≥ 0, got "
                                 f"{self.pixel_start_iterations!r}")  # fmt: skip
        if self.probe_modes > 1 and self.refine_positions == "on":
            raise PtyengineError("--refine-positions on: positions are refined with one "
                                 "probe mode only; use --probe-modes 1, or leave it auto")
        check_search(self.defocus_search, self.defocus_step)
        if self.probe_update_start < 0:
            raise PtyengineError(f"probe update start must be ≥ 0, got "
                                 f"{self.probe_update_start}")
        if self.object_model not in ("phase", "complex"):
            raise PtyengineError(f"object model must be phase or complex, got "
                                 f"{self.object_model!r}")  # fmt: skip
        if not (isinstance(self.tv_scale, (int, float)) and math.isfinite(self.tv_scale)
                and self.tv_scale > 0):
            raise PtyengineError(f"--tv-scale must be a positive number of rad/Å, got "
                                 f"{self.tv_scale!r}")  # fmt: skip
        if self.prior not in PRIORS:
            raise PtyengineError(f"--prior must be one of {', '.join(PRIORS)}, got "
                                 f"{self.prior!r}")  # fmt: skip
        if self.prior == "empirical" and self.slices > 1:
            raise PtyengineError(f"--prior empirical: the pilot is single-slice; use --slices "
                                 f"1 or --prior gaussian (got --slices {self.slices})")
        for name in ("prior_scale", "prior_floor"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                flag = "--" + name.replace("_", "-")
                raise PtyengineError(f"{flag} must be a positive number, got {v!r}")
        for name in ("smoothness", "ridge", "tv"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                raise PtyengineError(f"{name} must be a finite number ≥ 0, got {v}")
        if not 0 <= self.holdout < 0.5:
            raise PtyengineError(f"held-out fraction must lie in [0, 0.5), got {self.holdout}")
        self._check_positions()

    def _check_positions(self) -> None:
        if self.refine_positions in (True, False):
            self.refine_positions = "on" if self.refine_positions else "off"
        if self.refine_positions not in ("auto", "on", "off"):
            raise PtyengineError(f"--refine-positions must be auto, on or off, got "
                                 f"{self.refine_positions!r}")  # fmt: skip
        if self.refine_positions == "on" and self.slices > 1:
            raise PtyengineError("--refine-positions on: positions are refined by the "
                                 "single-slice model only; use --slices 1, or leave it auto")
        if self.position_update_start < 0 or self.position_update_every < 1:
            raise PtyengineError(
                f"position update start ({self.position_update_start}) must be ≥ 0 and its "
                f"interval ({self.position_update_every}) ≥ 1 iterations")
        pm.check_kind(self.position_correlated)
        k = self.position_drift_knots
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise PtyengineError(f"--position-drift-knots must be a whole number ≥ 2, got {k!r}")
        for name in ("position_max_shift", "position_sigma"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                flag = "--" + name.replace("_", "-")
                raise PtyengineError(f"{flag} must be a positive number of Å, got {v}")


def refines_positions(params: MLParameters) -> bool:
    """Whether a run moves the scan positions at all: "on", or "auto" on a single slice."""
    if params.refine_positions == "auto":
        return params.slices == 1 and params.probe_modes == 1
    return params.refine_positions == "on"


def prior_kind(params: MLParameters, dose: float, defocus: float) -> str:
    """The prior a run uses: ``params.prior``, or for "auto" "empirical" on one slice up to
    EMPIRICAL_UP_TO e/Å² (``dose``) with the crossover at least EMPIRICAL_DEFOCUS Å from
    the specimen (|``defocus``|, the start's C10), else "gaussian"."""
    if params.prior != "auto":
        return params.prior
    return ("empirical" if params.slices == 1 and dose <= EMPIRICAL_UP_TO
            and abs(defocus) >= EMPIRICAL_DEFOCUS else "gaussian")  # fmt: skip
