"""``ptyengine bench dose-defocus`` on the ``tiny`` grid (UiO-66 [110] one cell and SrTiO3
[001] 2 × 2 cells, 32 px to 24 mrad; none and 100 e/Å² × 0 and 10 nm × iCOM, ePIE, SSB ×
seeds 0, 1: 36 cells, ~10 s): the files, the rows, physics the cells must show, a rerun
that does no reconstruction, a grid stopped halfway that resumes to the same table,
workers and a Dask cluster giving the same numbers, and one-line errors."""

import csv
import shutil

import pytest
from cli_helpers import run

from ptyengine import bench, study
from ptyengine.cli import main

BENCH = ("bench", "dose-defocus", "--grid", "tiny")
N_CELLS = 2 * 2 * 3 + 2 * 2 * 3 * 2  # noise-free once, 100 e/Å² × 2 seeds


def _rows(out):
    with open(out / "cells.csv", newline="") as f:
        return list(csv.DictReader(f))


def _numbers(rows):
    """The table without the wall times (which differ between runs)."""
    return sorted(tuple(v for k, v in r.items() if k != "seconds") for r in rows)


def _cell(rows, crystal, dose, defocus, method, seed="0"):
    (r,) = [r for r in rows if (r["crystal"], r["dose"], r["defocus_nm"], r["method"],
                                r["seed"]) == (crystal, dose, defocus, method, seed)]  # fmt: skip
    return r


@pytest.fixture(scope="module")
def tiny_grid(tmp_path_factory):
    """The tiny grid run once, uninterrupted: its output folder."""
    out = tmp_path_factory.mktemp("bench") / "tiny"
    main([*BENCH, "-o", str(out)])  # exits only on an error
    return out


def _fresh_with_datasets(src, dst):
    """A new output folder holding only ``src``'s simulated datasets (no cells)."""
    shutil.copytree(src / "datasets", dst / "datasets")
    return dst


def test_bench_writes_tables_heatmaps_and_summary(tiny_grid):
    out = tiny_grid
    rows = _rows(out)
    assert len(rows) == N_CELLS
    assert len(list((out / "cells").rglob("*.json"))) == N_CELLS
    for crystal in ("uio66", "srtio3"):
        for metric in ("ncc", "ncc_1A", "frc_A", "seconds"):
            png = out / f"heatmap_{crystal}_{metric}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
    with open(out / "summary.csv", newline="") as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 2 * 2 * 2 * 3  # crystal × dose × defocus × method
    noisy = [s for s in summary if s["dose"] == "100"]
    assert all(s["seeds"] == "2" for s in noisy)
    assert all(float(s["ncc_std"]) == 0 for s in summary if s["dose"] == "none")
    md = (out / "summary.md").read_text()
    assert "best method by NCC(1 Å)" in md and "| uio66 | 100 | 10 | ePIE | 2 |" in md
    assert not list(out.rglob("*.tmp"))


def test_bench_physics_of_the_cells(tiny_grid):
    rows = _rows(tiny_grid)
    # noise-free ePIE follows the truth, with a finite FRC resolution on SrTiO3 out of focus
    epie = _cell(rows, "srtio3", "none", "10", "epie")
    assert float(epie["ncc"]) > 0.9 and 0.5 < float(epie["frc_A"]) < 1.5
    assert float(_cell(rows, "uio66", "none", "10", "epie")["ncc_1A"]) > 0.9
    # the dose lowers every method's NCC, the seeds draw different noise
    for m in ("icom", "epie", "ssb"):
        clean = float(_cell(rows, "uio66", "none", "10", m)["ncc"])
        assert float(_cell(rows, "uio66", "100", "10", m)["ncc"]) < clean, m
    s0 = _cell(rows, "uio66", "100", "0", "icom", "0")
    s1 = _cell(rows, "uio66", "100", "0", "icom", "1")
    assert s0["ncc"] != s1["ncc"]


def test_noisy_copy_has_the_dose_and_its_seed():
    import numpy as np

    from ptyengine.calibration import Calibration

    cal = Calibration(energy=300e3, semiangle=20.0, scan_shape=(8, 8), scan_step=(0.5, 0.5),
                      detector_shape=(16, 16), dk=(0.15, 0.15), detector_center=(8, 8))  # fmt: skip
    data = np.full((8, 8, 16, 16), 1 / 256, dtype=np.float32)  # one electron per pattern
    a = bench.noisy_copy(data, cal, 400.0, 0)  # 100 electrons per pattern
    assert a.calibration.dose == 400.0 and a.data.dtype == np.uint32
    assert a.data.sum(axis=(2, 3)).mean() == pytest.approx(100, rel=0.02)
    assert np.array_equal(a.data, bench.noisy_copy(data, cal, 400.0, 0).data)
    assert not np.array_equal(a.data, bench.noisy_copy(data, cal, 400.0, 1).data)
    assert not np.array_equal(a.data, bench.noisy_copy(data, cal, 401.0, 0).data)


def test_rerun_of_a_finished_grid_does_no_reconstruction(tiny_grid, capsys, monkeypatch):
    before = (tiny_grid / "cells.csv").read_text()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished cell was reconstructed again")

    monkeypatch.setattr(study, "run_method", refuse)
    monkeypatch.setattr("ptyengine.simulate.simulate", refuse)
    code, _, err = run(capsys, *BENCH, "-o", tiny_grid)
    assert code == 0, err
    assert f"0 cells run, {N_CELLS} reused" in err
    assert (tiny_grid / "cells.csv").read_text() == before


def test_grid_stopped_halfway_resumes_to_the_same_table(tiny_grid, tmp_path, capsys):
    out = _fresh_with_datasets(tiny_grid, tmp_path / "resumed")
    grid = bench.Grid.from_preset("tiny")
    part = bench.run_grid(out, grid, stop_after=N_CELLS // 2)
    assert part.ran == N_CELLS // 2 and len(part.records) == N_CELLS // 2
    # what a kill leaves: a half-written temporary and a cell file cut short
    cells = sorted((out / "cells").rglob("*.json"))
    (cells[0].parent / f".{cells[0].name}.999.tmp").write_text('{"ncc": ')
    cells[1].write_text(cells[1].read_text()[:40])
    code, _, err = run(capsys, *BENCH, "-o", out)
    assert code == 0, err
    assert f"{N_CELLS // 2 - 1} finished already, {N_CELLS // 2 + 1} to run" in err
    assert _numbers(_rows(out)) == _numbers(_rows(tiny_grid))


def test_a_failing_cell_does_not_stop_the_grid(tiny_grid, tmp_path, capsys, monkeypatch):
    """The others finish and are tabled; the error is one line; a rerun retries it."""
    out = _fresh_with_datasets(tiny_grid, tmp_path / "failing")
    sub = ("--crystals", "srtio3", "--doses", "none", "--defoci", "10")
    real = study.run_method

    def ssb_fails(ds, method, *args, **kwargs):
        if method == "ssb":
            raise RuntimeError("out of\nmemory")
        return real(ds, method, *args, **kwargs)

    monkeypatch.setattr(study, "run_method", ssb_fails)
    code, _, err = run(capsys, *BENCH, *sub, "-o", out)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: 1 cell(s)"), err
    assert "RuntimeError: out of memory" in err.strip().splitlines()[-1]
    assert sorted(r["method"] for r in _rows(out)) == ["epie", "icom"]
    monkeypatch.setattr(study, "run_method", real)
    code, _, err = run(capsys, *BENCH, *sub, "-o", out)
    assert code == 0 and "2 finished already, 1 to run" in err
    assert sorted(r["method"] for r in _rows(out)) == ["epie", "icom", "ssb"]


def test_a_cell_without_an_image_says_why_in_the_tables(tiny_grid, tmp_path, capsys,
                                                        monkeypatch):  # fmt: skip
    """A method that gives no image (a constant phase, or its own stated reason, as tcBF in
    focus) is a cell with that reason in cells.csv and summary.md, never a silent NaN."""
    import numpy as np

    out = _fresh_with_datasets(tiny_grid, tmp_path / "noimage")
    real = study.run_method

    def flat(ds, method, *args, **kwargs):
        run = real(ds, method, *args, **kwargs)
        if method == "ssb":
            run.phase = np.zeros_like(run.phase)
        if method == "icom":
            run.extra["no_image"] = "in focus: nothing to see"
        return run

    monkeypatch.setattr(study, "run_method", flat)
    code, _, err = run(capsys, *BENCH, "--crystals", "srtio3", "--doses", "none",
                       "--defoci", "10", "-o", out)  # fmt: skip
    assert code == 0, err
    rows = {r["method"]: r for r in _rows(out)}
    assert "constant" in rows["ssb"]["note"]
    assert rows["icom"]["note"] == "iCOM: in focus: nothing to see"
    assert rows["epie"]["note"] == "" and float(rows["epie"]["ncc"]) > 0.9
    assert "nan" not in (out / "cells.csv").read_text().lower()
    md = (out / "summary.md").read_text()
    assert "nan" not in md.lower() and "in focus: nothing to see" in md
    assert "| srtio3 | none | 10 | SSB | 0 | no image |" in md
    best = md.split("best method by NCC(1 Å)")[1].split("## ")[0]
    assert "SSB" not in best and "iCOM" not in best  # never best without an image


def test_workers_and_cluster_give_the_same_numbers(tiny_grid, tmp_path, capsys):
    pytest.importorskip("distributed")
    sub = ("--crystals", "srtio3", "--defoci", "10", "--methods", "icom,epie")
    ref = [r for r in _rows(tiny_grid) if r["crystal"] == "srtio3" and r["defocus_nm"] == "10"
           and r["method"] in ("icom", "epie")]  # fmt: skip
    for name, opts in (("workers", ("--workers", "2")), ("dask", ("--cluster", "local:1"))):
        out = _fresh_with_datasets(tiny_grid, tmp_path / name)
        code, _, err = run(capsys, *BENCH, *sub, *opts, "-o", out)
        assert code == 0, err
        got = _rows(out)
        assert len(got) == len(ref) == 6
        for r in ref:
            g = _cell(got, r["crystal"], r["dose"], r["defocus_nm"], r["method"], r["seed"])
            for k in ("ncc", "ncc_1A"):
                assert float(g[k]) == pytest.approx(float(r[k]), abs=1e-4), (name, r, k)


@pytest.mark.parametrize("options, expect", [
    (("--methods", "icom,magic"), "unknown method 'magic'"),
    (("--grid", "huge"), "unknown grid 'huge'"),
    (("--crystals", "diamond"), "unknown crystal 'diamond'"),
    (("--doses", "none,0"), "dose 0.0 e/Å²: must be > 0"),
    (("--doses", "-10"), "must be > 0"),
    (("--doses", "lots"), "--doses: 'lots' is not a dose"),
    (("--defoci", "0,-5"), "defocus -5.0 nm: must be ≥ 0"),
    (("--seeds", "1.5"), "--seeds: '1.5'"),
    (("--cluster", "bogus"), "unknown cluster spec 'bogus'"),
    (("--cluster", "slurm:cores=many"), "cores and jobs must be integers"),
    (("--cluster", "local:1", "--workers", "2"), "exclude each other"),
])  # fmt: skip
def test_bad_input_is_one_line(tmp_path, capsys, options, expect):
    out = tmp_path / "b"
    code, _, err = run(capsys, *BENCH, *options, "-o", out)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err
    assert expect in err
    assert not out.exists()  # refused before anything is written


def test_cluster_that_cannot_start_is_one_line(tmp_path, capsys):
    """SLURM without sbatch on this machine: refused before any job is submitted."""
    pytest.importorskip("dask_jobqueue")
    if shutil.which("sbatch"):
        pytest.skip("sbatch is here")
    code, _, err = run(capsys, *BENCH, "--cluster", "slurm:cores=1", "-o", tmp_path / "c")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "sbatch" in err and "not found" in err


def test_unknown_suite(tmp_path, capsys):
    code, _, err = run(capsys, "bench", "dose-focus", "-o", tmp_path / "x")
    assert code == 2 and "unknown suite 'dose-focus'" in err and "dose-defocus" in err


def test_a_worker_that_dies_is_one_line_and_the_pool_is_stopped():
    """A worker process killed (out of memory, a signal): a PtyengineError, not a hang or
    a traceback; the other workers are stopped."""
    import os

    from ptyengine.errors import PtyengineError

    runner = bench._Runner(workers=2)
    try:
        with pytest.raises(PtyengineError, match="worker process died"):
            list(runner.map(os._exit, [("a", (1,)), ("b", (1,))]))
    finally:
        runner.close(abort=True)
    assert not any(p.is_alive() for p in runner.processes)
