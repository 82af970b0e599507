"""``ptyengine demo``: simulate a small dataset, reconstruct it by iCOM and ePIE, compare."""

from __future__ import annotations

from pathlib import Path

import click

from .reconstruct import _reconstruct
from .simulate import _run_simulation


@click.command()
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

    from .. import io, physics, presets
    from ..preview import dataset_preview, ground_truth_window
    from ..results import preview_png

    t0 = time.perf_counter()
    out = Path(output)
    label, params = presets.demo()[0]
    path = out / f"{label}.zarr"
    _run_simulation(params, path, device, overwrite=True, resume=False, batch_size=None)
    with io.open_dataset(path) as ds:
        png = dataset_preview(ds, out / f"{label}_preview.png",
                              title=f"{label}: simulated 4D-STEM (ptyengine demo)")
        truth = ground_truth_window(ds) * physics.interaction_constant(ds.calibration.energy)
        truth_sampling = tuple(ds.read_array("ground_truth/potential")[1]["sampling"])
    click.echo(f"preview: {png}")
    runs = {
        "iCOM": _reconstruct(path, "icom", device=device, overwrite=True),
        "ePIE": _reconstruct(path, "epie", device=device, overwrite=True,
                             epie_options={"iterations": iterations, "batch_size": 16}),
    }  # fmt: skip
    panels = [("ground truth σV", truth, {"sampling": truth_sampling, "unit": "rad"})]
    for name, r in runs.items():
        ncc = "" if r["ncc"] is None else f", NCC {r['ncc']['ncc']:.3f}"
        panels.append((f"{name} phase{ncc}", r["crop"],
                       {"sampling": r["sampling"], "unit": "rad", "phase": name == "ePIE"}))
    cmp = preview_png(out / "demo_comparison.png", panels,
                      title=f"{label}: scanned area, focused probe, noise-free "
                            f"(ePIE {iterations} iterations)")  # fmt: skip
    for name, r in runs.items():
        if r["ncc"] is not None:
            click.echo(f"{name}: NCC with the ground truth {r['ncc']['ncc']:.3f} "
                       f"({r['seconds']:.1f} s)")  # fmt: skip
    click.echo(f"comparison: {cmp}")
    click.echo(f"demo done in {time.perf_counter() - t0:.1f} s", err=True)
