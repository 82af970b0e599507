"""``ptyengine reconstruct``: iCOM/iDPC, ePIE, multislice ePIE and Poisson ML, with result,
preview and NCC to the ground truth."""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path

import click

from ..errors import PtyengineError
from .common import DEFOCUS_SIGN, _progress_bar, keep_on_interrupt
from .runconfig import current_run_config, run_config
from .slicing import (
    checkable,
    depth_path,
    multislice,
    resolve_rule,
    slice_thickness_option,
    slices_option,
)


def _epie_parameters():
    from ..reconstruct.epie import EpieParameters

    return EpieParameters


def _mepie_parameters():
    from ..reconstruct.mepie import MepieParameters

    return MepieParameters


def _ml_parameters():
    from ..reconstruct.ml import MLParameters

    return MLParameters


def _tcbf_parameters():
    from ..reconstruct.tcbf import TcbfParameters

    return TcbfParameters


def _ssb_parameters():
    from ..reconstruct.ssb import SsbParameters

    return SsbParameters


def _wdd_parameters():
    from ..reconstruct.wdd import WddParameters

    return WddParameters


#: the iterative methods and (lazily) their parameter dataclasses: a method takes exactly
#: the options named after the fields of its dataclass
ITERATIVE = {"epie": _epie_parameters, "mepie": _mepie_parameters, "ml": _ml_parameters}
NAMES = {"epie": "ePIE", "mepie": "mepie", "ml": "ML"}
#: the direct methods (one pass over the bright-field stack), likewise
DIRECT = {"tcbf": _tcbf_parameters, "ssb": _ssb_parameters, "wdd": _wdd_parameters}


def _rotation_option(ctx, param, value):
    if value is None or value in ("auto", "calibration"):
        return value
    try:
        return float(value)
    except ValueError:
        raise click.BadParameter(f"give degrees, 'auto' or 'calibration', not {value!r}") from None


def _default_output(data: Path, method: str) -> Path:
    return data.parent / f"{data.stem}_{method}.zarr"


def _checkpoint_path(output: Path) -> Path:
    return output.with_name(output.name + ".checkpoint.npz")


def _preview_path(output: Path) -> Path:
    return output.with_name(output.stem + "_preview.png")


@run_config
@click.command()
@click.argument("data", type=click.Path())
@click.option("--method", type=click.Choice(["epie", "mepie", "ml", "icom", "idpc", "tcbf",
                                            "ssb", "wdd"]),
              default="epie", show_default=True,
              help="ePIE ptychography; mepie: multislice ePIE (3PIE) for thick specimens "
                   "(S slices Δz apart); ml: Poisson maximum-likelihood "
                   "ptychography for low "
                   "dose (counts modelled as counts, a held-out stopping rule; single- or "
                   "multislice); or a phase "
                   "image integrated from the centre of mass (iCOM) or from a virtual "
                   "four-quadrant detector (iDPC); tcbf: tilt-corrected bright field, which "
                   "also fits C10, C12 and the rotation (an iterative run's start); ssb: "
                   "single-sideband ptychography correcting the probe's aberrations "
                   "(the calibration's, C10 from --defocus); wdd: Wigner-distribution "
                   "deconvolution by the probe's Wigner distribution (same aberrations; "
                   "Wiener constant --epsilon). tcbf/ssb/wdd read the data once "
                   "and hold scan positions × bright-field pixel groups (tcbf, ssb: ×4 "
                   "bytes, ×2 for 8/16-bit counts and single pixels; wdd: ×(Sx + 2)/Sx × 4 "
                   "bytes; ssb, wdd: in a file beyond half of --memory-limit; plus, in "
                   "memory, tcbf: its fit's stack (≤ 2 MiB) and padded window images, ssb: "
                   "scan × block × 16 bytes (96 on a GPU), wdd: "
                   "block × box × 200 bytes, box ≈ (2α/λ/dk + 3)² detector pixels; the "
                   "block from --memory-limit).")
@click.option("-o", "--output", type=click.Path(),
              help="Result .zarr [default: <DATA stem>_<method>.zarr next to DATA]; the "
                   "preview <output stem>_preview.png goes next to it.")
@click.option("--iterations", type=click.IntRange(min=0),
              help="ePIE: passes over the data; ML: the most iterations (the held-out rule "
                   "usually stops earlier) [default: 50].")
@click.option("--alpha", type=float, help="ePIE: object step size in (0, 2] [default: 1].")
@click.option("--beta", type=float, help="ePIE: probe step size in (0, 2] [default: 1].")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="ePIE: positions updated together; 1 = sequential ePIE, larger batches "
                   "keep a GPU busy [default: 1]. ML: positions per pass of the kernels "
                   "(memory, not the result) [default: 64].")
@click.option("--defocus", type=float,
              help=f"ePIE/ML: C10 in Å of the initial probe [default: the calibration's]. "
                   f"{DEFOCUS_SIGN} ssb/wdd: the C10 corrected (deconvolved).")
@click.option("--probe-from", type=click.Path(), metavar="RESULT",
              help="ePIE/mepie/ML: start from the aberrations (C10, C12, …) and the "
                   "scan–detector rotation/transpose recorded in a result .zarr (tcbf's fit; "
                   "ssb, wdd or ML results too) in place of the calibration's.")
@click.option("--probe-update-start", type=click.IntRange(min=0),
              help="ePIE/ML: first iteration (0-based) that refines the probe "
                   "[default: 1].")
@click.option("--refine-probe",
              type=click.Choice(["auto", "none", "defocus", "aberrations", "pixels"]),
              help="ML: probe parameters refined with the object: none, the defocus C10, "
                   "C10 and the two-fold astigmatism C12, or every probe pixel inside the "
                   "aperture (after a short run that refines C10 and C12); auto: pixels on "
                   "one slice where a pattern holds ≥ 3 counts per bright-field pixel, "
                   "else aberrations [default: auto].")
@click.option("--pixel-start-iterations", type=int,
              help="ML, pixel probe: the pixels start from a run of at most this many "
                   "iterations that refines C10 and C12; 0: from the calibration's probe "
                   "[default: 20].")
@click.option("--probe-modes", type=int,
              help="ML, --refine-probe pixels: incoherent probe modes (partial coherence: "
                   "source size, focal spread), kept orthogonal; the result holds them "
                   "(probe_modes) [default: 1].")
@click.option("--defocus-search", type=float,
              help="ePIE/mepie/ML: before reconstructing, search the global defocus within ± "
                   "this many Å of --defocus (or the calibration's) on the held-out Poisson "
                   "likelihood (the data must be counts or carry a dose); 0: off "
                   "[default: 300 Å when the calibration records no C10, else off].")
@click.option("--defocus-step", type=float,
              help="ePIE/mepie/ML: grid step of the defocus search in Å [default: 100].")
@click.option("--phase-only", is_flag=True, default=None,
              help="ePIE: constrain the object to a pure phase (|O| = 1): weak-phase "
                   "specimens at low dose [default: off].")
@click.option("--seed", type=int, help="ePIE: seed of the random position order; ML: of the "
                                      "held-out pixels [default: 0].")
@click.option("--slices", callback=slices_option,
              help="mepie: object slices S ≥ 1; S = 1 is ePIE [default: 2]. ML: S = 1 is "
                   "the single-slice model, S > 1 multislice ML [default: 1]. 'rule': "
                   "S = round(t/(λ/(2α²))), at most 8, t the dataset's recorded thickness.")
@click.option("--slice-thickness", callback=slice_thickness_option,
              help="mepie/ML: Δz in Å between slices, one value or one per slice (80,1); the "
                   "wave propagates Δz_s from slice s to s + 1 [default: the dataset's "
                   "recorded specimen thickness / S].")
@click.option("--depth-smoothness", type=float,
              help="ML with --slices > 1: strength μ_z of the prior coupling adjacent slices, "
                   "½ μ_z Σ |φ_{s+1} − φ_s|² (dimensionless; its weight against the data "
                   "falls as 1/dose) [default: 0]; 0: off.")
@click.option("--single-slice-iterations", type=int,
              help="mepie: start the slices from this many single-slice ePIE iterations "
                   "(each slice the S-th root of that object) [default: 0]; 0: flat. ML "
                   "with --slices > 1: from a single-slice ML run of at most this many "
                   "iterations (each slice φ/S, the probe's defocus moved to the entrance) "
                   "[default: 50]; 0: flat.")
@click.option("--mepie-start-iterations", type=int,
              help="ML with --slices > 1: start the slices and the probe from this many "
                   "mepie iterations on the same slices (batch 16; replaces the "
                   "single-slice start) [default: 0]; 0: off.")
@click.option("--kz-filter", type=float,
              help="mepie: strength β of the k_z (missing-wedge) depth filter on the slices, "
                   "W = 1 − (2/π) arctan(β² k_z²/k_r²) on their 3-D spectrum (dimensionless; "
                   "≈ 1/α for the probe's information limit; keeps the summed phase) "
                   "[default: 0]; 0: off.")
@click.option("--kz-every", type=int,
              help="mepie: apply the k_z filter after every N-th iteration [default: 1].")
@click.option("--smoothness", type=float,
              help="ML: strength μ_s of the smoothness prior on phase and absorption "
                   "(dimensionless) [default: from the dose: 3 from 100 e/Å² up, in "
                   "proportion to the dose below]; 0: off.")
@click.option("--ridge", type=float,
              help="ML: strength μ_r of the prior pulling phase and absorption to 0, in "
                   "1/Å² [default: from the dose: 8 from 100 e/Å² up, in proportion "
                   "below]; 0: off.")
@click.option("--tv", type=float,
              help="ML: strength μ_tv of the total-variation prior on phase and absorption "
                   "(dimensionless; flattens noise, keeps the steps of atoms against "
                   "empty space; e.g. 10 at 20 e/Å², with --iterations 80) [default: 0]; "
                   "0: off.")
@click.option("--tv-scale", type=float,
              help="ML: phase gradient δ (rad/Å) where the total variation turns from "
                   "smoothing to keeping edges [default: 0.15].")
@click.option("--prior", type=click.Choice(["auto", "gaussian", "empirical"]),
              help="ML: the object's prior: gaussian (--smoothness, --ridge), or empirical "
                   "(a pilot run with it, then a run whose prior spectrum is the pilot's "
                   "above its noise: twice the time); auto: empirical up to 100 e/Å² on one "
                   "slice with the crossover ≥ 20 nm from the specimen [default: auto].")
@click.option("--prior-scale", type=float,
              help="ML: c of the empirical prior, Λ = c N / Ŝ (< 1: weaker) [default: 0.3].")
@click.option("--prior-floor", type=float,
              help="ML: f of the empirical prior: the share of each ring's noise power "
                   "kept as prior power [default: 0.1].")
@click.option("--holdout", type=float,
              help="ML: fraction of the detector pixels held out of the fit; the run keeps "
                   "the latest iterate where their likelihood is within noise of the best "
                   "[default: 0.05]; 0: none.")
@click.option("--patience", type=click.IntRange(min=1),
              help="ML: stop after this many iterations without a better held-out "
                   "likelihood [default: 15].")
@click.option("--band-limit/--no-band-limit", default=None,
              help="ML: keep phase and absorption within the data's information limit "
                   "2α/λ [default: on].")
@click.option("--object-model", type=click.Choice(["phase", "complex"]),
              help="ML: refine the phase only, or phase and absorption [default: phase].")
@click.option("--refine-positions", type=click.Choice(["auto", "on", "off"]),
              help="ML: refine the scan positions with the object (Poisson Newton steps, "
                   "the global translation held; single slice): on: every position; auto: "
                   "every position where one pattern locates it (Cramér–Rao bound ≤ half "
                   "the position sigma) and the held-out likelihood agrees, else none "
                   "[default: auto].")
@click.option("--position-update-start", type=int,
              help="ML: first iteration (0-based) that moves the positions [default: 10].")
@click.option("--position-update-every", type=int,
              help="ML: iterations between position updates (one extra pass each) "
                   "[default: 4].")
@click.option("--position-max-shift", type=float,
              help="ML: the longest step of a position per update, in Å [default: one "
                   "object pixel].")
@click.option("--position-sigma", type=float,
              help="ML: rms error in Å expected of each measured position beyond the scan's "
                   "linear distortion (the prior on its own offset) [default: 0.3].")
@click.option("--position-affine/--no-position-affine", default=None,
              help="ML: refine a global linear map of the positions (scale, rotation, "
                   "shear); nearly degenerate with the object's scale and rotation "
                   "[default: off].")
@click.option("--position-correlated", type=click.Choice(["none", "rows", "drift", "rows+drift"]),
              help="ML: refine correlated position errors pooled over many patterns: one "
                   "offset per scan row (flyback jitter), a piecewise-linear drift in time, "
                   "or both; moved where the pooled Cramér–Rao bound allows (auto) "
                   "[default: rows].")
@click.option("--position-drift-knots", type=click.IntRange(min=2),
              help="ML: knots of the drift path, evenly spread over the acquisition "
                   "[default: 8].")
@click.option("--bin", type=click.IntRange(min=1),
              help="tcbf/ssb/wdd: bright-field pixels grouped in bin × bin tiles [default: "
                   "tcbf: the smallest bin with ≤ 4096 groups; ssb, wdd: 1].")
@click.option("--epsilon", type=float,
              help="wdd: the Wiener constant ε relative to max|χ_P|² (the probe's Wigner "
                   "distribution) [default: 1/(2 C σ²), C counts per pattern, σ = 0.1 rad, at "
                   "least 1e-4; 1e-4 for floats without a dose, taken as noise-free].")
@click.option("--upsample", type=click.IntRange(min=1, max=8),
              help="tcbf: the image's grid is the scan step / N [default: 1].")
@click.option("--memory-limit",
              help="Memory budget, e.g. 8GB or 512MiB. ePIE: data whose amplitudes take "
                   "more than half of it are streamed from disk every iteration, a stored "
                   "chunk at a time (same result) [default: half the memory this process "
                   "may use; on a GPU also at most its free memory]. iCOM/iDPC: fewer "
                   "reading threads when their blocks would not fit. tcbf/ssb/wdd: the "
                   "block; ssb/wdd put the stack on disk beyond half of it.")
@click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu",
              show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=0,
              help="ePIE/ML: save the state every N iterations to <output>.checkpoint.npz "
                   "(0: never).")
@click.option("--resume", is_flag=True,
              help="ePIE/ML: continue from <output>.checkpoint.npz (same data and parameters); "
                   "without one, start afresh.")
@click.option("--keep-checkpoint", is_flag=True,
              help="ePIE/ML: keep the checkpoint after a successful run (default: delete it).")
@click.option("--rotation", callback=_rotation_option,
              help="iCOM/iDPC: scan-detector rotation in degrees, 'auto' (found from the "
                   "data: the curl-free field) or 'calibration' [default: calibration].")
@click.option("--mask", type=click.Path(), metavar="FILE.npy",
              help="Detector mask of dead and hot pixels: a .npy array of the dataset's "
                   "detector shape, 1 or True for a pixel that counts, 0 or False for one "
                   "to leave out (ML: out of the likelihood; ePIE: the model keeps its own "
                   "modulus there; iCOM/iDPC: out of the sums) [default: the mask stored "
                   "with the data by convert --mask, else none].")
@click.option("--positions", type=click.Path(), metavar="FILE",
              help="ML: measured scan positions in place of the calibration's grid: a .npy "
                   "(N, 2) array or a text/CSV file of two columns y, x in Å, scan frame, "
                   "in scan order (refined by --refine-positions; the result holds them).")
@click.option("--overwrite", is_flag=True, help="Replace an existing result.")
def reconstruct(data, method, output, device, checkpoint_every, resume, keep_checkpoint,
                rotation, mask, overwrite, **epie_opts):  # fmt: skip
    """Reconstruct the phase of the specimen from a 4D-STEM dataset (.zarr/.h5).

    Writes a result Zarr (phase, and for ePIE the complex object and probe; every
    parameter and the calibration in its attributes) and a PNG preview. Every method takes
    the calibration's scan-detector rotation and transpose; ePIE and ML reconstruct on the
    detector's axes (no count is interpolated) and write the object and phase resampled
    onto the scan's axes. If the dataset
    holds a simulated ground truth, prints the correlation (NCC) of the phase with σ·V.

    \b
    Examples:
      ptyengine reconstruct sto.zarr --method icom --rotation auto
      ptyengine reconstruct sto.zarr --iterations 300 --checkpoint-every 20
      ptyengine reconstruct sto.zarr --iterations 300 --checkpoint-every 20 --resume
      ptyengine reconstruct uio66_dose100.zarr --method ml
      ptyengine reconstruct scan.zarr --method ml --mask bad_pixels.npy
    """
    memory_limit = epie_opts.pop("memory_limit")
    positions = epie_opts.pop("positions")
    probe_from = epie_opts.pop("probe_from")
    given = {k: v for k, v in epie_opts.items() if v is not None}
    check_options(method, given, rotation, checkpoint_every, resume, keep_checkpoint,
                  positions, probe_from)  # fmt: skip
    _reconstruct(Path(data), method, Path(output) if output else None, device=device,
                 overwrite=overwrite, epie_options=given, rotation=rotation,
                 checkpoint_every=checkpoint_every, resume=resume,
                 keep_checkpoint=keep_checkpoint, memory_limit=memory_limit,
                 mask=mask, positions=positions, probe_from=probe_from,
                 run_config=current_run_config())  # fmt: skip


def check_options(method: str, given: dict, rotation=None, checkpoint_every: int = 0,
                  resume: bool = False, keep_checkpoint: bool = False, positions=None,
                  probe_from=None) -> None:  # fmt: skip
    """Refuse options ``method`` does not take, and bad values, before any data are read
    (``given``: the method's parameters that were set, as keyword arguments of its
    parameter dataclass); a :class:`click.UsageError` names the flags."""
    if positions is not None and method != "ml":
        raise click.UsageError(f"--positions: for --method ml only, not {method}")
    if probe_from is not None and method not in ITERATIVE:
        raise click.UsageError(f"--probe-from: for --method epie/mepie/ml only, not {method}")
    if probe_from is not None and given.get("defocus") is not None:
        raise click.UsageError("--defocus and --probe-from both set the probe's C10: give "
                               "one")  # fmt: skip
    if method in DIRECT:
        _check_direct(method, given, rotation, checkpoint_every, resume, keep_checkpoint)
    elif method in ITERATIVE:
        if rotation is not None:
            raise click.UsageError(f"--rotation applies to --method icom/idpc; {method} takes "
                                   "the calibration's rotation")  # fmt: skip
        fields = {f.name for f in dataclasses.fields(ITERATIVE[method]())}
        flags = [f"--{k.replace('_', '-')}" for k in given if k not in fields]
        if flags:
            raise click.UsageError(f"{', '.join(flags)}: not an option of --method {method}")
        ITERATIVE[method]()(**checkable(given))  # bad values end here, before any reading
    else:
        flags = [f"--{k.replace('_', '-')}" for k in given]
        flags += [f for f, on in (("--checkpoint-every", checkpoint_every), ("--resume", resume),
                                  ("--keep-checkpoint", keep_checkpoint)) if on]  # fmt: skip
        if flags:
            raise click.UsageError(f"{', '.join(flags)}: for --method epie/mepie/ml only")


def _reconstruct(data: Path, method: str, output: Path | None = None, device: str = "cpu",
                 overwrite: bool = False, epie_options: dict | None = None, rotation=None,
                 checkpoint_every: int = 0, resume: bool = False,
                 keep_checkpoint: bool = False, memory_limit=None, mask=None,
                 positions=None, probe_from=None, run_config=None) -> dict:  # fmt: skip
    """Run one reconstruction, write its result and preview; returns what was done
    (``crop``: the phase over the scanned area, ``ncc``: the comparison or None).
    ``mask``: a .npy detector mask overriding the dataset's; ``positions``: a file of
    measured scan positions (ML); ``probe_from``: a result whose aberrations and rotation
    replace the calibration's (all checked before anything is written); ``run_config``:
    the run's configuration (TOML), stored in the result's attributes."""
    from .. import io
    from ..dataset import check_mask, detector_mask, load_mask, load_positions
    from ..reconstruct.epie import check_positions
    from ..results import begin_result, discard_result, probe_start

    out = output or _default_output(data, method)
    if out.suffix != ".zarr":
        raise PtyengineError(f"{out}: a result is a Zarr store; name it *.zarr")
    given_mask = None if mask is None else load_mask(mask)
    start = None if probe_from is None else probe_start(probe_from)
    with io.open_dataset(data) as ds, _locked(out, default=output is None):
        epie_options = resolve_rule(ds, epie_options or {})
        if start is not None:
            _start_probe_from(ds, probe_from, start)
        if given_mask is not None:
            ds.mask = check_mask(given_mask, ds.calibration, f"mask {mask}")
        detector_mask(ds)  # a stored mask is checked before anything is written
        measured = None
        if positions is not None:
            loaded = load_positions(positions)  # its errors name the file
            try:
                measured = check_positions(loaded, ds.calibration)
            except PtyengineError as exc:
                raise PtyengineError(f"{positions}: {exc}") from None
        # one writer per output; the result and its preview are protected alike (a resumed
        # run continues, and replaces, its own); the partial is made before any work
        if not overwrite and not (resume and _checkpoint_path(out).exists()):
            extra = [depth_path(out)] if multislice(method, epie_options.get("slices")) else []
            for path in (out, _preview_path(out), *extra):
                if path.exists():
                    raise PtyengineError(f"{path} exists; pass --overwrite to replace it")
        if method in ITERATIVE and (checkpoint_every or resume):
            keep_on_interrupt(_checkpoint_path(out))
        begin_result(out)
        try:
            return _reconstruct_into(ds, data, out, method, device, epie_options, rotation,
                                     checkpoint_every, resume, keep_checkpoint,
                                     memory_limit, measured, probe_from,
                                     run_config)  # fmt: skip
        finally:
            discard_result(out)  # nothing, after a successful rename


def _start_probe_from(ds, source, start: dict) -> None:
    """Replace the dataset's aberrations and rotation/transpose by a result's (``start``
    from :func:`results.probe_start`) and say so in one line."""
    from ..reconstruct.tcbf import signed_deg

    cal = ds.calibration
    transpose = cal.transpose if start["transpose"] is None else start["transpose"]
    try:
        ds.calibration = cal.replace(aberrations=start["aberrations"],
                                     rotation=start["rotation_deg"], transpose=transpose)
    except PtyengineError as exc:
        raise PtyengineError(f"{source}: its probe does not fit {ds.path}: {exc}") from None
    ab = start["aberrations"]
    astig = f", C12 {ab['C12']:.0f} Å at φ12 {ab.get('phi12', 0.0):.2f} rad" if ab.get(
        "C12") else ""  # fmt: skip
    click.echo(f"probe from {source} ({start['method']}): C10 {ab['C10']:.0f} Å{astig}, "
               f"rotation {signed_deg(start['rotation_deg']):.2f}°"
               f"{', transposed' if transpose else ''} (the calibration had C10 "
               f"{cal.aberrations.get('C10', 0.0):.0f} Å, rotation "
               f"{signed_deg(cal.rotation):.2f}°)", err=True)  # fmt: skip


@contextmanager
def _locked(out: Path, default: bool):
    """The output's lock (one writer; the first check that its folder can be written)."""
    from .. import locks

    try:
        locks.acquire(out)
    except PtyengineError as exc:
        if default and str(exc).startswith("cannot write"):
            raise PtyengineError(f"{exc} (the default output sits next to the data: give "
                                 "-o PATH in a folder you can write)") from None  # fmt: skip
        raise
    try:
        yield out
    finally:
        locks.release(out)


def _reconstruct_into(ds, data: Path, out: Path, method: str, device, epie_options, rotation,
                      checkpoint_every, resume, keep_checkpoint, memory_limit,
                      positions=None, probe_from=None, run_config=None) -> dict:  # fmt: skip
    import time

    import numpy as np

    from ..preview import truth_like
    from ..results import preview_png, write_result

    click.echo(f"reconstructing {data} by {method} on {device}", err=True)
    t0 = time.perf_counter()
    try:
        if method in ITERATIVE:
            rec = _run_iterative(ds, data, out, method, device, epie_options or {},
                                 checkpoint_every, resume, memory_limit, positions)  # fmt: skip
        elif method in DIRECT:
            rec = _run_direct(ds, method, device, epie_options or {}, memory_limit)
        else:
            rec = _run_icom(ds, method, device, rotation, memory_limit)
    except PtyengineError as exc:  # name the dataset in every message
        if str(data) in str(exc):
            raise
        raise PtyengineError(f"{data}: {exc}") from exc
    seconds = time.perf_counter() - t0
    ncc = _truth_ncc(ds, rec["image"], rec["sampling"], rec["origin"], rec["border"])
    if ncc is not None and not np.isfinite(ncc["ncc"]):  # a constant image
        click.echo("warning: the phase is constant; no NCC with the ground truth", err=True)
        ncc = None
    cal = ds.calibration
    from ..dataset import detector_mask

    m = detector_mask(ds)
    extra = {"source": str(data), "seconds": round(seconds, 3), **rec["extra"],
             "masked_pixels": 0 if m is None else int((m == 0).sum())}  # fmt: skip
    if probe_from is not None:
        extra["probe_from"] = str(probe_from)
    if run_config is not None:  # re-run by ptyengine reconstruct --config RESULT
        extra["run_config"] = run_config
    if ncc is not None:
        extra.update(ncc_to_truth=ncc["ncc"], ncc_shift_A=list(ncc["shift_A"]),
                     ncc_k_max=ncc["k_max"])  # fmt: skip
    path = write_result(out, method, rec["arrays"], rec["sampling"], rec["origin"], cal,
                        rec["parameters"], rec["errors"], extra, overwrite=True)  # fmt: skip
    click.echo(f"wrote {path}: {rec['summary']}, {seconds:.1f} s", err=True)
    title = f"{data.name}: {rec['summary']}"
    if ncc is not None:
        title += f", NCC with σV {ncc['ncc']:.3f}"
        click.echo(f"NCC of the {method} phase with σ·V (ground truth, |k| ≤ "
                   f"{ncc['k_max']:.2f} 1/Å): {ncc['ncc']:.4f}")  # fmt: skip
    truth = truth_like(ds, rec["crop"].shape, rec["sampling"], rec.get("crop_origin",
                                                                      rec["origin"]))
    if truth is not None:  # beside the result, over the same area
        rec["panels"].insert(1, ("ground truth σV, same area", truth[0],
                                 {"sampling": truth[1], "unit": "rad"}))
    png = preview_png(_preview_path(out), rec["panels"], title=title)
    click.echo(f"result: {path}\npreview: {png}")
    if rec.get("depth"):
        depth = preview_png(depth_path(out), rec["depth"], title=f"{data.name}: slice phases")
        click.echo(f"depth montage: {depth}")
    ck = rec.get("checkpoint")
    if ck is not None and ck.exists() and not keep_checkpoint:
        ck.unlink()
    return {"output": path, "preview": png, "crop": rec["crop"], "ncc": ncc,
            "seconds": seconds, "sampling": tuple(rec["sampling"])}  # fmt: skip


def _run_iterative(ds, data: Path, out: Path, method: str, device, options, checkpoint_every,
                   resume, memory_limit=None, positions=None) -> dict:  # fmt: skip
    """ePIE, mepie or ML: parameters, warnings, progress, checkpoint, and what is written."""
    import numpy as np
    from tqdm import tqdm

    from ..calibration import probe_model_warning  # issue 13: no aberrations recorded

    params = ITERATIVE[method]()(**options)
    if method == "epie":
        from ..reconstruct.epie import epie as run
    elif method == "mepie":
        from ..reconstruct.mepie import mepie as run
    else:
        from ..reconstruct.ml import ml as run
    name = NAMES[method]
    if (note := probe_model_warning(ds.calibration, params.defocus)) is not None:
        click.echo(f"warning: {data}: {note}", err=True)
    ck = _checkpoint_path(out)
    if resume and not ck.exists():
        click.echo(f"no checkpoint at {ck}: starting from the first iteration", err=True)
        resume = False
    elif resume:
        click.echo(f"resuming from {ck}", err=True)
    use_ck = ck if (checkpoint_every or resume) else None
    bar = _progress_bar(tqdm, params.iterations, "it", name)

    def progress(iteration, error):
        bar.set_postfix(error=f"{error:.4g}", refresh=False)  # shown by update's refresh
        bar.update(iteration - bar.n)

    try:
        more = {"report": lambda line: click.echo(line, err=True)}  # the defocus search
        if positions is not None:  # measured (ML only: checked by reconstruct())
            more["positions"] = positions
        res = run(ds, params, device=device, checkpoint=str(use_ck) if use_ck else None,
                  checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                  data_id=str(data.resolve()), memory_limit=memory_limit, **more)  # fmt: skip
    finally:
        bar.close()
    g, cal = res.geometry, ds.calibration
    w = np.asarray(g.window)
    lo = g.corners.min(axis=0) + w // 2  # object pixels of the first and last positions
    hi = g.corners.max(axis=0) + w // 2 + 1
    phase = np.asarray(res.phase, dtype=np.float32)
    crop = phase[lo[0]:hi[0], lo[1]:hi[1]]
    errors = [float(e) for e in res.errors]
    summary = f"{name}, {len(errors)} iterations" + (
        f", final error {errors[-1]:.4g}" if errors else "")  # fmt: skip
    extra = {"resumed": resume, "streamed": res.extra["streamed"],
             "scanned_area_px": [[int(lo[0]), int(hi[0])], [int(lo[1]), int(hi[1])]],
             # object and phase are in the specimen frame; with a rotation, resampled from
             # the grid of the detector axes they were reconstructed on (reconstruct/frame)
             "object_resampled_from_rotation_deg": (
                 cal.rotation if res.reconstruction_frame is not None else None)}
    probe_box = _central_box(np.abs(res.probe))
    probe_title = f"probe amplitude (central {probe_box.shape[0] * g.sampling[0]:.3g} Å)"
    img = {"sampling": g.sampling, "unit": "rad", "phase": True}
    panels = [(f"{name} phase, scanned area", crop, img),
              (probe_title, probe_box, {"sampling": g.sampling, "unit": "arb."})]
    if method == "ml":
        summary += (f", result = iteration {res.best_iteration} (held-out likelihood), "
                    f"{res.extra['counts_per_pattern']:.4g} counts/pattern")  # fmt: skip
        if res.extra["prior"].get("pilot"):
            summary += f", empirical prior (pilot {res.extra['prior']['pilot']['iterations']} it.)"
        if res.extra["refined"]:
            summary += ", probe " + ", ".join(f"{k} {v:.1f} Å"
                                              for k, v in res.extra["refined"].items())
        extra.update({k: v for k, v in res.extra.items() if k != "streamed"},
                     held_out=res.held_out, best_iteration=res.best_iteration)  # fmt: skip
        moved = res.extra["positions"]["update_rms_A"]
        if moved:
            summary += (f", positions refined ({len(moved)} updates, "
                        f"{res.extra['positions']['shift_rms_A']:.3g} Å rms)")  # fmt: skip
        if res.held_out:
            panels.append(("held-out deviance per count vs iteration",
                           np.asarray(res.held_out),
                           {"ylabel": "held-out deviance per count"}))  # fmt: skip
    elif errors:
        panels.append(("error vs iteration", np.asarray(errors),
                       {"ylabel": "amplitude error Σ(|Ψ|−√I)²/ΣI"}))
    arrays = {"object": res.object.astype(np.complex64),
              "probe": res.probe.astype(np.complex64), "phase": phase}  # fmt: skip
    if method == "ml" and res.probe_modes is not None and len(res.probe_modes) > 1:
        arrays["probe_modes"] = res.probe_modes.astype(np.complex64)
        summary += ", probe modes " + " / ".join(
            f"{p:.0%}" for p in res.extra["probe_mode_powers"])
    if method == "ml" and (res.extra["positions"]["update_rms_A"] or positions is not None):
        arrays["positions"] = np.asarray(res.positions, dtype=np.float64)
    depth = []
    if multislice(method, getattr(params, "slices", None)):
        arrays["slice_phase"] = res.slice_phase.astype(np.float32)
        extra.update(slice_positions_A=res.extra["slice_positions_A"],
                     slice_thicknesses_A=res.extra["slice_thicknesses_A"])  # fmt: skip
        summary += f", {params.slices} slices"
        depth = _depth_panels(arrays["slice_phase"][:, lo[0]:hi[0], lo[1]:hi[1]],
                              res.extra["slice_positions_A"], g.sampling)  # fmt: skip
    parameters = {**dataclasses.asdict(params), "device": device,
                  "defocus_used": res.extra.get("start_defocus", cal.defocus if
                                                params.defocus is None else params.defocus),
                  "checkpoint_every": checkpoint_every}  # fmt: skip
    return {
        "arrays": arrays, "depth": depth, "sampling": g.sampling, "origin": g.object_origin,
        "crop_origin": tuple(o + i * d for o, i, d in zip(g.object_origin, lo, g.sampling,
                                                          strict=True)),
        "parameters": parameters,
        "errors": errors, "image": phase, "crop": crop, "panels": panels, "summary": summary,
        # the NCC ignores the unscanned margin round the scanned area
        "border": int(min(w // 2 + g.corners.min(axis=0))),
        "extra": extra, "checkpoint": use_ck,
    }  # fmt: skip


def _depth_panels(slice_phase, positions, sampling, most: int = 8) -> list:
    """The depth montage: the phase of at most ``most`` slices, evenly spread from the
    first to the last, each titled with its depth (Å)."""
    import numpy as np

    n = len(slice_phase)
    picks = sorted({int(round(v)) for v in np.linspace(0, n - 1, min(n, most))})
    opts = {"sampling": sampling, "unit": "rad", "phase": True}
    return [(f"slice {s + 1}/{n}, z = {positions[s]:.4g} Å", slice_phase[s], opts)
            for s in picks]  # fmt: skip


def _central_box(image, level: float = 0.02, pad: float = 1.5, least: int = 16):
    """The centred square of ``image`` that holds every pixel above ``level`` × its maximum,
    enlarged ``pad`` times (at least ``least`` pixels a side): a focused probe is a few
    pixels wide in a large window."""
    import numpy as np

    c = np.array(image.shape) // 2
    idx = np.argwhere(image > level * image.max())
    half = int(np.abs(idx - c).max()) if len(idx) else 0
    half = max(int(half * pad) + 1, least // 2)
    lo, hi = np.maximum(c - half, 0), np.minimum(c + half + 1, image.shape)
    return image[lo[0]:hi[0], lo[1]:hi[1]]


def _run_icom(ds, method, device, rotation, memory_limit=None) -> dict:
    import numpy as np

    from ..reconstruct import icom as ic

    run = ic.icom if method == "icom" else ic.idpc
    r = run(ds, rotation=rotation, device=device, memory_limit=memory_limit)
    if r.rotation_found:
        click.echo(f"rotation found from the data: {r.rotation_deg:g}°, transpose "
                   f"{'yes' if r.transpose else 'no'}", err=True)  # fmt: skip
    if r.n_empty:
        click.echo(f"warning: {r.n_empty} pattern(s) hold no counts (taken as no "
                   "deflection)", err=True)  # fmt: skip
    name = "iCOM" if method == "icom" else "iDPC"
    field = "COM" if method == "icom" else "DPC signal"
    unit = "rad" if method == "icom" else "arb."
    com = {"sampling": r.sampling, "unit": "1/Å" if method == "icom" else "arb."}
    phase = r.phase.astype(np.float32)
    return {
        "arrays": {"phase": phase, "com_y": r.com_y.astype(np.float32),
                   "com_x": r.com_x.astype(np.float32)},
        "sampling": r.sampling, "origin": r.origin,
        "parameters": {"rotation": "calibration" if rotation is None else rotation,
                       "device": device},
        "errors": None, "image": phase, "crop": phase, "border": 0,
        "panels": [(f"{name} phase", phase, {"sampling": r.sampling, "unit": unit}),
                   (f"{field} y, scan frame", r.com_y, com),
                   (f"{field} x, scan frame", r.com_x, com)],
        "summary": f"{name}, rotation {r.rotation_deg:g}°",
        "extra": {"rotation_deg": r.rotation_deg, "transpose": r.transpose,
                  "rotation_found": r.rotation_found, "n_empty": r.n_empty, "units": r.units},
    }  # fmt: skip


def _check_direct(method, given, rotation, checkpoint_every, resume, keep_checkpoint):
    """Refuse the options a direct method does not take; bad values end here."""
    params = DIRECT[method]()
    fields = {f.name for f in dataclasses.fields(params)}
    flags = [f"--{k.replace('_', '-')}" for k in given if k not in fields]
    flags += [f for f, on in (("--checkpoint-every", checkpoint_every), ("--resume", resume),
                              ("--keep-checkpoint", keep_checkpoint),
                              ("--rotation", rotation is not None)) if on]  # fmt: skip
    if flags:
        raise click.UsageError(f"{', '.join(flags)}: not an option of --method {method} "
                               "(it takes the calibration's rotation)")  # fmt: skip
    params(**given)


def _run_direct(ds, method, device, options, memory_limit=None) -> dict:
    """tcBF, SSB or WDD: run, and what is written (arrays, attributes, preview panels)."""
    import numpy as np

    params = DIRECT[method]()(**options)
    if method == "tcbf":
        from ..reconstruct.tcbf import signed_deg
        from ..reconstruct.tcbf import tcbf as run
    elif method == "ssb":
        from ..reconstruct.ssb import ssb as run
    else:
        from ..reconstruct.wdd import wdd as run
    r = run(ds, params, device=device, memory_limit=memory_limit)
    phase = r.phase.astype(np.float32)
    parameters = {**dataclasses.asdict(params), "device": device}
    if method == "tcbf":
        click.echo(r.summary())
        ab = r.aberrations
        arrays = {"phase": phase, "bright_field": r.bright_field.astype(np.float32),
                  "shifts": r.shifts.astype(np.float32), "model_shifts": r.model.astype(
                      np.float32), "group_k": r.group_k.astype(np.float32)}  # fmt: skip
        extra = {"aberrations": ab, "rotation_deg": r.rotation_deg, "transpose": r.transpose,
                 "residual_A": r.residual_A, "bin": r.bin, "n_groups": len(r.used),
                 "groups_fitted": int(r.used.sum()), "counts_per_group": r.counts_per_group,
                 "summary": r.summary(), "units": "arb.", **r.extra}  # fmt: skip
        panels = [("tcBF phase (CTF sign-corrected)", phase,
                   {"sampling": r.sampling, "unit": "arb."}),
                  ("aligned bright field", r.bright_field,
                   {"sampling": r.sampling, "unit": "relative contrast"})]
        summary = (f"tcBF, C10 {ab['C10']:.0f} Å, C12 {ab['C12']:.0f} Å, rotation "
                   f"{signed_deg(r.rotation_deg):.2f}°")  # fmt: skip
    elif method == "wdd":
        arrays = {"phase": phase, "transfer": r.transfer}
        extra = {"aberrations": r.aberrations, "rotation_deg": r.rotation_deg,
                 "transpose": r.transpose, "bin": r.bin, "units": "rad",
                 "epsilon": r.epsilon, "epsilon_from": r.epsilon_from,
                 "counts_per_pattern": r.counts_per_pattern,
                 "stack_on_disk": r.stack_on_disk}  # fmt: skip
        panels = [("WDD phase", phase, {"sampling": r.sampling, "unit": "rad", "phase": True})]
        summary = (f"WDD, C10 {r.aberrations.get('C10', 0.0):.0f} Å deconvolved, ε "
                   f"{r.epsilon:.3g} ({r.epsilon_from})")  # fmt: skip
    else:
        arrays = {"phase": phase}
        extra = {"aberrations": r.aberrations, "rotation_deg": r.rotation_deg,
                 "transpose": r.transpose, "bin": r.bin, "units": "rad",
                 "stack_on_disk": r.stack_on_disk}  # fmt: skip
        panels = [("SSB phase", phase, {"sampling": r.sampling, "unit": "rad", "phase": True})]
        summary = f"SSB, C10 {r.aberrations.get('C10', 0.0):.0f} Å corrected"
    return {"arrays": arrays, "sampling": r.sampling, "origin": r.origin,
            "parameters": parameters, "errors": None, "image": phase, "crop": phase,
            "border": 0, "panels": panels, "summary": summary, "extra": extra}  # fmt: skip


def _truth_ncc(ds, image, sampling, origin, border: int):
    """compare_to_truth of a phase image with σ·V of the dataset's ground truth (None if
    it has none), band-limited to the data's information limit 2α/λ."""
    if "ground_truth/potential" not in ds.arrays():
        return None
    from .. import metrics, physics

    pot, attrs = ds.read_array("ground_truth/potential")
    cal = ds.calibration
    try:
        if "sampling" not in attrs:
            raise PtyengineError("ground_truth/potential has no 'sampling' attribute")
        return metrics.compare_to_truth(
            image, sampling, origin, physics.interaction_constant(cal.energy) * pot,
            attrs["sampling"], truth_origin=attrs.get("origin", (0.0, 0.0)),
            k_max=2 * cal.semiangle * 1e-3 / cal.wavelength, max_shift=1.0, border=border)
    except PtyengineError as exc:
        click.echo(f"warning: no comparison with the ground truth: {exc}", err=True)
        return None
