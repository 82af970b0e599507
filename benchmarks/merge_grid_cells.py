"""Rebuild the dose × defocus report (benchmarks/dose_defocus/) from two grid folders: the
full grid's cells, with ML's cells replaced by those of a rerun where ML's default
changed. usage: python benchmarks/merge_grid_cells.py FULL RERUN OUT "one line on the rerun"

Used on 2026-11-30 after ML's default prior became the empirical one up to 100 e/Å² with
the crossover ≥ 20 nm out: RERUN ran only ML at 10–100 e/Å²
(`ptyengine bench dose-defocus --grid quick --methods ml --doses 100,50,20,10 --seeds
0,1,2`); its cells outside the new default's regime (in focus, 10 nm: the Gaussian prior)
are not taken, so every ML cell is what today's default gives.
"""

import json
import sys
from pathlib import Path

from ptyengine.bench_report import write_report
from ptyengine.reconstruct.ml_parameters import EMPIRICAL_DEFOCUS, EMPIRICAL_UP_TO


def cells(folder: Path) -> dict:
    out = {}
    for f in sorted(Path(folder, "cells").rglob("*.json")):
        r = json.loads(f.read_text())
        out[(r["crystal"], r["dose"], r["defocus_nm"], r["method"], r["seed"])] = r
    return out


def main(full, rerun, out, line):
    records = cells(Path(full))
    taken = 0
    for key, r in cells(Path(rerun)).items():
        crystal, dose, defocus_nm, method, seed = key
        if (method == "ml" and dose is not None and dose <= EMPIRICAL_UP_TO
                and defocus_nm * 10 >= EMPIRICAL_DEFOCUS and key in records):
            records[key] = r
            taken += 1
    old = Path(out, "summary.md").read_text().split("\n\n## ")[0].splitlines()
    header = old + [line]
    write_report(list(records.values()), Path(out), header)
    print(f"{taken} ML cells taken from {rerun}; report in {out}")


if __name__ == "__main__":
    main(*sys.argv[1:5])
