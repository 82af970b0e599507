"""Correlated scan-position errors: row jitter and drift, refined from many patterns at once.

One pattern at 20 e/Å² locates its probe to ~0.8 Å (its Cramér–Rao bound, :mod:`.positions`):
independent position errors of 0.3 Å cannot be found from it. Real scans' errors are not
independent, though. The scan coils' flyback leaves each row offset as a whole (row
jitter), and the stage or the beam drifts smoothly during the acquisition. A model with a
few parameters shared by many positions pools their Fisher information: a row of n_x
patterns locates its offset √n_x times better than one pattern does (~0.14 Å for a
35-pattern row at 20 e/Å²).

**Model.** With m_j the measured position of pattern j (object pixels), acquired j-th in a
row-major raster of ``scan_shape`` = (n_y, n_x) (row ρ_j = j // n_x, time t_j = j),

    p_j = m_j + A (m_j − m̄) + J_j θ + u_j

(A, u_j: :mod:`.positions`). J = (1 − Q Qᵀ) B is a basis B of correlated displacements
(2N × P, sparse), with Q (2N × 6, orthonormal) the translations and linear maps of the
measured positions projected out: these move the object with the positions and leave the
patterns nearly unchanged (the global translation exactly), so the data cannot fix them.
The bases (``kind``):

- ``rows``: one (y, x) offset per scan row, B_{j,a; (ρ,b)} = δ_{ρ_j ρ} δ_ab (P = 2 n_y);
- ``drift``: a piecewise-linear path in time through K knots t_k evenly spread over the
  acquisition, B_{j,a; (k,b)} = hat_k(t_j) δ_ab (P = 2K);
- ``rows+drift``: both.

**Step.** At a fixed object, from every position's gradient g_j and Fisher block F_j
(:func:`.positions.gradient_and_fisher`), with a Gaussian prior ½Λ|θ|² (Λ = 1/σ², σ the rms
expected of a correlated offset, object pixels) and a Levenberg term λ = LEVENBERG × the
median of diag H,

    G = Jᵀ g,   H = Jᵀ F J,   Δθ = −(H + (Λ + λ) 1)⁻¹ (G + Λ θ)

scaled down so that no position moves more than ``max_shift``. H is formed from the
sparse B: Jᵀ F J = BᵀFB − BᵀFQ C − Cᵀ QᵀFB + Cᵀ QᵀFQ C with C = QᵀB (6 × P), so the cost
is O(N) plus O(P²), not O(N P²). The bound :func:`crb` is that of the displacement J θ at
a position, the median over positions of √tr (J H⁺ Jᵀ)_jj (object pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import PtyengineError

KINDS = ("none", "rows", "drift", "rows+drift")
#: as :data:`.positions.LEVENBERG`, relative to the median diagonal of H
LEVENBERG = 0.05


@dataclass
class CorrelatedModel:
    """J = (1 − QQᵀ)B of the module docstring: ``basis`` B (2N × P, sparse CSR; rows are
    (j, axis) pairs, j-major), ``q`` Q (2N × 6), ``c`` = QᵀB (6 × P)."""

    kind: str
    basis: sp.csr_matrix
    q: np.ndarray
    c: np.ndarray

    @property
    def size(self) -> int:
        """P, the number of parameters θ."""
        return self.basis.shape[1]

    def displacement(self, theta) -> np.ndarray:
        """J θ as (N, 2) object pixels."""
        theta = np.asarray(theta, dtype=np.float64)
        d = self.basis @ theta - self.q @ (self.c @ theta)
        return d.reshape(-1, 2)

    def project(self, g) -> np.ndarray:
        """Jᵀ g (P,) of per-position vectors ``g`` (N, 2)."""
        g = np.asarray(g, dtype=np.float64).reshape(-1)
        return self.basis.T @ g - self.c.T @ (self.q.T @ g)

    def hessian(self, fisher) -> np.ndarray:
        """Jᵀ F J (P × P) for the per-position Fisher blocks ``fisher`` (N, 2, 2)."""
        f = _block_diagonal(fisher)
        fb = (f @ self.basis).tocsr()
        btfb = (self.basis.T @ fb).toarray()
        btfq = np.asarray(fb.T @ self.q)  # P × 6
        qtfq = self.q.T @ np.asarray(f @ self.q)
        cross = btfq @ self.c
        return btfb - cross - cross.T + self.c.T @ qtfq @ self.c


def _block_diagonal(fisher) -> sp.csr_matrix:
    """The N 2 × 2 blocks as one sparse 2N × 2N matrix."""
    return sp.block_diag(list(np.asarray(fisher, dtype=np.float64)), format="csr")


def check_kind(kind: str) -> str:
    """``kind`` if it names a model, else one clear error."""
    if kind not in KINDS:
        raise PtyengineError(f"--position-correlated must be one of {', '.join(KINDS)}, "
                             f"got {kind!r}")  # fmt: skip
    return kind


def row_basis(scan_shape) -> sp.csr_matrix:
    """B of ``rows``: (2N × 2n_y), one (y, x) offset per scan row (row-major raster)."""
    ny, nx = scan_shape
    j = np.arange(ny * nx)
    rows = np.concatenate([2 * j, 2 * j + 1])
    cols = np.concatenate([2 * (j // nx), 2 * (j // nx) + 1])
    return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(2 * ny * nx, 2 * ny))


def drift_basis(n: int, knots: int) -> sp.csr_matrix:
    """B of ``drift``: (2N × 2K), hat functions of the acquisition index t = 0 … N−1 at
    ``knots`` K ≥ 2 evenly spread knots (a piecewise-linear path through them)."""
    if knots < 2:
        raise PtyengineError(f"--position-drift-knots must be ≥ 2, got {knots}")
    t = np.arange(n) * (knots - 1) / max(n - 1, 1)  # in knot intervals
    k0 = np.minimum(np.floor(t).astype(np.int64), knots - 2)
    w1 = t - k0
    rows, cols, vals = [], [], []
    for axis in (0, 1):
        for k, w in ((k0, 1.0 - w1), (k0 + 1, w1)):
            rows.append(2 * np.arange(n) + axis)
            cols.append(2 * k + axis)
            vals.append(w)
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(2 * n, 2 * knots))  # fmt: skip


def affine_directions(measured) -> np.ndarray:
    """Q (2N × 6): an orthonormal basis of the translations and linear maps of the measured
    positions ``measured`` (N, 2), j-major (y, x) pairs."""
    m = np.asarray(measured, dtype=np.float64)
    r = m - m.mean(axis=0)
    n = len(m)
    q = np.zeros((n, 2, 6))
    q[:, 0, 0] = q[:, 1, 1] = 1.0
    q[:, 0, 2:4] = r
    q[:, 1, 4:6] = r
    q, _ = np.linalg.qr(q.reshape(2 * n, 6))
    return q


def build(kind: str, scan_shape, measured, knots: int = 8) -> CorrelatedModel | None:
    """The model ``kind`` (module docstring) for positions ``measured`` (N, 2 object pixels)
    of a row-major raster ``scan_shape``; None for "none"."""
    check_kind(kind)
    if kind == "none":
        return None
    n = len(measured)
    ny, nx = (int(v) for v in scan_shape)
    if ny * nx != n:
        raise PtyengineError(f"--position-correlated {kind}: the scan shape {ny} × {nx} does "
                             f"not hold the {n} positions")  # fmt: skip
    parts = []
    if "rows" in kind:
        parts.append(row_basis((ny, nx)))
    if "drift" in kind:
        parts.append(drift_basis(n, knots))
    basis = sp.hstack(parts, format="csr")
    q = affine_directions(measured)
    return CorrelatedModel(kind, basis, q, np.asarray(basis.T @ q).T)


def step(model: CorrelatedModel, g, fisher, theta, prior: float, max_shift: float):
    """(Δθ, H): the damped Newton step of θ with the prior ½Λ|θ|² (Λ = ``prior``, 1/px²),
    scaled so that no position moves more than ``max_shift`` pixels; H = JᵀFJ."""
    hess = model.hessian(fisher)
    lam = LEVENBERG * float(np.median(np.diag(hess))) + 1e-12
    a = hess + (prior + lam) * np.eye(model.size)
    dt = -np.linalg.solve(a, model.project(g) + prior * np.asarray(theta))
    longest = float(np.hypot(*model.displacement(dt).T).max())
    if longest > max_shift:
        dt *= max_shift / longest
    return dt, hess


def crb(model: CorrelatedModel, hess) -> float:
    """The Cramér–Rao bound of the correlated displacement J θ at one position (object
    pixels): the median over positions of √tr of its 2 × 2 covariance J H⁺ Jᵀ. Measured
    where the positions move, not per parameter: a direction of θ that J nearly projects
    away has a tiny eigenvalue of H and a huge variance of θ, but moves nothing."""
    m = np.linalg.pinv(hess, rcond=1e-10, hermitian=True)
    b, q, c = model.basis, model.q, model.c
    mc = m @ c.T  # P × 6
    var = np.empty(b.shape[0])
    for r0 in range(0, b.shape[0], 4096):  # diag(B M Bᵀ − 2 B M Cᵀ Qᵀ + Q C M Cᵀ Qᵀ)
        bc = b[r0:r0 + 4096]
        qc = q[r0:r0 + 4096]
        var[r0:r0 + 4096] = (np.asarray((bc @ m) * bc.toarray()).sum(axis=1)
                             - 2 * np.sum(np.asarray(bc @ mc) * qc, axis=1)
                             + np.sum((qc @ (c @ mc)) * qc, axis=1))  # fmt: skip
    per_position = var.clip(min=0.0).reshape(-1, 2).sum(axis=1)
    return float(np.median(np.sqrt(per_position)))
