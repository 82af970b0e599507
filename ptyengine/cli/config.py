"""``ptyengine config``: show the run configuration a result stored, or a template of a
command's options (:mod:`ptyengine.cli.runconfig`)."""

from __future__ import annotations

import click


@click.group()
def config():
    """Run configuration files (TOML): every option of a run, one file per run, for the
    commands with --config FILE.toml|RESULT.zarr and --write-config FILE.toml (reconstruct,
    simulate, study, ...). A result of reconstruct or study stores its run's.

    \b
    Example:
      ptyengine config show sto_epie.zarr > run.toml   # edit, then
      ptyengine reconstruct --config run.toml -o sto_epie2.zarr
    """


@config.command()
@click.argument("result", type=click.Path())
def show(result):
    """Print the configuration RESULT (.zarr) was made with, as TOML: edit it and pass it
    back with --config."""
    from .runconfig import stored_config

    click.echo(stored_config(result), nl=False)


@config.command()
@click.argument("command", nargs=-1, required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the template here [default: stdout].")
@click.pass_context
def template(ctx, command, output):
    """Print a configuration of COMMAND's options at their defaults (unset ones
    commented out) to fill in, e.g. ``ptyengine config template reconstruct``."""
    from ..errors import PtyengineError, atomic_file
    from .runconfig import commands_with_config
    from .runconfig import template as make

    known = commands_with_config(ctx.find_root().command)
    name = " ".join(command)
    if name not in known:
        raise PtyengineError(f"ptyengine {name} takes no configuration file: choose from "
                             f"{', '.join(sorted(known))}")  # fmt: skip
    text = make(known[name], name)
    if output is None:
        click.echo(text, nl=False)
        return
    with atomic_file(output) as tmp:
        tmp.write_text(text, encoding="utf-8")
    click.echo(f"wrote {output}", err=True)
