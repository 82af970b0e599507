"""Helpers shared by the commands: option parsers, the defocus sign, progress (bars or log
lines), the debug switch and what an interrupted command keeps."""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

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



def debug_enabled() -> bool:
    """Whether ``PTYENGINE_DEBUG`` asks for tracebacks: 1, true or yes (any case)."""
    return os.environ.get("PTYENGINE_DEBUG", "").strip().lower() in ("1", "true", "yes")


_resumable: list[Path] = []


def keep_on_interrupt(path) -> None:
    """Register ``path`` (a ``.partial`` or a checkpoint) as what an interrupted command
    keeps for ``--resume``, if it exists then; :func:`kept_on_interrupt` lists them."""
    _resumable.append(Path(path))


def kept_on_interrupt() -> list[Path]:
    """The registered paths that exist now (once each, in order)."""
    return [p for p in dict.fromkeys(_resumable) if p.exists()]


def forget_outputs() -> None:
    _resumable.clear()


PROGRESS_STEP = 0.05  # batch logs: a line every 5 % of the work ...
PROGRESS_SECONDS = 30.0  # ... or at the first update after 30 s without one


class _LogLines:
    """The part of tqdm's interface the commands use (``update``, ``set_postfix``, ``n``,
    ``close``), printing plain lines for logs that are not a terminal: no carriage returns,
    one line every 5 % of the work and at the first update after 30 s without a line."""

    def __init__(self, total: int, unit: str, desc: str | None):
        self.total, self.unit, self.desc = max(int(total), 0), unit, desc or "progress"
        self.n, self._postfix, self._shown = 0, "", 0
        self._step = max(1, math.ceil(self.total * PROGRESS_STEP))
        self._t0 = self._last = time.monotonic()

    def set_postfix(self, refresh: bool = True, **values) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += int(n)
        now = time.monotonic()
        if self.n >= self.total or self.n - self._shown >= self._step or (
                now - self._last >= PROGRESS_SECONDS and self.n > self._shown):
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self._t0
        text = f"{self.desc}: {self.n}/{self.total} {self.unit}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        text += f", {elapsed:.1f} s"
        if 0 < self.n < self.total and elapsed > 0:
            text += f", ~{elapsed * (self.total - self.n) / self.n:.0f} s left"
        if self._postfix:
            text += f", {self._postfix}"
        print(text, file=sys.stderr, flush=True)
        self._shown, self._last = self.n, now

    def close(self) -> None:
        if self.n > self._shown:
            self._line(time.monotonic())


def _progress_bar(tqdm, total: int, unit: str, desc: str | None = None):
    """Progress on stderr: a tqdm bar on a terminal, plain lines in batch logs (every 5 %
    and at least after 30 s). ``PTYENGINE_PROGRESS=0`` silences it; ``=1`` shows the tqdm
    bar in a log too."""
    env = os.environ.get("PTYENGINE_PROGRESS", "").strip().lower()
    tty = sys.stderr.isatty()
    if env in ("0", "false", "no", "off"):
        return tqdm(total=total, disable=True)
    if not tty and env not in ("1", "true", "yes", "bar"):
        return _LogLines(total, unit, desc)
    return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True, file=sys.stderr,
                mininterval=0.5 if tty else 30)
