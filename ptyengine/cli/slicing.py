"""The multislice options of ``ptyengine reconstruct`` (``--slices``, ``--slice-thickness``)
and the files a slice stack adds."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import PtyengineError

#: ``--slices rule``: S from :func:`ptyengine.reconstruct.slices.rule_slices`
RULE = "rule"


def slices_option(ctx, param, value):
    """'8' -> 8, 'rule' -> 'rule' (resolved by :func:`resolve_rule` once the data are open);
    other values are checked by the method's parameters."""
    if value is None or value == RULE:
        return value
    try:
        return int(value)
    except ValueError:
        raise PtyengineError(f"--slices takes a whole number ≥ 1 or '{RULE}', not "
                             f"{value!r}") from None  # fmt: skip


def slice_thickness_option(ctx, param, value):
    """'2.5' -> 2.5, '80,1' -> (80.0, 1.0); checked further by the method's parameters."""
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise PtyengineError(f"--slice-thickness takes Å, one value or one per slice "
                             f"separated by commas, not {value!r}") from None  # fmt: skip
    return values[0] if len(values) == 1 else values


def checkable(options: dict) -> dict:
    """``options`` with ``--slices rule`` stood in for by a number, for the checks made
    before the data are read (the rule gives S ≥ 1)."""
    return {**options, "slices": 1} if options.get("slices") == RULE else options


def resolve_rule(ds, options: dict) -> dict:
    """``options`` with ``--slices rule`` replaced by the rule's S for the dataset's
    recorded specimen thickness (or S × the given --slice-thickness: one value, the total
    when S is unknown is not), said in one line on stderr."""
    from ..reconstruct.slices import recorded_thickness, rule_slices

    if options.get("slices") != RULE:
        return options
    cal = ds.calibration
    t = recorded_thickness(ds)
    if t is None:
        raise PtyengineError(f"--slices {RULE}: {getattr(ds, 'path', 'the dataset')} records "
                             "no specimen thickness; give --slices S (ptyengine suggest "
                             "--thickness T prints the rule's S)")  # fmt: skip
    s = rule_slices(cal.wavelength, cal.semiangle, t)
    click.echo(f"slices: {s} by the rule (specimen {t:g} Å, Δz = λ/(2α²) "
               f"{cal.wavelength / (2 * (cal.semiangle * 1e-3) ** 2):.3g} Å, at most 8)",
               err=True)  # fmt: skip
    return {**options, "slices": s}


def depth_path(output: Path) -> Path:
    """The depth montage of a multislice result (mepie, ML with --slices > 1): every
    slice's phase."""
    return output.with_name(output.stem + "_depth.png")


def multislice(method: str, slices) -> bool:
    """Whether a method with these --slices (None: its default) gives a slice stack."""
    return method == "mepie" or (method == "ml" and (slices or 1) > 1)
