"""``ptyengine hrtem``: low-dose HRTEM — zone-axis alignment from one diffraction pattern
(``zone-axis``, :mod:`.hrtem_zone`), drift correction of dose-fractionated stacks
(``align``), CTF correction of weak-phase images (``ctf``) and simulated test data
(``simulate``). The library is :mod:`ptyengine.hrtem`."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import click

from .common import _pair, _zone_axis
from .hrtem_zone import zone_axis

DEFOCUS_HRTEM = ("Objective-lens defocus C10 in Å; NEGATIVE = underfocus (the image shows a "
                 "plane upstream of the exit surface), the Scherzer side for Cs > 0 "
                 "(see ptyengine.hrtem.ctf).")
FORMATS = ".npy, .tif/.tiff (ImageJ pixel size) or .mrc"


def _optics(energy, defocus, cs, focal_spread, convergence, aperture):
    from ..hrtem import ctf

    return ctf.Optics(energy=energy * 1e3, defocus=defocus, cs=cs * ctf.MM,
                      focal_spread=focal_spread, convergence=convergence, aperture=aperture)


def _optics_options(f):
    for opt in reversed([
        click.option("--energy", type=float, default=300.0, show_default=True,
                     help="Beam energy in kV."),
        click.option("--cs", type=float, default=1.2, show_default=True,
                     help="Spherical aberration C30 in mm."),
        click.option("--focal-spread", type=float, default=30.0, show_default=True,
                     help="rms focal spread Δ in Å (temporal envelope exp(−½(πλΔ)²k⁴))."),
        click.option("--convergence", type=float, default=0.1, show_default=True,
                     help="Illumination 1/e semi-angle α in mrad (spatial envelope)."),
        click.option("--aperture", type=float, default=None,
                     help="Objective aperture semi-angle in mrad [default: none]."),
    ]):
        f = opt(f)
    return f


def _publish_dir(tmp: Path, out: Path, overwrite: bool) -> None:
    """Rename the finished ``tmp`` folder to ``out`` (replacing it with ``overwrite``)."""
    if out.exists():
        if not overwrite:
            shutil.rmtree(tmp, ignore_errors=True)
            raise click.UsageError(f"{out} exists; pass --overwrite to replace it")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(tmp, out)


@click.group()
def hrtem():
    """Low-dose HRTEM: zone-axis alignment, drift correction, CTF correction, simulated
    stacks and diffraction patterns.

    Units: Å, mrad, kV, Cs in mm; shifts in camera pixels (dy, dx); doses in e/pixel per
    frame or e/Å². C10 < 0 is underfocus.
    """


hrtem.add_command(zone_axis)


@hrtem.command()
@click.argument("stack", type=click.Path())
@click.option("-o", "--output", type=click.Path(), required=True,
              help="Output folder: sum.<fmt> (the aligned sum), trajectory.csv, report.json.")
@click.option("--threshold", type=float, default=4.0, show_default=True,
              help="Amplitude filter: keep Fourier pixels whose summed amplitude exceeds the "
                   "ring median B by this many σ = B·√(4/π − 1)/√N (N frames).")
@click.option("--smooth/--no-smooth", default=False, show_default=True,
              help="Replace the measured shifts by a robust polynomial in the frame index.")
@click.option("--degree", type=int, default=3, show_default=True,
              help="Degree of the --smooth polynomial.")
@click.option("--max-step", type=float, default=3.0, show_default=True,
              help="Search radius (px) around each frame's predicted shift; keep it below "
                   "half the shortest lattice period in pixels.")
@click.option("--format", "fmt", type=click.Choice(["npy", "tif", "mrc"]), default="npy",
              show_default=True, help="File format of the aligned sum.")
@click.option("--no-compare", is_flag=True, help="Skip the raw cross-correlation comparison.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
def align(stack, output, threshold, smooth, degree, max_step, fmt, no_compare, overwrite):
    """Align a dose-fractionated STACK (.npy, .tif, .mrc, .dm4, .hspy, .emd) with the
    amplitude filter and sum it.

    Writes OUTPUT/sum.<fmt>, OUTPUT/trajectory.csv (frame, dy_px, dx_px used; measured and
    raw cross-correlation shifts; the truth when STACK_trajectory.csv exists) and
    OUTPUT/report.json (rms differences in px).

    \b
    Example:
      ptyengine hrtem simulate -o uio66_stack.npy
      ptyengine hrtem align uio66_stack.npy --smooth -o aligned/
    """
    from ..errors import PtyengineError
    from ..hrtem import drift
    from ..hrtem import stack as stk

    if not (math.isfinite(max_step) and max_step > 0):
        raise PtyengineError(f"--max-step must be a positive number of pixels, got {max_step}")
    if degree < 0:
        raise PtyengineError(f"--degree must be >= 0, got {degree}")
    out = Path(output)
    if out.exists() and not overwrite:
        raise PtyengineError(f"{out} exists; pass --overwrite to replace it")
    s = stk.read_stack(stack)
    click.echo(f"{stack}: {s.frames.shape[0]} frames of {s.frames.shape[1]} x "
               f"{s.frames.shape[2]} px, mean {s.frames.mean():.4g} counts/pixel", err=True)
    res = drift.align(s.frames, threshold, smooth, degree, max_step=max_step,
                      compare_raw=not no_compare, log=lambda m: click.echo(m, err=True))
    cols = {"measured_dy_px": res.measured[:, 0], "measured_dx_px": res.measured[:, 1]}
    report = {"stack": str(stack), "frames": int(s.frames.shape[0]), "threshold": threshold,
              "fourier_pixels_kept": res.kept, "smooth": smooth,
              "degree": degree if smooth else None, "pixel_size_A": s.pixel_size}
    if res.raw_shifts is not None:
        cols.update(raw_dy_px=res.raw_shifts[:, 0], raw_dx_px=res.raw_shifts[:, 1])
        report["rms_filter_vs_raw_px"] = drift.rms_error(res.shifts, res.raw_shifts)
    if s.trajectory is not None:
        cols.update(true_dy_px=s.trajectory[:, 0], true_dx_px=s.trajectory[:, 1])
        report["rms_error_px"] = drift.rms_error(res.shifts, s.trajectory)
        report["rms_error_measured_px"] = drift.rms_error(res.measured, s.trajectory)
        if res.raw_shifts is not None:
            report["rms_error_raw_px"] = drift.rms_error(res.raw_shifts, s.trajectory)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        stk.write_array(tmp / f"sum.{fmt}", res.total, s.pixel_size)
        stk.write_trajectory(tmp / "trajectory.csv", res.shifts, cols)
        stk.write_json(tmp / "report.json", report)
        _publish_dir(tmp, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for key in ("rms_error_px", "rms_error_measured_px", "rms_error_raw_px",
                "rms_filter_vs_raw_px"):
        if key in report:
            click.echo(f"{key}: {report[key]:.3f}")
    click.echo(f"wrote {out}")


@hrtem.command()
@click.argument("image", type=click.Path())
@click.option("-o", "--output", type=click.Path(), required=True,
              help=f"Corrected image: {FORMATS}.")
@click.option("--defocus", type=float, default=None,
              help=DEFOCUS_HRTEM + " Required unless --fit-defocus.")
@_optics_options
@click.option("--pixel-size", type=float, default=None,
              help="Pixel size in Å [default: from the file].")
@click.option("--wiener", "snr", type=float, default=None,
              help="Wiener filter with this signal-to-noise power ratio.")
@click.option("--phase-flip", is_flag=True, help="Phase flipping (the default).")
@click.option("--fit-defocus", is_flag=True,
              help="Fit the defocus to the Thon rings (amorphous areas) instead.")
@click.option("--defocus-range", default="-20000,0", show_default=True,
              help="C10 range in Å searched by --fit-defocus (its sign is not measurable "
                   "from the rings when Cs is small).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output.")
def ctf(image, output, defocus, energy, cs, focal_spread, convergence, aperture, pixel_size,
        snr, phase_flip, fit_defocus, defocus_range, overwrite):
    """CTF-correct a weak-phase HRTEM IMAGE by phase flipping or a Wiener filter.

    The output is ∝ the projected potential (bright atoms), band-limited by the CTF.

    \b
    Example:
      ptyengine hrtem ctf img.tif --defocus -561 --cs 1.2 --energy 300 \\
          --pixel-size 0.5 --wiener 10 -o img_wiener.tif
    """
    from ..errors import PtyengineError
    from ..hrtem import ctf as ctfm
    from ..hrtem import stack as stk

    if snr is not None and phase_flip:
        raise PtyengineError("give either --wiener SNR or --phase-flip, not both")
    if Path(output).exists() and not overwrite:
        raise PtyengineError(f"{output} exists; pass --overwrite to replace it")
    stk.check_output(output)
    img, file_pixel = stk.read_image(image)
    pixel = pixel_size or file_pixel
    if not (pixel and math.isfinite(pixel) and pixel > 0):
        raise PtyengineError(f"{image}: the pixel size is unknown or invalid ({pixel}); "
                             "give --pixel-size in Å")
    if defocus is None and not fit_defocus:
        raise PtyengineError("give --defocus (Å, negative = underfocus) or --fit-defocus")
    optics = _optics(energy, defocus or 0.0, cs, focal_spread, convergence, aperture)
    if fit_defocus:
        rng = _pair(defocus_range, "--defocus-range")
        fit = ctfm.fit_defocus(img, pixel, optics, tuple(sorted(rng)))
        click.echo(f"fitted defocus C10 = {fit.defocus:.1f} Å (Thon-ring score "
                   f"{fit.score:.3f}, k {fit.k_range[0]:.3g}-{fit.k_range[1]:.3g} 1/Å)")
        from dataclasses import replace

        optics = replace(optics, defocus=fit.defocus)
    if snr is not None:
        out = ctfm.wiener_filter(img, pixel, optics, snr)
        how = f"Wiener filter (SNR {snr:g})"
    else:
        out = ctfm.phase_flip(img, pixel, optics)
        how = "phase flip"
    stk.write_array(output, out, pixel)
    stk.write_json(stk.sidecar(output, "json"), {
        "pixel_size_A": pixel, "source": str(image), "correction": how,
        "optics": {"energy_eV": optics.energy, "C10_A": optics.defocus, "Cs_mm": cs,
                   "focal_spread_A": focal_spread, "convergence_mrad": convergence,
                   "aperture_mrad": aperture}})
    click.echo(f"{how} at C10 = {optics.defocus:.1f} Å, Cs = {cs:g} mm: wrote {output} "
               f"and {stk.sidecar(output, 'json')}")


@hrtem.command()
@click.option("-o", "--output", type=click.Path(), required=True,
              help=f"The stack or image: {FORMATS}; beside it NAME.json (pixel size, dose, "
                   "optics) and NAME_trajectory.csv (the true drift, px).")
@click.option("--structure", default="uio66", show_default=True,
              help="Builtin structure (uio66, srtio3, mos2) or a CIF file.")
@click.option("--zone-axis", default="1,1,0", show_default=True, help="Beam direction u,v,w.")
@click.option("--thickness", type=float, default=30.0, show_default=True,
              help="Crystal thickness in Å (the simulator's multislice, 2 Å slices).")
@click.option("--defocus", type=float, default=None,
              help=DEFOCUS_HRTEM + " [default: Scherzer, −√(4/3 Cs λ)]")
@_optics_options
@click.option("--pixel-size", type=float, default=0.5, show_default=True,
              help="Camera pixel in Å.")
@click.option("--size", default="256", show_default=True, help="Frame size in px: n or ny,nx.")
@click.option("--frames", type=int, default=120, show_default=True,
              help="Frames in the stack (1: one image).")
@click.option("--dose-per-pixel", type=float, default=0.033, show_default=True,
              help="Electrons per pixel per frame (Poisson); see --dose.")
@click.option("--dose", type=float, default=None,
              help="Dose per frame in e/Å² (instead of --dose-per-pixel).")
@click.option("--noise-free", is_flag=True, help="Intensities without shot noise.")
@click.option("--velocity", default="0.12,-0.18", show_default=True,
              help="Linear drift dy,dx in px per frame.")
@click.option("--curve", type=float, default=2.0, show_default=True,
              help="Amplitude (px) of the slow curve across the drift.")
@click.option("--jitter", type=float, default=0.05, show_default=True,
              help="rms frame-to-frame jitter in px.")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise and jitter seed.")
@click.option("--sampling", type=float, default=0.1, show_default=True,
              help="Exit-wave sampling in Å (at most; the grid holds whole unit cells).")
@click.option("--tilt", default="0,0", show_default=True,
              help="Crystal tilt θ_y,θ_x in mrad off the zone axis (as for hrtem pattern).")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def simulate(output, structure, zone_axis, thickness, defocus, energy, cs, focal_spread,
             convergence, aperture, pixel_size, size, frames, dose_per_pixel, dose,
             noise_free, velocity, curve, jitter, seed, sampling, tilt, overwrite):
    """Simulate an HRTEM stack with a known drift (or one image with --frames 1):
    the exit wave of a plane wave through the crystal (the simulator's plane-wave mode:
    its specimen and multislice, static lattice) → objective lens (defocus, Cs,
    partial-coherence envelopes) → camera pixels → Poisson noise.

    \b
    Example (the issue 18 benchmark stack: UiO-66 [110], 120 frames, 0.033 e/pixel):
      ptyengine hrtem simulate -o uio66_stack.npy
    """
    from ..errors import PtyengineError
    from ..hrtem import ctf as ctfm
    from ..hrtem import stack as stk

    stk.check_output(output)
    if Path(output).exists() and not overwrite:
        raise PtyengineError(f"{output} exists; pass --overwrite to replace it")
    shape = _pair(size, "--size", int)
    if min(shape) < 8 or frames < 1 or not (pixel_size > 0 and sampling > 0):
        raise PtyengineError(f"--size {size} (>= 8 px), --frames {frames} (>= 1), "
                             f"--pixel-size {pixel_size} and --sampling {sampling} (> 0 Å) "
                             "are out of range")
    if dose is not None:
        dose_per_pixel = dose * pixel_size**2
    if not noise_free and not (math.isfinite(dose_per_pixel) and dose_per_pixel > 0):
        raise PtyengineError(f"the dose must be positive, got {dose_per_pixel} e/pixel")
    if defocus is None:
        defocus = ctfm.scherzer_defocus(energy * 1e3, cs * ctfm.MM) if cs > 0 else 0.0
    optics = _optics(energy, defocus, cs, focal_spread, convergence, aperture)
    uvw = _zone_axis(zone_axis)
    from .. import planewave

    angles = planewave.check_tilt(_pair(tilt, "--tilt"))
    psi, samp, cell = stk.crystal_exit_wave(structure, uvw, thickness, optics.energy, sampling,
                                            angles)  # fmt: skip
    image = ctfm.exit_wave_image(psi, samp, optics)
    traj = stk.drift_trajectory(frames, seed, _pair(velocity, "--velocity"), curve, jitter)
    st = stk.simulate_frames(image, samp, pixel_size, shape, frames,
                             None if noise_free else dose_per_pixel, seed, traj)
    meta = {"structure": structure, "zone_axis": list(uvw), "thickness_A": thickness,
            "cell_A": list(cell), "tilt_mrad": list(angles),
            "exit_wave": "multislice, plane wave (ptyengine.planewave), 2 A slices",
            "optics": {"energy_eV": optics.energy, "C10_A": optics.defocus, "Cs_mm": cs,
                       "focal_spread_A": focal_spread, "convergence_mrad": convergence,
                       "aperture_mrad": aperture},
            "dose_per_pixel": None if noise_free else dose_per_pixel,
            "dose_e_per_A2_per_frame": None if noise_free else dose_per_pixel / pixel_size**2,
            "trajectory_units": "px (dy, dx); frame content moved by +d"}
    if frames == 1:
        st.trajectory = None
    paths = stk.write_stack(output, st, meta)
    click.echo(f"{frames} frame(s) of {shape[0]} x {shape[1]} px at {pixel_size:g} Å, "
               f"C10 = {defocus:.1f} Å: wrote {', '.join(str(p) for p in paths)}")


@hrtem.command()
@click.option("-o", "--output", type=click.Path(), required=True,
              help="The pattern: .npy, .tif or .mrc; beside it NAME.json (the truth: tilt, "
                   "calibration).")
@click.option("--structure", default="srtio3", show_default=True,
              help="Builtin structure (uio66, srtio3, mos2) or a CIF file.")
@click.option("--zone-axis", default="0,0,1", show_default=True, help="Zone axis u,v,w.")
@click.option("--tilt", default="0,0", show_default=True,
              help="Crystal tilt θ_y,θ_x in mrad off the zone axis (the zone axis points "
                   "along (tan θ_x, tan θ_y, 1); at most 100 mrad).")
@click.option("--thickness", type=float, default=50.0, show_default=True, help="Å.")
@click.option("--energy", type=float, default=300.0, show_default=True, help="kV.")
@click.option("--pixels", type=int, default=512, show_default=True, help="Detector pixels.")
@click.option("--pixel-size", type=float, default=0.02, show_default=True,
              help="Detector pixel in 1/Å (dk = p/(L λ) for a camera length L).")
@click.option("--electrons", type=float, default=None,
              help="Electrons per pattern (Poisson); none: noise-free.")
@click.option("--seed", type=int, default=0, show_default=True, help="Noise seed.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def pattern(output, structure, zone_axis, tilt, thickness, energy, pixels, pixel_size,
            electrons, seed, overwrite):
    """Simulate a selected-area electron-diffraction pattern of a crystal tilted off its
    zone axis (the simulator's plane-wave mode; test data for ``zone-axis``).

    \b
    Example: SrTiO3 [001] 30 mrad off along y and 40 along x, then its correction
      ptyengine hrtem pattern --tilt 30,40 --electrons 1e7 -o saed.npy
      ptyengine hrtem zone-axis saed.npy --alpha-axis 0 --beta-axis 90 --pixel-size 0.02
    """
    from .. import planewave
    from ..errors import PtyengineError
    from ..hrtem import stack as stk

    stk.check_output(output)
    if Path(output).exists() and not overwrite:
        raise PtyengineError(f"{output} exists; pass --overwrite to replace it")
    angles = planewave.check_tilt(_pair(tilt, "--tilt"))
    spec = planewave.plane_wave_specimen(structure, _zone_axis(zone_axis),
                                         thickness=thickness, energy=energy * 1e3,
                                         k_max=pixels // 2 * pixel_size)  # fmt: skip
    image = planewave.diffraction_pattern(spec, energy * 1e3, angles, pixels, pixel_size,
                                          dose=electrons, seed=seed)  # fmt: skip
    meta = {"structure": structure, "zone_axis": list(_zone_axis(zone_axis)),
            "tilt_mrad": list(angles), "thickness_A": thickness, "energy_eV": energy * 1e3,
            "pixel_size_per_A": pixel_size, "electrons": electrons, "seed": seed,
            "direct_beam_px": [pixels // 2, pixels // 2]}
    paths = stk.write_stack(output, stk.Stack(image[None], None), meta)
    click.echo(f"pattern of {pixels}² px at {pixel_size:g} 1/Å, tilt {angles[0]:g}, "
               f"{angles[1]:g} mrad: wrote {', '.join(str(p) for p in paths)}")
