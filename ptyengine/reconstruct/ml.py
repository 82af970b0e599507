"""Poisson maximum-likelihood ptychography for low dose (``--method ml``).

At 10–100 e/Å² a diffraction pattern holds tens of electrons in ~10⁴ pixels, most of them
zero. ePIE's amplitude projection (√n against |Ψ|) is biased there; this engine models the
counts themselves.

**Model.** The object is O = exp(iφ − a): φ its phase (rad), a its absorption (0 for the
``phase`` object model). Pattern j at scan position r_j has the exit wave ψ_j = P_j · O_j
(P_j: the probe moved to r_j, O_j: the object's window there; the single-slice model of
:mod:`.forward`) and the model intensity I_j = |F[ψ_j]|² in counts at the detector. The
probe P̂ = A exp(−iχ) comes from the calibration (aperture and aberrations), scaled so that
its pattern holds the mean measured counts. At low counts the pixels of a free probe
cannot be determined, so only a few aberration coefficients c are refined with the object
(``refine_probe``): the defocus C10 and the two-fold astigmatism as Cartesian components
C12a, C12b (Å), for which χ is linear. Where the counts allow, ``refine_probe="pixels"``
frees every probe pixel inside the aperture, in ``probe_modes`` M incoherent modes, I_j =
Σ_m |F[P_m,j O_j]|² (partial coherence). :mod:`.probe_model` holds both models' equations;
below, c stands for either parameter vector. Before the
reconstruction a likelihood search on a C10 grid (:mod:`.defocus_search`) moves the start
to the data's defocus when the calibration's is far off.

**Objective** (minimised; n: measured counts, ε = 10⁻³ counts):

    L(φ, a) = Σ_j Σ_k [I_jk − n_jk log(I_jk + ε)] + R(φ) + R(a)
    R(u)    = ½ μ_s Σ_pixels |∇u|² + ½ μ_r A_px Σ_pixels u² + R_tv(u)
    R_tv(u) = μ_tv Σ_pixels δ² (√(1 + |∇u|²/δ²) − 1)

Zero counts are data: they pull I down. R is a Gaussian prior on the specimen: smooth
(μ_s, dimensionless in 2-D: the same at every pixel size) and weak (μ_r in 1/Å², A_px the
pixel area in Å²). From 100 e/Å² up its strengths are fixed (3, 8), so its weight
against the likelihood, which grows with the counts, falls as 1/dose: at 1000 e/Å² the
prior is ten times weaker than at 100 e/Å², and noise-free data (treated as 10⁶ counts per
pattern) are fitted as measured. Below 100 e/Å² the strengths fall in proportion to the
dose (:func:`.priors.prior_strengths`), which keeps the weight at its 100 e/Å² value.
R_tv, a total variation (pseudo-Huber, :mod:`.priors`; ``tv`` μ_tv, off by default, δ =
``tv_scale`` 0.15 rad/Å), is quadratic in gradients below δ and linear above, so it
flattens the noise between atoms more than it blurs them (a projected potential is sparse
peaks on a flat floor); its curvature enters the Newton step as an upper bound. It raises
the plain NCC at 20–100 e/Å² but not reliably NCC(1 Å) (benchmarks/RESULTS.md, "ML,
sixth part"), hence off.
Up to 100 e/Å² with the crossover ≥ 20 nm out (``prior`` "auto"), R's Gaussian part is
the empirical prior of :mod:`.priors` instead: a pilot run with the prior above, then the
run with a spectrum Λ(k) from the pilot's phase (weak where it has power above noise).
Besides R, the search directions are band-limited to |k| ≤ 2α/λ, the information limit of
the data, so φ and a hold nothing beyond it.

**Gradient.** With Δψ_j = F⁻¹[(n/(I + ε) − 1) Ψ_j] (:func:`kernels.poisson.poisson_ratio`
revising the exit waves of :func:`.forward.exit_wave_pass`) and ν = Σ_j conj(P_j) Δψ_j on
the object grid, ∂L/∂O* = −N ν (N pixels per pattern), hence

    ∂L/∂φ = 2N Im(O ν*),   ∂L/∂a = 2N Re(O ν*)    (+ the prior's gradient)

and ∂L/∂c from ∂L/∂P̂* = −upd (:func:`.forward.exit_wave_pass`'s probe term;
:mod:`.probe_model`). tests/test_ml.py and test_ml_probe.py check them against finite
differences.

**Search.** Polak–Ribière⁺ nonlinear conjugate gradients on (φ, a, c), preconditioned by
the diagonal of the curvature. For c (from iteration ``probe_update_start`` on) that is
its Fisher information F = Σ I'²/(I + ε) (every 8 iterations, from ~128 positions; per
coefficient, or along the gradient for the pixels), s_c = h̄ g_c / F (the object's
directions below are h̄ × Newton steps, so the two blocks share one step length). For
(φ, a) it is the likelihood's, h = 4 × counts through each pixel (4N Σ|P_j|²), normalised
to its mean h̄ over the scan, and the prior's in Fourier space:

    s = F⁻¹[ B(k) · F[g / (h/h̄ + δ)] / (1 + ((μ_s + μ_tv) λ_∇(k) + μ_r A_px) / h̄) ]

(λ_∇ the eigenvalues of the discrete −Laplacian, μ_tv R_tv's small-gradient limit, B the
band limit, δ = 1: see PRECONDITIONER_FLOOR). Along the
direction d the step is the Newton step t = −L'/L'' with the Fisher curvature
L'' ≈ Σ I'²/(I + ε) + d·Λd, I' = 2 Re(Ψ* Δ), Δ_j = F[P_j · O_j (i dφ − da) + dP_j · O_j]
with dP̂ = −i Σ_i d_c,i χ_i P̂ (:func:`.forward.direction_pass`; 3 FFTs per position, 4
with the probe). The sum over positions is estimated from a random quarter of them (at
least 256; CURVATURE_FRACTION), drawn afresh each iteration and scaled up: a Newton step
needs its curvature to a few per cent, not exactly. A step that raises L is undone
at the start of the next iteration and the step damped 4×; accepted steps relax the
damping 2× back towards 1.

**Stopping.** Two rules, both from the data's own statistics. (1) A fixed pseudo-random
5 % of the detector pixels of every pattern is held out of the fit
(:func:`kernels.poisson.holdout_hash`: the same pixels in every run and on every device);
their half-deviance D_h is evaluated at every iterate. The engine keeps the latest iterate
whose D_h lies within HELD_TOLERANCE (4) of the lowest seen among the fitted iterates
(from iteration 1: the flat start is no answer), and stops when none has for ``patience``
(15) iterations: the result is never an iterate the held-out data find significantly worse
than an earlier one (:mod:`.stopping`). (2) Without held-out pixels the run stops when
the objective L has fallen by less than CONVERGED (0.1 half-deviance per iteration) over
``patience`` iterations (with them this rule is off: L flattens while the phase still
improves).
The prior (smoothness 3, ridge 8 at 100 e/Å²) and the preconditioner's floor are chosen so
that the converged result is the answer rather than an early iterate (with weaker priors
NCC peaked early and fell while D_h stayed within its noise; benchmarks/RESULTS.md).

Cost per iteration: one pass over the data for the gradient (3 FFTs per position, 4 with
the probe refined) and one over a quarter of the positions (at least 256) for the step
(3 FFTs, 4 with the probe), against ePIE's 4: ~1.2–1.3× ePIE's FFTs for ~1000 positions.
(A cache of the gradient pass's P_j and Ψ_j for the step, kept until 2026-11-30, saved
nothing once the step saw a quarter of the positions: 1.21× against 1.22× ePIE.)

**Scan positions** (``refine_positions``, single slice; :mod:`.positions` has the
equations). From iteration ``position_update_start`` on, every ``position_update_every``
iterations, one more pass (6 FFTs per position) gives each position's Poisson gradient and
2 × 2 Fisher information at the current object; a Newton step with a Gaussian prior
(``position_sigma``) on its offset from the measured position moves it, the mean step
removed (a common translation is not in the data). This happens before the gradient pass;
when positions moved, the CG restarts (β = 0) and the step is not judged against the
previous L (the positions changed). "auto" moves them only where the data can locate a
position (Cramér–Rao bound ≤ σ/2; on the UiO-66 data at ≤ 100 e/Å² that is never, and
the run equals ``refine_positions="off"``) and keeps a move only if the held-out
likelihood at the same object is no worse (one more gradient pass when it is). The
held-out rule's best iterate keeps its positions (``result.positions``, Å, scan frame).

**Multislice** (``slices`` S > 1, ``slice_thickness`` Δz_s as for mepie, :mod:`.slices`).
The object is S slices O_s = exp(iφ_s − a_s), the wave propagated Δz_s from slice s to
s + 1 by the simulator's Fresnel propagator (:mod:`.forward`); the probe and its refined
coefficients are those of the wave entering slice 0 (C10: the defocus at the entrance
surface, where the single-slice model finds the mid-plane). The gradient pass is the
multislice :func:`.forward.exit_wave_pass`, whose adjoint gives every slice its ν_s, so
∂L/∂φ_s = 2N Im(O_s ν_s*) and ∂L/∂a_s = 2N Re(O_s ν_s*) as above; the Newton step's Δ_j
is the tangent-linear model along (dO_0 … dO_{S−1}, dP̂) (:func:`.forward.direction_pass`).
The prior R applies to every slice alike (R(φ) = Σ_s R(φ_s)), and a depth prior
R_z(u) = ½ μ_z Σ_s Σ_pixels (u_{s+1} − u_s)² (``depth_smoothness``, dimensionless, off by
default) couples adjacent slices: Gaussian, like R, so its weight against the data falls as
1/dose, and it enters the gradient and the Newton step's curvature exactly (it is not in
the preconditioner). Off: it did not help where measured (benchmarks/RESULTS.md,
"Multislice ML on thick SrTiO3"). The preconditioner of
slice s takes its own illumination h_s = 4N Σ_j |ψ_{s,j}|² (ψ_s the wave incident on slice
s, the den_s of the first pass), with one h̄ over the stack. Cost: 3 + 4(S − 1) FFTs per
position for each pass (+1 with the probe). With S = 1 the code is the single-slice
engine's, and so is the result (tests/test_ml.py).

Start: the slices start from a single-slice ML run (``single_slice_iterations`` K, its own
defocus search, refinement and stopping rule), φ_s = φ/S and a_s = a/S, the refined
astigmatism kept and C10 moved from the single-slice plane to the first slice's entrance by
the mean slice depth z̄ (C10 − z̄); K = 0 starts flat after a multislice defocus search
(from flat the slices explain the data but their sum is far from the projected potential:
NCC 0.16–0.22 against 0.96 on noise-free SrTiO3 100 Å thick, S = 4; RESULTS.md). On
strongly scattering specimens (SrTiO3 200 Å) neither start works, and
``mepie_start_iterations`` K > 0 starts from K mepie iterations on the same slices instead
(:func:`.ml_starts.mepie_start`: φ_s = arg O_s, C10/C12 fitted to mepie's refined probe),
which ML then keeps or improves (RESULTS.md, "Thick specimens").
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from contextlib import contextmanager

import numpy as np

from .. import backend
from ..errors import PtyengineError
from ..kernels import poisson as pp
from . import ml_result
from . import ml_starts as starts
from . import position_models as posm
from . import positions as pos
from . import slices as sl
from .counts import NOISE_FREE_COUNTS, bright_field_pixels, count_scale  # noqa: F401
from .defocus_search import search_defocus, search_span
from .epie import PtychoGeometry, initial_probe
from .forward import direction_pass, exit_wave_pass
from .frame import present
from .iterative import IterativeState, load_checkpoint, opened, run
from .ml_parameters import (  # noqa: F401
    DEPTH_SMOOTHNESS,
    MLParameters,
    prior_kind,
    refines_positions,
)
from .ml_result import MLResult
from .patterns import choose_patterns
from .priors import (
    band_mask,
    empirical_spectrum,
    prior_spectrum,
    prior_strengths,
    total_variation,
    tv_curvature,
    tv_delta,
    tv_weights,
)
from .probe_coefficients import (
    PROBE_COEFFICIENTS,
    initial_coefficients,
)
from .probe_model import probe_kind, probe_model
from .stopping import CONVERGED, HELD_TOLERANCE, converged  # noqa: F401

EPS = 1e-3  # counts: floor of the model intensity inside the logarithm
#: δ: a pixel's step is at most 1/δ of a mean-lit pixel's (δ = 0.1 let the weakly lit margin
#: drift: noise-free UiO-66 at 100 nm fell from NCC(1 Å) 0.999 to 0.76; RESULTS.md).
PRECONDITIONER_FLOOR = 1.0
BIG = 1e300  # "not yet": the state must stay finite (the loop owner checks it)
FISHER_EVERY = 8  # iterations between re-evaluations of the coefficients' Fisher information
FISHER_POSITIONS = 128  # positions it is estimated from
#: The step's curvature L'' along d is a sum over positions of non-negative terms: it is
#: estimated from a random CURVATURE_FRACTION of them (at least CURVATURE_POSITIONS; all
#: below that), drawn afresh every iteration, and scaled to all. Its relative error is
#: ~CV/√count (CV of the terms over positions); the step it sets is undone if L rises.
CURVATURE_FRACTION = 0.25
CURVATURE_POSITIONS = 256
CURVATURE_SEED = 0xC5


def fingerprint(cal, params: MLParameters, data_id: str) -> str:
    p = {k: v for k, v in params.__dict__.items() if k != "iterations"}
    blob = json.dumps([cal.to_dict(), p, data_id, "ml-1"], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class _Engine:
    """The passes over the data and the NCG step; one instance per run."""

    def __init__(self, patterns, geom, params: MLParameters, cal, cscale: float, xp,
                 props=None):  # fmt: skip
        self.patterns, self.geom, self.params, self.xp = patterns, geom, params, xp
        # multislice: the propagators between the S slices, and φ, a of shape (S, Ny, Nx)
        self.props = props
        self.shape = geom.object_shape if props is None else (props.n_slices,
                                                                *geom.object_shape)
        self.cal = cal
        self.geometry = geom
        self.cscale = float(cscale)
        self.corners = xp.asarray(geom.corners)
        self.n = geom.window[0] * geom.window[1]
        self.mask = patterns.mask  # the detector mask in the engines' frame (0: not data)
        rows, (sy, sx) = patterns.rows, cal.scan_shape
        # full-batch gradients: every block once per pass, its positions in scan order
        self.order = [(b, np.arange(b * rows * sx, min((b + 1) * rows, sy) * sx))
                      for b in range(patterns.n_blocks)]  # fmt: skip
        self.spectrum = prior_spectrum(geom.object_shape, geom.sampling, params.smoothness,
                                       params.ridge, xp)  # fmt: skip
        self.tv = float(params.tv or 0.0)
        self.tv_delta = tv_delta(geom.sampling, params.tv_scale)
        # the preconditioner's: the total variation's small-gradient limit joins μ_s
        self.pc_spectrum = (prior_spectrum(geom.object_shape, geom.sampling,
                                           params.smoothness + self.tv, params.ridge, xp)
                            if self.tv else self.spectrum)  # fmt: skip
        k_max = 2 * cal.semiangle * 1e-3 / cal.wavelength
        self.band = (band_mask(geom.object_shape, geom.sampling, k_max, xp)
                     if params.band_limit else None)  # fmt: skip
        self.seed = params.seed

    def set_spectrum(self, spectrum) -> None:
        """Replace the Gaussian prior's spectrum Λ (the empirical prior, :mod:`.priors`);
        the preconditioner takes it too (with the total variation's small-gradient term)."""
        xp = self.xp
        self.spectrum = xp.asarray(spectrum, dtype=np.float32)
        self.pc_spectrum = self.spectrum + (prior_spectrum(
            self.geom.object_shape, self.geom.sampling, self.tv, 0.0, xp) if self.tv else 0)

    def set_positions(self, p) -> int:
        """Move the windows to ``p`` (N, 2) object pixels (:func:`.positions.pixel_positions`)
        and the probe's shift ramps with them; returns how many were held at the grid's
        edge."""
        clipped = pos.set_pixel_positions(self.geom, p)
        self.restore_positions(self.geom.corners, self.geom.frac)
        return clipped

    def restore_positions(self, corners, frac) -> None:
        """Put the windows back at ``corners`` (int) and ``frac`` exactly."""
        self.geom.corners[...] = corners
        self.geom.frac[...] = frac
        self.corners = self.xp.asarray(self.geom.corners)
        self.patterns.refresh_ramps()

    def _batches(self):
        bs = self.params.batch_size
        for block, positions in self.patterns.iterate(self.order):
            for b0 in range(0, len(positions), bs):
                yield block, positions[b0:b0 + bs]

    def _box(self, idx):
        w = np.asarray(self.geom.window)
        lo = self.geom.corners[idx].min(axis=0)
        hi = self.geom.corners[idx].max(axis=0) + w
        return lo, hi

    def start_at(self, defocus: float | None) -> None:
        """Take the probe of the calibration with C10 = ``defocus`` (None: the
        calibration's) as the start and reference of the refined probe (``self.pm``)."""
        self.probe0 = initial_probe(self.cal, defocus, self.counts_per_pattern, self.xp)
        self.c0 = initial_coefficients(self.cal, self.names, defocus)
        self.pm.start(self.probe0, self.c0, defocus)
        self.start_defocus = (float(defocus) if defocus is not None else
                              float(dict(self.cal.aberrations).get("C10", 0.0)))  # fmt: skip
        self.set_coefficients(self.pm.initial())

    def set_coefficients(self, v) -> None:
        """The refined probe parameters v (:mod:`.probe_model`: coefficients c in Å, or the
        pixel modes) → the probe ``self.probe_k``."""
        self.probe_k = self.pm.probe(v)

    def coefficient_gradient(self, upd):
        """∂L/∂v of the probe's parameters from ∂L/∂P̂* = −upd (exit_wave_pass's probe
        term; :mod:`.probe_model`)."""
        return self.pm.gradient(self.probe_k, upd)

    def probe_direction(self, d):
        """dP̂ along the direction d of the probe's parameters."""
        return self.pm.direction(self.probe_k, d)

    @contextmanager
    def subset(self, count: int, rng=None):
        """Passes made inside see about ``count`` of the positions: every k-th in scan
        order, or a random choice of ``count`` with ``rng``; yields total / used, the
        factor that scales their sums to all positions."""
        full = self.order
        total = sum(len(p) for _, p in full)
        if count >= total:
            yield 1.0
            return
        if rng is None:
            stride = max(1, total // count)
            self.order = [(b, p[::stride]) for b, p in full if len(p[::stride])]
        else:
            keep = np.zeros(total, dtype=bool)
            keep[rng.choice(total, count, replace=False)] = True
            self.order = [(b, p[keep[p]]) for b, p in full if keep[p].any()]
        try:
            yield total / sum(len(p) for _, p in self.order)
        finally:
            self.order = full

    def coefficient_fisher(self, obj, g=None):
        """The probe parameters' Fisher information for their preconditioner
        (:mod:`.probe_model`), estimated from every k-th position (about FISHER_POSITIONS
        of them) and scaled to all: it only preconditions, the step length comes from the
        curvature."""
        with self.subset(FISHER_POSITIONS) as scale:
            f = self.pm.fisher(lambda d: self.curvature(obj, None, d)[1], self.probe_k, g)
        return np.atleast_1d(np.asarray(f, dtype=np.float64)) * scale

    def gradient(self, obj, with_probe: bool = False):
        """One pass: (fitted, held-out half-deviance, ν, Σ|P_j|², probe term or None) at
        ``obj``; the probe term is ∂L/∂P̂* = −upd (see :mod:`.forward`)."""
        xp, inv_n = self.xp, 1.0 / self.n
        nu = xp.zeros(self.shape, dtype=np.complex64)  # (S, Ny, Nx) for S slices
        den = xp.zeros(self.shape, dtype=np.float32)
        upd_total = xp.zeros(self.probe_k.shape, dtype=np.complex64) if with_probe else None
        fit = held = 0.0
        probe_k = self.probe_k
        for block, idx in self._batches():
            nll = xp.zeros(len(idx), dtype=np.float64)
            hold = xp.zeros(len(idx), dtype=np.float64)

            def revise(psi, loc, sub, s0, s1, block=block, nll=nll, hold=hold):
                pp.poisson_ratio(psi, block.amplitudes, loc, sub, self.mask, nll[s0:s1],
                                 hold[s0:s1], self.cscale, EPS, inv_n, self.seed,
                                 self.params.holdout, self.pm.n_modes)  # fmt: skip

            lo, hi = self._box(idx)
            shape = (int(hi[0] - lo[0]), int(hi[1] - lo[1]))
            num, d, upd, _ = exit_wave_pass(obj, probe_k, block, idx, self.corners, lo,
                                            shape, revise, with_probe, xp,
                                            self.props)  # fmt: skip
            nu[..., lo[0]:hi[0], lo[1]:hi[1]] += num
            den[..., lo[0]:hi[0], lo[1]:hi[1]] += d
            if with_probe:
                upd_total += upd
            fit += float(nll.sum())
            held += float(hold.sum())
        return fit, held, nu, den, upd_total

    def curvature(self, obj, d_obj, d_probe_k=None) -> tuple[float, float]:
        """One pass: dL/dt and the Fisher d²L/dt² of the likelihood along the object
        direction d_obj and the probe direction d_probe_k (either may be None)."""
        xp = self.xp
        s1_tot = s2_tot = 0.0
        for block, idx in self._batches():
            d1 = xp.zeros(len(idx), dtype=np.float64)
            d2 = xp.zeros(len(idx), dtype=np.float64)

            def reduce(psi, dpsi, loc, sub, s0, s1, block=block, d1=d1, d2=d2):
                pp.poisson_curvature(psi, dpsi, block.amplitudes, loc, sub, self.mask,
                                     d1[s0:s1], d2[s0:s1], self.cscale, EPS, self.seed,
                                     self.params.holdout, self.pm.n_modes)  # fmt: skip

            direction_pass(obj, d_obj, self.probe_k, block, idx, self.corners, reduce, xp,
                           d_probe_k, self.props)
            s1_tot += float(d1.sum())
            s2_tot += float(d2.sum())
        return s1_tot, s2_tot

    def illumination(self, den):
        """(h/h̄, h̄) of the preconditioner, h = 4N Σ|P_j|² (4 × the counts through each
        pixel; of every slice, Σ|ψ_s,j|²), h̄ its mean over the well-lit pixels, from a
        gradient pass's ``den``. The sweep works it out at its first iteration and keeps
        it in its state (a resumed run goes on with the same preconditioner)."""
        h = 4 * self.n * den
        h_bar = float(h[h > 0.5 * float(h.max())].mean())
        return h / h_bar, h_bar

    # ------------------------------------------------------------------ the prior
    def prior(self, u):
        """(R(u), ∂R/∂u): the Gaussian prior through its spectrum Λ (periodic on the object
        grid), plus the total variation (:mod:`.priors`)."""
        xp = self.xp
        g = xp.fft.ifft2(xp.fft.fft2(u) * self.spectrum).real.astype(np.float32)
        r = 0.5 * float(xp.sum(u * g))
        if self.tv:
            r_tv, g_tv, _ = total_variation(u, self.tv, self.tv_delta, xp)
            r, g = r + r_tv, g + g_tv
        return r, g

    def regulariser_curvature(self, u, d) -> float:
        """d·∇²R·d at u (lateral and depth priors): exact for the Gaussian parts, the
        upper bound :func:`.priors.tv_curvature` for the total variation."""
        xp = self.xp
        c = float(xp.sum(d * xp.fft.ifft2(xp.fft.fft2(d) * self.spectrum).real))
        _, g_z = self.depth_prior(d)
        if g_z is not None:
            c += float(xp.sum(d * g_z))
        if self.tv:
            c += tv_curvature(d, tv_weights(u, self.tv_delta, xp), self.tv, xp)
        return c

    def depth_prior(self, u):
        """(R_z(u), ∂R_z/∂u) of the depth prior ½ μ_z Σ_s |u_{s+1} − u_s|² of a slice stack
        (S, Ny, Nx); (0, None) for one slice or μ_z = 0."""
        mu = self.params.depth_smoothness
        if u.ndim < 3 or not mu:
            return 0.0, None
        diff = u[1:] - u[:-1]
        g = self.xp.zeros_like(u)
        g[1:] += diff
        g[:-1] -= diff
        return 0.5 * mu * float(self.xp.sum(diff * diff)), np.float32(mu) * g

    def regulariser(self, u):
        """(R(u), ∂R/∂u): the lateral prior of every slice, plus the depth prior."""
        r, g = self.prior(u)
        r_z, g_z = self.depth_prior(u)
        return (r, g) if g_z is None else (r + r_z, g + g_z)

    def precondition(self, g, h_rel, h_bar):
        xp = self.xp
        filt = 1.0 / (1.0 + self.pc_spectrum / h_bar)
        if self.band is not None:
            filt = filt * self.band
        return xp.fft.ifft2(xp.fft.fft2(g / (h_rel + PRECONDITIONER_FLOOR)) * filt).real.astype(
            np.float32)


def curvature_positions(n: int) -> int:
    """How many of ``n`` positions the step's curvature is estimated from."""
    return min(n, max(CURVATURE_POSITIONS, int(np.ceil(CURVATURE_FRACTION * n))))


def _new_state(geom, v0, xp, shape=None) -> IterativeState:
    """A flat start; ``shape`` of φ and a: (S, Ny, Nx) for S slices (None: the object's);
    ``v0`` the probe's parameters (:mod:`.probe_model`)."""
    shape = geom.object_shape if shape is None else shape
    v0 = xp.asarray(v0)
    z = lambda: xp.zeros(shape, dtype=np.float32)  # noqa: E731
    zc = lambda: xp.zeros_like(v0)  # noqa: E731
    arrays = {"phase": z(), "absorption": z(), "prev_phase": z(), "prev_absorption": z(),
              "g_phase": z(), "g_absorption": z(), "s_phase": z(), "s_absorption": z(),
              "d_phase": z(), "d_absorption": z(), "best_phase": z(), "best_absorption": z(),
              # the refined probe coefficients (Å) and their CG vectors, Fisher information
              "coeffs": v0.copy(), "prev_coeffs": v0.copy(),
              "best_coeffs": v0.copy(), "g_coeffs": zc(), "s_coeffs": zc(),
              "d_coeffs": zc(),
              "fisher_coeffs": xp.zeros(len(v0) if v0.ndim == 1 else 1, dtype=np.float64),
              # L_prev, damping, best held-out, best iteration, last step t, Fisher's iteration
              "scalars": xp.asarray([BIG, 1.0, BIG, 0.0, 0.0, -BIG], dtype=np.float64),
              "held": xp.zeros(0, dtype=np.float64),  # held-out deviance per count
              # the scan positions (object pixels, positions.pixel_positions) and the best's
              "positions": xp.asarray(pos.pixel_positions(geom)),
              "best_positions": xp.asarray(pos.pixel_positions(geom)),
              "start_positions": xp.asarray(pos.pixel_positions(geom)),
              "position_affine": xp.zeros(4, dtype=np.float64),  # A of positions.py
              # each update's rms step (Å), median Cramér–Rao bound (Å), own offsets moved
              # (1), the correlated offsets' bound (Å) and whether they moved (1)
              "position_log": xp.zeros((0, 5), dtype=np.float64),
              "objective": xp.zeros(0, dtype=np.float64)}  # L at each iterate  # fmt: skip
    return IterativeState(arrays)


def _sweep_factory(eng: _Engine, params: MLParameters, complex_object: bool, total_counts,
                   held_counts, xp):  # fmt: skip
    """One ML iteration: gradient pass, Polak-Ribière⁺ direction over (φ, a, c), Newton step
    along it (module docstring). The probe coefficients c join the vector from
    ``probe_update_start`` on, preconditioned by their Fisher information."""
    host = backend.to_numpy
    pm = eng.pm
    positions_on = refines_positions(params)
    d_min = min(eng.geom.sampling)
    max_shift = 1.0 if params.position_max_shift is None else params.position_max_shift / d_min
    sigma = None if params.position_sigma is None else params.position_sigma / d_min  # px
    # auto keeps a position update only if the held-out likelihood, at the same object,
    # is no worse after it (exact positions moved by noise: worse)
    judge = params.refine_positions == "auto" and params.holdout > 0
    correlated = [None]  # the correlated model (position_models), built at the first update

    def obj_of(phi, ab):
        return xp.exp(1j * phi - ab).astype(np.complex64)

    def sweep(state: IterativeState, iteration: int) -> float:
        a = state.arrays
        sc = host(a["scalars"]).copy()
        l_prev, damping, best_held, best_iter = sc[0], sc[1], sc[2], int(sc[3])
        fisher_iter = sc[5]
        refine = pm.refines and iteration >= params.probe_update_start
        phi, ab = a["phase"], a["absorption"]
        pm.orthogonalise(a, ("coeffs", "prev_coeffs", "g_coeffs", "s_coeffs", "d_coeffs"))
        c = pm.value(a["coeffs"])
        eng.set_coefficients(c)
        obj = obj_of(phi, ab)
        k = iteration - params.position_update_start
        due = positions_on and k >= 0 and k % params.position_update_every == 0
        moved = False
        if due:  # positions first, at the current object; then CG restarts (β = 0)
            measured = host(a["start_positions"])
            if correlated[0] is None and params.position_correlated != "none":
                correlated[0] = posm.build(params.position_correlated, eng.cal.scan_shape,
                                         measured, params.position_drift_knots)  # fmt: skip
            if correlated[0] is not None and "position_theta" not in a:
                a["position_theta"] = xp.zeros(correlated[0].size, dtype=np.float64)
            theta = host(a["position_theta"]) if correlated[0] is not None else None
            step, affine, theta = pos.update_positions(
                eng, obj, max_shift, EPS, measured, host(a["position_affine"]), sigma,
                params.position_affine, params.refine_positions == "on", correlated[0], theta)
            moved = bool(np.any(step.steps))  # unmoved: CG goes on as without the update
        fit, held, nu, den, upd = eng.gradient(obj, with_probe=refine)
        if moved and judge and held > step.held_before:  # the held-out pixels say: back
            eng.restore_positions(*step.before)
            moved = False
            fit, held, nu, den, upd = eng.gradient(obj, with_probe=refine)
        if due:
            if moved:
                a["position_affine"] = xp.asarray(affine)
                a["positions"] = xp.asarray(pos.pixel_positions(eng.geom))
                if theta is not None:
                    a["position_theta"] = xp.asarray(theta)
            a["position_log"] = xp.concatenate([a["position_log"], xp.asarray(
                [[step.rms if moved else 0.0, step.crb, float(moved and step.own),
                  step.correlated_crb, float(moved and step.correlated)]])])  # fmt: skip
        r_phi, gp_phi = eng.regulariser(phi)
        r_ab, gp_ab = eng.regulariser(ab) if complex_object else (0.0, None)
        total = fit + r_phi + r_ab
        held_per = held / max(held_counts, 1.0)
        a["held"] = xp.concatenate([a["held"], xp.asarray([held_per])])
        a["objective"] = xp.concatenate([a["objective"], xp.asarray([total])])
        if params.holdout and iteration > 0:  # the latest fitted iterate within noise
            best_held = min(best_held, held_per)  # (HELD_TOLERANCE) of the best
            if held_per <= best_held + HELD_TOLERANCE / max(held_counts, 1.0):
                best_iter = iteration
                a["best_phase"][...] = phi
                a["best_absorption"][...] = ab
                a["best_coeffs"] = xp.asarray(c).copy()
                a["best_positions"][...] = a["positions"]
        # after a position update L is not comparable with l_prev: no undo
        rejected = not moved and iteration > 0 and total > l_prev + 1e-9 * abs(l_prev)
        if rejected:  # undo the last step; restart CG from the previous gradient
            phi[...] = a["prev_phase"]
            ab[...] = a["prev_absorption"]
            c = pm.value(a["prev_coeffs"])
            eng.set_coefficients(c)
            obj = obj_of(phi, ab)
            damping *= 0.25
            g_phi, g_ab, g_c = a["g_phase"], a["g_absorption"], pm.value(a["g_coeffs"])
            d_prev = None
            total = l_prev
        else:
            damping = min(1.0, 2.0 * damping)
            on = obj * nu.conj()
            g_phi = (2 * eng.n) * on.imag.astype(np.float32) + gp_phi
            g_ab = ((2 * eng.n) * on.real.astype(np.float32) + gp_ab) if complex_object else None
            g_c = eng.coefficient_gradient(upd) if refine else pm.zeros()
            d_prev = ((a["d_phase"], a["d_absorption"], pm.value(a["d_coeffs"]))
                      if iteration and not moved else None)  # fmt: skip
        fisher = host(a["fisher_coeffs"])
        if refine and iteration - fisher_iter >= FISHER_EVERY:
            fisher = eng.coefficient_fisher(obj, g_c)
            a["fisher_coeffs"], fisher_iter = xp.asarray(fisher), iteration
        if "h_rel" not in a:  # the first pass's, kept (and checkpointed)
            h_rel, h_bar = eng.illumination(den)
            a["h_rel"], a["h_bar"] = h_rel, xp.asarray([h_bar], dtype=np.float64)
        h_rel, h_bar = a["h_rel"], float(host(a["h_bar"])[0])
        s_phi = eng.precondition(g_phi, h_rel, h_bar)
        s_ab = eng.precondition(g_ab, h_rel, h_bar) if complex_object else None
        # the object's preconditioner divides by h/h̄, so its directions are h̄ × Newton
        # steps: the coefficients' (g/F, Newton) are scaled alike
        s_c = pm.precondition(g_c, fisher, h_bar) if refine else pm.zeros()
        d_phi, d_ab, d_c = -s_phi, (-s_ab if complex_object else None), -s_c
        if d_prev is not None:  # Polak-Ribière+
            num = float(xp.sum(s_phi * (g_phi - a["g_phase"]))) + pm.dot(
                s_c, g_c - pm.value(a["g_coeffs"]))
            den_b = float(xp.sum(a["s_phase"] * a["g_phase"])) + pm.dot(
                pm.value(a["s_coeffs"]), pm.value(a["g_coeffs"]))
            if complex_object:
                num += float(xp.sum(s_ab * (g_ab - a["g_absorption"])))
                den_b += float(xp.sum(a["s_absorption"] * a["g_absorption"]))
            beta = max(0.0, num / den_b) if den_b > 0 else 0.0
            d_phi = d_phi + beta * d_prev[0]
            d_c = d_c + beta * d_prev[2]
            if complex_object:
                d_ab = d_ab + beta * d_prev[1]
            slope = float(xp.sum(d_phi * g_phi)) + pm.dot(d_c, g_c) + (
                float(xp.sum(d_ab * g_ab)) if complex_object else 0.0)  # fmt: skip
            if slope >= 0:  # not a descent direction: steepest descent
                d_phi, d_ab, d_c = -s_phi, (-s_ab if complex_object else None), -s_c
        # Newton step along d: L' = g·d exactly, L'' = the likelihood's Fisher curvature
        # (one pass over a random quarter of the positions, scaled) plus the prior's d·Λd
        du = 1j * d_phi - (d_ab if complex_object else 0)
        d_probe = eng.probe_direction(d_c) if refine and pm.dot(d_c, d_c) > 0 else None
        n_pos = len(eng.geom.corners)
        rng = np.random.default_rng([params.seed, CURVATURE_SEED, iteration])
        with eng.subset(curvature_positions(n_pos), rng) as scale:
            _, d2 = eng.curvature(obj, (obj * du).astype(np.complex64), d_probe)
        d2 *= scale
        d1 = float(xp.sum(g_phi * d_phi)) + pm.dot(g_c, d_c)
        d2 += eng.regulariser_curvature(phi, d_phi)
        if complex_object:
            d1 += float(xp.sum(g_ab * d_ab))
            d2 += eng.regulariser_curvature(ab, d_ab)
        t = damping * (-d1 / d2) if d2 > 0 else 0.0
        # remember the point, its gradient and direction, then step
        a["prev_phase"][...] = phi
        a["prev_absorption"][...] = ab
        a["prev_coeffs"] = xp.asarray(c).copy()
        a["g_phase"][...] = g_phi
        a["s_phase"][...] = s_phi
        a["d_phase"][...] = d_phi
        a["g_coeffs"], a["s_coeffs"], a["d_coeffs"] = (xp.asarray(v) for v in (g_c, s_c, d_c))
        if complex_object:
            a["g_absorption"][...] = g_ab
            a["s_absorption"][...] = s_ab
            a["d_absorption"][...] = d_ab
            ab += np.float32(t) * d_ab
        phi += np.float32(t) * d_phi
        a["coeffs"] = xp.asarray(c + np.float32(t) * d_c)
        a["scalars"] = xp.asarray([total, damping, best_held, best_iter, t, fisher_iter],
                                  dtype=np.float64)  # fmt: skip
        return fit / max(total_counts, 1.0)

    return sweep


def ml(
    data,
    params: MLParameters | None = None,
    device: str = "cpu",
    checkpoint: str | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    progress=None,
    data_id: str = "",
    memory_limit: int | None = None,
    report=None,
    positions=None,
) -> MLResult:
    """Reconstruct the object from a calibrated dataset (path, io.Dataset or
    InMemoryDataset) by Poisson maximum likelihood; see the module docstring.

    The measured patterns are held or streamed as for ePIE (``memory_limit``);
    ``progress(iteration, error)``, ``checkpoint``/``checkpoint_every``/``resume`` as for
    :func:`.epie.epie`; ``report(line)`` receives one line on the defocus search.
    ``positions``: measured scan positions (N, 2) Å in the scan frame, scan order, in place
    of the calibration's grid (:meth:`.epie.PtychoGeometry.from_calibration`); refined
    with ``params.refine_positions``, and returned in ``result.positions``.
    Returns the iterate with the best held-out likelihood.
    """
    params = params or MLParameters()
    with opened(data, device) as (ds, xp):
        return present(_ml(ds, params, xp, checkpoint, checkpoint_every, resume, progress,
                           data_id, memory_limit, report, positions))  # fmt: skip


def setup(ds, params: MLParameters, xp, memory_limit: int | None = None,
          patterns=None, positions=None) -> _Engine:  # fmt: skip
    """The engine for a dataset: geometry (of the calibration's scan grid, or of measured
    ``positions``, Å), pattern source (``patterns``: one already made
    for the same geometry), counts scale, probe and object model
    (``eng.complex_object``, ``eng.counts_per_pattern``)."""
    cal = ds.calibration
    name = getattr(ds, "path", None) or "data"
    geom = PtychoGeometry.from_calibration(cal, params.margin, positions=positions)
    if patterns is None:
        patterns = choose_patterns(ds, geom, xp, memory_limit)
    mean_sum = patterns.total / len(geom.corners)
    if not mean_sum > 0:
        raise PtyengineError(f"{name}: every pattern is empty (no counts)")
    cscale = count_scale(ds, cal, mean_sum)
    props = (sl.propagators_for(ds, geom, xp, params.slices, params.slice_thickness)
             if params.slices > 1 else None)  # fmt: skip
    counts = mean_sum * cscale
    dose = cal.dose or counts / (cal.scan_step[0] * cal.scan_step[1])  # e/Å²
    strengths = prior_strengths(dose, params.smoothness, params.ridge)
    params = dataclasses.replace(params, smoothness=strengths[0], ridge=strengths[1])
    eng = _Engine(patterns, geom, params, cal, cscale, xp, props)
    eng.counts_per_pattern = counts
    eng.per_bf_pixel = eng.counts_per_pattern / max(bright_field_pixels(cal), 1.0)
    eng.complex_object = params.object_model == "complex"
    eng.probe_kind = probe_kind(params, eng.per_bf_pixel)
    eng.names = PROBE_COEFFICIENTS.get(eng.probe_kind, ())
    eng.pm = probe_model(cal, eng.probe_kind, params.probe_modes, eng.names, xp)
    eng.start_at(params.defocus)
    eng.prior_kind = prior_kind(params, dose, eng.start_defocus)
    return eng


def objective(eng: _Engine, phase, absorption, coefficients=None):
    """(L, ∂L/∂φ, ∂L/∂a, ∂L/∂c) of the module docstring at (φ, a) and the probe
    coefficients c (Å; None: the initial ones), fitted pixels only."""
    xp = eng.xp
    eng.set_coefficients(eng.pm.initial() if coefficients is None else coefficients)
    obj = xp.exp(1j * phase - absorption).astype(np.complex64)
    fit, _, nu, _, upd = eng.gradient(obj, with_probe=eng.pm.refines)
    r_phi, gp_phi = eng.regulariser(phase)
    r_ab, gp_ab = eng.regulariser(absorption)
    on = obj * nu.conj()
    g_c = eng.coefficient_gradient(upd) if eng.pm.refines else np.zeros(0)
    return (fit + r_phi + r_ab, (2 * eng.n) * on.imag + gp_phi,
            (2 * eng.n) * on.real + gp_ab, g_c)  # fmt: skip


def _ml(ds, params, xp, checkpoint, checkpoint_every, resume, progress, data_id,
        memory_limit, report, positions=None, patterns=None) -> MLResult:  # fmt: skip
    """The run behind :func:`ml`; ``patterns``: a pattern source already made for the same
    geometry (the empirical prior's pilot shares the run's, not a second copy)."""
    cal = ds.calibration
    single = first = mep = None
    if not (resume and checkpoint):
        single = starts.single_slice_start(_ml, ds, params, xp, data_id, memory_limit,
                                           report, positions)  # fmt: skip
    eng = setup(ds, params, xp, memory_limit, patterns, positions)
    if not (resume and checkpoint):  # after setup: the data's errors come first
        mep = starts.mepie_start(ds, params, xp, data_id, memory_limit, report, positions)
    pilot = None
    if not (resume and checkpoint) and eng.prior_kind == "empirical":
        pilot = starts.pilot(_ml, ds, params, xp, data_id, memory_limit, report,
                             positions, eng.patterns) if params.iterations else None  # fmt: skip
        if pilot is None:  # no iteration to regularise, or a pilot with no structure
            eng.prior_kind = "gaussian"
    if not (resume and checkpoint) and eng.pm.kind == "pixels":
        first = starts.coefficient_start(_ml, ds, params, xp, data_id, memory_limit, report,
                                         positions)  # fmt: skip
    geom, patterns = eng.geometry, eng.patterns
    start_positions = pos.scan_positions(geom)
    if positions is not None:  # measured positions are part of the data
        data_id = f"{data_id}|positions={hashlib.sha256(start_positions.tobytes()).hexdigest()}"
    n_pos = len(geom.corners)
    counts_per_pattern, complex_object = eng.counts_per_pattern, eng.complex_object
    fp = fingerprint(cal, params, f"{data_id or getattr(ds, 'path', '')}|{patterns.key}")
    search = None
    if resume and checkpoint:
        state = load_checkpoint(checkpoint, fp, xp)
        eng.start_at(float(backend.to_numpy(state.arrays["start_defocus"])[0]))
        if "probe_reference" in state.arrays:  # the pixels' start, for their C10/C12 fit
            eng.pm.start(state.arrays["probe_reference"], None, None,
                         reference=backend.to_numpy(state.arrays["reference_coeffs"]))
        eng.set_positions(backend.to_numpy(state.arrays["positions"]))
        if "prior_spectrum" in state.arrays:
            eng.set_spectrum(state.arrays["prior_spectrum"])
    else:
        span = search_span(params.defocus_search, params.defocus, cal)
        if span > 0 and single is None and first is None and mep is None:
            search = search_defocus(eng, params, span, params.defocus_step)
            if report:
                report(search.describe())
            eng.start_at(search.defocus)
        state = _new_state(geom, eng.pm.initial(), xp, eng.shape)
        if pilot is not None:
            state.arrays["prior_spectrum"] = empirical_spectrum(
                pilot.phase, geom.sampling, params.prior_scale, params.prior_floor, xp)
            eng.set_spectrum(state.arrays["prior_spectrum"])
        if single is not None:
            starts.start_from_single(eng, state, single, xp)
        if first is not None:
            starts.start_pixels_from(eng, state, first, xp)
        if mep is not None:
            starts.start_from_mepie(eng, state, mep, xp)
        state.arrays["start_defocus"] = xp.asarray([eng.start_defocus], dtype=np.float64)
        # where the whole run started (the pixels' C10/C12 run, if any)
        origin = first.extra["start_defocus"] if first is not None else eng.start_defocus
        state.arrays["origin_defocus"] = xp.asarray([origin], dtype=np.float64)
        if eng.pm.kind == "pixels":
            state.arrays["probe_reference"] = eng.pm.probe0
            state.arrays["reference_coeffs"] = xp.asarray(eng.pm.reference)
    held_counts = counts_per_pattern * n_pos * params.holdout
    total_counts = counts_per_pattern * n_pos - held_counts  # the fitted counts
    sweep = _sweep_factory(eng, params, complex_object, total_counts, held_counts, xp)

    def stop(st):
        sc = backend.to_numpy(st.arrays["scalars"])
        held_out = bool(params.holdout) and st.iteration - 1 - int(sc[3]) >= params.patience
        if params.holdout:
            return held_out
        return converged(backend.to_numpy(st.arrays["objective"]), params.patience)

    run(state, sweep, params.iterations, xp, fp, checkpoint, checkpoint_every, progress, stop)
    result = ml_result.assemble(eng, state, params, start_positions, search, single, mep,
                                use_best=bool(params.holdout) and backend.to_numpy(
                                    state.arrays["scalars"])[2] < BIG)  # fmt: skip
    result.extra["prior"]["kind"] = eng.prior_kind
    result.extra["prior"]["pilot"] = None if pilot is None else {
        "iterations": len(pilot.errors), "best_iteration": pilot.best_iteration}
    return result
