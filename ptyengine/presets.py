"""Named simulation recipes: the UiO-66 defocus study and a tiny demo dataset.

A recipe returns a list of (label, SimulationParameters): one dataset per label. Every
field can still be overridden from the command line.

UiO-66 defocus study (DESIGN.md): UiO-66 along [110], 15 × 15 × 3 nm, 300 kV, 20 mrad,
no aberrations but defocus, crossover at the entrance surface (C10 = 0), 50 nm and 100 nm
above it (C10 = +500 Å, +1000 Å: see the sign convention in physics), Kirkland
potentials, 15 frozen phonons with σ = 0.1007 Å (C), 0.0872 Å (O), 0.0390 Å (Zr); the
study gives no σ for H, ptyengine keeps H with σ_H = 0.1103 Å (riding-H convention, see
structures.UIO66_STUDY_SIGMA) unless ``hydrogen=False``.

* ``full``: the study's parameters. The scan (6 × 6 nm at 0.4 Å) and the detector
  (256 px to 50 mrad: a 50 Å real-space window, wide enough for the 40 Å probe at 100 nm
  defocus) are ptyengine's choices; the study does not state them. Meant for a GPU.
* ``quick``: the same physics on a 2-core CPU in a few minutes: a 41 × 44 Å field
  (2 × 3 orthogonal cells), the full 3 nm thickness and all three defoci, 2 phonon
  configurations, a 160-px detector to 30 mrad (a 52 Å real-space field of view, so even
  the 100 nm-defocus probe fits for ptychography; the simulation's window is that 52 Å at
  100 nm, and the 41 × 44 Å periodic field itself at 0 and 50 nm, where the probe fits in
  it: multislice.window_size). The scan covers one unit cell (20.7 × 14.7 Å) and the
  probe's radius α·|C10| + 1 Å beyond it on every side (simulate.dose_margin; positions
  wrap round the periodic field), so that every point of the cell receives the dose the
  data are labelled with: a scan of the cell alone is smaller than the 40 Å probe at
  100 nm, and its centre would receive a quarter of it. Step 0.6 Å in focus (38 × 28
  positions) and 1.2 Å at 50 and 100 nm (35 × 30 and 52 × 47 positions; the probe is 20
  and 40 Å wide there): the dose per pattern is dose × step². Quality is judged on the
  cell (benchmarks/bench_quality.py).
* ``tiny``: for tests (seconds): one orthogonal cell (20.7 × 14.7 Å) as the periodic
  field, one [110] repeat thick (14.65 Å), a static lattice, a 128-px detector to 24 mrad
  (a 52 Å real-space field of view: the 100 nm probe still fits), the cell alone scanned
  (no dose margin) at 0.8 Å in focus and 1.2 Å out of focus. iCOM still inverts and ePIE
  still holds out of focus (tests/test_study_command.py).
"""

from __future__ import annotations

import dataclasses

from .errors import PtyengineError
from .simulate import SimulationParameters
from .structures import UIO66_STUDY_SIGMA

#: Crossover heights above the entrance surface in the UiO-66 study, as C10 in Å.
STUDY_DEFOCI = (0.0, 500.0, 1000.0)


def defocus_label(c10: float) -> str:
    nm = c10 / 10
    return f"df{nm:g}nm".replace("-", "m").replace(".", "p")


def uio66_defocus(variant: str = "quick") -> list[tuple[str, SimulationParameters]]:
    common = dict(structure="uio66", zone_axis=(1, 1, 0), thickness=30.0, energy=300e3,
                  semiangle=20.0, sigmas=dict(UIO66_STUDY_SIGMA), slice_thickness=2.0)  # fmt: skip
    if variant == "full":
        base = SimulationParameters(**common, field=(150.0, 150.0), phonons=15, scan_step=0.4,
                                    scan_size=(60.0, 60.0), max_angle=50.0,
                                    detector_pixels=256)  # fmt: skip
    elif variant == "quick":
        base = SimulationParameters(**common, field=(41.4, 44.0), phonons=2, scan_step=0.6,
                                    max_angle=30.0, detector_pixels=160, scan_margin=None)
        return [(defocus_label(df), dataclasses.replace(base, defocus=df,
                                                        scan_step=0.6 if df == 0 else 1.2))
                for df in STUDY_DEFOCI]  # fmt: skip
    elif variant == "tiny":
        base = SimulationParameters(**{**common, "thickness": 14.65}, field=(20.72, 14.65),
                                    phonons=0, max_angle=24.0, detector_pixels=128,
                                    scan_margin=0.0)  # fmt: skip
        return [(defocus_label(df), dataclasses.replace(base, defocus=df,
                                                        scan_step=0.8 if df == 0 else 1.2))
                for df in STUDY_DEFOCI]  # fmt: skip
    else:
        raise PtyengineError(f"unknown preset {variant!r} for uio66-defocus: use quick, full "
                             "or tiny")
    return [(defocus_label(df), dataclasses.replace(base, defocus=df)) for df in STUDY_DEFOCI]


def demo(variant: str = "quick") -> list[tuple[str, SimulationParameters]]:
    """SrTiO3 [001], 2 nm thick, one focused probe dataset: seconds on a laptop."""
    p = SimulationParameters(structure="srtio3", zone_axis=(0, 0, 1), field=(15.6, 15.6),
                             thickness=20.0, defocus=0.0, scan_step=0.3,
                             scan_size=(7.8, 7.8), max_angle=40.0, detector_pixels=64,
                             phonons=0)  # fmt: skip
    if variant not in ("quick", "full"):
        raise PtyengineError(f"unknown preset {variant!r} for demo: use quick")
    return [("srtio3_001", p)]


RECIPES = {"uio66-defocus": uio66_defocus, "demo": demo}


def recipe(name: str, variant: str = "quick") -> list[tuple[str, SimulationParameters]]:
    try:
        make = RECIPES[name]
    except KeyError:
        raise PtyengineError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None
    return make(variant)
