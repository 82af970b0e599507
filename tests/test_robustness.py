"""Outputs under stress and user errors at the edges (issue 13, items 7, 8, 10, 12):
unwritable or full outputs, two writers to one output, interruptions, progress in batch
logs, damaged files and misleading messages. Every failure is one line and exit status 2;
nothing half-written keeps a final name."""

import errno
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
from cli_helpers import TINY_SIMULATION, run

from ptyengine import io
from ptyengine.calibration import Calibration
from ptyengine.cli import main
from ptyengine.results import read_result


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("robust") / "tiny.zarr"
    main([*TINY_SIMULATION, "-o", str(path)])
    return path


def one_line_error(code, out, err, *needles):
    """The command failed with status 2 and one line on stderr naming every needle."""
    assert code == 2, err
    assert "Traceback" not in out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    for needle in needles:
        assert str(needle) in last, (needle, last)
    return last


def no_partials(folder):
    return sorted(p.name for p in folder.rglob("*")
                  if p.name.endswith((".partial", ".tmp", ".tmp.png", ".lock")))


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- item 7: outputs that cannot be written ---------------------------------------------


@pytest.fixture
def blocked(tmp_path):
    """A folder that cannot be created: its parent is a plain file."""
    (tmp_path / "file").write_text("not a folder")
    return tmp_path / "file"


def test_unwritable_output_fails_before_computing(tiny, blocked, capsys, monkeypatch):
    from ptyengine.reconstruct import epie

    def never(*args, **kwargs):
        raise AssertionError("ePIE ran although the output cannot be written")

    monkeypatch.setattr(epie, "epie", never)
    one_line_error(*run(capsys, "reconstruct", tiny, "--iterations", 2, "-o",
                        blocked / "r.zarr"), blocked / "r.zarr")  # fmt: skip


def test_unwritable_default_output_suggests_another(tiny, capsys, monkeypatch):
    from ptyengine import locks
    from ptyengine.errors import write_error

    def denied(path, lock):
        raise write_error(path, PermissionError(errno.EACCES, os.strerror(errno.EACCES)))

    monkeypatch.setattr(locks, "_open_locked", denied)  # a read-only data folder, as root
    one_line_error(*run(capsys, "reconstruct", tiny, "--method", "icom"), "tiny_icom.zarr",
                   "Permission denied", "give -o PATH")  # fmt: skip


def test_unwritable_dataset_output_is_one_line(tmp_path, blocked, capsys):
    one_line_error(*run(capsys, *TINY_SIMULATION, "-o", blocked / "s.zarr"), blocked / "s.zarr")
    np.save(tmp_path / "x.npy", np.ones((2, 2, 8, 8), np.float32))
    one_line_error(*run(capsys, "convert", tmp_path / "x.npy", "-o", blocked / "c.zarr",
                        "--energy", 300, "--semiangle", 20, "--scan-step", 0.5, "--dk", 0.2),
                   blocked / "c.zarr")  # fmt: skip


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_folder(tiny, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        one_line_error(*run(capsys, "reconstruct", tiny, "--method", "icom", "-o",
                            folder / "r.zarr"), folder / "r.zarr")  # fmt: skip
    finally:
        folder.chmod(0o755)


def test_failing_checkpoint_write_leaves_no_tmp(tiny, tmp_path, capsys, monkeypatch):
    from ptyengine.reconstruct import iterative

    def half_then_full(fh, **arrays):
        fh.write(b"PK\x03\x04 half a checkpoint")
        _enospc()

    monkeypatch.setattr(iterative.np, "savez", half_then_full)
    out = tmp_path / "r.zarr"
    one_line_error(*run(capsys, "reconstruct", tiny, "--iterations", 2, "--checkpoint-every",
                        1, "-o", out), out.name + ".checkpoint.npz", "No space left")  # fmt: skip
    assert no_partials(tmp_path) == [] and not out.exists()
    assert not (tmp_path / "r_preview.png").exists()


def test_failing_result_write_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    import zarr

    out = tmp_path / "r.zarr"
    monkeypatch.setattr(zarr.Array, "__setitem__", _enospc)
    one_line_error(*run(capsys, "reconstruct", tiny, "--method", "icom", "-o", out), out,
                   "No space left")  # fmt: skip
    assert no_partials(tmp_path) == [] and not out.exists()


def test_failing_dataset_write_keeps_the_partial(tmp_path, capsys, monkeypatch):
    calls = []
    save = io.DatasetWriter._save_attrs

    def full_after_first(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            _enospc()
        return save(self, *args, **kwargs)

    monkeypatch.setattr(io.DatasetWriter, "_save_attrs", full_after_first)
    out = tmp_path / "s.zarr"
    one_line_error(*run(capsys, *TINY_SIMULATION, "-o", out), f"{out}.partial", "No space left")
    assert not out.exists() and (tmp_path / "s.zarr.partial").exists()
    assert not (tmp_path / "s.zarr.lock").exists()


def test_failing_preview_leaves_no_tmp(tiny, tmp_path, capsys, monkeypatch):
    import matplotlib.figure

    def half_a_png(self, fname, **kwargs):
        with open(fname, "wb") as fh:
            fh.write(b"\x89PNG half")
        _enospc()

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_a_png)
    one_line_error(*run(capsys, "reconstruct", tiny, "--method", "icom", "-o",
                        tmp_path / "r.zarr"), "r_preview.png", "No space left")  # fmt: skip
    assert no_partials(tmp_path) == []


# --- item 8: one writer per output ------------------------------------------------------

HOLD = textwrap.dedent("""
    import sys
    from ptyengine.locks import output_lock
    with output_lock(sys.argv[1]):
        print("held", flush=True)
        sys.stdin.read()
""")


@pytest.fixture
def held(tmp_path):
    """hold(path): another process holds the write lock of ``path`` until the test ends."""
    procs = []

    def hold(path):
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield hold
    for p in procs:
        p.communicate("", timeout=30)
        assert p.returncode == 0


def test_second_writer_is_refused(tiny, tmp_path, capsys, held):
    sim, rec, conv = tmp_path / "s.zarr", tmp_path / "r.zarr", tmp_path / "c.zarr"
    np.save(tmp_path / "x.npy", np.ones((2, 2, 8, 8), np.float32))
    for path in (sim, rec, conv):
        held(path)
    busy = "is being written by another ptyengine process"
    one_line_error(*run(capsys, *TINY_SIMULATION, "-o", sim), sim, busy)
    one_line_error(*run(capsys, "reconstruct", tiny, "--iterations", 1, "-o", rec), rec, busy)
    one_line_error(*run(capsys, "convert", tmp_path / "x.npy", "-o", conv, "--energy", 300,
                        "--semiangle", 20, "--scan-step", 0.5, "--dk", 0.2), conv, busy)
    assert not sim.exists() and not rec.exists() and not conv.exists()
    assert not (tmp_path / "s.zarr.partial").exists()  # the refused writer touched nothing
    assert not (tmp_path / "r_preview.png").exists()


def test_two_converts_racing_for_one_output(tmp_path):
    """Two real processes convert different data to one output at the same moment: one
    wins, the other is refused on one line, and the output holds one source whole."""
    sources = []
    for value in (1, 2):
        sources.append(np.full((8, 8, 16, 16), value, np.float32))
        np.save(tmp_path / f"{value}.npy", sources[-1])
    out = tmp_path / "c.zarr"
    procs = [subprocess.Popen([sys.executable, "-m", "ptyengine", "convert",
                               str(tmp_path / f"{value}.npy"), "-o", str(out), "--energy", "300",
                               "--semiangle", "20", "--scan-step", "0.5", "--dk", "0.2",
                               "--rows-per-chunk", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for value in (1, 2)]  # fmt: skip
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2).strip().splitlines()
    assert refused[-1].startswith("error: ") and "Traceback" not in "".join(refused)
    assert "being written by another" in refused[-1] or "already exists" in refused[-1]
    winner = next(i for i, (code, _) in enumerate(results) if code == 0)
    with io.open_dataset(out) as ds:
        np.testing.assert_array_equal(ds.read_rows(0, 8), sources[winner])
    assert no_partials(tmp_path) == []


def test_library_writer_is_refused_while_another_writes(tmp_path, held):
    from ptyengine.errors import PtyengineError

    cal = Calibration(energy=300e3, semiangle=20.0, scan_shape=(2, 2), scan_step=(0.4, 0.4),
                      detector_shape=(8, 8), dk=(0.3, 0.3), detector_center=(4.0, 4.0))
    path = tmp_path / "d.h5"
    held(path)
    with pytest.raises(PtyengineError, match="being written by another"):
        io.create_dataset(path, cal, "float32")


def test_a_killed_writers_lock_file_blocks_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    (tmp_path / "r.zarr.lock").write_text("12345\n")  # left by a run killed with -9
    code, _, err = run(capsys, "reconstruct", tiny, "--method", "icom", "-o", out)
    assert code == 0, err
    assert out.exists() and no_partials(tmp_path) == []


# --- item 12: progress in batch logs ----------------------------------------------------


def test_progress_lines_without_a_terminal(tiny, tmp_path, capsys):
    code, _, err = run(capsys, "reconstruct", tiny, "--iterations", 4, "-o", tmp_path / "r.zarr")
    assert code == 0, err
    assert "\r" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("ePIE: ")]
    assert [ln.split()[1] for ln in lines] == ["1/4", "2/4", "3/4", "4/4"], err
    assert "error=" in lines[-1] and "100%" in lines[-1]
    code, _, err = run(capsys, *TINY_SIMULATION, "-o", tmp_path / "s.zarr")
    assert code == 0 and "36/36 pos (100%)" in err and "\r" not in err


def test_progress_can_be_silenced(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PTYENGINE_PROGRESS", "0")
    code, _, err = run(capsys, "reconstruct", tiny, "--iterations", 2, "-o", tmp_path / "r.zarr")
    assert code == 0 and "ePIE: " not in err and "\r" not in err


# --- item 10: user errors that gave tracebacks or wrong messages ------------------------


def test_interrupt_names_what_is_kept(tiny, tmp_path, capsys, monkeypatch):
    from ptyengine.reconstruct import epie

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "s.zarr"
    monkeypatch.setattr(io.DatasetWriter, "write_array", interrupt)
    code, _, err = run(capsys, *TINY_SIMULATION, "-o", out)
    assert code == 130 and f"{out}.partial" in err.strip().splitlines()[-1]
    monkeypatch.undo()
    monkeypatch.setattr(epie, "run", interrupt)
    code, _, err = run(capsys, "reconstruct", tiny, "-o", tmp_path / "r.zarr")
    last = err.strip().splitlines()[-1]
    assert code == 130 and "nothing was kept" in last and ".partial" not in last
    assert no_partials(tmp_path) == ["s.zarr.partial"]
    monkeypatch.undo()
    real = epie.run

    def one_iteration_then_interrupt(state, sweep, n, *args):
        real(state, sweep, 1, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(epie, "run", one_iteration_then_interrupt)
    code, _, err = run(capsys, "reconstruct", tiny, "--checkpoint-every", 1, "-o",
                       tmp_path / "c.zarr")  # fmt: skip
    ck = tmp_path / "c.zarr.checkpoint.npz"
    assert code == 130 and f"kept {ck} (" in err.strip().splitlines()[-1] and ck.exists()
    assert not (tmp_path / "c.zarr.partial").exists()


@pytest.mark.parametrize("value, debug", [("0", False), ("no", False), ("", False),
                                          ("1", True), ("true", True), ("YES", True)])
def test_debug_switch(tmp_path, capsys, monkeypatch, value, debug):
    from ptyengine.errors import PtyengineError

    monkeypatch.setenv("PTYENGINE_DEBUG", value)
    if debug:
        with pytest.raises(PtyengineError):
            main(["info", str(tmp_path / "none.zarr")])
    else:
        one_line_error(*run(capsys, "info", tmp_path / "none.zarr"), "does not exist")


def test_malformed_array_metadata(tiny, tmp_path, capsys):
    import shutil

    path = tmp_path / "m.zarr"
    shutil.copytree(tiny, path)
    (path / "data" / "zarr.json").write_text('{"shape": [6')
    for command in ("info", "reconstruct"):
        one_line_error(*run(capsys, command, path), path / "data" / "zarr.json")


def test_edited_data_type_is_caught(tiny, tmp_path, capsys):
    import shutil

    path = tmp_path / "d.zarr"
    shutil.copytree(tiny, path)
    meta = path / "data" / "zarr.json"
    text = meta.read_text()
    meta.write_text(text.replace('"float32"', '"uint32"'))
    one_line_error(*run(capsys, "info", path), path, "uint32", "float32")
    meta.write_text(text.replace('"little"', '"big"'))  # read byte-swapped, no other error
    one_line_error(*run(capsys, "reconstruct", path, "--method", "icom"), "data/zarr.json",
                   "changed after the data were written")  # fmt: skip


def test_info_notices_a_missing_chunk_file(tiny, tmp_path, capsys):
    import shutil

    path = tmp_path / "c.zarr"
    shutil.copytree(tiny, path)
    os.remove(path / "data/c/0/0/0/0")
    code, text, err = run(capsys, "info", path)
    assert code == 0, err
    status = text.splitlines()[1]
    assert "complete" not in status.replace("INCOMPLETE", "") and "data/c/0/0/0/0" in status


def test_info_notices_a_missing_shard_file(tmp_path):
    cal = Calibration(energy=300e3, semiangle=20.0, scan_shape=(6, 2), scan_step=(0.4, 0.4),
                      detector_shape=(8, 8), dk=(0.3, 0.3), detector_center=(4.0, 4.0))
    path = tmp_path / "s.zarr"
    with io.create_dataset(path, cal, "float32", rows_per_chunk=1, shard_bytes=2 * 512) as w:
        w.write_rows(0, np.ones((6, 2, 8, 8), np.float32))
    assert "complete" in io.describe(path).splitlines()[1]
    os.remove(path / "data/c/1/0/0/0")
    status = io.describe(path).splitlines()[1]
    assert "DAMAGED: 1 of 3 data shard files missing (data/c/1/0/0/0)" in status


def test_truncated_checkpoint(tiny, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    args = ["reconstruct", tiny, "--iterations", 2, "--checkpoint-every", 1, "-o", out]
    assert run(capsys, *args, "--keep-checkpoint")[0] == 0
    ck = tmp_path / "r.zarr.checkpoint.npz"
    ck.write_bytes(ck.read_bytes()[:200])
    one_line_error(*run(capsys, *args, "--resume"), ck, "--resume")


def test_fewer_iterations_than_the_checkpoint_holds(tiny, tmp_path, capsys):
    out = tmp_path / "r.zarr"
    args = ["reconstruct", tiny, "--checkpoint-every", 3, "-o", out]
    assert run(capsys, *args, "--iterations", 6, "--keep-checkpoint")[0] == 0
    before = read_result(out)[0]["object"]
    one_line_error(*run(capsys, *args, "--iterations", 4, "--resume"), "6 iterations",
                   "--iterations 4")  # fmt: skip
    np.testing.assert_array_equal(read_result(out)[0]["object"], before)


def test_npy_points_to_convert(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((2, 2, 8, 8), np.float32))
    last = one_line_error(*run(capsys, "reconstruct", tmp_path / "x.npy"), "x.npy",
                          "ptyengine convert")  # fmt: skip
    assert "HDF5" not in last


def test_library_warnings_are_one_line(tmp_path, capsys):
    path = tmp_path / "low.zarr"
    assert run(capsys, *TINY_SIMULATION, "--dose", 1, "-o", path)[0] == 0
    code, _, err = run(capsys, "reconstruct", path, "--iterations", 1)
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if "counts per bright-field pixel" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: only ")
    assert "UserWarning" not in err and "warnings.warn(" not in err
    with warnings.catch_warnings():  # the CLI leaves the warning machinery as it found it
        warnings.simplefilter("error")
        with pytest.raises(UserWarning):
            warnings.warn("still raised", UserWarning, stacklevel=1)


def test_existing_preview_is_protected(tiny, tmp_path, capsys):
    png = tmp_path / "r_preview.png"
    png.write_bytes(b"someone's figure")
    one_line_error(*run(capsys, "reconstruct", tiny, "--method", "icom", "-o",
                        tmp_path / "r.zarr"), png, "--overwrite")  # fmt: skip
    assert png.read_bytes() == b"someone's figure" and not (tmp_path / "r.zarr").exists()
    code, _, err = run(capsys, "reconstruct", tiny, "--method", "icom", "-o",
                       tmp_path / "r.zarr", "--overwrite")  # fmt: skip
    assert code == 0 and png.read_bytes().startswith(b"\x89PNG")
