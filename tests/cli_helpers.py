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


TINY_SIMULATION = ("simulate", "--structure", "srtio3", "--zone-axis", "0,0,1", "--field",
                   "7.81", "--thickness", "4", "--scan-step", "0.4", "--scan-size", "2.4",
                   "--detector-pixels", "32", "--max-angle", "40")  # fmt: skip
"""SrTiO3 [001], 4 Å thick, 6 × 6 positions at 0.4 Å, 32 × 32 px to 40 mrad (~1 s);
append ``-o PATH`` and any further options."""
