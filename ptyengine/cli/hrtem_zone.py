"""``ptyengine hrtem zone-axis``: the holder tilts that bring a crystal onto its zone axis,
from one electron-diffraction pattern (:mod:`ptyengine.hrtem.zone_axis`)."""

from __future__ import annotations

import math

import click

HELP_AXES = ("Direction of the {} tilt axis on the pattern, in degrees from the pattern's +x "
             "axis (columns) towards +y (rows).")  # fmt: skip


def _pixel_size(pixel_size, camera_length, detector_pixel, energy_ev) -> float:
    """1/Å per pixel: given, or p/(L λ) from a camera length L (mm) and pixel p (µm)."""
    from ..errors import PtyengineError
    from ..hrtem.zone_axis import pixel_size_from_camera

    if pixel_size is not None:
        if camera_length is not None or detector_pixel is not None:
            raise PtyengineError("give either --pixel-size or --camera-length with "
                                 "--detector-pixel, not both")  # fmt: skip
        return pixel_size
    if camera_length is None or detector_pixel is None:
        raise PtyengineError("the pattern's calibration is missing: give --pixel-size (1/Å per "
                             "pixel) or --camera-length (mm) and --detector-pixel (µm)")
    return pixel_size_from_camera(camera_length, detector_pixel, energy_ev)


def _crystal(crystal, zone, thickness, shape, pixel_size, energy_ev):
    """The kinematic model of --crystal along --zone out to the pattern's corners, or None."""
    from ..errors import PtyengineError
    from ..hrtem.kinematic import zolz_coefficients

    if crystal is None and zone is None:
        return None
    if crystal is None or zone is None:
        raise PtyengineError("--crystal and --zone go together: the structure and its zone "
                             "axis u,v,w")  # fmt: skip
    try:
        uvw = tuple(int(v) for v in zone.split(","))
    except ValueError:
        raise PtyengineError(f"--zone takes three whole numbers u,v,w, not {zone!r}") from None
    if len(uvw) != 3 or not any(uvw):
        raise PtyengineError(f"--zone takes three whole numbers u,v,w, not all 0: {zone!r}")
    reach = math.hypot(*shape) / 2 * float(pixel_size)
    return zolz_coefficients(crystal, uvw, reach, energy_ev, thickness=thickness)


def _report(label: str, path, result, lam: float) -> None:
    c = result.circle
    click.echo(f"{label} {path}: direct beam at (y, x) = ({result.direct_beam[0]:.2f}, "
               f"{result.direct_beam[1]:.2f}) px, {len(result.reflections) + 1} reflections")
    click.echo(f"  Laue circle: centre (k_y, k_x) = ({c.centre[0]:.4f}, {c.centre[1]:.4f}) 1/Å, "
               f"radius {c.radius:.4f} 1/Å (score {c.score:.2f}, {int(c.inliers.sum())} "
               f"reflections on it)")
    r = result.refinement
    if r is not None:
        click.echo(f"  kinematic refinement: centre ({r.centre[0]:.4f}, {r.centre[1]:.4f}) 1/Å "
                   f"from {r.points} reflections, thickness {r.thickness:.0f} Å, lattice at "
                   f"{r.rotation:.2f}°{' mirrored' if r.mirror else ''} on the pattern")
    click.echo(f"  tilt φ = {result.tilt:.3f}° (sin φ = λ r, λ = {lam:.5f} Å) towards "
               f"{result.direction:.1f}° on the pattern")


@click.command("zone-axis")
@click.argument("pattern", type=click.Path())
@click.option("--alpha-axis", type=float, required=True, help=HELP_AXES.format("α"))
@click.option("--beta-axis", type=float, required=True, help=HELP_AXES.format("β"))
@click.option("--pixel-size", type=float, default=None,
              help="Pattern calibration in 1/Å per pixel.")
@click.option("--camera-length", type=float, default=None,
              help="Camera length in mm (with --detector-pixel, instead of --pixel-size).")
@click.option("--detector-pixel", type=float, default=None,
              help="Physical detector pixel in µm (with --camera-length).")
@click.option("--energy", type=float, default=300.0, show_default=True,
              help="Beam energy in kV.")
@click.option("--second", type=click.Path(), default=None,
              help="A second pattern, recorded after applying the printed tilts: its residual "
                   "tilt gives the next correction.")
@click.option("--method", type=click.Choice(["auto", "circle", "friedel"]), default="auto",
              show_default=True,
              help="Estimator: 'circle' (the Laue circle; tilts from ~0.5°), 'friedel' (Friedel "
                   "pairs; tilts below ~0.5°); 'auto' uses the circle on the first pattern and "
                   "Friedel pairs on --second.")
@click.option("--threshold", type=float, default=5.0, show_default=True,
              help="Reflection detection level in robust noise σ above the background.")
@click.option("--crystal", default=None,
              help="The specimen's structure (uio66, srtio3, mos2 or a CIF file): refines the "
                   "circle with every reflection's kinematic intensity (needs --zone).")
@click.option("--zone", default=None, help="The zone axis u,v,w of --crystal, e.g. 1,1,0.")
@click.option("--thickness", type=float, default=100.0, show_default=True,
              help="With --crystal: the specimen thickness in Å the fit starts from (it is "
                   "fitted).")
def zone_axis(pattern, alpha_axis, beta_axis, pixel_size, camera_length, detector_pixel, energy,
              second, method, threshold, crystal, zone, thickness):
    """Tilts (α, β in degrees) that bring the crystal of PATTERN onto its zone axis.

    Detects the reflections, fits the zero-order Laue circle through the direct beam, takes
    the tilt φ from its radius r (sin φ = λ r, exact on the Ewald sphere) and its direction
    from the circle's centre, and splits it between the holder's α and β axes (α > 0: a
    right-handed rotation about the α axis; β is carried by α). With --crystal and --zone
    the circle is refined by the kinematic intensities of every reflection of the crystal's
    zero-order Laue zone (ptyengine/hrtem/kinematic.py; thickness fitted; not on a --second
    pattern measured with Friedel pairs, whose small residual tilt they measure better).
    PATTERN: .npy, .png, .tif, .dm3/.dm4 or .mrc, one 2-D pattern.

    \b
    Example:
      ptyengine hrtem zone-axis ed.npy --alpha-axis 30 --beta-axis 120 --pixel-size 0.005 \\
          --crystal uio66 --zone 1,1,0 --thickness 100
    """
    from ..errors import PtyengineError
    from ..hrtem import zone_axis as za
    from ..physics import wavelength

    if not (math.isfinite(energy) and energy > 0):
        raise PtyengineError(f"--energy {energy:g} kV must be positive")
    energy_ev = energy * 1e3
    ps = _pixel_size(pixel_size, camera_length, detector_pixel, energy_ev)
    za.check_axes(alpha_axis, beta_axis)
    lam = wavelength(energy_ev)
    image = za.read_pattern(pattern)
    model = _crystal(crystal, zone, thickness, image.shape, ps, energy_ev)
    first_method = "circle" if method == "auto" else method
    first = za.align(image, alpha_axis, beta_axis, ps, energy_ev, threshold=threshold,
                     method=first_method, crystal=model)  # fmt: skip
    _report("pattern", pattern, first, lam)
    da, db = first.correction
    click.echo(f"apply: α {da:+.3f}°, β {db:+.3f}°")
    if second is None:
        return
    second_method = "friedel" if method == "auto" else method
    # the kinematic model is poorest near the zone axis (many beams at once): the small
    # residual of a second pattern is the Friedel estimator's (benchmarks/RESULTS.md)
    rest = za.align(za.read_pattern(second), alpha_axis, beta_axis, ps, energy_ev,
                    threshold=threshold, method=second_method,
                    crystal=model if second_method == "circle" else None)  # fmt: skip
    _report("second", second, rest, lam)
    ra, rb = rest.correction
    click.echo(f"residual after the first correction: {rest.tilt:.3f}°; apply next: α "
               f"{ra:+.3f}°, β {rb:+.3f}° (in all since the first pattern: α {da + ra:+.3f}°, "
               f"β {db + rb:+.3f}°)")
