"""Helpers shared by the commands: option parsers, the defocus sign, progress bars."""

from __future__ import annotations

import os
import sys

import click

DEFOCUS_SIGN = (
    "Positive: the probe crossover lies this far ABOVE (upstream of) the entrance surface, "
    "e.g. 500 = focused 50 nm above the specimen; 0 = focused on the entrance surface; "
    "negative = focused inside/below it."
)
DEFOCUS_HELP = f"Probe defocus C10 in Å. {DEFOCUS_SIGN} Repeat for several datasets."


def _pair(text: str | None, name: str, kind=float):
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    try:
        vals = tuple(kind(p) for p in parts)
    except ValueError:
        raise click.BadParameter(f"{name} must be numbers separated by commas: {text!r}") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2:
        raise click.BadParameter(f"{name} takes one or two values, got {text!r}")
    return vals


def _zone_axis(text: str | None):
    if text is None:
        return None
    try:
        uvw = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        uvw = ()
    if len(uvw) != 3 or uvw == (0, 0, 0):
        raise click.BadParameter(f"--zone-axis takes three integers u,v,w, got {text!r}")
    return uvw



def _progress_bar(tqdm, total: int, unit: str, desc: str | None = None):
    """A tqdm bar on stderr, shown on a terminal; in batch logs (no TTY) set
    PTYENGINE_PROGRESS=1 for it (then updated at most every 30 s)."""
    tty = sys.stderr.isatty()
    show = tty or os.environ.get("PTYENGINE_PROGRESS") == "1"
    return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, file=sys.stderr,
                disable=not show, mininterval=0.5 if tty else 30)
