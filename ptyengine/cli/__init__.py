"""The ``ptyengine`` command line: parses, calls the library, reports progress, writes
files. One module per command (simulate, info, convert, reconstruct, demo, doctor,
study, config, export, suggest, bench, hrtem); run configuration files in ``runconfig``.

User errors (bad input, missing files, impossible parameters) end with one line on stderr
and exit status 2, never a traceback (``PTYENGINE_DEBUG=1``, ``true`` or ``yes`` shows it);
an ``OSError`` on an output is one such line naming the file. Library warnings are one
``warning: ...`` line. Ctrl-C names what was kept for ``--resume`` (or says nothing was).
"""

from __future__ import annotations

import sys
import warnings

import click

from ..errors import PtyengineError
from . import common
from .bench import bench
from .config import config
from .convert import convert
from .demo import demo
from .doctor import doctor
from .export import export
from .hrtem import hrtem
from .info import info
from .reconstruct import reconstruct
from .simulate import simulate
from .study import study
from .suggest import suggest


@click.group()
@click.version_option(package_name="ptyengine")
def cli():
    """ptyengine: 4D-STEM simulation and ptychography on CPU and GPU.

    Units everywhere: Å, mrad, kV on the command line (eV inside files), e/Å².
    """



for _command in (bench, config, convert, demo, doctor, export, hrtem, info, reconstruct,
                 simulate, study, suggest):
    cli.add_command(_command)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Library warnings as one plain line on stderr (no category, no source line)."""
    from tqdm import tqdm

    tqdm.write(f"warning: {' '.join(str(message).split())}", file=sys.stderr)


def _interrupted() -> str:
    kept = common.kept_on_interrupt()
    if not kept:
        return "interrupted; nothing was kept (no partial output or checkpoint was written)"
    return (f"interrupted; kept {', '.join(str(p) for p in kept)} (re-run the same command "
            "with --resume to continue)")


def main(argv=None):
    """Entry point: run the click group, turning user errors into one-line messages."""
    from ..backend import limit_malloc_arenas

    limit_malloc_arenas()  # streaming threads' freed buffers do not pile up in arenas
    common.forget_outputs()
    try:
        with warnings.catch_warnings():  # restored on return: callers keep their own
            warnings.showwarning = _show_warning
            cli.main(args=argv, prog_name="ptyengine", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo(_interrupted(), err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except PtyengineError as exc:
        if common.debug_enabled():
            raise
        click.echo(f"error: {' '.join(str(exc).split())}", err=True)
        sys.exit(2)
    except OSError as exc:  # one no writer or reader turned into a message: still one line
        if common.debug_enabled():
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        click.echo(f"error: {where}{exc.strerror or exc}", err=True)
        sys.exit(2)
