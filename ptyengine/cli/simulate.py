"""``ptyengine simulate``: multislice 4D-STEM data from a recipe or a structure."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from .common import DEFOCUS_HELP, _pair, _progress_bar, _zone_axis, keep_on_interrupt
from .runconfig import run_config


@run_config
@click.command()
@click.argument("recipe", required=False)
@click.option("--preset", "variant", default="quick", show_default=True,
              help="Variant of the recipe: quick (2-core CPU, minutes), full (the study) or, "
                   "for uio66-defocus, tiny (tests, seconds).")
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
@click.option("--scan-margin", metavar="Å|auto",
              help="Å added to the scanned area on every side; auto: the probe's radius "
                   "α·|C10| + 1 Å, so every point of the area gets the full dose (default 0; "
                   "auto in the uio66-defocus quick preset).")
@click.option("--scan-origin", help="First scan position y,x in Å in the field (default: the "
                                    "scan centred; positions wrap round the periodic field).")
@click.option("--max-angle", type=float, help="Detector half-width in mrad.")
@click.option("--dk", type=float, help="Detector pixel in 1/Å (instead of --max-angle).")
@click.option("--detector-angle", type=float,
              help="Detector pixel in mrad (instead of --max-angle).")
@click.option("--detector-pixels", type=int, help="Detector pixels per side.")
@click.option("--detector-oversampling", type=int,
              help="Points per detector pixel and axis: 1 (default) records the far field at "
                   "each pixel's centre, N the mean of N x N points (the pixel's area).")
@click.option("--sampling", type=float,
              help="Upper bound on the field pixel in Å: the pixel used is L/n, n the smallest "
                   "FFT-friendly count >= L/sampling, so the field holds whole pixels "
                   "(default: 1/(3 k_max) from max angle).")
@click.option("--slice-thickness", type=float, help="Multislice slice thickness in Å.")
@click.option("--phonons", type=int, help="Frozen-phonon configurations (0: static).")
@click.option("--sigma", "sigma_text",
              help="Thermal sigma per element, the rms displacement along each axis in Å "
                   "(U_iso = sigma², B = 8π² sigma²), e.g. Sr=0.088,Ti=0.077,O=0.089; other "
                   "elements keep the structure's values.")
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

    from .. import physics, presets
    from ..errors import PtyengineError
    from ..simulate import SimulationParameters

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
        "scan_origin": _pair(opts["scan_origin"], "--scan-origin"),
        "detector_oversampling": opts["detector_oversampling"],
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
    if opts["scan_margin"] is not None:
        changes["scan_margin"] = _margin(opts["scan_margin"])
    jobs = [(label, dataclasses.replace(p, **changes)) for label, p in jobs]
    given = [name for name in ("max_angle", "dk", "detector_angle") if opts[name] is not None]
    if len(given) > 1:
        names = " and ".join("--" + n.replace("_", "-") for n in given)
        raise PtyengineError(f"{names} each set the detector pixel: give one of them")
    if opts["dk"] is not None:
        jobs = [(lb, dataclasses.replace(p, dk=opts["dk"])) for lb, p in jobs]
    if opts["detector_angle"] is not None:  # mrad per pixel -> 1/Å at each job's energy
        jobs = [(lb, dataclasses.replace(
            p, dk=opts["detector_angle"] * 1e-3 / physics.wavelength(p.energy)))
            for lb, p in jobs]  # fmt: skip
    if opts["sigma_text"] is not None:
        sigmas = _sigmas(opts["sigma_text"])
        jobs = [(lb, dataclasses.replace(p, sigmas={**(p.sigmas or {}), **sigmas}))
                for lb, p in jobs]  # fmt: skip
    if opts["cs"] is not None:
        jobs = [(lb, dataclasses.replace(p, aberrations={**p.aberrations, "C30": opts["cs"]}))
                for lb, p in jobs]  # fmt: skip
    if opts["defocus"]:
        base = jobs[0][1]
        jobs = [(presets.defocus_label(df), dataclasses.replace(base, defocus=df))
                for df in opts["defocus"]]  # fmt: skip
    out = Path(output)
    if out.suffix.lower() not in ("", ".zarr", ".h5", ".hdf5"):
        raise PtyengineError(
            f"-o {output}: name one dataset *.zarr or *.h5, or give a directory name without "
            f"a suffix for several")
    if out.suffix and len(jobs) > 1:
        raise PtyengineError(f"-o {output}: {len(jobs)} datasets need a directory name "
                             "(without a suffix)")  # fmt: skip
    if len(jobs) == 1 and out.suffix.lower() in (".zarr", ".h5", ".hdf5"):
        targets = [(jobs[0][1], out)]
    else:
        targets = [(p, out / f"{label}.zarr") for label, p in jobs]
    for params, path in targets:
        _run_simulation(params, path, device, overwrite, resume, batch_size)


def _margin(text: str) -> float | None:
    from ..errors import PtyengineError

    if text.strip().lower() == "auto":
        return None
    try:
        return float(text)
    except ValueError:
        raise PtyengineError(f"--scan-margin takes Å or 'auto', got {text!r}") from None


def _sigmas(text: str) -> dict[str, float]:
    """``Sr=0.088,Ti=0.077`` -> {"Sr": 0.088, "Ti": 0.077} (Å); one-line errors."""
    from ..errors import PtyengineError
    from ..potentials import atomic_number

    out = {}
    for part in text.replace(" ", "").split(","):
        element, _, value = part.partition("=")
        try:
            sigma = float(value)
        except ValueError:
            sigma = None
        if not element or sigma is None:
            raise PtyengineError(f"--sigma takes ELEMENT=SIGMA pairs in Å separated by commas, "
                                 f"e.g. Sr=0.088,O=0.089; got {part!r}")  # fmt: skip
        symbol = element.capitalize()
        atomic_number(symbol)  # an unknown element is an error naming it
        out[symbol] = sigma
    return out


def _run_simulation(params, path, device, overwrite, resume, batch_size):
    from tqdm import tqdm

    from ..locks import output_lock
    from ..simulate import simulate as run

    keep_on_interrupt(f"{path}.partial")
    click.echo(f"simulating {path}  (defocus C10 = {params.defocus:g} Å, "
               f"dose = {params.dose if params.dose else 'noise-free'})", err=True)
    bar = None

    def total(n):
        nonlocal bar
        bar = _progress_bar(tqdm, n, "pos", "simulate")

    def log(msg):
        tqdm.write(f"  {msg}", file=sys.stderr)

    def progress(n):
        if bar is not None:
            bar.update(n)

    try:
        with output_lock(path):  # before the specimen is built: one writer, a writable folder
            summary = run(params, str(path), device=device, overwrite=overwrite, resume=resume,
                          batch_size=batch_size, progress=progress, log=log, total=total)
    finally:
        if bar is not None:
            bar.close()
    click.echo(f"wrote {summary['output']}: scan {summary['scan_shape']}, "
               f"{summary['seconds']:.1f} s", err=True)
