"""Running the command line inside a test."""

from ptyengine.cli import main


def run(capsys, *args):
    """(exit status, stdout, stderr) of ``ptyengine ARGS``."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err
