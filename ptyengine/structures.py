"""Crystal structures, orthogonal cells along a zone axis, specimens and frozen phonons.

Lengths are in Å. Cells are ase cells: x, y, z = ase axes; images elsewhere in
ptyengine are (y, x) = (ase y, ase x). The beam travels along +z and z is measured from
the entrance surface.

Data flow: ``load_structure`` (builtin name or file) -> ``orthogonal_cell`` (a
rectangular cell with z along the zone axis) -> ``build_specimen`` (a slab of the
requested size) -> ``frozen_phonon_configurations`` (thermally displaced copies).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from importlib import resources

import numpy as np
from ase import Atoms
from scipy.spatial import cKDTree

from ptyengine.errors import PtyengineError
from ptyengine.potentials import Z_TOLERANCE


class StructureError(PtyengineError, ValueError):
    """A structure cannot be loaded, oriented, cut or displaced as asked."""


#: Builtin structure names (case-insensitive) and what they are.
BUILTIN_STRUCTURES: dict[str, str] = {
    "uio66": "UiO-66 (Zr), conventional cubic cell, P1, 456 atoms Zr24 O128 C192 H112, "
    "a = 20.7212 Å (DFT, Redfern et al. Chem. Mater. 32 (2020) 5864; CC BY 4.0)",
    "srtio3": "SrTiO3, cubic perovskite Pm-3m, a = 3.905 Å, 5 atoms",
    "mos2": "MoS2 monolayer (2H / 1H layer), a = 3.16 Å, S-S 3.17 Å, 3 atoms, "
    "periodic in x, y only",
}

#: SrTiO3 room-temperature lattice parameter (Å). γ-ray diffraction at 293 K gives
#: a = 3.9053 Å (Acta Cryst. paper sh5025, journals.iucr.org); 3.905 Å is the usual value.
SRTIO3_A = 3.905
#: MoS2 in-plane lattice parameter and S-S distance within a layer (Å), from bulk 2H-MoS2:
#: P6_3/mmc, a = 3.16 Å, c = 12.29 Å, Mo 2c, S 4f with z(S) = 0.621, so S-S across a layer
#: = (3/2 - 2 z) c = 0.258 c = 3.17 Å (values as usually quoted from Bronsema, de Boer &
#: Jellinek, Z. anorg. allg. Chem. 540 (1986) 15; not re-checked here). The monolayer keeps
#: the bulk geometry. ASE's mx2 defaults are 3.18 / 3.19 Å.
MOS2_A = 3.16
MOS2_SS = 3.17

#: rms thermal displacement per Cartesian direction (Å) used by the UiO-66 defocus study:
#: C, O and Zr are the study's values. The study gives none for H; the default here is the
#: crystallographic riding-H convention U_iso(H) = 1.2 U_eq(C), i.e.
#: sigma_H = sqrt(1.2) * 0.1007 = 0.1103 Å. Whether the study's model had H is not known;
#: ``build_specimen(..., hydrogen=False)`` leaves H out.
UIO66_STUDY_SIGMA: dict[str, float] = {"C": 0.1007, "O": 0.0872, "Zr": 0.0390, "H": 0.1103}

#: Fallback rms displacement per direction (Å) for an element without a value for its
#: structure: 0.08 Å, i.e. U = 0.0064 Å², B = 8 pi² U = 0.5 Å², a typical room-temperature
#: value for inorganic crystals. Not element-specific.
GENERIC_SIGMA = 0.08


def sigma_from_b(b: float) -> float:
    """rms displacement per Cartesian axis σ (Å) from an isotropic Debye–Waller factor B
    (Å²): B = 8π² U_iso and U_iso = σ²."""
    return math.sqrt(b / (8 * math.pi**2))


#: SrTiO3 isotropic Debye–Waller factors B (Å²) from X-ray diffraction: V. A. Abramov,
#: V. G. Tsirelson, V. E. Zavodnik, S. A. Ivanov, I. D. Brown, "The chemical bond and atomic
#: displacements in SrTiO3 from X-ray diffraction analysis", Acta Cryst. B51 (1995)
#: 942-951, as used in the Dr. Probe SrTiO3 example (er-c.org, "Changing crystal
#: orientation: SrTiO3 [110]"). The database entry of that paper (ICSD 80871) records
#: 145 K; O's B is the isotropic equivalent of an anisotropic displacement.
SRTIO3_B: dict[str, float] = {"Sr": 0.62, "Ti": 0.44, "O": 0.71}
#: σ (Å) from SRTIO3_B: Sr 0.0886, Ti 0.0747, O 0.0948.
SRTIO3_SIGMA: dict[str, float] = {el: sigma_from_b(b) for el, b in SRTIO3_B.items()}

#: Thermal σ (Å, rms per Cartesian axis) of the builtin structures, and their sources.
#: MoS2 has none yet (GENERIC_SIGMA is used; see datasets/SOURCES.md).
THERMAL_SIGMAS: dict[str, dict[str, float]] = {"uio66": UIO66_STUDY_SIGMA,
                                                "srtio3": SRTIO3_SIGMA}
SIGMA_SOURCES: dict[str, str] = {
    "uio66": "the UiO-66 defocus study (C, O, Zr); H: riding-H convention, 1.2 U(C)",
    "srtio3": "Abramov et al., Acta Cryst. B51 (1995) 942 (B = 0.62, 0.44, 0.71 Å²)",
}


# --------------------------------------------------------------------------- loading


def load_structure(name_or_path: str | os.PathLike) -> Atoms:
    """Load a builtin structure by name, or read a structure file with ase.

    ``name_or_path``: one of ``BUILTIN_STRUCTURES`` ("uio66", "srtio3", "mos2";
    case-insensitive) or the path of any file ``ase.io.read`` reads (CIF, xyz, POSCAR, ...).
    Returns ase Atoms in Å; ``atoms.info["name"]`` holds the name or path.
    Raises StructureError for an unknown name, a missing file or an unreadable file.
    """
    key = os.fspath(name_or_path)
    builders = {"uio66": _uio66, "srtio3": _srtio3, "mos2": _mos2}
    if isinstance(key, str) and key.lower() in builders:
        atoms = builders[key.lower()]()
        atoms.info["name"] = key.lower()
        return atoms
    if not os.path.exists(key):
        names = ", ".join(BUILTIN_STRUCTURES)
        raise StructureError(f"structure {key!r}: no such file, and not a builtin name ({names})")
    try:
        from ase.io import read

        atoms = read(key)
    except Exception as exc:  # ase raises many kinds of errors for bad files
        detail = str(exc).strip() or type(exc).__name__
        raise StructureError(f"structure file {key!r} cannot be read: {detail}") from exc
    if not isinstance(atoms, Atoms) or len(atoms) == 0:
        raise StructureError(f"structure file {key!r} cannot be read: it holds no atoms")
    atoms.info["name"] = key
    return atoms


def _uio66() -> Atoms:
    from ase.io import read

    ref = resources.files("ptyengine.datasets") / "UiO-66.cif"
    with resources.as_file(ref) as path:
        return read(path, format="cif")


def _srtio3() -> Atoms:
    from ase.spacegroup import crystal

    return crystal(
        ["Sr", "Ti", "O"],
        basis=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0.0)],
        spacegroup=221,
        cellpar=[SRTIO3_A] * 3 + [90] * 3,
    )


def _mos2() -> Atoms:
    from ase.build import mx2

    # pbc (True, True, False), cell c = 0: a 2D structure (see orthogonal_cell).
    return mx2("MoS2", kind="2H", a=MOS2_A, thickness=MOS2_SS, vacuum=None)


# ---------------------------------------------------------------- orthogonal cells


def orthogonal_cell(
    atoms: Atoms,
    zone_axis: Sequence[int] = (0, 0, 1),
    max_length: float = 60.0,
    tol: float = 1e-3,
    symprec: float = 1e-3,
) -> Atoms:
    """A rectangular cell of ``atoms`` with its z axis along the zone axis [uvw].

    ``zone_axis``: integers [uvw], a direct-lattice direction of ``atoms.cell`` (the beam
    direction). The result is built from lattice translations only: z is the shortest
    lattice vector along [uvw]; x and y are the pair of lattice vectors perpendicular to
    it (and to each other) with the smallest area, the shorter one as x, rotated so that
    the cell is diag(Lx, Ly, Lz) in Å. Lattice translations include the pure translations
    of centred cells written in P1 (e.g. the F-centring of UiO-66), found by mapping every
    atom onto an atom of the same element within ``symprec`` Å.
    ``tol``: largest |cos| of the angle between two cell vectors counted as orthogonal
    (the residual shear, at most tol × edge, is removed by the rectangular cell).
    ``max_length``: longest allowed edge (Å). ``atoms.info["cell_vectors"]`` holds x, y, z
    as fractional coordinates of the input cell (UiO-66 [110]: [-1/2 1/2 0], [0 0 1],
    [1/2 1/2 0]).

    A 2D structure (pbc (True, True, False), e.g. the MoS2 monolayer) can only be viewed
    along [001], the layer normal; its cell then has z length = the layer's thickness
    (atoms from z = 0 up) and pbc (True, True, False).

    Raises StructureError when no orthogonal cell with all edges <= max_length exists,
    naming the zone axis, the structure and max_length.
    """
    uvw = _zone_axis(zone_axis)
    max_length = _positive("max_length", max_length)
    name = atoms.info.get("name", atoms.get_chemical_formula())
    where = f"{name} along [{' '.join(str(i) for i in uvw)}]"
    if len(atoms) == 0:
        raise StructureError(f"{where}: the structure has no atoms")
    pbc = tuple(bool(p) for p in atoms.pbc)
    if pbc == (True, True, True):
        cell = atoms.cell.array.copy()
        if abs(np.linalg.det(cell)) < 1e-9:
            raise StructureError(f"{where}: the cell has zero volume")
        direction = uvw @ cell
        work = Atoms(atoms.numbers, atoms.positions, cell=cell, pbc=True)
        fixed_z = None
    elif pbc == (True, True, False):
        if uvw[0] != 0 or uvw[1] != 0:
            raise StructureError(
                f"{where}: a 2D structure (periodic in a, b only) can only be viewed "
                "along [001], its layer normal"
            )
        normal = np.cross(atoms.cell[0], atoms.cell[1])
        if np.linalg.norm(normal) < 1e-9:
            raise StructureError(f"{where}: the in-plane cell vectors are parallel")
        direction = normal / np.linalg.norm(normal) * np.sign(uvw[2])
        height = atoms.positions @ direction
        extent = float(np.ptp(height))
        # A vacuum gap larger than the layer: no vertical translation can map it onto itself.
        lc = 2.0 * extent + 2.0
        shift = (extent / 2 + 1.0 - height.min()) * direction
        cell = np.array([atoms.cell[0], atoms.cell[1], direction * lc])
        work = Atoms(atoms.numbers, atoms.positions + shift, cell=cell, pbc=True)
        fixed_z = cell[2]
    else:
        raise StructureError(
            f"{where}: periodic boundaries {pbc} are not supported; the structure must be "
            "periodic in 3D or in a, b (a 2D layer)"
        )

    out = _orthogonal_cell_3d(work, direction, max_length, tol, symprec, where, fixed_z)
    if fixed_z is not None:
        pos = out.positions
        pos[:, 2] -= pos[:, 2].min()
        out = Atoms(
            out.numbers,
            pos,
            cell=np.diag([*out.cell.lengths()[:2], extent]),
            pbc=(True, True, False),
            info=out.info,
        )
    vecs = out.info.pop("_vectors")
    out.info["cell_vectors"] = np.round(vecs @ np.linalg.inv(cell), 8) + 0.0
    out.info["zone_axis"] = tuple(int(i) for i in uvw)
    out.info["name"] = name
    return out


def _orthogonal_cell_3d(work, direction, max_length, tol, symprec, where, fixed_z):
    rcell = _reduced_cell(work.cell.array)
    frac = _wrap(np.linalg.solve(rcell.T, work.positions.T).T)
    numbers = work.numbers
    translations = _pure_translations(frac, numbers, rcell, symprec)
    vectors = _lattice_vectors(rcell, translations, max_length + 1e-9)
    d = direction / np.linalg.norm(direction)
    length = np.linalg.norm(vectors, axis=1)
    key = _niceness_order(vectors @ np.linalg.inv(work.cell.array), length)
    vectors, length = vectors[key], length[key]
    along = vectors @ d
    limit = f"with all edges <= max_length = {max_length:g} Å"
    if fixed_z is None:
        par = np.flatnonzero(
            (np.linalg.norm(np.cross(vectors, d), axis=1) <= tol * length) & (along > 0)
        )
        if par.size == 0:
            raise StructureError(f"{where}: no lattice repeat along the beam {limit}")
        c = vectors[par[0]]  # sorted by length, then niceness
    else:
        c = fixed_z
    perp = np.flatnonzero(np.abs(along) <= tol * length)
    pair = _shortest_orthogonal_pair(vectors[perp], length[perp], tol)
    if pair is None:
        raise StructureError(f"{where}: no orthogonal cell {limit}")
    a1, a2 = vectors[perp[pair[0]]], vectors[perp[pair[1]]]
    if np.dot(np.cross(a1, a2), c) < 0:  # right-handed: flip the one that gets nicer
        negatives = np.round(np.array([a1, a2]) @ np.linalg.inv(work.cell.array), 6) < 0
        if negatives[0].sum() >= negatives[1].sum():
            a1 = -a1
        else:
            a2 = -a2
    new = np.array([a1, a2, c])
    lengths = np.linalg.norm(new, axis=1)

    # Every lattice-translated copy of every atom whose fractional coordinates in the new
    # cell fall in [0, 1): integer translations of the input cell suffice (it holds all atoms).
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) @ new
    corner_frac = np.linalg.solve(rcell.T, corners.T).T
    lo = np.floor(corner_frac.min(axis=0)).astype(int) - 1
    hi = np.ceil(corner_frac.max(axis=0)).astype(int) + 1
    grid = _int_grid(lo, hi)
    inv_new = np.linalg.inv(new)
    base = (frac @ rcell) @ inv_new
    shifts = (grid @ rcell) @ inv_new
    eps = symprec / lengths
    pos_list, num_list = [], []
    for chunk in np.array_split(shifts, max(1, len(shifts) * len(base) // 2_000_000)):
        s = base[None, :, :] + chunk[:, None, :]
        inside = np.all((s >= -eps) & (s < 1 - eps), axis=2)
        t_idx, a_idx = np.nonzero(inside)
        pos_list.append(np.maximum(s[t_idx, a_idx], 0.0))
        num_list.append(numbers[a_idx])
    s = np.concatenate(pos_list)
    nums = np.concatenate(num_list)
    expected = len(work) * abs(np.linalg.det(new) / np.linalg.det(rcell))
    if abs(expected - len(nums)) > 1e-3 * max(1.0, expected):
        raise StructureError(
            f"{where}: the orthogonal cell holds {len(nums)} atoms, expected {expected:.3f}; "
            "does the structure have overlapping (duplicate) atoms?"
        )
    out = Atoms(nums, s * lengths, cell=np.diag(lengths), pbc=True)
    out.info["_vectors"] = new
    return out


def _reduced_cell(cell: np.ndarray) -> np.ndarray:
    """A Minkowski-reduced basis of the same lattice (short, nearly orthogonal vectors)."""
    from ase.geometry import minkowski_reduce

    rcell, _ = minkowski_reduce(cell)
    if np.linalg.det(rcell) < 0:
        rcell = -rcell
    return rcell


def _wrap(frac: np.ndarray) -> np.ndarray:
    out = frac - np.floor(frac)
    out[out >= 1.0] = 0.0
    return out


def _pure_translations(frac, numbers, cell, symprec) -> np.ndarray:
    """Fractional translations t in [0,1)^3 (t = 0 first) mapping the structure onto itself.

    Candidates are differences between positions of the rarest element; a candidate is
    kept when every atom, shifted by it, lands within ``symprec`` Å of an atom of the same
    element (modulo the cell).
    """
    elements, counts = np.unique(numbers, return_counts=True)
    order = np.argsort(counts, kind="stable")
    groups = [frac[numbers == elements[i]] for i in order]
    trees = [cKDTree(g, boxsize=1.0) for g in groups]
    rare = groups[0]
    found = [np.zeros(3)]
    for t in _wrap(rare[1:] - rare[0]):
        ok = True
        for g, tree in zip(groups, trees, strict=True):
            moved = _wrap(g + t)
            _, j = tree.query(moved)
            diff = moved - g[j]
            diff -= np.round(diff)
            if np.max(np.linalg.norm(diff @ cell, axis=1)) > symprec:
                ok = False
                break
        if ok:
            found.append(t)
    return np.array(found)


def _lattice_vectors(cell, translations, max_length) -> np.ndarray:
    """All non-zero lattice vectors (Cartesian) no longer than ``max_length``."""
    inv = np.linalg.inv(cell)
    nmax = np.ceil(max_length * np.linalg.norm(inv, axis=0)).astype(int) + 1
    frac = (_int_grid(-nmax, nmax)[None, :, :] + translations[:, None, :]).reshape(-1, 3)
    vec = frac @ cell
    norm = np.linalg.norm(vec, axis=1)
    return vec[(norm <= max_length) & (norm > 1e-6)]


def _int_grid(lo, hi) -> np.ndarray:
    """All integer triples n with lo <= n <= hi, shape (M, 3)."""
    axes = [np.arange(a, b + 1) for a, b in zip(lo, hi, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def _niceness_order(frac, length) -> np.ndarray:
    """Order by length (to 1e-6 Å), then prefer few non-zero and few negative indices."""
    f = np.round(frac, 6)
    keys = (-f[:, 2], -f[:, 1], -f[:, 0], (f < 0).sum(axis=1), (f != 0).sum(axis=1))
    return np.lexsort((*keys, np.round(length, 6)))


def _shortest_orthogonal_pair(vectors, length, tol):
    """Indices (i, j) of the orthogonal pair with the smallest area, |v_i| <= |v_j|."""
    best, best_area = None, math.inf
    unit = vectors / length[:, None] if len(vectors) else vectors
    for i in range(len(vectors)):
        if length[i] ** 2 > best_area * (1 + 1e-9):
            break
        cos = np.abs(unit[i + 1 :] @ unit[i])
        ok = np.flatnonzero(cos <= tol)
        if ok.size:
            j = i + 1 + ok[0]
            area = length[i] * length[j]
            if area < best_area * (1 - 1e-9):
                best, best_area = (i, j), area
    return best


# -------------------------------------------------------------------------- specimens


def build_specimen(
    atoms: Atoms,
    zone_axis: Sequence[int],
    size: Sequence[float],
    thickness: float,
    hydrogen: bool = True,
    periodic_lateral: bool = True,
    max_length: float = 60.0,
) -> Atoms:
    """A slab of ``atoms`` viewed along ``zone_axis``, ``size`` = (Ly, Lx) Å wide.

    The orthogonal cell (see ``orthogonal_cell``) is repeated laterally. With
    ``periodic_lateral=True`` the number of repeats along x and y is rounded to the nearest
    integer >= 1, so the field is periodic and the returned cell is the actual size
    (e.g. 29.30 × 20.72 Å for UiO-66 [110] asked for 30 × 30 Å); with False, atoms are cut
    at exactly x < Lx, y < Ly (the edges are then not periodic). Along z the cell is repeated
    to cover ``thickness`` Å and cut to 0 <= z < thickness (z is not periodic; a layer
    less than potentials.Z_TOLERANCE = 1e-6 Å below a surface counts as on it); a 2D layer is
    placed once, centred in the thickness. ``hydrogen=False`` removes all H atoms (the
    UiO-66 study's thermal table has no H; whether its model had H is not known).

    Returns Atoms with cell diag(Lx, Ly, thickness), pbc (True, True, False), positions
    wrapped laterally into the cell and z measured from the entrance surface (beam +z).
    Raises StructureError for a size or thickness that is not a positive finite number.
    """
    if isinstance(size, str) or np.shape(size) != (2,):
        raise StructureError(f"size must be (Ly, Lx) in Å, got {size!r}")
    ly = _positive("size[0] (Ly)", size[0])
    lx = _positive("size[1] (Lx)", size[1])
    thickness = _positive("thickness", thickness)
    cell = orthogonal_cell(atoms, zone_axis, max_length=max_length)
    cx, cy, cz = cell.cell.lengths()
    layer = not cell.pbc[2]
    if periodic_lateral:
        nx, ny = (max(1, int(np.floor(length / c + 0.5))) for length, c in ((lx, cx), (ly, cy)))
        lx, ly = nx * cx, ny * cy
    else:
        nx, ny = math.ceil(lx / cx - 1e-9), math.ceil(ly / cy - 1e-9)
    if layer:
        if cz > thickness:
            raise StructureError(
                f"thickness = {thickness:g} Å is thinner than the layer ({cz:.3f} Å)"
            )
        nz = 1
    else:
        nz = math.ceil(thickness / cz - 1e-9)
    block = cell.repeat((nx, ny, nz))
    pos = block.positions
    if layer:
        pos[:, 2] += (thickness - cz) / 2
    # the slice binning rule: within Z_TOLERANCE below an edge counts as on the edge
    keep = (pos[:, 2] >= -Z_TOLERANCE) & (pos[:, 2] < thickness - Z_TOLERANCE)
    if not periodic_lateral:
        keep &= (pos[:, 0] < lx) & (pos[:, 1] < ly)
    if not hydrogen:
        keep &= block.numbers != 1
    pos = pos[keep]
    pos[:, 0] = np.mod(pos[:, 0], lx)
    pos[:, 1] = np.mod(pos[:, 1], ly)
    info = dict(cell.info, size=(ly, lx), thickness=thickness, repeats=(ny, nx, nz))
    return Atoms(
        block.numbers[keep],
        pos,
        cell=np.diag([lx, ly, thickness]),
        pbc=(True, True, False),
        info=info,
    )


# ------------------------------------------------------------------ frozen phonons


def default_sigmas(atoms: Atoms, structure: str | None = None,
                   generic: float | None = GENERIC_SIGMA) -> dict[str, float]:
    """rms displacement per direction σ (Å) for each element in ``atoms``.

    The values of ``structure`` (a builtin name; default ``atoms.info["name"]``) in
    THERMAL_SIGMAS where the element is there, else ``generic`` (GENERIC_SIGMA = 0.08 Å by
    default). ``generic=None`` raises StructureError for an element without a value.
    """
    name = structure if structure is not None else atoms.info.get("name", "")
    table = THERMAL_SIGMAS.get(str(name).lower(), {})
    out = {}
    for symbol in sorted(set(atoms.get_chemical_symbols())):
        if symbol in table:
            out[symbol] = table[symbol]
        elif generic is None:
            where = name or "this structure"
            raise StructureError(f"no thermal displacement sigma known for element {symbol} "
                                 f"in {where}; give one (e.g. --sigma {symbol}=0.08)")
        else:
            out[symbol] = float(generic)
    return out


def displace_atoms(atoms: Atoms, sigmas: Mapping[str, float], rng: np.random.Generator) -> Atoms:
    """A copy of ``atoms`` with independent Gaussian displacements N(0, σ²) along x, y, z.

    ``sigmas``: element symbol -> rms displacement per Cartesian direction σ (Å, >= 0;
    U_iso = σ², B = 8π²σ²). Positions are not re-wrapped into the cell.
    Raises StructureError for an element of ``atoms`` missing from ``sigmas`` (naming
    it) or a negative / non-finite σ.
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    for symbol, sigma in sigmas.items():
        try:
            ok = math.isfinite(float(sigma)) and float(sigma) >= 0
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise StructureError(
                f"thermal displacement sigma for {symbol} must be a finite number >= 0 Å, "
                f"got {sigma!r}"
            )
    symbols = np.array(atoms.get_chemical_symbols())
    missing = sorted(set(symbols.tolist()) - set(sigmas))
    if missing:
        raise StructureError(
            f"no thermal displacement sigma given for element(s) {', '.join(missing)}"
        )
    per_atom = np.array([float(sigmas[s]) for s in symbols]) if len(symbols) else np.zeros(0)
    out = atoms.copy()
    out.positions = atoms.positions + rng.standard_normal((len(atoms), 3)) * per_atom[:, None]
    return out


def frozen_phonon_configurations(
    atoms: Atoms,
    sigmas: Mapping[str, float] | None,
    n_configs: int,
    seed: int | None,
) -> list[Atoms]:
    """``n_configs`` thermally displaced copies of ``atoms`` (see ``displace_atoms``).

    Reproducible: configuration k uses the k-th child of numpy.random.SeedSequence(seed),
    so it is the same whatever n_configs is (``seed=None`` draws fresh entropy).
    ``n_configs=0`` or ``sigmas=None`` gives the undisplaced structure once.
    """
    if isinstance(n_configs, bool) or not isinstance(n_configs, int | np.integer) or n_configs < 0:
        raise StructureError(f"n_configs must be an integer >= 0, got {n_configs!r}")
    if sigmas is None or n_configs == 0:
        return [atoms.copy()]
    children = np.random.SeedSequence(seed).spawn(int(n_configs))
    return [displace_atoms(atoms, sigmas, np.random.default_rng(c)) for c in children]


# ---------------------------------------------------------------------------- helpers


def _positive(name: str, value) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise StructureError(f"{name} must be a positive length in Å, got {value!r}") from None
    if not math.isfinite(x) or x <= 0:
        raise StructureError(f"{name} must be a positive length in Å, got {value!r}")
    return x


def _zone_axis(zone_axis) -> np.ndarray:
    try:
        uvw = np.asarray(zone_axis, dtype=float)
    except (TypeError, ValueError):
        uvw = np.zeros(0)
    if (
        uvw.shape != (3,)
        or not np.all(np.isfinite(uvw))
        or np.any(uvw != np.round(uvw))
        or not np.any(uvw)
    ):
        raise StructureError(
            f"zone_axis must be three integers [u v w], not all 0, got {zone_axis!r}"
        )
    return uvw.astype(int)
