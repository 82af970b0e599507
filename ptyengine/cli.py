"""The ``ptyengine`` command line: parses, calls the library, reports progress, writes files.

User errors (bad input, missing files, impossible parameters) end with one line on stderr
and exit status 2, never a traceback; ``PTYENGINE_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from .errors import PtyengineError

DEFOCUS_SIGN = (
    "Positive: the probe crossover lies this far ABOVE (upstream of) the entrance surface, "
    "e.g. 500 = focused 50 nm above the specimen; 0 = focused on the entrance surface; "
    "negative = focused inside/below it."
)
DEFOCUS_HELP = f"Probe defocus C10 in Å. {DEFOCUS_SIGN} Repeat for several datasets."


def _pair(text: str | None, name: str, kind=float):
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    try:
        vals = tuple(kind(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"{name} must be numbers separated by commas: {text!r}") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2:
        raise click.BadParameter(f"{name} takes one or two values, got {text!r}")
    return vals


def _zone_axis(text: str | None):
    if text is None:
        return None
    try:
        uvw = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        uvw = ()
    if len(uvw) != 3 or uvw == (0, 0, 0):
        raise click.BadParameter(f"--zone-axis takes three integers u,v,w, got {text!r}")
    return uvw


@click.group()
@click.version_option(package_name="ptyengine")
def cli():
    """ptyengine: 4D-STEM simulation and ptychography on CPU and GPU.

    Units everywhere: Å, mrad, kV on the command line (eV inside files), e/Å².
    """


@cli.command()
@click.argument("recipe", required=False)
@click.option("--preset", "variant", default="quick", show_default=True,
              help="Variant of the recipe: quick (2-core CPU, minutes) or full (the study).")
@click.option("-o", "--output", type=click.Path(), required=True,
              help="Output .zarr/.h5 for one dataset, or a directory for several.")
@click.option("--structure", help="Builtin structure (uio66, srtio3, mos2) or a CIF file.")
@click.option("--zone-axis", help="Beam direction u,v,w, e.g. 1,1,0.")
@click.option("--field", help="Lateral size of the model in Å: L or Ly,Lx (whole cells).")
@click.option("--thickness", type=float, help="Specimen thickness in Å.")
@click.option("--no-hydrogen", is_flag=True, default=None, help="Leave H atoms out.")
@click.option("--energy", type=float, help="Beam energy in kV.")
@click.option("--semiangle", type=float, help="Convergence semi-angle in mrad.")
@click.option("--defocus", type=float, multiple=True, help=DEFOCUS_HELP)
@click.option("--cs", type=float, help="Spherical aberration C30 in Å.")
@click.option("--scan-step", type=float, help="Scan step in Å.")
@click.option("--scan-size", help="Scanned area in Å: s or h,w (default: one unit cell).")
@click.option("--max-angle", type=float, help="Detector half-width in mrad.")
@click.option("--detector-pixels", type=int, help="Detector pixels per side.")
@click.option("--sampling", type=float, help="Field pixel size in Å (default: from max angle).")
@click.option("--slice-thickness", type=float, help="Multislice slice thickness in Å.")
@click.option("--phonons", type=int, help="Frozen-phonon configurations (0: static).")
@click.option("--dose", type=float, help="Dose in e/Å² (Poisson noise); omit for noise-free.")
@click.option("--seed", type=int, help="Random seed (phonons and noise).")
@click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu",
              show_default=True)
@click.option("--double", is_flag=True, default=None, help="complex128/float64 arithmetic.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run (same parameters).")
@click.option("--batch-size", type=int, help="Probe positions per batch (default: auto).")
def simulate(recipe, variant, output, device, overwrite, resume, batch_size, **opts):  # noqa: PLR0913
    """Simulate 4D-STEM data by multislice (RECIPE: uio66-defocus, demo; or none and
    set the specimen with --structure etc.).

    \b
    Examples:
      ptyengine simulate uio66-defocus --preset quick -o uio66/
      ptyengine simulate --structure srtio3 --zone-axis 0,0,1 --thickness 40 \\
          --defocus 200 --dose 100 -o sto.zarr
    """
    import dataclasses

    from . import presets
    from .simulate import SimulationParameters

    if recipe:
        jobs = presets.recipe(recipe, variant)
    else:
        jobs = [("dataset", SimulationParameters())]
    changes = {
        "structure": opts["structure"],
        "zone_axis": _zone_axis(opts["zone_axis"]),
        "field": _pair(opts["field"], "--field"),
        "thickness": opts["thickness"],
        "hydrogen": False if opts["no_hydrogen"] else None,
        "energy": opts["energy"] * 1e3 if opts["energy"] is not None else None,
        "semiangle": opts["semiangle"],
        "scan_step": opts["scan_step"],
        "scan_size": _pair(opts["scan_size"], "--scan-size"),
        "max_angle": opts["max_angle"],
        "detector_pixels": opts["detector_pixels"],
        "sampling": opts["sampling"],
        "slice_thickness": opts["slice_thickness"],
        "phonons": opts["phonons"],
        "dose": opts["dose"],
        "seed": opts["seed"],
        "double": opts["double"],
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    jobs = [(label, dataclasses.replace(p, **changes)) for label, p in jobs]
    if opts["cs"] is not None:
        jobs = [(lb, dataclasses.replace(p, aberrations={**p.aberrations, "C30": opts["cs"]}))
                for lb, p in jobs]  # fmt: skip
    if opts["defocus"]:
        base = jobs[0][1]
        jobs = [(presets.defocus_label(df), dataclasses.replace(base, defocus=df))
                for df in opts["defocus"]]  # fmt: skip
    out = Path(output)
    if len(jobs) == 1 and out.suffix in (".zarr", ".h5", ".hdf5"):
        targets = [(jobs[0][1], out)]
    else:
        targets = [(p, out / f"{label}.zarr") for label, p in jobs]
    for params, path in targets:
        _run_simulation(params, path, device, overwrite, resume, batch_size)


def _progress_bar(tqdm, total: int, unit: str, desc: str | None = None):
    """A tqdm bar on stderr, shown on a terminal; in batch logs (no TTY) set
    PTYENGINE_PROGRESS=1 for it (then updated at most every 30 s)."""
    tty = sys.stderr.isatty()
    show = tty or os.environ.get("PTYENGINE_PROGRESS") == "1"
    return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, file=sys.stderr,
                disable=not show, mininterval=0.5 if tty else 30)


def _run_simulation(params, path, device, overwrite, resume, batch_size):
    from tqdm import tqdm

    from .simulate import simulate as run

    click.echo(f"simulating {path}  (defocus C10 = {params.defocus:g} Å, "
               f"dose = {params.dose if params.dose else 'noise-free'})", err=True)
    bar = None

    def total(n):
        nonlocal bar
        bar = _progress_bar(tqdm, n, "pos")

    def log(msg):
        tqdm.write(f"  {msg}", file=sys.stderr)

    def progress(n):
        if bar is not None:
            bar.update(n)

    try:
        summary = run(params, str(path), device=device, overwrite=overwrite, resume=resume,
                      batch_size=batch_size, progress=progress, log=log, total=total)
    finally:
        if bar is not None:
            bar.close()
    click.echo(f"wrote {summary['output']}: scan {summary['scan_shape']}, "
               f"{summary['seconds']:.1f} s", err=True)


@cli.command()
@click.argument("path", type=click.Path())
def info(path):
    """Describe a ptyengine dataset (shape, chunks, every calibration field) or a
    reconstruction result (method, arrays, parameters, error history)."""
    from . import io, results

    if results.is_result(path):
        click.echo(results.describe_result(path))
    else:
        click.echo(io.describe(path))


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path())
@click.option("-o", "--output", type=click.Path(), required=True,
              help="The dataset to write: OUT.zarr (or .h5).")
@click.option("--format", "fmt", type=click.Choice(["npy", "raw", "mib", "empad", "dm", "emd",
                                                    "arina"]),
              help="Input format [default: from the suffix: .npy, .mib, .xml/.raw (EMPAD), "
                   ".dm3/.dm4, .emd/.h5 (EMD, py4DSTEM), *_master.h5 (Arina), .raw/.bin/.dat].")
@click.option("--shape", help="Raw binary: Sy,Sx,Ky,Kx.")
@click.option("--dtype", help="Raw binary: element type, e.g. uint16, float32, >u2.")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Raw binary: header bytes.")
@click.option("--order", type=click.Choice(["C", "F"]), default="C", show_default=True,
              help="Raw binary: array order.")
@click.option("--scan-shape", help="Sy,Sx: lay out a stack of frames as this scan "
                                   "(MIB without .hdr, Arina, 3-D arrays).")
@click.option("--energy", type=float, help="Beam energy in kV.")
@click.option("--semiangle", type=float, help="Convergence semi-angle in mrad.")
@click.option("--scan-step", help="Scan step in Å: d or dy,dx.")
@click.option("--dk", help="Detector pixel size in 1/Å (input pixels): d or dky,dkx.")
@click.option("--detector-angle", help="Detector pixel size in mrad (input pixels): a or ay,ax.")
@click.option("--center", help="Unscattered beam centre cy,cx in input detector pixels "
                                "[default: the file's, else the centre of mass of the mean "
                                "pattern].")
@click.option("--rotation", type=float, help="Scan-detector rotation in degrees [default: 0].")
@click.option("--transpose", is_flag=True, default=None, help="Swap the detector axes first.")
@click.option("--crop", help="Detector crop y0:y1,x0:x1 in input pixels (before binning).")
@click.option("--bin", "binning", type=click.IntRange(min=1), default=1, show_default=True,
              help="Sum N x N detector pixels (dk scales by N, the centre with it).")
@click.option("--resume", is_flag=True, help="Continue an interrupted conversion.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--no-verify", is_flag=True, help="Skip the read-back checksum verification.")
@click.option("--rows-per-chunk", type=click.IntRange(min=1),
              help="Scan rows per stored chunk [default: ~16 MiB of rows]. Streaming "
                   "reconstructions hold a few chunks at a time.")
def convert(input_path, output, fmt, shape, dtype, offset, order, scan_shape, energy, semiangle,
            scan_step, dk, detector_angle, center, rotation, transpose, crop, binning, resume,
            overwrite, no_verify, rows_per_chunk):  # fmt: skip
    """Convert 4D-STEM data (Merlin .mib, EMPAD, DM3/DM4, EMD/py4DSTEM, Arina, .npy, raw
    binary) into a calibrated dataset, streaming with bounded memory.

    Calibration fields the file lacks must be given (energy, semi-angle, scan step, dk or
    detector angle); given options win over the file's values.

    \b
    Examples:
      ptyengine convert scan.mib -o scan.zarr --energy 300 --semiangle 20 --scan-step 0.5 \\
          --detector-angle 0.8 --crop 0:256,0:256 --bin 2
      ptyengine convert scan.raw --shape 128,128,256,256 --dtype uint16 --energy 200 \\
          --semiangle 25 --scan-step 0.4 --dk 0.02 -o scan.zarr --resume
    """
    from tqdm import tqdm

    from . import convert as cv

    raw_shape = None
    if shape is not None:
        try:
            raw_shape = tuple(int(v) for v in shape.replace("x", ",").split(","))
        except ValueError:
            raise click.BadParameter(f"--shape takes Sy,Sx,Ky,Kx, got {shape!r}") from None
    source = cv.open_source(input_path, fmt, raw_shape, dtype, offset, order,
                            _pair(scan_shape, "--scan-shape", int))  # fmt: skip
    given = {"energy": None if energy is None else energy * 1e3, "semiangle": semiangle,
             "scan_step": _pair(scan_step, "--scan-step"), "dk": _pair(dk, "--dk"),
             "detector_angle": _pair(detector_angle, "--detector-angle"),
             "detector_center": _pair(center, "--center"), "rotation": rotation,
             "transpose": transpose}  # fmt: skip
    click.echo(f"converting {input_path} ({source.format}, {source.shape} {source.dtype}) "
               f"to {output}", err=True)  # fmt: skip
    bar = _progress_bar(tqdm, source.shape[0], "row", "convert")
    try:
        rep = cv.convert(source, output, given, crop, binning, resume=resume,
                         overwrite=overwrite, verify_after=not no_verify, progress=bar.update,
                         rows_per_chunk=rows_per_chunk,
                         log=lambda text: tqdm.write(f"note: {text}", file=sys.stderr))  # fmt: skip
    finally:
        bar.close()
        source.close()
    mb = rep.bytes_read / 1e6
    click.echo(f"wrote {rep.output}: {rep.shape} {rep.dtype}, {mb:.1f} MB read in "
               f"{rep.seconds:.1f} s ({mb / max(rep.seconds, 1e-9):.0f} MB/s)"
               + (f", resumed at scan row {rep.resumed_at}" if rep.resumed_at else ""), err=True)
    click.echo(f"verified: {rep.verified}" if rep.verified else "verification skipped "
               "(--no-verify)", err=True)  # fmt: skip


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


@cli.command()
@click.argument("data", type=click.Path())
@click.option("--method", type=click.Choice(["epie", "icom", "idpc"]), default="epie",
              show_default=True,
              help="ePIE ptychography, or a phase image integrated from the centre of mass "
                   "(iCOM) or from a virtual four-quadrant detector (iDPC).")
@click.option("-o", "--output", type=click.Path(),
              help="Result .zarr [default: <DATA stem>_<method>.zarr next to DATA]; the "
                   "preview <output stem>_preview.png goes next to it.")
@click.option("--iterations", type=click.IntRange(min=0),
              help="ePIE: passes over the data [default: 50].")
@click.option("--alpha", type=float, help="ePIE: object step size in (0, 2] [default: 1].")
@click.option("--beta", type=float, help="ePIE: probe step size in (0, 2] [default: 1].")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="ePIE: positions updated together; 1 = sequential ePIE, larger batches "
                   "keep a GPU busy [default: 1].")
@click.option("--defocus", type=float,
              help=f"ePIE: C10 in Å of the initial probe [default: the calibration's]. "
                   f"{DEFOCUS_SIGN}")
@click.option("--probe-update-start", type=click.IntRange(min=0),
              help="ePIE: first iteration (0-based) that refines the probe [default: 1].")
@click.option("--phase-only", is_flag=True, default=None,
              help="ePIE: constrain the object to a pure phase (|O| = 1): weak-phase "
                   "specimens at low dose [default: off].")
@click.option("--seed", type=int, help="ePIE: seed of the random position order [default: 0].")
@click.option("--memory-limit",
              help="Memory budget, e.g. 8GB or 512MiB. ePIE: data whose amplitudes take "
                   "more than half of it are streamed from disk every iteration, a stored "
                   "chunk at a time (same result) [default: half the memory this process "
                   "may use; on a GPU also at most its free memory]. iCOM/iDPC: fewer "
                   "reading threads when their blocks would not fit.")
@click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu",
              show_default=True)
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=0,
              help="ePIE: save the state every N iterations to <output>.checkpoint.npz "
                   "(0: never).")
@click.option("--resume", is_flag=True,
              help="ePIE: continue from <output>.checkpoint.npz (same data and parameters); "
                   "without one, start afresh.")
@click.option("--keep-checkpoint", is_flag=True,
              help="ePIE: keep the checkpoint after a successful run (default: delete it).")
@click.option("--rotation", callback=_rotation_option,
              help="iCOM/iDPC: scan-detector rotation in degrees, 'auto' (found from the "
                   "data: the curl-free field) or 'calibration' [default: calibration].")
@click.option("--overwrite", is_flag=True, help="Replace an existing result.")
def reconstruct(data, method, output, device, checkpoint_every, resume, keep_checkpoint,
                rotation, overwrite, **epie_opts):  # fmt: skip
    """Reconstruct the phase of the specimen from a 4D-STEM dataset (.zarr/.h5).

    Writes a result Zarr (phase, and for ePIE the complex object and probe; every
    parameter and the calibration in its attributes) and a PNG preview. If the dataset
    holds a simulated ground truth, prints the correlation (NCC) of the phase with σ·V.

    \b
    Examples:
      ptyengine reconstruct sto.zarr --method icom --rotation auto
      ptyengine reconstruct sto.zarr --iterations 300 --checkpoint-every 20
      ptyengine reconstruct sto.zarr --iterations 300 --checkpoint-every 20 --resume
    """
    memory_limit = epie_opts.pop("memory_limit")
    given = {k: v for k, v in epie_opts.items() if v is not None}
    if method == "epie":
        if rotation is not None:
            raise click.UsageError("--rotation applies to --method icom/idpc; ePIE takes "
                                   "the calibration's rotation")  # fmt: skip
    else:
        flags = [f"--{k.replace('_', '-')}" for k in given]
        flags += [f for f, on in (("--checkpoint-every", checkpoint_every), ("--resume", resume),
                                  ("--keep-checkpoint", keep_checkpoint)) if on]  # fmt: skip
        if flags:
            raise click.UsageError(f"{', '.join(flags)}: for --method epie only")
    _reconstruct(Path(data), method, Path(output) if output else None, device=device,
                 overwrite=overwrite, epie_options=given, rotation=rotation,
                 checkpoint_every=checkpoint_every, resume=resume,
                 keep_checkpoint=keep_checkpoint, memory_limit=memory_limit)  # fmt: skip


def _reconstruct(data: Path, method: str, output: Path | None = None, device: str = "cpu",
                 overwrite: bool = False, epie_options: dict | None = None, rotation=None,
                 checkpoint_every: int = 0, resume: bool = False,
                 keep_checkpoint: bool = False, memory_limit=None) -> dict:  # fmt: skip
    """Run one reconstruction, write its result and preview; returns what was done
    (``crop``: the phase over the scanned area, ``ncc``: the comparison or None)."""
    import time

    import numpy as np

    from . import io
    from .results import preview_png, write_result

    out = output or _default_output(data, method)
    if out.suffix != ".zarr":
        raise PtyengineError(f"{out}: a result is a Zarr store; name it *.zarr")
    if out.exists() and not overwrite and not (resume and _checkpoint_path(out).exists()):
        raise PtyengineError(f"{out} exists; pass --overwrite to replace it")
    with io.open_dataset(data) as ds:
        click.echo(f"reconstructing {data} by {method} on {device}", err=True)
        t0 = time.perf_counter()
        try:
            if method == "epie":
                rec = _run_epie(ds, data, out, device, epie_options or {}, checkpoint_every,
                                resume, memory_limit)  # fmt: skip
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
    extra = {"source": str(data), "seconds": round(seconds, 3), **rec["extra"]}
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
    png = preview_png(_preview_path(out), rec["panels"], title=title)
    click.echo(f"result: {path}\npreview: {png}")
    ck = rec.get("checkpoint")
    if ck is not None and ck.exists() and not keep_checkpoint:
        ck.unlink()
    return {"output": path, "preview": png, "crop": rec["crop"], "ncc": ncc,
            "seconds": seconds}  # fmt: skip


def _run_epie(ds, data: Path, out: Path, device, options, checkpoint_every, resume,
              memory_limit=None) -> dict:  # fmt: skip
    import dataclasses

    import numpy as np
    from tqdm import tqdm

    from .reconstruct.epie import EpieParameters, epie

    params = EpieParameters(**options)
    ck = _checkpoint_path(out)
    if resume and not ck.exists():
        click.echo(f"no checkpoint at {ck}: starting from the first iteration", err=True)
        resume = False
    elif resume:
        click.echo(f"resuming from {ck}", err=True)
    use_ck = ck if (checkpoint_every or resume) else None
    bar = _progress_bar(tqdm, params.iterations, "it", "ePIE")

    def progress(iteration, error):
        bar.set_postfix(error=f"{error:.4g}", refresh=False)  # shown by update's refresh
        bar.update(iteration - bar.n)

    try:
        res = epie(ds, params, device=device, checkpoint=str(use_ck) if use_ck else None,
                   checkpoint_every=checkpoint_every, resume=resume, progress=progress,
                   data_id=str(data.resolve()), memory_limit=memory_limit)  # fmt: skip
    finally:
        bar.close()
    g, cal = res.geometry, ds.calibration
    w = np.asarray(g.window)
    lo = g.corners.min(axis=0) + w // 2  # object pixels of the first and last positions
    hi = g.corners.max(axis=0) + w // 2 + 1
    phase = res.phase.astype(np.float32)
    crop = phase[lo[0]:hi[0], lo[1]:hi[1]]
    errors = [float(e) for e in res.errors]
    summary = f"ePIE, {len(errors)} iterations" + (
        f", final error {errors[-1]:.4g}" if errors else "")  # fmt: skip
    probe_box = _central_box(np.abs(res.probe))
    probe_title = f"probe amplitude (central {probe_box.shape[0] * g.sampling[0]:.3g} Å)"
    panels = [("ePIE phase, scanned area (rad)", crop), (probe_title, probe_box)]
    if errors:
        panels.append(("error vs iteration", np.asarray(errors)))
    parameters = {**dataclasses.asdict(params), "device": device,
                  "defocus_used": cal.defocus if params.defocus is None else params.defocus,
                  "checkpoint_every": checkpoint_every}  # fmt: skip
    return {
        "arrays": {"object": res.object.astype(np.complex64),
                   "probe": res.probe.astype(np.complex64), "phase": phase},
        "sampling": g.sampling, "origin": g.object_origin, "parameters": parameters,
        "errors": errors, "image": phase, "crop": crop, "panels": panels, "summary": summary,
        # the NCC ignores the unscanned margin round the scanned area
        "border": int(min(w // 2 + g.corners.min(axis=0))),
        "extra": {"resumed": resume, "streamed": res.extra["streamed"],
                  "scanned_area_px": [[int(lo[0]), int(hi[0])], [int(lo[1]), int(hi[1])]]},
        "checkpoint": use_ck,
    }  # fmt: skip


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

    from .reconstruct import icom as ic

    run = ic.icom if method == "icom" else ic.idpc
    r = run(ds, rotation=rotation, device=device, memory_limit=memory_limit)
    if r.rotation_found:
        click.echo(f"rotation found from the data: {r.rotation_deg:g}°, transpose "
                   f"{'yes' if r.transpose else 'no'}", err=True)  # fmt: skip
    if r.n_empty:
        click.echo(f"warning: {r.n_empty} pattern(s) hold no counts (taken as no "
                   "deflection)", err=True)  # fmt: skip
    name = "iCOM" if method == "icom" else "iDPC"
    field = "COM (1/Å)" if method == "icom" else "DPC signal"
    phase = r.phase.astype(np.float32)
    return {
        "arrays": {"phase": phase, "com_y": r.com_y.astype(np.float32),
                   "com_x": r.com_x.astype(np.float32)},
        "sampling": r.sampling, "origin": r.origin,
        "parameters": {"rotation": "calibration" if rotation is None else rotation,
                       "device": device},
        "errors": None, "image": phase, "crop": phase, "border": 0,
        "panels": [(f"{name} phase ({'rad' if method == 'icom' else 'arb.'})", phase),
                   (f"{field} y, scan frame", r.com_y), (f"{field} x, scan frame", r.com_x)],
        "summary": f"{name}, rotation {r.rotation_deg:g}°",
        "extra": {"rotation_deg": r.rotation_deg, "transpose": r.transpose,
                  "rotation_found": r.rotation_found, "n_empty": r.n_empty, "units": r.units},
    }  # fmt: skip


def _truth_ncc(ds, image, sampling, origin, border: int):
    """compare_to_truth of a phase image with σ·V of the dataset's ground truth (None if
    it has none), band-limited to the data's information limit 2α/λ."""
    if "ground_truth/potential" not in ds.arrays():
        return None
    from . import metrics, physics

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


@cli.command()
@click.option("-o", "--output", type=click.Path(), default="ptyengine-demo", show_default=True,
              help="Directory for the dataset, the reconstructions and the preview images.")
@click.option("--device", type=click.Choice(["cpu", "gpu", "auto"]), default="cpu",
              show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=20, show_default=True,
              help="ePIE iterations.")
def demo(output, device, iterations):
    """Simulate a small built-in dataset (SrTiO3 [001], focused probe), reconstruct it by
    iCOM and ePIE and compare both with the ground truth (well under a minute on a CPU)."""
    import time

    from . import io, physics, presets
    from .preview import dataset_preview, ground_truth_window
    from .results import preview_png

    t0 = time.perf_counter()
    out = Path(output)
    label, params = presets.demo()[0]
    path = out / f"{label}.zarr"
    _run_simulation(params, path, device, overwrite=True, resume=False, batch_size=None)
    with io.open_dataset(path) as ds:
        png = dataset_preview(ds, out / f"{label}_preview.png",
                              title=f"{label}: simulated 4D-STEM (ptyengine demo)")
        truth = ground_truth_window(ds) * physics.interaction_constant(ds.calibration.energy)
    click.echo(f"preview: {png}")
    runs = {
        "iCOM": _reconstruct(path, "icom", device=device, overwrite=True),
        "ePIE": _reconstruct(path, "epie", device=device, overwrite=True,
                             epie_options={"iterations": iterations, "batch_size": 16}),
    }  # fmt: skip
    panels = [("ground truth σV (rad)", truth)]
    for name, r in runs.items():
        ncc = "" if r["ncc"] is None else f", NCC {r['ncc']['ncc']:.3f}"
        panels.append((f"{name} phase{ncc}", r["crop"]))
    cmp = preview_png(out / "demo_comparison.png", panels,
                      title=f"{label}: scanned area, focused probe, noise-free "
                            f"(ePIE {iterations} iterations)")  # fmt: skip
    for name, r in runs.items():
        if r["ncc"] is not None:
            click.echo(f"{name}: NCC with the ground truth {r['ncc']['ncc']:.3f} "
                       f"({r['seconds']:.1f} s)")  # fmt: skip
    click.echo(f"comparison: {cmp}")
    click.echo(f"demo done in {time.perf_counter() - t0:.1f} s", err=True)


@cli.command()
def doctor():
    """Check the installation: Python, numpy, FFTs, numba kernels, CuPy/CUDA and the GPU
    (a tiny ePIE on each device). Exit status 0 when the CPU path works (GPU problems are
    warnings), 1 when something the CPU path needs is broken."""
    import platform
    import tempfile
    import time

    import numpy as np

    from . import __version__, backend

    failures, warnings_ = [], []
    found: dict = {}

    def check(name, fn, needed=True):
        try:
            text = fn()
        except Exception as exc:  # a doctor reports every failure
            text = f"FAILED: {type(exc).__name__}: {exc}".splitlines()[0]
            (failures if needed else warnings_).append(f"{name}: {text[8:]}")
        click.echo(f"{name + ':':<15}{text}")

    info = backend.describe()
    check("ptyengine", lambda: __version__)
    check("python", lambda: f"{platform.python_version()} ({platform.python_implementation()}, "
                            f"{platform.platform()})")  # fmt: skip

    check("numpy", lambda: np.__version__)

    def fft_check():
        rng = np.random.default_rng(0)
        a = (rng.standard_normal((4, 64, 64)) + 1j * rng.standard_normal((4, 64, 64)))
        a = a.astype(np.complex64)
        ref = np.fft.fft2(a)
        err = float(np.abs(backend.fft2(a) - ref).max() / np.abs(ref).max())
        back = float(np.abs(backend.ifft2(backend.fft2(a)) - a).max())
        if not (err < 1e-4 and back < 1e-4):
            raise RuntimeError(f"{info['cpu_fft']} disagrees with numpy.fft ({err:.2g})")
        if not info["cpu_fft"].startswith("pyfftw"):
            warnings_.append("pyfftw is missing: CPU FFTs fall back to scipy.fft (2-3x "
                             "slower); pip install pyfftw")  # fmt: skip
        return f"{info['cpu_fft']}: ok (matches numpy.fft to {err:.1g})"

    check("FFT backend", fft_check)
    threads = info["cpu_threads"]
    env = [f"{k}={os.environ[k]}" for k in ("PTYENGINE_THREADS", "PTYENGINE_FFT_THREADS",
                                            "OMP_NUM_THREADS") if k in os.environ]  # fmt: skip
    check("CPU threads", lambda: threads + (f" ({', '.join(env)})" if env else ""))

    def numba_check():
        import numba

        from .kernels import windows

        t = time.perf_counter()
        psi = np.ones((2, 3, 3), np.complex64)
        tr = np.arange(36, dtype=np.complex64).reshape(6, 6)
        corners = np.array([[0, 0], [2, 3]], np.int64)
        windows.window_multiply_cpu(psi, tr, corners)
        if not (np.array_equal(psi[0], tr[:3, :3]) and np.array_equal(psi[1], tr[2:5, 3:6])):
            raise RuntimeError("the window kernel computes wrong numbers")
        return f"{numba.__version__}: CPU kernels compile and run ({time.perf_counter() - t:.1f} s)"

    check("numba", numba_check)

    def tiny_dataset(tmp):
        from .simulate import SimulationParameters, simulate

        p = SimulationParameters(structure="srtio3", zone_axis=(0, 0, 1), field=(7.81, 7.81),
                                 thickness=4.0, scan_step=0.4, scan_size=(2.4, 2.4),
                                 max_angle=40.0, detector_pixels=32)  # fmt: skip
        path = Path(tmp) / "tiny.zarr"
        simulate(p, str(path))
        return path

    def epie_check(device, tmp):
        from .reconstruct.epie import EpieParameters, epie

        path = found.get("data") or tiny_dataset(tmp)
        found["data"] = path
        params = EpieParameters(iterations=3, batch_size=4)
        t = time.perf_counter()
        res = epie(path, params, device=device)
        first = time.perf_counter() - t
        if not (np.isfinite(res.object).all() and np.isfinite(res.errors).all()):
            raise RuntimeError("NaN or inf in the result")
        found[device] = res
        text = f"ok: 3 iterations on a 6 x 6 scan of 32 x 32 patterns in {first:.2f} s"
        if device == "gpu":
            t = time.perf_counter()
            epie(path, params, device=device)
            text += f" ({time.perf_counter() - t:.2f} s once compiled)"
            if "cpu" in found:
                diff = float(np.abs(res.object - found["cpu"].object).max())
                text += f"; max |object difference| to the CPU: {diff:.1g}"
                if diff > 1e-2:
                    raise RuntimeError(f"GPU and CPU results differ by {diff:.2g}")
        return text

    with tempfile.TemporaryDirectory(prefix="ptyengine-doctor-") as tmp:
        check("CPU ePIE", lambda: epie_check("cpu", tmp))
        cupy_text = _cupy_report(warnings_)
        click.echo(f"{'cupy:':<15}{cupy_text}")
        check("GPU", lambda: info["gpu"], needed=False)
        check("numba.cuda", _numba_cuda_report, needed=False)
        if backend.gpu_available():
            check("GPU ePIE", lambda: epie_check("gpu", tmp), needed=False)
        else:
            click.echo(f"{'GPU ePIE:':<15}skipped (no usable GPU)")
            warnings_.append(
                "no usable GPU: everything runs on the CPU. For a GPU, install the gpu "
                "extra, pip install 'ptyengine[gpu]' (CuPy for CUDA 12: needs an NVIDIA "
                "driver for CUDA 12, i.e. >= 525)")  # fmt: skip
    for w in warnings_:
        click.echo(f"warning: {w}")
    if failures:
        click.echo("CPU path: BROKEN (" + "; ".join(failures) + ")")
        sys.exit(1)
    click.echo("CPU path: ok")


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def _cupy_report(warnings_: list) -> str:
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        return f"not installed ({type(exc).__name__}: {exc})".splitlines()[0]
    text = f"{cupy.__version__}"
    try:
        text += (f", CUDA runtime {_cuda_version(cupy.cuda.runtime.runtimeGetVersion())}, "
                 f"driver {_cuda_version(cupy.cuda.runtime.driverGetVersion())}")
    except Exception as exc:  # anything a broken driver raises
        warnings_.append(f"cupy cannot talk to the CUDA driver ({exc})")
        text += f" (CUDA driver unreachable: {exc})"
    return text


def _numba_cuda_report() -> str:
    from numba import config

    if config.ENABLE_CUDASIM:
        return "CUDA simulator (NUMBA_ENABLE_CUDASIM=1): kernels run on the CPU, no device"
    from numba import cuda

    if not cuda.is_available():
        return "no CUDA device seen"
    name = cuda.get_current_device().name
    return f"sees {name.decode() if isinstance(name, bytes) else name}"


def main(argv=None):
    """Entry point: run the click group, turning user errors into one-line messages."""
    from .backend import limit_malloc_arenas

    limit_malloc_arenas()  # streaming threads' freed buffers do not pile up in arenas
    try:
        cli.main(args=argv, prog_name="ptyengine", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted; partial outputs are kept (re-run with --resume)", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except PtyengineError as exc:
        if os.environ.get("PTYENGINE_DEBUG"):
            raise
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted; partial outputs are kept (re-run with --resume)", err=True)
        sys.exit(130)
