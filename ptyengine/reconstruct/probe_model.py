"""The probe the ML engine refines with the object: a few aberration coefficients, or free
pixels with incoherent (mixed-state) modes.

Both models give the engine the same five things about their parameter vector v: the
probe it stands for (Fourier space, FFT order, complex64), the gradient of L from the
forward model's probe term upd = −∂L/∂P̂* (:func:`.forward.exit_wave_pass`), the probe's
change along a direction (for the Newton step), a scalar product, and a preconditioner
(:mod:`.ml`'s conjugate gradients treat v like the object's phase).

**Coefficients** (``refine_probe`` none / defocus / aberrations; :mod:`.probe_coefficients`):
v = c (Å), P̂ = P̂₀ exp(−i Σ_i (c_i − c0_i) χ_i),

    ∂L/∂c_i = 2 Re Σ_k i χ_i P̂ conj(upd),   dP̂ = −i Σ_i d_i χ_i P̂,

preconditioned by each coefficient's Fisher information F_i (s_i = h̄ g_i / F_i).

**Pixels** (``refine_probe="pixels"``, ``probe_modes`` M ≥ 1): v = the M modes P̂_m
themselves, (M, Wy, Wx). The pattern is their incoherent sum, I = Σ_m |F[P_m,j O_j]|²
(Thibault & Menzel, Nature 494, 68 (2013)): a partially coherent illumination (finite
source, focal spread) as a density matrix ρ = Σ_m |P_m⟩⟨P_m|. As a real vector (Re, Im)
the gradient is G_m = 2 ∂L/∂P̂_m* = −2 upd_m, dL = Re Σ conj(G) dP̂. Two constraints make
the pixels determinable: every mode lives inside the condenser aperture, |k| ≤ α/λ +
SUPPORT_MARGIN pixels (directions are zero outside it), and the modes are kept orthogonal.
L depends on the modes only through ρ, which a unitary mixing P_m → Σ_n P_n V_nm leaves
alone; before every iteration V is taken from the eigenvectors of the modes' Gram matrix
(⟨P_m, P_n⟩ = V Λ V^H, strongest mode first), and the same V is applied to every stored
gradient and direction (G → G V for unitary V), so the conjugate-gradient recursion goes on
unchanged. The preconditioner is one number, the Fisher curvature along the gradient per
unit length, F = G·HG / G·G (re-estimated every FISHER_EVERY iterations; s = h̄ G / F).

Start: mode 0 is the calibration's probe (after the defocus search); mode m ≥ 1 is P̂₀
times a low-order function of k inside the aperture (k_y, k_x, |k|², k_y k_x, …: the
changes a finite source and a focal spread make), with EXTRA_MODE_POWER of the counts each,
orthogonalised; mode 0 gives up what they take.
"""

from __future__ import annotations

import math

import numpy as np

from .. import backend, physics
from . import frame as frm
from .probe_coefficients import PROBE_COEFFICIENTS, coefficient_basis, initial_coefficients

FITTED = PROBE_COEFFICIENTS["aberrations"]  # what the pixel probe reports: C10, C12a, C12b
#: counts per bright-field pixel and pattern from which "auto" frees the probe's pixels: on
#: one-cell SrTiO3 with a focal spread they beat the aberration probe at 3.5 (NCC 0.77
#: against 0.73) and stopped at their start at 0.35 (benchmarks/RESULTS.md)
PIXEL_COUNTS = 3.0
SUPPORT_MARGIN = 1.5  # detector pixels beyond the aperture's edge a mode may hold
EXTRA_MODE_POWER = 0.05  # fraction of the counts each further mode starts with


class Coefficients:
    """A few aberration coefficients (Å): see the module docstring."""

    kind = "coefficients"
    n_modes = 1

    def __init__(self, cal, names, xp):
        self.names, self.xp = tuple(names), xp
        self.basis = coefficient_basis(cal, self.names, xp)

    @property
    def refines(self) -> bool:
        return len(self.names) > 0

    def start(self, probe0, c0, defocus=None) -> None:
        self.probe0, self.c0 = probe0, np.asarray(c0, dtype=np.float64)

    def refined(self, c) -> dict[str, float]:
        """The refined coefficients by name (Å)."""
        return dict(zip(self.names, (float(x) for x in c), strict=True))

    def initial(self):
        return self.xp.asarray(self.c0)

    def value(self, state):
        """The working copy (host float64) of a state array."""
        return backend.to_numpy(state).astype(np.float64).copy()

    def zeros(self):
        return np.zeros(len(self.names))

    def probe(self, c):
        c = backend.to_numpy(c).astype(np.float64)  # host or device (cupy: no np.asarray)
        if len(c) == 0 or not np.any(c != self.c0):
            return self.probe0
        xp = self.xp
        dchi = xp.tensordot(xp.asarray((c - self.c0).astype(np.float32)), self.basis, axes=1)
        return (self.probe0 * xp.exp(-1j * dchi)).astype(np.complex64)

    def gradient(self, probe_k, upd) -> np.ndarray:
        w = (1j * probe_k * upd.conj()).real
        return np.array([2 * float(self.xp.sum(w * b)) for b in self.basis], dtype=np.float64)

    def direction(self, probe_k, d):
        xp = self.xp
        dchi = xp.tensordot(xp.asarray(np.asarray(d, np.float32)), self.basis, axes=1)
        return (-1j * dchi * probe_k).astype(np.complex64)

    @staticmethod
    def dot(a, b) -> float:
        return float(np.dot(a, b))

    def fisher(self, curvature, probe_k, g) -> np.ndarray:
        """F_i: ``curvature(d_probe_k)`` (the Fisher d²L/dt²) along each unit coefficient."""
        out = []
        for i in range(len(self.names)):
            unit = np.zeros(len(self.names))
            unit[i] = 1.0
            out.append(curvature(self.direction(probe_k, unit)))
        return np.array(out, dtype=np.float64)

    def precondition(self, g, fisher, h_bar):
        fisher = np.asarray(fisher, dtype=np.float64)
        return np.where(fisher > 0, h_bar * g / np.where(fisher > 0, fisher, 1.0), 0.0)

    def orthogonalise(self, arrays, keys) -> None:
        """Nothing to do: coefficients have no modes."""


class Pixels:
    """Free probe pixels in M incoherent modes: see the module docstring."""

    kind = "pixels"
    names = ()

    def __init__(self, cal, n_modes: int, xp):
        self.n_modes, self.xp = int(n_modes), xp
        shape, dk, _ = frm.detector_axes(cal)
        ky, kx = physics.spatial_frequencies(shape, (1 / (shape[0] * dk[0]),
                                                     1 / (shape[1] * dk[1])))  # fmt: skip
        k_ap = cal.semiangle * 1e-3 / cal.wavelength
        edge = k_ap + SUPPORT_MARGIN * min(dk)
        self.support = xp.asarray((ky**2 + kx**2 <= edge**2).astype(np.float32))
        k = [ky / k_ap, kx / k_ap]  # the low-order functions the further modes start from
        self._shapes = [k[0], k[1], k[0] ** 2 + k[1] ** 2, k[0] * k[1], k[0] ** 2 - k[1] ** 2]
        self.c0 = np.zeros(0)
        self.cal = cal
        self.basis = coefficient_basis(cal, FITTED, xp)  # ∂χ/∂c of the reported fit
        self.inner = xp.asarray((ky**2 + kx**2 <= (k_ap / 2) ** 2).astype(np.float32))

    refines = True

    def start(self, probe0, c0, defocus=None, reference=None) -> None:
        """Start from ``probe0`` whose coefficients are ``reference`` (Å; None: the
        calibration's with C10 = ``defocus``)."""
        self.probe0 = probe0
        self.reference = (np.asarray(reference, dtype=np.float64) if reference is not None
                          else initial_coefficients(self.cal, FITTED, defocus))  # fmt: skip

    def refined(self, v) -> dict[str, float]:
        """C10, C12a, C12b (Å) of the strongest mode, for the report and for runs that
        start from this one: the start's values plus the weighted least-squares fit
        Σ_i Δc_i χ_i = −arg(P̂ conj(P̂₀)) (weights |P̂ P̂₀|), first inside α/2 (where a
        defocus change of ≲ 4 × 25 Å stays within ±π at 300 kV, 20 mrad), then over the
        aperture after removing that fit."""
        xp = self.xp
        p = v[0] * self.probe0.conj()
        dc = np.zeros(len(FITTED))
        for region in (self.inner, self.support):
            dchi = xp.tensordot(xp.asarray(dc.astype(np.float32)), self.basis, axes=1)
            r = p * xp.exp(1j * dchi)  # what the fit so far leaves
            w = (xp.abs(r) * region).reshape(-1)
            a = (self.basis.reshape(len(FITTED), -1) * w).T
            b = -xp.angle(r).reshape(-1) * w
            sol = np.linalg.lstsq(backend.to_numpy(a).astype(np.float64),
                                  backend.to_numpy(b).astype(np.float64), rcond=None)[0]
            dc = dc + sol
        return dict(zip(FITTED, (float(x) for x in self.reference + dc), strict=True))

    def initial(self):
        """(M, Wy, Wx) complex64: the calibration's probe and M − 1 weak further modes."""
        xp, m = self.xp, self.n_modes
        p0 = self.probe0 * self.support
        power = float(xp.sum(xp.abs(p0) ** 2))
        modes = [p0]
        rng = np.random.default_rng(0)
        for i in range(1, m):
            f = (self._shapes[i - 1] if i - 1 < len(self._shapes)
                 else rng.standard_normal(self.support.shape))  # fmt: skip
            modes.append(p0 * xp.asarray(f.astype(np.float32)))
        v = xp.stack(modes).astype(np.complex64)
        v = _orthonormal(v, xp)  # unit modes, mode 0 still along the probe
        weights = [1.0 - EXTRA_MODE_POWER * (m - 1)] + [EXTRA_MODE_POWER] * (m - 1)
        w = xp.asarray(np.sqrt(np.asarray(weights) * power).astype(np.float32))
        return (v * w[:, None, None]).astype(np.complex64)

    def value(self, state):
        return state.copy()

    def zeros(self):
        return self.xp.zeros((self.n_modes, *self.support.shape), dtype=np.complex64)

    def probe(self, v):
        """The forward model's probe: (Wy, Wx) for one mode, else the (M, Wy, Wx) modes."""
        return v[0] if self.n_modes == 1 else v

    def gradient(self, probe_k, upd):
        upd = upd.reshape((self.n_modes, *upd.shape[-2:]))
        return (-2.0 * upd * self.support).astype(np.complex64)

    def direction(self, probe_k, d):
        return d[0] if self.n_modes == 1 else d

    def dot(self, a, b) -> float:
        return float(self.xp.sum((a.conj() * b).real))

    def fisher(self, curvature, probe_k, g) -> float:
        """F = G·HG / G·G: the curvature along the gradient per unit length."""
        gg = self.dot(g, g)
        return curvature(self.direction(probe_k, g)) / gg if gg > 0 else 0.0

    def precondition(self, g, fisher, h_bar):
        f = float(np.asarray(fisher).reshape(-1)[0]) if np.size(fisher) else 0.0
        return ((h_bar / f) * g * self.support).astype(np.complex64) if f > 0 else 0 * g

    def orthogonalise(self, arrays, keys) -> None:
        """Mix the modes in ``arrays[keys[0]]`` into orthogonal ones, strongest first, and
        apply the same unitary V to ``arrays[k]`` for every further key (module docstring)."""
        if self.n_modes == 1:
            return
        xp = self.xp
        v = arrays[keys[0]]
        flat = v.reshape(self.n_modes, -1).astype(np.complex128)
        gram = backend.to_numpy(flat.conj() @ flat.T)  # ⟨P_m, P_n⟩
        lam, vecs = np.linalg.eigh(gram)
        vecs = xp.asarray(vecs[:, np.argsort(lam)[::-1]])
        for k in keys:
            a = arrays[k]
            mixed = xp.tensordot(vecs.T, a.reshape(self.n_modes, -1).astype(np.complex128),
                                 axes=1)  # fmt: skip
            arrays[k] = mixed.reshape(a.shape).astype(np.complex64)

    def powers(self, v) -> list[float]:
        """Each mode's fraction of the counts."""
        p = backend.to_numpy(self.xp.sum(self.xp.abs(v) ** 2, axis=(1, 2))).astype(np.float64)
        return [float(x) for x in p / max(p.sum(), 1e-30)]


def _orthonormal(v, xp):
    """Gram–Schmidt of the modes in order (mode 0 keeps its direction), each of unit norm."""
    out = []
    for m in range(v.shape[0]):
        u = v[m].astype(np.complex128)
        for q in out:
            u = u - xp.sum(q.conj() * u) * q
        norm = math.sqrt(float(xp.sum(xp.abs(u) ** 2)))
        out.append(u / norm if norm > 0 else u)
    return xp.stack(out)


def probe_kind(params, counts_per_bf_pixel: float) -> str:
    """What ``params.refine_probe`` refines on these data: "auto" is "pixels" on one slice
    where a pattern holds ≥ PIXEL_COUNTS counts per bright-field pixel, else "aberrations"."""
    if params.refine_probe != "auto":
        return params.refine_probe
    pixels = params.slices == 1 and counts_per_bf_pixel >= PIXEL_COUNTS
    return "pixels" if pixels else "aberrations"


def probe_model(cal, kind: str, n_modes: int, names, xp):
    """The model of ``kind`` (:func:`probe_kind`): :class:`Pixels` in ``n_modes`` modes, or
    :class:`Coefficients` of ``names``."""
    if kind == "pixels":
        return Pixels(cal, n_modes, xp)
    return Coefficients(cal, names, xp)
