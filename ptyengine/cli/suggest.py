"""``ptyengine suggest``: parameter advice from a dataset's calibration or from options."""

from __future__ import annotations

import click

from .common import _pair


@click.command()
@click.argument("data", type=click.Path(), required=False)
@click.option("--energy", type=float, help="Beam energy in kV.")
@click.option("--semiangle", type=float, help="Convergence semi-angle in mrad.")
@click.option("--scan-step", help="Scan step in Å: d or dy,dx.")
@click.option("--scan-shape", default="128,128", show_default=True,
              help="Scan positions ny,nx (for the memory estimate).")
@click.option("--detector-pixels", type=int, help="Detector pixels per side.")
@click.option("--max-angle", type=float, help="Detector half-width in mrad.")
@click.option("--dk", type=float, help="Detector pixel in 1/Å (instead of --max-angle).")
@click.option("--dose", type=float, help="Dose in e/Å² (none: noise-free).")
@click.option("--defocus", type=float, default=None, help="Probe defocus C10 in Å [0].")
@click.option("--thickness", type=float, default=None,
              help="Specimen thickness in Å, for the multislice advice [the dataset's "
                   "recorded thickness, if any].")
@click.option("--memory-limit", default=None,
              help="Memory budget, e.g. 16GB [default: half of this machine's memory].")
def suggest(data, energy, semiangle, scan_step, scan_shape, detector_pixels, max_angle, dk,
            dose, defocus, thickness, memory_limit):  # fmt: skip
    """Advice for a reconstruction: overlap, probe diameter (with defocus), real-space
    pixel, counts per pattern and per bright-field pixel, ePIE or ML, batch size, memory,
    the slices for a thick specimen (--thickness), and warnings (undersampled detector,
    overlap < 60 %, dose below ~10 e/Å², a probe window narrower than the beam). Give a
    dataset, or its calibration as options; the rules and their sources are in
    ptyengine/suggest.py.

    \b
    Examples:
      ptyengine suggest uio66-100/df50nm.zarr
      ptyengine suggest --energy 300 --semiangle 20 --scan-step 1.2 --detector-pixels 256 \\
          --max-angle 40 --dose 20 --defocus 1000
    """
    from .. import io
    from ..errors import PtyengineError
    from ..reconstruct.slices import recorded_thickness
    from ..suggest import calibration_from_options, describe
    from ..suggest import suggest as advise

    options = {"energy": energy, "semiangle": semiangle, "scan_step": scan_step,
               "detector_pixels": detector_pixels, "max_angle": max_angle, "dk": dk,
               "dose": dose, "defocus": defocus}  # fmt: skip
    if data is not None:
        given = [f"--{k.replace('_', '-')}" for k, v in options.items() if v is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)}: give DATA or the calibration, "
                                   "not both")  # fmt: skip
        with io.open_dataset(data) as ds:
            cal = ds.calibration
            if thickness is None:
                thickness = recorded_thickness(ds)
    else:
        options["scan_step"] = _pair(scan_step, "--scan-step")
        options["scan_shape"] = _pair(scan_shape, "--scan-shape", int)
        cal = calibration_from_options(**options)
    if thickness is not None and not thickness > 0:
        raise PtyengineError(f"--thickness must be positive Å, got {thickness}")
    click.echo(describe(advise(cal, memory_limit, thickness)))
