"""The ``ptyengine`` command line: parses, calls the library, reports progress, writes
files. One module per command (simulate, info, convert, reconstruct, demo, doctor).

User errors (bad input, missing files, impossible parameters) end with one line on stderr
and exit status 2, never a traceback; ``PTYENGINE_DEBUG=1`` shows the traceback.
"""

from __future__ import annotations

import os
import sys

import click

from ..errors import PtyengineError
from .convert import convert
from .demo import demo
from .doctor import doctor
from .info import info
from .reconstruct import reconstruct
from .simulate import simulate


@click.group()
@click.version_option(package_name="ptyengine")
def cli():
    """ptyengine: 4D-STEM simulation and ptychography on CPU and GPU.

    Units everywhere: Å, mrad, kV on the command line (eV inside files), e/Å².
    """



for _command in (convert, demo, doctor, info, reconstruct, simulate):
    cli.add_command(_command)


def main(argv=None):
    """Entry point: run the click group, turning user errors into one-line messages."""
    from ..backend import limit_malloc_arenas

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
