"""Tests for ptyengine.structures: loading, orthogonal cells, specimens, frozen phonons."""

import math
from collections import Counter
from importlib import resources

import numpy as np
import pytest
from ase.neighborlist import neighbor_list
from ase.spacegroup import crystal

from ptyengine.errors import PtyengineError
from ptyengine.structures import (
    BUILTIN_STRUCTURES,
    UIO66_STUDY_SIGMA,
    StructureError,
    build_specimen,
    default_sigmas,
    displace_atoms,
    frozen_phonon_configurations,
    load_structure,
    orthogonal_cell,
)

A_UIO = 20.72120505  # Å, the CIF's cubic lattice parameter
A_STO = 3.905


@pytest.fixture(scope="module")
def uio66():
    return load_structure("uio66")


@pytest.fixture(scope="module")
def uio66_110(uio66):
    return orthogonal_cell(uio66, (1, 1, 0))


def composition(atoms):
    return dict(Counter(atoms.get_chemical_symbols()))


def is_diagonal(cell):
    return np.allclose(cell.array, np.diag(np.diag(cell.array)), atol=1e-12)


# ------------------------------------------------------------------------- loading


def test_packaged_cif_is_package_data():
    assert (resources.files("ptyengine.datasets") / "UiO-66.cif").is_file()
    assert (resources.files("ptyengine.datasets") / "SOURCES.md").is_file()


def test_uio66_loads_with_full_composition(uio66):
    assert len(uio66) == 456
    assert composition(uio66) == {"Zr": 24, "O": 128, "C": 192, "H": 112}
    assert np.allclose(uio66.cell.lengths(), A_UIO)
    assert set(BUILTIN_STRUCTURES) == {"uio66", "srtio3", "mos2"}


def test_builtin_names_are_case_insensitive():
    sto = load_structure("SrTiO3")
    assert composition(sto) == {"Sr": 1, "Ti": 1, "O": 3}
    assert np.allclose(sto.cell.lengths(), A_STO)
    mos2 = load_structure("MoS2")
    assert composition(mos2) == {"Mo": 1, "S": 2}
    assert tuple(mos2.pbc) == (True, True, False)


def test_unknown_name_and_missing_file_raise(tmp_path):
    with pytest.raises(StructureError, match="nacl"):
        load_structure("nacl")
    missing = tmp_path / "missing.cif"
    with pytest.raises(StructureError, match="missing.cif"):
        load_structure(missing)


def test_corrupt_cif_raises_naming_the_path(tmp_path):
    bad = tmp_path / "corrupt.cif"
    bad.write_bytes(b"garbage \x00\x01 not a cif\n_cell_length_a what\nloop_\n")
    with pytest.raises(StructureError, match="corrupt.cif") as info:
        load_structure(bad)
    assert isinstance(info.value, PtyengineError) and isinstance(info.value, ValueError)


def test_reads_a_file_with_ase(tmp_path):
    path = tmp_path / "sto.cif"
    load_structure("srtio3").write(path)
    assert composition(load_structure(path)) == {"Sr": 1, "Ti": 1, "O": 3}


# ---------------------------------------------------------------- orthogonal cells


def test_uio66_110_cell(uio66_110):
    cell = uio66_110
    assert is_diagonal(cell.cell)
    assert np.allclose(cell.cell.lengths(), [A_UIO / 2**0.5, A_UIO, A_UIO / 2**0.5], atol=1e-6)
    assert np.allclose(cell.cell.lengths(), [14.652, 20.721, 14.652], atol=1e-3)
    assert len(cell) == 228
    assert composition(cell) == {"Zr": 12, "O": 64, "C": 96, "H": 56}
    # x = [-1 1 0]/2, y = [001], z = [110]/2 (beam), as fractions of the cubic cell
    assert np.allclose(cell.info["cell_vectors"], [[-0.5, 0.5, 0], [0, 0, 1], [0.5, 0.5, 0]])
    frac = cell.get_scaled_positions(wrap=False)
    assert frac.min() >= 0 and frac.max() < 1


def test_uio66_110_has_no_overlapping_atoms(uio66_110):
    i, _, d = neighbor_list("ijd", uio66_110, 0.9)
    assert len(i) == 0
    _, _, d = neighbor_list("ijd", uio66_110, 1.0)
    assert d.min() == pytest.approx(0.963, abs=2e-3)  # the O-H bond


def test_srtio3_001_and_110():
    sto = load_structure("srtio3")
    c001 = orthogonal_cell(sto, (0, 0, 1))
    assert is_diagonal(c001.cell)
    assert np.allclose(c001.cell.lengths(), [A_STO] * 3)
    assert composition(c001) == {"Sr": 1, "Ti": 1, "O": 3}
    c110 = orthogonal_cell(sto, (1, 1, 0))
    assert is_diagonal(c110.cell)
    # x = [001] (3.905), y = [1-10] (5.523), z = [110] (5.523): twice the cubic cell
    assert np.allclose(c110.cell.lengths(), [A_STO, A_STO * 2**0.5, A_STO * 2**0.5])
    assert composition(c110) == {"Sr": 2, "Ti": 2, "O": 6}
    assert len(neighbor_list("i", c110, 1.9)) == 0  # shortest Ti-O is a/2 = 1.95 Å


def test_p1_supercell_finds_the_primitive_translations():
    block = load_structure("srtio3").repeat((2, 2, 2))
    cell = orthogonal_cell(block, (0, 0, 1))
    assert np.allclose(cell.cell.lengths(), [A_STO] * 3)
    assert len(cell) == 5


def test_mos2_monolayer_001():
    cell = orthogonal_cell(load_structure("mos2"), (0, 0, 1))
    a = 3.16
    assert is_diagonal(cell.cell)
    assert np.allclose(cell.cell.lengths(), [a, a * 3**0.5, 3.17])
    assert composition(cell) == {"Mo": 2, "S": 4}
    assert tuple(cell.pbc) == (True, True, False)
    assert np.allclose(np.unique(np.round(cell.positions[:, 2], 6)), [0, 1.585, 3.17])
    with pytest.raises(StructureError, match=r"\[1 0 0\]"):
        orthogonal_cell(load_structure("mos2"), (1, 0, 0))


def test_failing_zone_axes_raise_naming_axis_and_limit():
    # Bulk 2H-MoS2 (hexagonal, c/a irrational): along [101] only one lattice direction,
    # [120], is perpendicular to the beam within 60 Å, so no orthogonal cell exists.
    bulk = crystal(
        ["Mo", "S"],
        basis=[(1 / 3, 2 / 3, 0.25), (1 / 3, 2 / 3, 0.621)],
        spacegroup=194,
        cellpar=[3.16, 3.16, 12.29, 90, 90, 120],
    )
    assert len(orthogonal_cell(bulk, (0, 0, 1))) == 12
    with pytest.raises(StructureError, match=r"\[1 0 1\].*max_length = 60"):
        orthogonal_cell(bulk, (1, 0, 1))
    triclinic = crystal(["Si"], basis=[(0, 0, 0)], spacegroup=1, cellpar=[4, 5, 6, 77, 83, 71])
    with pytest.raises(StructureError, match=r"\[0 0 1\]"):
        orthogonal_cell(triclinic, (0, 0, 1))


def test_bad_zone_axis_raises(uio66):
    for axis in [(0, 0, 0), (1, 1), (0.5, 1, 0), "110"]:
        with pytest.raises(StructureError, match="zone_axis"):
            orthogonal_cell(uio66, axis)


# -------------------------------------------------------------------------- specimens


def test_uio66_specimen_size_and_count(uio66, uio66_110):
    spec = build_specimen(uio66, (1, 1, 0), size=(30.0, 30.0), thickness=30.0)
    cx, cy, cz = uio66_110.cell.lengths()
    # repeats rounded to the nearest integer: 2 along x (29.30 Å), 1 along y (20.72 Å)
    assert np.allclose(spec.cell.array, np.diag([2 * cx, cy, 30.0]))
    assert tuple(spec.pbc) == (True, True, False)
    assert spec.info["repeats"] == (1, 2, 3)
    z = uio66_110.positions[:, 2]
    expected = 2 * (2 * len(uio66_110) + np.count_nonzero(z < 30.0 - 2 * cz))
    assert len(spec) == expected == 940
    density = len(uio66) / uio66.get_volume()  # atoms per Å^3
    assert len(spec) == pytest.approx(density * spec.get_volume(), rel=0.03)
    pos = spec.positions
    assert pos[:, 2].min() >= 0 and pos[:, 2].max() < 30.0
    assert pos[:, 0].min() >= 0 and pos[:, 0].max() < 2 * cx
    assert pos[:, 1].min() >= 0 and pos[:, 1].max() < cy


def test_specimen_without_hydrogen_and_exact_cut(uio66):
    with_h = build_specimen(uio66, (1, 1, 0), size=(30, 30), thickness=30)
    no_h = build_specimen(uio66, (1, 1, 0), size=(30, 30), thickness=30, hydrogen=False)
    assert "H" not in no_h.get_chemical_symbols()
    assert len(no_h) == len(with_h) - composition(with_h)["H"]
    cut = build_specimen(uio66, (1, 1, 0), size=(25, 35), thickness=10, periodic_lateral=False)
    assert np.allclose(cut.cell.array, np.diag([35.0, 25.0, 10.0]))
    assert cut.positions[:, 0].max() < 35 and cut.positions[:, 1].max() < 25


def test_slab_cut_uses_the_slice_binning_rule():
    """A layer a rounding error below the exit surface lies on it: outside the slab [0, t)
    (the same rule as potentials.slice_potentials, Z_TOLERANCE)."""
    slab = build_specimen(load_structure("srtio3"), (0, 0, 1), size=(3.905, 3.905),
                          thickness=1.5 * 3.905)
    assert len(np.unique(np.round(slab.positions[:, 2], 6))) == 3  # SrO, TiO2, SrO


def test_mos2_layer_is_centred_in_the_slab():
    spec = build_specimen(load_structure("mos2"), (0, 0, 1), size=(10, 10), thickness=10)
    assert np.allclose(spec.cell.lengths(), [3 * 3.16, 2 * 3.16 * 3**0.5, 10])
    assert len(spec) == 3 * 2 * 6
    assert np.allclose(
        [spec.positions[:, 2].min(), spec.positions[:, 2].max()], [5 - 1.585, 5 + 1.585]
    )


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"size": (0.0, 10.0)}, "size"),
        ({"size": (10.0, float("nan"))}, "size"),
        ({"size": (10.0,)}, "size"),
        ({"thickness": -1.0}, "thickness"),
        ({"thickness": float("nan")}, "thickness"),
    ],
)
def test_bad_specimen_sizes_raise(kwargs, name):
    args = {"size": (10.0, 10.0), "thickness": 10.0} | kwargs
    with pytest.raises(StructureError, match=name):
        build_specimen(load_structure("srtio3"), (0, 0, 1), **args)


# --------------------------------------------------------------------- frozen phonons


def test_sigma_table():
    assert UIO66_STUDY_SIGMA["C"] == 0.1007
    assert UIO66_STUDY_SIGMA["O"] == 0.0872
    assert UIO66_STUDY_SIGMA["Zr"] == 0.0390
    assert UIO66_STUDY_SIGMA["H"] == pytest.approx(math.sqrt(1.2) * 0.1007, abs=5e-5)
    # SrTiO3: Abramov et al. (1995) B = 0.62, 0.44, 0.71 Å² as σ = sqrt(B / 8π²)
    sto = default_sigmas(load_structure("srtio3"))
    assert sto == pytest.approx({"O": 0.0948, "Sr": 0.0886, "Ti": 0.0747}, abs=5e-5)
    assert default_sigmas(load_structure("uio66"))["O"] == 0.0872  # not SrTiO3's O
    # a structure without a table: the generic value, or an error naming the element
    assert default_sigmas(load_structure("mos2")) == {"Mo": 0.08, "S": 0.08}
    with pytest.raises(StructureError, match="Mo"):
        default_sigmas(load_structure("mos2"), generic=None)


def test_displacement_statistics():
    block = load_structure("srtio3").repeat((16, 16, 16))  # 20480 atoms
    sigmas = {"Sr": 0.05, "Ti": 0.07, "O": 0.1}
    moved = displace_atoms(block, sigmas, np.random.default_rng(1234))
    assert np.array_equal(moved.numbers, block.numbers)
    du = moved.positions - block.positions
    symbols = np.array(block.get_chemical_symbols())
    for symbol, sigma in sigmas.items():
        d = du[symbols == symbol]
        n = len(d)
        assert n >= 4096
        for axis in range(3):
            assert abs(d[:, axis].std(ddof=1) - sigma) < 3 * sigma / math.sqrt(2 * n)
            assert abs(d[:, axis].mean()) < 3 * sigma / math.sqrt(n)


def test_frozen_phonons_are_reproducible():
    cell = orthogonal_cell(load_structure("srtio3"), (1, 1, 0)).repeat((3, 3, 3))
    sigmas = default_sigmas(cell)
    a = frozen_phonon_configurations(cell, sigmas, 3, seed=7)
    b = frozen_phonon_configurations(cell, sigmas, 3, seed=7)
    c = frozen_phonon_configurations(cell, sigmas, 3, seed=8)
    assert len(a) == 3
    for x, y, z in zip(a, b, c, strict=True):
        assert np.array_equal(x.positions, y.positions)
        assert not np.allclose(x.positions, z.positions)
    assert not np.allclose(a[0].positions, a[1].positions)
    # configuration k does not depend on how many are asked for
    assert np.array_equal(
        frozen_phonon_configurations(cell, sigmas, 1, 7)[0].positions, a[0].positions
    )
    for undisplaced in (
        frozen_phonon_configurations(cell, sigmas, 0, 7),
        frozen_phonon_configurations(cell, None, 5, 7),
    ):
        assert len(undisplaced) == 1
        assert np.array_equal(undisplaced[0].positions, cell.positions)


def test_bad_sigmas_raise():
    sto = load_structure("srtio3")
    rng = np.random.default_rng(0)
    with pytest.raises(StructureError, match="Ti"):
        displace_atoms(sto, {"Sr": 0.05, "O": 0.1}, rng)
    with pytest.raises(StructureError, match="O"):
        displace_atoms(sto, {"Sr": 0.05, "Ti": 0.05, "O": -0.1}, rng)
    with pytest.raises(StructureError, match="Sr"):
        displace_atoms(sto, {"Sr": float("nan"), "Ti": 0.05, "O": 0.1}, rng)
    with pytest.raises(StructureError, match="n_configs"):
        frozen_phonon_configurations(sto, {"Sr": 0.05, "Ti": 0.05, "O": 0.1}, -1, 0)
