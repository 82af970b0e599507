"""Tests for ptyengine.potentials: Kirkland table, structure factor, slices, single-atom physics."""

import numpy as np
import pytest
from ase import Atoms
from ase.data import chemical_symbols

from ptyengine.errors import PtyengineError
from ptyengine.potentials import (
    K_FOURIER,
    PotentialError,
    atomic_number,
    kirkland_parameters,
    projected_potential,
    projected_potential_real_space,
    scattering_factor,
    slice_potentials,
    structure_factor,
)

# ---------------------------------------------------------------- table


def test_table_has_103_elements():
    for z in range(1, 104):
        assert atomic_number(chemical_symbols[z]) == z
        p = kirkland_parameters(z)
        assert p.shape == (12,)
        assert np.all(np.isfinite(p))
    assert atomic_number("zr") == 40
    assert atomic_number(np.int64(8)) == 8


def test_coefficients_match_sources_md():
    c = kirkland_parameters("C")
    assert c[0] == 2.12080767e-01 and c[1] == 2.08605417e-01 and c[11] == 4.03982620e-02
    zr = kirkland_parameters(40)
    assert zr[:4].tolist() == [2.64365505e00, 2.20202699e00, 5.54225147e-01, 1.78260107e02]
    assert zr[11] == 1.54330682e00


def test_scattering_factor_values():
    assert scattering_factor("H", 0.0) == pytest.approx(0.5297, abs=5e-4)
    assert scattering_factor("C", 0.0) == pytest.approx(2.511, abs=1e-3)
    # q = 1/d (not s = q/2): q² f_e(q) -> Z / (2π² a0) at large q (SOURCES.md: C 0.578).
    assert 400.0 * scattering_factor("C", 20.0) == pytest.approx(0.578, abs=2e-3)
    k = np.linspace(0, 5, 7, dtype=np.float32)
    assert scattering_factor("O", k).dtype == np.float32


@pytest.mark.parametrize("bad", ["Xx", 0, 104, -3, True])
def test_unknown_element(bad):
    with pytest.raises(PotentialError, match=str(bad)):
        kirkland_parameters(bad)
    assert issubclass(PotentialError, PtyengineError)


# ---------------------------------------------------------------- structure factor


def test_structure_factor_matches_brute_force():
    rng = np.random.default_rng(0)
    gpts, sampling = (12, 10), (0.37, 0.41)
    pos = rng.uniform(-3.0, 8.0, size=(7, 2))
    ky = np.fft.fftfreq(gpts[0], sampling[0])
    kx = np.fft.fftfreq(gpts[1], sampling[1])
    ref = np.zeros(gpts, complex)
    for iy in range(gpts[0]):
        for ix in range(gpts[1]):
            for y, x in pos:
                ref[iy, ix] += np.exp(-2j * np.pi * (ky[iy] * y + kx[ix] * x))
    for chunk in (3, 512):
        s = structure_factor(pos, gpts, sampling, chunk=chunk, dtype=np.complex128)
        assert s.dtype == np.complex128
        np.testing.assert_allclose(s, ref, rtol=1e-5, atol=1e-9)
    s32 = structure_factor(pos, gpts, sampling)
    assert s32.dtype == np.complex64
    np.testing.assert_allclose(s32, ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- single-atom physics

CELL = 6.0  # Å, periodic; sampling 0.01 Å
GPTS = 600
ATOM_YX = (3.0437, 2.9861)  # 0.37 and 0.61 pixel off the grid


def _single_atom(symbol):
    atoms = Atoms(symbol, positions=[(ATOM_YX[1], ATOM_YX[0], 0.5)], cell=[CELL, CELL, 1.0],
                  pbc=True)
    V = projected_potential(atoms, (GPTS, GPTS), dtype=np.float64)
    r = np.arange(GPTS) * (CELL / GPTS)
    dy = r[:, None] - ATOM_YX[0] + 0 * r[None, :]
    dx = r[None, :] - ATOM_YX[1] + 0 * r[:, None]
    R = np.hypot(dy, dx)
    mask = (R >= 0.2) & (R <= 2.0)
    ref = sum(  # Kirkland's real-space v_z at each pixel's exact distance, nearest images
        projected_potential_real_space(symbol, np.hypot(dy[mask] - iy * CELL, dx[mask] - ix * CELL))
        for iy in (-1, 0, 1)
        for ix in (-1, 0, 1)
    )
    return V, R[mask], V[mask], ref


@pytest.mark.parametrize("symbol", ["H", "C", "O", "Zr"])
def test_single_atom_matches_kirkland_real_space(symbol):
    V, R, v, ref = _single_atom(symbol)
    # Radial profile: pixels grouped into 0.05 Å annuli between 0.2 and 2 Å, grid values and
    # v_z taken at the same pixels (no interpolation): agree within 1% (measured <= 0.3%).
    edges = np.arange(0.2, 2.0 + 1e-9, 0.05)
    ring = np.digitize(R, edges) - 1
    for i in range(len(edges) - 1):
        sel = ring == i
        assert v[sel].mean() == pytest.approx(ref[sel].mean(), rel=0.01), (symbol, edges[i])
    # Pixel by pixel: the grid potential is band-limited to the square FFT grid; the 1/k²
    # (nuclear) tail of f_e that lies outside it rings along the atom's own row and column.
    # Bound that ringing in absolute terms: <= 2.5% of v_z(0.2 Å) (measured <= 1.9%).
    assert np.max(np.abs(v - ref)) <= 0.025 * projected_potential_real_space(symbol, 0.2)
    # Exact k = 0 term: mean(V) × cell area = K f_e(0).
    assert V.mean() * CELL * CELL == pytest.approx(K_FOURIER * scattering_factor(symbol, 0.0),
                                                   rel=1e-10)


def test_fourier_constant():
    # K = 2π a0 e = h²/(2π m0 e), in V·Å² (CODATA h, m0, e).
    from scipy.constants import e, h, m_e

    assert K_FOURIER == pytest.approx(h**2 / (2 * np.pi * m_e * e) * 1e20, rel=1e-5)


# ---------------------------------------------------------------- slices


def _slab():
    rng = np.random.default_rng(3)
    z = np.array([-0.05, 0.5, 1.0, 2.7, 3.0, 3.04])  # slices 0 0 1 2 2 2 for 3 × 1 Å
    xy = rng.uniform(0, 5, size=(6, 2))
    return Atoms("COZrHCO", positions=np.c_[xy, z], cell=[5.0, 4.0, 3.0], pbc=True)


def test_slice_assignment_and_sum():
    atoms = _slab()
    gpts = (40, 50)
    V, edges = slice_potentials(atoms, gpts, (0.1, 0.1), 1.0, dtype=np.float64)
    assert V.shape == (3, 40, 50) and V.dtype == np.float64
    np.testing.assert_allclose(edges, [0, 1, 2, 3])
    for i, members in enumerate(([0, 1], [2], [3, 4, 5])):
        expected = projected_potential(atoms[members], gpts, dtype=np.float64)
        np.testing.assert_allclose(V[i], expected, rtol=1e-9, atol=1e-9 * np.abs(expected).max())
    total = projected_potential(atoms, gpts, dtype=np.float64)
    np.testing.assert_allclose(V.sum(axis=0), total, rtol=1e-9, atol=1e-9 * np.abs(total).max())
    V32, _ = slice_potentials(atoms, gpts, None, 1.0)
    assert V32.dtype == np.float32
    np.testing.assert_allclose(V32, V, atol=2e-5 * np.abs(V).max())


def test_slice_count():
    atoms = Atoms("C", positions=[(1, 1, 0.5)], cell=[2.0, 2.0, 1.1])
    assert slice_potentials(atoms, 8, None, 0.1)[0].shape[0] == 11  # not 12 from rounding
    V, edges = slice_potentials(atoms, 8, None, 0.4)
    assert V.shape[0] == 3 and edges[-1] == pytest.approx(1.1)


def test_bad_input():
    atoms = Atoms("C", positions=[(1, 1, 0.5)], cell=[2.0, 2.0, 1.0])
    for bad in (0.0, -0.5):
        with pytest.raises(PotentialError, match=str(bad)):
            slice_potentials(atoms, 8, None, bad)
    with pytest.raises(PotentialError, match="0.3"):
        slice_potentials(atoms, 8, 0.3, 0.5)  # 8 × 0.3 Å != 2 Å
    with pytest.raises(PotentialError, match="no atoms"):
        slice_potentials(Atoms(cell=[2.0, 2.0, 1.0]), 8, None, 0.5)
    with pytest.raises(PotentialError, match="thickness"):
        slice_potentials(Atoms("C", cell=[2.0, 2.0, 0.0]), 8, None, 0.5)
    with pytest.raises(PotentialError, match="orthogonal"):
        slice_potentials(Atoms("C", cell=[[2, 0, 0], [1, 2, 0], [0, 0, 1]]), 8, None, 0.5)
    with pytest.raises(PotentialError, match="0"):
        slice_potentials(Atoms("X", positions=[(1, 1, 0.5)], cell=[2.0, 2.0, 1.0]), 8, None, 0.5)


def test_atoms_on_a_slice_edge_belong_to_the_slice_starting_there():
    """SrTiO3 [001] in a/2 slices: the slab builder puts TiO2 layers a rounding error
    (4e-16 Å) below the edges; every slice must still hold exactly one atomic layer."""
    from ptyengine.structures import build_specimen, load_structure

    slab = build_specimen(load_structure("srtio3"), (0, 0, 1), size=(15.62, 15.62),
                          thickness=39.05)
    V, edges = slice_potentials(slab, (64, 64), slice_thickness=1.9525, dtype=np.float64)
    assert len(V) == 20
    mean = V.mean(axis=(1, 2))
    # SrO and TiO2 layers alternate, starting with SrO at the entrance surface
    np.testing.assert_allclose(mean[0::2], mean[0], rtol=1e-9)
    np.testing.assert_allclose(mean[1::2], mean[1], rtol=1e-9)
    assert mean[1] > 0.5 * mean[0]
    # and the rule is stated: within 1e-6 Å below an edge counts as on the edge
    one = Atoms("O", positions=[(1.0, 1.0, 2.0 - 0.9e-6)], cell=(4.0, 4.0, 6.0))
    two = Atoms("O", positions=[(1.0, 1.0, 2.0 - 1.1e-6)], cell=(4.0, 4.0, 6.0))
    for atoms, slice_index in ((one, 1), (two, 0)):
        V, _ = slice_potentials(atoms, (16, 16), slice_thickness=2.0)
        assert np.argmax(V.mean(axis=(1, 2))) == slice_index
