"""Scan-position refinement for the Poisson ML engine (:mod:`.ml`, ``refine_positions``).

A real scan does not put the probe exactly where the scan generator says: drift, flyback
and hysteresis move positions by tenths of an Å to Å. The likelihood knows where each
pattern was taken, so every position r_j is refined with the object.

**Coordinates.** A position is held as p_j = (corner_j + W//2 + frac_j) object pixels from
the object grid's pixel (0, 0) (:class:`.epie.PtychoGeometry`: the window's integer
corner and the probe's sub-pixel shift frac ∈ [0, 1)); in Å, in the reconstruction frame,
r_j = object_origin + p_j · d (d: the object pixel, Å), and in the scan frame of the
calibration's positions (``scan_origin + (i·dy, j·dx)``) R(θ) r_j (:mod:`.frame`).

**Gradient.** The probe is moved to frac_j by the Fourier ramp exp(−2πi k·frac_j) (k in
cycles per pixel, FFT order: :func:`ptyengine.shift.ramps_2d`), so along axis a ∈ {y, x}

    ∂P̂_j/∂p_a = −2πi k_a P̂_j,    ∂Ψ_j/∂p_a = F[F⁻¹[−2πi k_a P̂_j] · O_j]

(Ψ_j = F[P_j · O_j], the single-slice model of :mod:`.forward`). With I = |Ψ_j|² (counts)
and I'_a = 2 Re(Ψ_j* ∂Ψ_j/∂p_a), the Poisson objective's derivative and its Fisher
information are, per position (fitted pixels only: held-out and masked pixels are left out
as in the object's fit),

    g_a    = ∂L/∂p_a = Σ_k (1 − n/(I + ε)) I'_a          (half-deviance per pixel)
    F_ab   = Σ_k I'_a I'_b / (I + ε)                     (half-deviance per pixel²)

both from :func:`kernels.poisson.poisson_curvature` along ∂Ψ/∂p_y, ∂Ψ/∂p_x and their sum
(F_xy = (F(y + x) − F_yy − F_xx)/2). In Å: g/d, F/d². One pass costs 6 FFTs per position
(the probe, its two derivatives, each there and back), against 7 for an iteration of the
object's conjugate gradients.

**Model and step.** From the measured (start) positions m_j the positions are

    p_j = m_j + A (m_j − m̄) + u_j

with A a global 2 × 2 linear map (scan scale, rotation and shear: dimensionless) and u_j
each position's own offset (object pixels). One update, at a fixed object, takes

1. with ``position_affine`` (off by default: A is nearly degenerate with the object's own
   scale and rotation under a round probe, and the fixed-object curvature below
   overstates what the data say about it; see MLParameters), the Newton step of A from
   the same g and F:
   ΔA = −H⁻¹ G, G = Σ_j J_jᵀ g_j, H = Σ_j J_jᵀ F_j J_j, J_j = ∂p_j/∂A (N × 2 × 4),
   scaled down so that no position moves more than ``max_shift``; the gradients are
   carried along linearly, g_j ← g_j + F_j J_j ΔA;
2. a damped Newton step of every u_j with a Gaussian prior ½ Λ |u_j|² on it (Λ = 1/σ²,
   σ = ``position_sigma``: the rms error expected of a measured position beyond A):
   Δu_j = −(F_j + (Λ + λ) 1)⁻¹ (g_j + Λ u_j), the Levenberg term λ = LEVENBERG × the
   median over positions of tr F / 2 (a position over a featureless patch of object moves
   little instead of far), its length clipped to ``max_shift`` (object pixels);

"auto" takes step 2 only at the updates where the median Cramér–Rao bound of one
position, √tr F⁻¹, is at most CRB_FRACTION σ, else it moves nothing (and the object's CG
is not restarted); and it keeps an update only if the held-out half-deviance D_h at the
same object is no higher at the new positions than at the old (the position pass gives
the old, the engine's next gradient pass the new; else the windows go back exactly and
that pass is made again). "on" always moves them.

The prior and this rule are what make refinement safe at low dose. The bound, measured on
the UiO-66 quick data at 50 nm defocus at the converged object: 0.003 Å noise-free,
0.09 / 0.32 / 0.81 Å at 1000 / 100 / 20 e/Å² (1440 / 143 / 29 counts per pattern; it
falls as 1/√counts). Where it exceeds σ the posterior stays near the measured position,
where it is far below σ the data decide. Moving every position with the bound at 0.32 Å
(100 e/Å²) made the held-out likelihood worse (2N parameters fitted to noise) and lowered
NCC(1 Å) with exact starting positions from 0.87 to 0.82; at 20 e/Å² from 0.69 to 0.60.

The positions are coupled only through the object, which is held fixed while they move;
the object's CG restarts after every position update (its previous directions were for
other positions).

**The global translation is not in the data.** Moving every position by the same t and
the object by t leaves every pattern unchanged, so the mean of Δu is removed (A acts
about the centroid m̄ and adds none): the positions' mean stays where the measurement put
it. A position that would take its window off the object grid is held at its edge
(``clipped``): the grid does not grow. The summary in ``result.extra["positions"]``
reports A as the least-squares linear part of the displacements (:func:`affine_part`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import backend
from ..kernels import poisson as pp
from ..kernels import ptycho as pk
from . import frame as frm
from . import position_models as pm
from .forward import CPLX, _chunk, sub_chunks

#: λ / (median tr F / 2): small enough not to slow well-determined positions, large enough
#: that a position over a flat patch (F ≪ median) takes a step ~g/λ, not g/F.
LEVENBERG = 0.05
#: "auto" moves a position's own offset when the median Cramér–Rao bound of the positions
#: is at most this fraction of the prior's σ: then the posterior's rms error is at most
#: 0.45 σ, a gain worth the noise that 2N more parameters add to the fit (the held-out
#: likelihood sees it: at 100 e/Å² on UiO-66, bound 0.32 Å, moving them made it worse).
CRB_FRACTION = 0.5
#: The same for the correlated offsets (:mod:`.position_models`), stricter: their bound is
#: at a fixed object, which pooled over a row moves with them. UiO-66 quick, 50 nm, rows:
#: at 100 e/Å² (row bound 0.054 Å) moving them took 0.3 Å row jitter to 0.12 Å (NCC(1 Å)
#: 0.821 → 0.871, exact positions 0.874); at 20 e/Å² (bound 0.075 Å) the moves were noise
#: (exact positions moved 0.20 Å, NCC(1 Å) 0.720 → 0.685) and the held-out rule let them.
CORRELATED_CRB_FRACTION = 0.2


@dataclass
class PositionUpdate:
    """What one update did: the steps applied (N, 2) in object pixels, their rms (Å), the
    mean step removed (Å, the undetermined translation), how many positions were held at
    the object grid's edge, the median Cramér–Rao bound √tr F⁻¹ of one position (Å),
    whether the positions' own offsets moved (``own``), the held-out half-deviance at the
    positions before (``held_before``), the geometry's (corners, frac) before, and the
    correlated offsets' median bound (Å; −1: no model) and whether they moved
    (:mod:`.position_models`)."""

    steps: np.ndarray
    rms: float
    mean_removed: tuple[float, float]
    clipped: int
    crb: float
    own: bool
    held_before: float
    before: tuple
    correlated_crb: float = -1.0
    correlated: bool = False


def pixel_positions(geom) -> np.ndarray:
    """(N, 2) float64: p_j = corner_j + W//2 + frac_j, object pixels from pixel (0, 0)."""
    half = np.array([geom.window[0] // 2, geom.window[1] // 2])
    return geom.corners + half + geom.frac


def set_pixel_positions(geom, p) -> int:
    """Move the geometry's windows to ``p`` (N, 2) object pixels (as :func:`pixel_positions`
    gives them): integer corners, frac ∈ [0, 1). A window that would leave the object grid
    is held at its edge; returns how many were."""
    half = np.array([geom.window[0] // 2, geom.window[1] // 2])
    top = np.array(geom.object_shape) - np.array(geom.window)  # largest corner
    c = np.asarray(p, dtype=np.float64) - half
    held = np.clip(c, 0.0, top)
    clipped = int(np.count_nonzero(np.any(held != c, axis=1)))
    corners = np.floor(held).astype(np.int64)
    corners = np.minimum(corners, top)
    geom.corners[...] = corners
    geom.frac[...] = held - corners
    return clipped


def scan_positions(geom) -> np.ndarray:
    """(N, 2) positions in Å in the scan frame, as the calibration's (scan_origin + (i·dy,
    j·dx)), of the geometry's windows."""
    r = np.asarray(geom.object_origin) + pixel_positions(geom) * np.asarray(geom.sampling)
    return frm.frame_to_scan(r, geom.rotation)


def affine_part(nominal, refined) -> dict:
    """The least-squares linear map of the refined positions' displacements (Å) on the
    nominal positions (Å, N × 2, scan frame): u = A (r − r̄) + t; A (dimensionless: 0.01 is
    a 1 % scan-scale error) and t (Å), and the rms (Å) of what A and t leave."""
    r = np.asarray(nominal, np.float64)
    u = np.asarray(refined, np.float64) - r
    x = np.column_stack([r - r.mean(axis=0), np.ones(len(r))])
    coef, *_ = np.linalg.lstsq(x, u, rcond=None)
    rest = u - x @ coef
    return {"matrix": coef[:2].T.tolist(), "translation_A": coef[2].tolist(),
            "residual_rms_A": float(np.sqrt(np.mean(np.sum(rest**2, axis=1))))}  # fmt: skip


def summary(start, refined, log, refined_on: bool) -> dict:
    """What a run did to the positions (Å, scan frame, N × 2 each), for result.extra:
    whether they were refined, every update's rms step, median Cramér–Rao bound and
    whether the own offsets moved, the correlated offsets' bound and whether they moved
    (``log``, k × 5), the rms displacement from the start,
    and its linear part (:func:`affine_part`)."""
    u = np.asarray(refined) - np.asarray(start)
    log = np.asarray(log).reshape(-1, 5)
    return {"refined": bool(refined_on), "update_rms_A": [float(v) for v in log[:, 0]],
            "cramer_rao_A": [float(v) for v in log[:, 1]],
            "own_offsets": [bool(v) for v in log[:, 2]],
            "correlated_cramer_rao_A": [None if v < 0 else float(v) for v in log[:, 3]],
            "correlated_offsets": [bool(v) for v in log[:, 4]],
            "shift_rms_A": float(np.sqrt(np.mean(np.sum(u**2, axis=1)))),
            "affine": affine_part(start, refined) if refined_on else None}  # fmt: skip


def derivative_probes(probe_k, xp):
    """(∂P̂/∂p_y, ∂P̂/∂p_x) = −2πi k_a P̂ (k in cycles per object pixel, FFT order)."""
    w0, w1 = probe_k.shape
    ky = xp.asarray(np.fft.fftfreq(w0).astype(np.float32))[:, None]
    kx = xp.asarray(np.fft.fftfreq(w1).astype(np.float32))[None, :]
    c = np.complex64(-2j * math.pi)
    return (c * ky * probe_k).astype(CPLX), (c * kx * probe_k).astype(CPLX)


def position_pass(obj, probe_k, block, idx, corners_dev, reduce, xp) -> None:
    """For the positions ``idx`` (flat scan indices) of ``block``: Ψ_j and ∂Ψ_j/∂p_y,
    ∂Ψ_j/∂p_x (single slice), handed to ``reduce(psi, d_y, d_x, local, positions, s0, s1)``
    as :func:`.forward.direction_pass` does; one part per CPU core. 6 FFTs per position."""
    w0, w1 = int(probe_k.shape[0]), int(probe_k.shape[1])
    inv_n = 1.0 / (w0 * w1)
    d_probes = derivative_probes(probe_k, xp)
    step = _chunk((w0, w1), 2) if xp is np else None  # GPU: sub_chunks' powers

    def part(p):
        sel = idx[p]
        idx_dev = xp.asarray(sel)
        local_dev = idx_dev - block.first
        ramp_y, ramp_x = block.ramps
        for s0, s1 in sub_chunks(len(sel), step):
            sub, loc = idx_dev[s0:s1], local_dev[s0:s1]
            c = corners_dev[sub]
            ry, rx = ramp_y[loc], ramp_x[loc]
            shape = (len(sub), w0, w1)
            bufs = [backend.fft_buffer(shape, CPLX, xp, slot)
                    for slot in ("probes", "psi", "dpsi")]  # fmt: skip
            for buf, wave in zip(bufs, (probe_k, *d_probes), strict=True):
                pk.ramp_multiply(buf.a, wave, ry, rx, inv_n)
                buf.inverse()  # [3 FFTs] P_j, ∂P_j/∂p_y, ∂P_j/∂p_x
                pk.transmit(buf.a, obj, c, buf.a)  # times O_j
                buf.forward()  # [3 FFTs]
            psi, d_y, d_x = (b.a for b in bufs)
            reduce(psi, d_y, d_x, loc, sub, p.start + s0, p.start + s1)

    backend.split_map(part, len(idx), xp)


def gradient_and_fisher(eng, obj, eps: float):
    """(g (N, 2), F (N, 2, 2), D_h) of every scan position (object pixels; module
    docstring) at the single-slice object ``obj`` and the engine's probe, from one pass
    over the data (the engine's batches, held-out pixels and detector mask); D_h: the
    held-out half-deviance there (:func:`kernels.poisson.poisson_ratio`)."""
    xp, n_pos = eng.xp, len(eng.geom.corners)
    g = np.zeros((n_pos, 2))
    fisher = np.zeros((n_pos, 2, 2))
    held = 0.0
    for block, idx in eng._batches():
        sums = xp.zeros((3, 2, len(idx)), dtype=np.float64)  # (y, x, y + x) × (d1, d2)
        dev = xp.zeros((2, len(idx)), dtype=np.float64)  # fitted, held-out

        def reduce(psi, d_y, d_x, loc, sub, s0, s1, block=block, sums=sums, dev=dev):
            for i, d in enumerate((d_y, d_x)):
                pp.poisson_curvature(psi, d, block.amplitudes, loc, sub, eng.mask,
                                     sums[i, 0, s0:s1], sums[i, 1, s0:s1], eng.cscale,
                                     eps, eng.seed, eng.params.holdout)  # fmt: skip
            d_x += d_y  # ∂Ψ/∂p_y + ∂Ψ/∂p_x: the cross term
            pp.poisson_curvature(psi, d_x, block.amplitudes, loc, sub, eng.mask,
                                 sums[2, 0, s0:s1], sums[2, 1, s0:s1], eng.cscale, eps,
                                 eng.seed, eng.params.holdout)  # fmt: skip
            pp.poisson_ratio(psi, block.amplitudes, loc, sub, eng.mask, dev[0, s0:s1],
                             dev[1, s0:s1], eng.cscale, eps, 1.0, eng.seed,
                             eng.params.holdout)  # fmt: skip

        position_pass(obj, eng.probe_k, block, idx, eng.corners, reduce, xp)
        held += float(dev[1].sum())
        s = backend.to_numpy(sums)
        g[idx, 0], g[idx, 1] = s[0, 0], s[1, 0]
        fisher[idx, 0, 0], fisher[idx, 1, 1] = s[0, 1], s[1, 1]
        fisher[idx, 0, 1] = fisher[idx, 1, 0] = 0.5 * (s[2, 1] - s[0, 1] - s[1, 1])
    return g, fisher, held


def _clip(steps, max_shift: float):
    """``steps`` (N, 2) shortened to at most ``max_shift`` each (in place)."""
    length = np.hypot(steps[:, 0], steps[:, 1])
    over = length > max_shift
    steps[over] *= (max_shift / length[over])[:, None]
    return steps


def newton_steps(g, fisher, max_shift: float, u=None, prior: float = 0.0):
    """Δu_j = −(F_j + Λ1 + λ1)⁻¹ (g_j + Λ u_j) (object pixels; module docstring): the
    Newton step of the likelihood plus the prior ½Λ|u_j|² on each position's own offset
    ``u`` (Λ = ``prior``, 1/px²; 0: none), each no longer than ``max_shift`` pixels,
    before the mean is removed."""
    half_trace = 0.5 * (fisher[:, 0, 0] + fisher[:, 1, 1])
    lam = LEVENBERG * float(np.median(half_trace)) if len(half_trace) else 0.0
    lam = max(lam, 1e-12)
    a = fisher + (lam + prior) * np.eye(2)
    rhs = g if u is None or not prior else g + prior * u
    return _clip(-np.linalg.solve(a, rhs[..., None])[..., 0], max_shift)


def affine_jacobian(measured) -> np.ndarray:
    """(N, 2, 4): ∂p_j/∂A of p_j = m_j + A (m_j − m̄) + u_j, A = ((a0, a1), (a2, a3))."""
    r = np.asarray(measured) - np.asarray(measured).mean(axis=0)
    jac = np.zeros((len(r), 2, 4))
    jac[:, 0, :2] = r
    jac[:, 1, 2:] = r
    return jac


def affine_step(g, fisher, jac, max_shift: float) -> np.ndarray:
    """ΔA (4,): the Newton step −H⁻¹ G of the global linear map, G = Σ J_jᵀ g_j,
    H = Σ J_jᵀ F_j J_j, scaled down so that no position moves more than ``max_shift``."""
    grad = np.einsum("nia,ni->a", jac, g)
    hess = np.einsum("nia,nij,njb->ab", jac, fisher, jac)
    hess += 1e-9 * np.trace(hess) / 4 * np.eye(4)
    da = -np.linalg.solve(hess, grad)
    longest = float(np.hypot(*np.einsum("nia,a->in", jac, da)).max())
    return da * min(1.0, max_shift / longest) if longest > 0 else da


def cramer_rao(fisher) -> np.ndarray:
    """√tr F_j⁻¹ of every position (object pixels): the smallest rms error an unbiased
    estimate of it can have from its pattern alone."""
    det = fisher[:, 0, 0] * fisher[:, 1, 1] - fisher[:, 0, 1] ** 2
    tr = fisher[:, 0, 0] + fisher[:, 1, 1]
    return np.sqrt(np.where(det > 0, tr / np.where(det > 0, det, 1.0), np.inf))


def update_positions(eng, obj, max_shift: float, eps: float, measured, affine,
                     sigma: float | None = None, with_affine: bool = True,
                     own: bool = True, correlated=None, theta=None):  # fmt: skip
    """One position update at ``obj`` (module docstring, "Step"): a pass for g and F, the
    Newton step of the linear map A (``with_affine``) from ``measured`` (N, 2 object
    pixels, the start), then of the correlated offsets θ of ``correlated``
    (:class:`.position_models.CorrelatedModel` or None; prior of rms ``sigma``), then of
    each position's own offset u_j with the prior of rms ``sigma`` (object pixels; None:
    none), its mean removed. θ and u move always with ``own``, else each where its median
    Cramér–Rao bound is ≤ CORRELATED_CRB_FRACTION σ (θ) or CRB_FRACTION σ (u); the windows
    moved (``eng.set_positions``).
    Returns (:class:`PositionUpdate`, the new A (4,), the new θ)."""
    g, fisher, held = gradient_and_fisher(eng, obj, eps)
    geom = eng.geom
    before = (geom.corners.copy(), geom.frac.copy())
    p = pixel_positions(geom)
    jac = affine_jacobian(measured)
    affine = np.asarray(affine, dtype=np.float64)
    theta = None if correlated is None else np.asarray(theta, dtype=np.float64)
    u = p - np.asarray(measured) - np.einsum("nia,a->ni", jac, affine)  # own offsets
    if correlated is not None:
        u -= correlated.displacement(theta)
    shift = np.zeros_like(p)
    if with_affine:  # A first; the own offsets u stay as they are
        da = affine_step(g, fisher, jac, max_shift)
        shift = np.einsum("nia,a->ni", jac, da)
        affine = affine + da
        g = g + np.einsum("nij,nj->ni", fisher, shift)  # the gradient after it (linearised)
    prior = 0.0 if sigma is None else 1.0 / sigma**2
    force = own or sigma is None  # "on", or no prior: move whatever the bounds say
    corr_crb, corr_moved = -1.0, False  # −1: no correlated model
    if correlated is not None:  # then the correlated offsets, pooled over many positions
        dt, hess = pm.step(correlated, g, fisher, theta, prior, max_shift)
        corr_crb = pm.crb(correlated, hess)
        corr_moved = force or corr_crb <= CORRELATED_CRB_FRACTION * sigma
        if corr_moved:
            d = correlated.displacement(dt)
            theta = theta + dt
            shift = shift + d
            g = g + np.einsum("nij,nj->ni", fisher, d)
    crb = float(np.median(cramer_rao(fisher)))
    own = force or crb <= CRB_FRACTION * sigma
    steps = newton_steps(g, fisher, max_shift, u, prior) if own else np.zeros_like(p)
    mean = steps.mean(axis=0)
    steps -= mean
    steps += shift
    clipped = eng.set_positions(p + steps)
    d = np.asarray(geom.sampling)
    rms = float(np.sqrt(np.mean(np.sum((steps * d) ** 2, axis=1))))
    update = PositionUpdate(steps, rms, tuple(float(v) for v in mean * d), clipped,
                            crb * float(d.min()), bool(own), held, before,
                            corr_crb * float(d.min()), bool(corr_moved))  # fmt: skip
    return update, affine, theta
