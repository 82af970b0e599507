"""``ptyengine convert``: detector files to the calibrated dataset layout."""

from __future__ import annotations

import sys

import click

from ..errors import PtyengineError
from .common import DEFOCUS_SIGN, _pair, _progress_bar, keep_on_interrupt


def _number(text: str, flag: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise PtyengineError(f"{flag} takes a number, got {text!r}") from None


def _aberrations(defocus, c12, cs, items) -> dict | None:
    """{name: value} from --defocus, --c12, --cs and --aberration NAME=VALUE (each once)."""
    out = {}

    def put(name, value, flag):
        if name in out:
            raise PtyengineError(f"{name} is given twice (again by {flag})")
        out[name] = value

    if defocus is not None:
        put("C10", defocus, "--defocus")
    if c12 is not None:
        parts = c12.split(",")
        if len(parts) not in (1, 2):
            raise PtyengineError(f"--c12 takes C12[,phi12] (Å, rad), got {c12!r}")
        put("C12", _number(parts[0], "--c12"), "--c12")
        if len(parts) == 2:
            put("phi12", _number(parts[1], "--c12"), "--c12")
    if cs is not None:
        put("C30", cs, "--cs")
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise PtyengineError(f"--aberration takes NAME=VALUE (Å; angles phiNM in rad), "
                                 f"e.g. C23=300, got {item!r}")  # fmt: skip
        put(name.strip(), _number(value, f"--aberration {name.strip()}"), "--aberration")
    return out or None


def _dose(text: str | None):
    if text is None or text.strip().lower() == "none":
        return None if text is None else "none"
    try:
        return float(text)
    except ValueError:
        raise PtyengineError(f"--dose takes e/Å² or 'none', got {text!r}") from None


@click.command()
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
@click.option("--rotation", type=float,
              help="Scan-detector rotation in degrees: a detector vector turned by it (after "
                   "--transpose) points along the scan's axes; > 0 turns +x towards +y, so "
                   "patterns stored as np.rot90 of scan-aligned ones take 90 [default: 0].")
@click.option("--transpose", is_flag=True, default=None, help="Swap the detector axes first.")
@click.option("--defocus", type=float,
              help=f"Probe defocus C10 in Å (recorded in the calibration; ePIE starts from "
                   f"it). {DEFOCUS_SIGN}")
@click.option("--c12", help="Two-fold astigmatism C12[,phi12]: magnitude in Å, angle in rad "
                            "(as the calibration stores them).")
@click.option("--cs", type=float, help="Spherical aberration C30 in Å.")
@click.option("--aberration", "aberration_items", multiple=True, metavar="NAME=VALUE",
              help="Any Krivanek coefficient in Å or its angle in rad, e.g. C23=300 "
                   "phi23=0.5 C30=-1e4; repeat for several.")
@click.option("--dose", help="Dose in e/Å², or 'none' [default: integer data are taken as "
                             "electron counts: mean counts per pattern / step area].")
@click.option("--scan-origin", help="Position y,x in Å of the first probe position.")
@click.option("--crop", help="Detector crop y0:y1,x0:x1 in input pixels (before binning).")
@click.option("--bin", "binning", type=click.IntRange(min=1), default=1, show_default=True,
              help="Sum N x N detector pixels (dk scales by N, the centre with it).")
@click.option("--mask", "mask_path", type=click.Path(), metavar="FILE.npy",
              help="Detector mask of dead and hot pixels: a .npy array of the input "
                   "detector's shape (before --crop/--bin), 1 or True for a pixel that "
                   "counts, 0 or False for one to ignore. Stored with the data as "
                   "'detector_mask'; the reconstructions leave those pixels out (a binned "
                   "pixel counts only if all its input pixels do).")
@click.option("--resume", is_flag=True, help="Continue an interrupted conversion.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
@click.option("--no-verify", is_flag=True, help="Skip the read-back checksum verification.")
@click.option("--rows-per-chunk", type=click.IntRange(min=1),
              help="Scan rows per stored chunk [default: ~16 MiB of rows]. Streaming "
                   "reconstructions hold a few chunks at a time.")
def convert(input_path, output, fmt, shape, dtype, offset, order, scan_shape, energy, semiangle,
            scan_step, dk, detector_angle, center, rotation, transpose, defocus, c12, cs,
            aberration_items, dose, scan_origin, crop, binning, mask_path, resume, overwrite,
            no_verify, rows_per_chunk):  # fmt: skip
    """Convert 4D-STEM data (Merlin .mib, EMPAD, DM3/DM4, EMD/py4DSTEM, Arina, .npy, raw
    binary) into a calibrated dataset, streaming with bounded memory.

    Calibration fields the file lacks must be given (energy, semi-angle, scan step, dk or
    detector angle); given options win over the file's values. Give the probe's aberrations
    (--defocus, --c12, --cs, --aberration) for ePIE: without them it starts from a focused
    probe. Every field is range-checked, and the bright-field disc of the mean pattern is
    compared with the semi-angle (a note beyond 10 %, an error beyond 2×).

    \b
    Examples:
      ptyengine convert scan.mib -o scan.zarr --energy 300 --semiangle 20 --scan-step 0.5 \\
          --detector-angle 0.8 --crop 0:256,0:256 --bin 2
      ptyengine convert scan.raw --shape 128,128,256,256 --dtype uint16 --energy 200 \\
          --semiangle 25 --scan-step 0.4 --dk 0.02 --defocus 500 -o scan.zarr --resume
      ptyengine convert scan.mib -o scan.zarr --energy 300 --semiangle 20 --scan-step 0.5 \\
          --detector-angle 0.8 --rotation 12.5 --transpose --mask bad_pixels.npy
    """
    from tqdm import tqdm

    from .. import convert as cv
    from ..dataset import load_mask
    from ..locks import output_lock

    mask = None if mask_path is None else load_mask(mask_path)
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
             "transpose": transpose,
             "aberrations": _aberrations(defocus, c12, cs, aberration_items),
             "dose": _dose(dose), "scan_origin": _pair(scan_origin, "--scan-origin")}  # fmt: skip
    click.echo(f"converting {input_path} ({source.format}, {source.shape} {source.dtype}) "
               f"to {output}", err=True)  # fmt: skip
    keep_on_interrupt(f"{output}.partial")
    bar = _progress_bar(tqdm, source.shape[0], "row", "convert")
    try:
        with output_lock(output):  # before the pre-pass: one writer, a writable folder
            rep = cv.convert(source, output, given, crop, binning, resume=resume,
                             overwrite=overwrite, verify_after=not no_verify,
                             progress=bar.update, rows_per_chunk=rows_per_chunk,
                             log=lambda text: tqdm.write(f"note: {text}", file=sys.stderr),
                             mask=mask)  # fmt: skip
    finally:
        bar.close()
        source.close()
    mb = rep.bytes_read / 1e6
    click.echo(f"wrote {rep.output}: {rep.shape} {rep.dtype}, {mb:.1f} MB read in "
               f"{rep.seconds:.1f} s ({mb / max(rep.seconds, 1e-9):.0f} MB/s)"
               + (f", resumed at scan row {rep.resumed_at}" if rep.resumed_at else ""), err=True)
    click.echo(f"verified: {rep.verified}" if rep.verified else "verification skipped "
               "(--no-verify)", err=True)  # fmt: skip
