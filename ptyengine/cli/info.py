"""``ptyengine info``: describe a dataset or a result."""

from __future__ import annotations

import click


@click.command()
@click.argument("path", type=click.Path())
def info(path):
    """Describe a ptyengine dataset (shape, chunks, every calibration field) or a
    reconstruction result (method, arrays, parameters, error history)."""
    from .. import io, results

    if results.is_result(path):
        click.echo(results.describe_result(path))
    else:
        click.echo(io.describe(path))
