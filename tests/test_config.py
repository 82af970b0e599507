"""Run configuration files (``--config FILE.toml``, ``--write-config``, ``ptyengine config``):
a file's keys are a command's option names; the command line overrides the file; every
result stores its resolved configuration and re-runs from it to the same phase; bad files
are one-line errors naming the file, the key and the value."""

import tomllib

import click
import numpy as np
import pytest
from cli_helpers import TINY_SIMULATION, run

from ptyengine import __version__
from ptyengine.cli import cli, main
from ptyengine.cli.runconfig import current_run_config, run_config
from ptyengine.results import read_result, write_result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """SrTiO3 [001], 6 × 6 positions, 32 × 32 px (cli_helpers.TINY_SIMULATION, ~1 s)."""
    path = tmp_path_factory.mktemp("config") / "tiny.zarr"
    main([*TINY_SIMULATION, "-o", str(path)])
    return path


def _stored(path) -> dict:
    return tomllib.loads(read_result(path)[1]["run_config"])


def test_file_to_result_to_rerun(tiny, tmp_path, capsys, monkeypatch):
    """file -> options -> result attrs -> re-run from the result: the same phase, bit for
    bit (CPU, fixed seed), and the same configuration but for the output."""
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'data = "{tiny}"\nmethod = "epie"\niterations = 3\nbatch-size = 2\n'
                   f'defocus = 10\nseed = 4\noutput = "a.zarr"\n')  # fmt: skip
    code, _, err = run(capsys, "reconstruct", "--config", cfg)
    assert code == 0, err
    arrays, attrs = read_result(tmp_path / "a.zarr")
    p = attrs["parameters"]
    assert (p["iterations"], p["batch_size"], p["defocus"], p["seed"]) == (3, 2, 10.0, 4)
    stored = _stored(tmp_path / "a.zarr")
    assert stored["data"] == str(tiny.absolute()) and stored["method"] == "epie"
    assert stored["output"] == str(tmp_path / "a.zarr")  # paths stored absolute
    assert (stored["iterations"], stored["batch-size"], stored["defocus"]) == (3, 2, 10.0)
    assert stored["device"] == "cpu" and stored["overwrite"] is False  # defaults included
    assert stored["ptyengine"] == {"command": "reconstruct", "version": __version__}
    # re-run from the result itself, elsewhere
    code, _, err = run(capsys, "reconstruct", "--config", tmp_path / "a.zarr", "-o", "b.zarr")
    assert code == 0, err
    again, _ = read_result(tmp_path / "b.zarr")
    np.testing.assert_array_equal(again["phase"], arrays["phase"])
    assert {**_stored(tmp_path / "b.zarr"), "output": None} == {**stored, "output": None}
    # config show prints the stored TOML; passed back, it runs the same again
    code, out, err = run(capsys, "config", "show", tmp_path / "a.zarr")
    assert code == 0, err
    assert out.strip() == attrs["run_config"].strip()
    (tmp_path / "shown.toml").write_text(out)
    code, described, err = run(capsys, "info", tmp_path / "a.zarr")
    assert code == 0 and "re-run: ptyengine reconstruct --config" in described, err
    code, _, err = run(capsys, "reconstruct", "--config", "shown.toml", "-o", "c.zarr")
    assert code == 0, err
    np.testing.assert_array_equal(read_result(tmp_path / "c.zarr")[0]["phase"],
                                  arrays["phase"])  # fmt: skip


def test_icom_result_stores_its_configuration(tiny, tmp_path, capsys):
    code, _, err = run(capsys, "reconstruct", tiny, "--method", "icom", "--rotation", "0",
                       "-o", tmp_path / "i.zarr")  # fmt: skip
    assert code == 0, err
    stored = _stored(tmp_path / "i.zarr")
    assert stored["method"] == "icom" and stored["rotation"] == 0.0
    assert "iterations" not in stored  # unset: a comment, the method's default
    assert "# iterations" in read_result(tmp_path / "i.zarr")[1]["run_config"]
    code, _, err = run(capsys, "reconstruct", "--config", tmp_path / "i.zarr", "-o",
                       tmp_path / "j.zarr")  # fmt: skip
    assert code == 0, err
    np.testing.assert_array_equal(read_result(tmp_path / "j.zarr")[0]["phase"],
                                  read_result(tmp_path / "i.zarr")[0]["phase"])  # fmt: skip


def test_command_line_overrides_the_file(tiny, tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(f'data = "{tiny}"\niterations = 5\nbatch_size = 3\nmethod = "epie"\n'
                   'phase-only = true\n')  # fmt: skip
    code, _, err = run(capsys, "reconstruct", "--config", cfg, "--iterations", 2,
                       "--write-config", tmp_path / "out.toml")  # fmt: skip
    assert code == 0, err
    written = tomllib.loads((tmp_path / "out.toml").read_text())
    assert written["iterations"] == 2  # the command line wins
    assert written["batch-size"] == 3 and written["phase-only"] is True  # the file's
    assert not list(tmp_path.glob("*.zarr")) and not list(tiny.parent.glob("tiny_epie*"))
    # a list option: the command line's values replace the file's
    sim = tmp_path / "sim.toml"
    sim.write_text('output = "x"\ndefocus = [0, 500]\nthickness = 4\n')
    code, out, err = run(capsys, "simulate", "--config", sim, "--defocus", 100,
                         "--write-config", "-")  # fmt: skip
    assert code == 0, err
    written = tomllib.loads(out)
    assert written["defocus"] == [100.0] and written["thickness"] == 4.0


@pytest.mark.parametrize("name", ["reconstruct", "simulate", "study"])
def test_written_configuration_reads_back_the_same(name, tiny, tmp_path, capsys):
    """--write-config of a run, read back by --config, writes the same file; the template
    names every option of the command."""
    command = cli.commands[name]
    args = {"reconstruct": [tiny, "--slice-thickness", "80,1", "--rotation", "auto",
                            "--method", "icom", "--memory-limit", "1GB"],
            "simulate": ["--field", "7.81", "--defocus", "0", "--defocus", "50.5",
                         "--sigma", "Sr=0.1", "-o", "out/", "--no-hydrogen"],
            "study": ["uio66-defocus", "--dose", "100,20", "--methods", "icom", "-o", "s/"],
            }[name]  # fmt: skip
    code, _, err = run(capsys, name, *args, "--write-config", tmp_path / "a.toml")
    assert code == 0, err
    code, _, err = run(capsys, name, "--config", tmp_path / "a.toml",
                       "--write-config", tmp_path / "b.toml")  # fmt: skip
    assert code == 0, err
    a, b = (tmp_path / "a.toml").read_text(), (tmp_path / "b.toml").read_text()
    assert a == b
    assert tomllib.loads(a)["ptyengine"]["command"] == name
    code, template, err = run(capsys, "config", "template", name)
    assert code == 0, err
    tomllib.loads(template)
    keys = {line.lstrip("# ").split(" ")[0] for line in template.splitlines()}
    for param in command.params:
        if param.name in ("config", "write_config"):
            continue
        long = [o[2:] for o in getattr(param, "opts", []) if o.startswith("--")]
        assert (long[0] if long else param.name) in keys, param.name


def test_any_command_adopts_it_with_one_line(tmp_path, capsys, monkeypatch):
    """A group's subcommand (as ``bench dose-defocus`` will be) with one decorator: its
    file, its resolved configuration inside the command, its template."""

    @click.group()
    def toy():
        """A toy group."""

    @run_config
    @toy.command()
    @click.argument("what")
    @click.option("--count", type=click.IntRange(min=1), default=1)
    @click.option("--tag", multiple=True)
    def sub(what, count, tag):
        click.echo(current_run_config())

    monkeypatch.setitem(cli.commands, "toy", toy)
    (tmp_path / "a.toml").write_text('what = "x"\ncount = 3\ntag = ["a", "b"]\n')
    code, out, err = run(capsys, "toy", "sub", "--config", tmp_path / "a.toml", "--tag", "c")
    assert code == 0, err
    got = tomllib.loads(out)
    assert (got["what"], got["count"], got["tag"]) == ("x", 3, ["c"])
    assert got["ptyengine"]["command"] == "toy sub"
    code, out, err = run(capsys, "config", "template", "toy", "sub")
    assert code == 0 and "count = 1" in out and "# what =   (required)" in out, err
    (tmp_path / "b.toml").write_text("count = 0\n")
    code, _, err = run(capsys, "toy", "sub", "x", "--config", tmp_path / "b.toml")
    assert code == 2 and "count = 0" in err and err.count("\n") == 1, err


def _old_result(tmp_path):
    path = tmp_path / "old.zarr"
    write_result(path, "icom", {"phase": np.zeros((2, 2), np.float32)}, (1, 1), (0, 0))
    return path


@pytest.mark.parametrize("text, expect", [
    ("iteration = 5\n", ["unknown key", "iteration = 5", "did you mean 'iterations'"]),
    ('iterations = "5"\n', ["iterations = \"5\"", "an integer"]),
    ("iterations = 2.5\n", ["iterations = 2.5", "an integer"]),
    ("iterations = -1\n", ["iterations = -1", "range"]),
    ('method = "fast"\n', ["method = \"fast\"", "'fast' is not one of"]),
    ("overwrite = 1\n", ["overwrite = 1", "true or false"]),
    ('rotation = "left"\n', ["rotation = \"left\"", "degrees"]),
    ('slice-thickness = "x"\n', ["slice-thickness = \"x\"", "Å"]),
    ("batch-size = 2\nbatch_size = 3\n", ["batch-size", "batch_size", "one"]),
    ("[ptyengine]\ncommand = \"study\"\n", ["ptyengine study", "not of ptyengine reconstruct"]),
    ("iterations = \n", ["not TOML", "line 2"]),
    ("[extra]\nx = 1\n", ["unknown key", "extra"]),
])  # fmt: skip
def test_bad_file_is_one_line(text, expect, tiny, tmp_path, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'data = "{tiny}"\n{text}' if not text.startswith("[") else text)
    code, _, err = run(capsys, "reconstruct", "--config", cfg, "-o", tmp_path / "r.zarr")
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and str(cfg) in err, err
    for part in expect:
        assert part in err, (part, err)
    assert not (tmp_path / "r.zarr").exists()


def test_missing_or_unusable_sources_are_one_line(tiny, tmp_path, capsys):
    cases = [(tmp_path / "none.toml", "does not exist"),
             (_old_result(tmp_path), "records no run configuration"),
             (tiny, "neither a TOML file nor a ptyengine result")]  # fmt: skip
    for source, expect in cases:
        for args in (["reconstruct", "--config", source], ["config", "show", source]):
            code, _, err = run(capsys, *args)
            assert code == 2, err
            assert err.count("\n") == 1 and str(source) in err and expect in err, err
    code, _, err = run(capsys, "config", "template", "info")
    assert code == 2 and err.count("\n") == 1 and "reconstruct" in err, err
