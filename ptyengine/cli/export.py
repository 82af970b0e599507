"""``ptyengine export``: a result's images as calibrated TIFF, HyperSpy, NumPy or PNG."""

from __future__ import annotations

import click


@click.command()
@click.argument("result", type=click.Path())
@click.option("--to", "fmt", required=True, metavar="tiff|hspy|npy|png",
              help="File format: tiff (ImageJ-calibrated), hspy (HyperSpy, axes in Å), npy "
                   "(+ PREFIX_metadata.json) or png (scale bar in Å, colour bar in rad).")
@click.option("-o", "--output", "prefix", type=click.Path(), default=None,
              help="Prefix of the files, PREFIX_phase.tif etc. [default: the result's path "
                   "without .zarr].")
@click.option("--overwrite", is_flag=True, help="Replace existing files.")
def export(result, fmt, prefix, overwrite):
    """Export a reconstruction result's phase (rad), and its complex object, probe, probe
    modes and slice phases where present, one file per array, with the pixel size (Å)
    in each file's own metadata.

    \b
    Examples:
      ptyengine export sto_epie.zarr --to tiff        # sto_epie_phase.tif, ... for Fiji
      ptyengine export sto_ml.zarr --to hspy -o out/sto
    """
    from ..export import export_result

    for path in export_result(result, fmt, prefix, overwrite=overwrite):
        click.echo(f"wrote {path}")
