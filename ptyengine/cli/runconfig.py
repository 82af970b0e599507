"""Run configuration files: one TOML file per run, holding every option of a command.

A command adopts them with one decorator, :func:`run_config`, under ``@click.command``; it
gains ``--config FILE`` and ``--write-config FILE``:

- ``--config FILE.toml``: the file's keys are the command's long option names (``batch-size``
  or ``batch_size``) and its arguments' names (``data``); its values become the options'
  defaults, so anything given on the command line wins (a list option's values replace the
  file's list). Relative paths in the file are taken from the current directory, as on the
  command line. ``--config RESULT.zarr``: the configuration a result stored (below).
- ``--write-config FILE.toml`` (``-`` for stdout): write the run's resolved options and stop
  without running.

The resolved configuration (every option: set ones as ``key = value``, unset ones as a
comment with their default; paths absolute; a ``[ptyengine]`` table with the command and
the version) is what :func:`current_run_config` returns inside the command, and what
``reconstruct`` and ``study`` store in each result's ``attrs["ptyengine"]["run_config"]``
(a TOML string). ``ptyengine config show RESULT.zarr`` prints it; ``ptyengine config
template COMMAND`` prints a file of the command's defaults.

A bad file is one :class:`PtyengineError` line naming the file, the key and the value: an
unknown key, a value of the wrong TOML type (strict: ``iterations = "5"`` and ``= 2.5``
are errors, an integer for a float is fine), a value the option refuses, TOML that does not
parse, a file of another command, a result that stored no configuration.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import re
import sys
import tomllib
from pathlib import Path

import click

from ..errors import PtyengineError, atomic_file

#: the options the decorator adds (never written into a configuration)
OWN = ("config", "write_config")
#: the table of a configuration that says which command and version wrote it
META = "ptyengine"
_META_KEY = "ptyengine.run_config"
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


# ---------------------------------------------------------------- TOML out


def toml_value(value) -> str:
    """One TOML value: bool, int, float (``inf``/``nan`` as TOML spells them), string (a
    basic string, JSON's escapes being TOML's) or a list of these."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML value for {value!r}")


# ---------------------------------------------------------------- the command's keys


def key_of(param: click.Parameter) -> str:
    """The key of a parameter: its first long option name (``batch-size``), or an
    argument's name (``data``)."""
    long = [o[2:] for o in getattr(param, "opts", ()) if o.startswith("--")]
    return long[0] if isinstance(param, click.Option) and long else param.name


def _keys(command: click.Command) -> dict[str, click.Parameter]:
    """Every key a file may use for ``command``'s parameters (dash and underscore forms
    of each long name) -> the parameter."""
    out = {}
    for p in command.params:
        if p.name in OWN:
            continue
        names = [o[2:] for o in p.opts if o.startswith("--")] if isinstance(
            p, click.Option) else [p.name]  # fmt: skip
        for n in names:
            out[n] = out[n.replace("-", "_")] = out[n.replace("_", "-")] = p
    return out


def _unset(param: click.Parameter) -> str:
    """What an unset parameter means, from its help's ``[default: ...]``."""
    if param.required:
        return "required"
    if isinstance(param, click.Argument):
        return "optional"
    found = re.findall(r"\[default: ([^\]]*)\]", " ".join((param.help or "").split()))
    return f"default: {'; '.join(found)}" if found else "unset"


def _plain(param: click.Parameter, value):
    """A resolved value as the file holds it: paths absolute, tuples as lists, a string
    that is a plain number as that number (a string option reads it back)."""
    if value is None:
        return None
    if isinstance(param.type, click.Path) and not getattr(param, "multiple", False):
        return os.path.abspath(value) if str(value) != "-" else value
    if isinstance(value, tuple | list):
        return [_plain_item(v) for v in value]
    return _plain_item(value)


def _plain_item(v):
    if isinstance(v, str) and _NUMBER.fullmatch(v.strip()):
        return int(v) if re.fullmatch(r"[+-]?\d+", v.strip()) else float(v)
    return v


def config_text(command: click.Command, name: str, values: dict, title: str) -> str:
    """The TOML of ``values`` ({parameter name: resolved value}) for ``command`` (called
    ``name``): a title comment, one line per parameter (unset ones commented out with
    their default), then the ``[ptyengine]`` table."""
    from .. import __version__

    lines = [f"# {line}" for line in title.splitlines()]
    for p in command.params:
        if p.name in OWN:
            continue
        v = _plain(p, values.get(p.name))
        key = key_of(p)
        lines.append(f"{key} = {toml_value(v)}" if v is not None
                     else f"# {key} =   ({_unset(p)})")  # fmt: skip
    lines += ["", f"[{META}]", f"command = {toml_value(name)}",
              f"version = {toml_value(__version__)}"]  # fmt: skip
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- reading


def stored_config(path) -> str:
    """The run configuration (TOML text) stored in a result; one-line errors."""
    from ..results import is_result, read_result

    path = Path(path)
    if not path.exists():
        raise PtyengineError(f"{path} does not exist")
    if not is_result(path):
        raise PtyengineError(f"{path} is neither a TOML file nor a ptyengine result")
    attrs = read_result(path)[1]
    text = attrs.get("run_config")
    if not isinstance(text, str):
        raise PtyengineError(f"{path}: this {attrs.get('method')} result records no run "
                             "configuration (written by an older ptyengine, or not by "
                             "reconstruct or study): give a TOML file")  # fmt: skip
    return text


def read_source(path) -> dict:
    """The table of a TOML file, or of the configuration stored in a result."""
    path = Path(path)
    if path.is_dir() or not path.exists():
        text = stored_config(path)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise PtyengineError(f"{path}: cannot read it ({exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PtyengineError(f"{path}: not TOML: {' '.join(str(exc).split())}") from None


def _expected(param: click.Parameter) -> tuple[tuple, str]:
    """The TOML types a parameter takes and their name in an error."""
    t = param.type
    if isinstance(t, click.types.BoolParamType):
        return (bool,), "true or false"
    if isinstance(t, click.types.IntParamType):
        return (int,), "an integer"
    if isinstance(t, click.types.FloatParamType):
        return (int, float), "a number"
    if isinstance(t, click.Choice | click.Path):
        return (str,), "a string"
    return (str, int, float, list), "a string or a number"


def _item(param: click.Parameter, value, where: str):
    """``value`` checked against the parameter's type (strictly: no bool for a number, no
    float for an integer); a string option takes numbers and a list of them (joined by
    commas, as typed on the command line)."""
    kinds, name = _expected(param)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise PtyengineError(f"{where}: expected {name}, got {_toml_type(value)}")
    if isinstance(value, list):
        if not all(isinstance(v, str | int | float) and not isinstance(v, bool)
                   for v in value):  # fmt: skip
            raise PtyengineError(f"{where}: expected {name} or a list of them")
        return ",".join(str(v) for v in value)
    if str in kinds and not isinstance(value, str):
        return str(value)
    return value


def _toml_type(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a float", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)  # fmt: skip


def defaults_from(ctx: click.Context, path) -> dict:
    """{parameter name: value} from the file or result at ``path`` for ctx's command,
    checked as the command line would check it (type, range, choice, the option's own
    parser); one-line errors naming the file, key and value."""
    table = read_source(path)
    command, name = ctx.command, command_name(ctx)
    meta = table.pop(META, None)
    if meta is not None:
        if not isinstance(meta, dict):
            raise PtyengineError(f"{path}: {META} = {toml_value(meta)}: expected a table")
        from .. import __version__

        version = meta.get("version")
        if version is not None and version != __version__:
            click.echo(f"warning: {path} was written by ptyengine {version}; this is "
                       f"{__version__}", err=True)  # fmt: skip
        wrote = meta.get("command", name)
        if wrote != name:
            raise PtyengineError(f"{path}: a configuration of ptyengine {wrote} ([{META}] "
                                 f"command = {toml_value(wrote)}), not of ptyengine "
                                 f"{name}")  # fmt: skip
    keys, out, seen = _keys(command), {}, {}
    for key, value in table.items():
        shown = f"{key} = {toml_value(value) if not isinstance(value, dict) else '{...}'}"
        param = keys.get(key)
        if param is None:
            near = difflib.get_close_matches(key, list(keys), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise PtyengineError(f"{path}: unknown key {shown} for ptyengine {name}{hint}")
        if param.name in seen:
            raise PtyengineError(f"{path}: {seen[param.name]} and {key} both set "
                                 f"{key_of(param)}: keep one")  # fmt: skip
        seen[param.name] = key
        where = f"{path}: {shown}"
        if getattr(param, "multiple", False):
            items = value if isinstance(value, list) else [value]
            value = [_item(param, v, where) for v in items]
        else:
            value = _item(param, value, where)
        try:
            checked = param.type_cast_value(ctx, value)
            if param.callback is not None:
                param.callback(ctx, param, checked)
        except (click.BadParameter, PtyengineError) as exc:
            text = exc.message if isinstance(exc, click.ClickException) else str(exc)
            raise PtyengineError(f"{where}: {' '.join(text.split())}") from None
        out[param.name] = value
    return out


# ---------------------------------------------------------------- the decorator


def _load(ctx: click.Context, param, value):
    if value is not None:
        ctx.default_map = {**(ctx.default_map or {}), **defaults_from(ctx, value)}
        ctx.meta["ptyengine.config_source"] = value
    return value


def run_config(command: click.Command) -> click.Command:
    """Give ``command`` ``--config FILE`` and ``--write-config FILE`` (module docstring);
    inside it, :func:`current_run_config` is the run's resolved configuration."""
    command.params += [
        click.Option(["--config"], metavar="FILE.toml|RESULT.zarr", is_eager=True,
                     expose_value=False, callback=_load,
                     help="Options from a TOML file (keys: the long option names, e.g. "
                          "batch-size = 4; the command line overrides it), or the "
                          "configuration a result stored (re-run it)."),
        click.Option(["--write-config"], metavar="FILE.toml", type=click.Path(dir_okay=False),
                     help="Write this run's resolved options as TOML ('-': to stdout) and "
                          "stop without running."),
    ]  # fmt: skip
    body = command.callback

    @functools.wraps(body)
    def wrapper(*args, write_config=None, **kwargs):
        ctx = click.get_current_context()
        name = command_name(ctx)
        title = (f"ptyengine {name} run configuration; run it with\n"
                 f"  ptyengine {name} --config FILE.toml  (the command line "
                 "overrides what is here)")  # fmt: skip
        text = config_text(command, name, ctx.params, title)
        ctx.meta[_META_KEY] = text
        if write_config is None:
            return body(*args, **kwargs)
        if write_config == "-":
            sys.stdout.write(text)
            return None
        with atomic_file(write_config) as tmp:
            tmp.write_text(text, encoding="utf-8")
        click.echo(f"wrote {write_config} (not run)", err=True)
        return None

    command.callback = wrapper
    command.run_config = True
    return command


def command_name(ctx: click.Context) -> str:
    """The command's name below ``ptyengine``: ``reconstruct``, or ``bench dose-defocus``
    for a group's subcommand."""
    names = []
    while ctx.parent is not None:
        names.append(ctx.info_name)
        ctx = ctx.parent
    return " ".join(reversed(names)) or ctx.info_name


def commands_with_config(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
    """{name: command} of every command under ``group`` that has :func:`run_config`."""
    out = {}
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            out.update(commands_with_config(cmd, f"{prefix}{name} "))
        elif getattr(cmd, "run_config", False):
            out[prefix + name] = cmd
    return out


def current_run_config() -> str | None:
    """The resolved configuration (TOML text) of the running command, if it has
    :func:`run_config`."""
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.meta.get(_META_KEY)


def template(command: click.Command, name: str) -> str:
    """A configuration of ``command``'s defaults, for a user to fill in."""
    with command.make_context(name, [], resilient_parsing=True) as ctx:  # click's defaults
        defaults = dict(ctx.params)
    title = (f"ptyengine {name}: every option, at its default (commented: unset); edit and "
             f"run\n  ptyengine {name} --config FILE.toml")  # fmt: skip
    return config_text(command, name, defaults, title)
