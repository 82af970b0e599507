"""The ptychographic forward model, single-slice (S = 1) or multislice, and its adjoint,
shared by ePIE, mepie and ML.

Units: lengths in Å (slice thicknesses Δz_s, the object pixel d), spatial frequencies k
in 1/Å, the wavelength λ in Å; waves are complex64, dimensionless.

**Forward.** For the positions ``idx`` of a block of patterns, with object slices
O_0 … O_{S−1} (transmission functions, one array of object pixels each), Fourier-space
probe P̂ (FFT order) and the Fresnel propagator Q_s(k) = exp(−iπλ Δz_s |k|²) × its band
limit (:func:`physics.fresnel_propagator`, the simulator's own; see
:func:`slice_propagators`) from slice s to slice s + 1:

    ψ_{0,j}   = F⁻¹[P̂ · ramp_j]                probe moved to position j's sub-pixel offset
    φ_{s,j}   = ψ_{s,j} · O_s[window_j]         wave leaving slice s
    ψ_{s+1,j} = F⁻¹[Q_s · F[φ_{s,j}]]           wave reaching slice s + 1   (s < S − 1)
    Ψ_j       = F[φ_{S−1,j}]                    at the detector

(no propagation after the last slice: it would only multiply Ψ by a phase). S = 1 is
the single-slice model ψ_j = P_j · O[window_j].

**Adjoint.** The update rule's hook revises the detector wave, Ψ'_j = revise(Ψ_j) (ePIE:
the measured modulus; ML: the Poisson ratio n/I), times 1/N; then, slice by slice from
the last,

    Δφ_{S−1,j} = F⁻¹[Ψ'_j] − φ_{S−1,j}                 exit-wave correction
    num_s += Σ_j conj(ψ_{s,j}) Δφ_{s,j},  den_s += Σ_j |ψ_{s,j}|²   on the batch's box
    Δψ_{s,j}   = conj(O_s[window_j]) Δφ_{s,j}          correction of the incident wave
    Δφ_{s−1,j} = F⁻¹[conj(Q_{s−1}) · F[Δψ_{s,j}]]       propagated back   (s > 0)
    upd        = Σ_j ramp_j* · F[Δψ_{0,j}]               (with_probe: the probe's term)

num_s is the adjoint of the exit wave's derivative with respect to O_s applied to Δφ
(the exit wave is linear in each slice and in the probe): <∂φ/∂O_s · x, y> = <x, num_s(y)>
and <∂φ/∂P̂ · x, y> = <x, upd(y)>/N, tested in tests/test_multislice_ptycho.py. With
|O_s| = 1 this is 3PIE's back-propagation (Maiden, Humphry & Rodenburg, JOSA A 29, 1606
(2012)), whose intermediate step β conj(O_s)Δφ_s/max|O_s|² it equals for β = 1.

:func:`exit_wave_pass` returns these sums; the update rule turns them into steps. Work is
split over the CPU cores (:func:`backend.split_map`) and, on the CPU, done in sub-chunks
(:func:`_chunk`) on in-place FFT buffers (``probes``, one per further slice for the incident
waves ψ_s, kept for the adjoint, and ``psi``). FFTs per position: 4 + 4(S − 1) with the
probe term, 3 + 4(S − 1) without (2 per slice boundary each way, the detector pair, the
probe's shift and its return); for S = 1 the same code runs today's single-slice
arithmetic.

:func:`direction_pass` is the forward model's derivative along a direction
(dO_0 … dO_{S−1}, dP̂) of the slices and the probe (the tangent-linear model: the exit
wave is linear in each slice and in the probe), handed to a ``reduce`` hook with Ψ_j
(line searches): for S = 1, Δ_j = F[P_j · dO[window_j] + dP_j · O[window_j]] with
dP_j = F⁻¹[dP̂ · ramp_j]; for S > 1 dψ_s is carried through the slices with ψ_s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import backend, physics
from ..kernels import ptycho as pk
from ..kernels import windows as wk

REAL, CPLX = np.float32, np.complex64


def _modes(probe_k):
    """The probe as (M, Wy, Wx) incoherent modes (a 2-D probe is one mode)."""
    return probe_k[None] if probe_k.ndim == 2 else probe_k


def _tiled(corners, n_modes: int, xp):
    """The batch's window corners repeated for every mode (mode-major)."""
    return corners if n_modes == 1 else xp.concatenate([corners] * n_modes)


#: window elements × slices × modes a CPU part of a pass must hold at least, else the batch
#: is not split over the cores: below it the hand-off to a second thread (~0.2 ms a batch
#: on 2 cores) costs more than the thread saves. Measured with benchmarks/bench_mepie.py's
#: data, batch 64 (32 positions a part), 1 against 2 threads, ms per iteration: 16², S = 1
#: 3.5 against 6.7 (8192 elements a part); 24² 11.3 / 9.6 (18432); 32² 9.1 / 9.1; 64² 33.5
#: / 21.6 (session 12, 2-core VM).
SPLIT_MIN_ELEMENTS = 1 << 14


def _min_part(window, n_slices: int, n_modes: int) -> int:
    """Positions a CPU part of a pass takes at least (:data:`SPLIT_MIN_ELEMENTS`)."""
    per_position = window[0] * window[1] * n_slices * n_modes
    return -(-SPLIT_MIN_ELEMENTS // per_position)


def _chunk(window, n_slices: int = 1, n_modes: int = 1) -> int:
    """Positions per sub-chunk on the CPU. A single slice: ~2 MB of waves over the 2
    arrays a pass holds (1 MB per array, cache-sized: benchmarks/bench_epie.py). S > 1
    slices: ~16 MB over the S + 1 arrays (the incident waves kept for the adjoint), so
    that each of the ~8 kernel and FFT calls per slice boundary and sub-chunk does the
    work of many positions, and a kernel call finds the slice's O_s and overlap sums on
    the batch's box in cache for most of its (overlapping) windows: slice_updates took
    10.8 µs per position and boundary with 4 positions per sub-chunk, 6.4 µs with 32
    (64², S = 16, one thread). Measured with benchmarks/bench_mepie.py (CPU time per
    iteration / the FFTs done, 2 cores, load 10–12): 64², S = 16: 2.21× with 4 positions
    per sub-chunk (~2 MB), 1.76× with 16, 1.71× with 32; 128², S = 16: 1.52× with 4,
    1.43× with 8 (~16 MB), 1.53× with 32 (~70 MB)."""
    per_position = window[0] * window[1] * 8 * n_modes
    budget = (2 << 20) if n_slices == 1 else (16 << 20)
    return max(1, budget // (per_position * (n_slices + 1)))


def sub_chunks(n: int, step: int | None) -> list[tuple[int, int]]:
    """[s0, s1) bounds covering range(n): of ``step`` positions (the CPU's cache-sized
    sub-chunks, :func:`_chunk`), or, for ``step`` None (a GPU, which takes a part whole),
    of powers of two, largest first (37 → 32, 4, 1): parts of any size then make at most
    log₂ n + 1 batch shapes, each one FFT buffer and one cuFFT plan (ML's curvature pass
    draws a random number of positions per block, which would make a shape of every size)."""
    if step is not None:
        return [(s0, min(s0 + step, n)) for s0 in range(0, n, step)]
    out, s0 = [], 0
    while s0 < n:
        size = 1 << ((n - s0).bit_length() - 1)
        out.append((s0, s0 + size))
        s0 += size
    return out


@dataclass
class SlicePropagators:
    """The Fresnel propagators between S object slices on the probe window, each times
    1/N (N = Wy·Wx: the inverse FFT that follows is unnormalised)."""

    thicknesses: tuple[float, ...]  # Δz_s (Å), s = 0 … S − 1; the last one propagates nowhere
    forward: object  # (S − 1, Wy, Wx) complex64: Q_s / N
    adjoint: object  # (S − 1, Wy, Wx) complex64: conj(Q_s) / N

    @property
    def n_slices(self) -> int:
        return len(self.thicknesses)

    @property
    def positions(self) -> list[float]:
        """Depth (Å) of every slice's entrance plane below the first one's."""
        return [float(z) for z in np.concatenate([[0.0], np.cumsum(self.thicknesses[:-1])])]


def slice_propagators(window, sampling, energy, thicknesses, xp, fraction=1.0):
    """:class:`SlicePropagators` for slices of ``thicknesses`` (Å, one per slice) on a
    ``window`` (Wy, Wx) of object pixels ``sampling`` (Å) at ``energy`` (eV), band-limited
    at ``fraction`` of the window's Nyquist frequency (physics.fresnel_propagator)."""
    thicknesses = tuple(float(t) for t in thicknesses)
    inv_n = 1.0 / (window[0] * window[1])
    q = [physics.fresnel_propagator(tuple(window), tuple(sampling), energy, dz, xp,
                                    np.complex128, fraction) * inv_n
         for dz in thicknesses[:-1]]  # fmt: skip
    shape = (len(q), *window)
    fwd = xp.stack(q).astype(CPLX) if q else xp.zeros(shape, CPLX)
    return SlicePropagators(thicknesses, fwd, xp.ascontiguousarray(fwd.conj()))


def _pass_buffers(shape, n_slices: int, xp):
    """(probes, psi, waves) of :func:`exit_wave_pass` for batches of ``shape``: the FFT
    buffers of the probes (ψ_0), of the exit waves, and the waves incident on every slice
    (kept for the adjoint; waves[0] is probes)."""
    probes = backend.fft_buffer(shape, CPLX, xp, "probes")
    psi = backend.fft_buffer(shape, CPLX, xp, "psi")
    waves = [probes] + [backend.fft_buffer(shape, CPLX, xp, f"slice{s}")
                        for s in range(1, n_slices)]  # fmt: skip
    return probes, psi, waves


def exit_wave_pass(obj, probe_k, block, idx, corners_dev, lo, box_shape, revise,
                   with_probe: bool, xp, propagators: SlicePropagators | None = None,
                   with_weight: bool = False):
    """(num, den, upd or None, o_weight or None) of the positions ``idx`` (flat scan indices, a
    host array) of ``block``, one part per CPU core, summed over the parts.

    ``obj`` is one slice (Ny, Nx), or S slices (S, Ny, Nx) with ``propagators`` between
    them (:func:`slice_propagators`; may be None for S = 1); num and den have obj's
    leading axis, (S, *box_shape), or none for a 2-D ``obj``.

    ``revise(psi_k, local, positions, s0, s1)`` revises the batch ``psi_k`` (Fourier
    space, B × W × W) in place and multiplies it by 1/N (the inverse FFT that follows is
    unnormalised); ``local`` indexes the block's arrays, ``positions`` are the flat scan
    indices (both device arrays), [s0, s1) the members' places in ``idx``.
    o_weight = Σ_j |O_0[window_j]|² (ePIE's probe normalisation), with ``with_weight``.
    ``probe_k`` (M, W, W): M incoherent probe modes (see the module docstring); the
    batch then holds M·B waves, mode-major, and upd has the modes' axis."""
    modes = _modes(probe_k)
    n_m, w0, w1 = modes.shape
    inv_n = 1.0 / (w0 * w1)
    slices = obj if obj.ndim == 3 else obj[None]
    n_s = slices.shape[0]
    step = _chunk((w0, w1), n_s, n_m) if xp is np else None  # GPU: sub_chunks' powers
    if n_s > 1 and (propagators is None or propagators.n_slices != n_s):
        raise ValueError(f"{n_s} object slices need {n_s - 1} propagators")
    last = n_s - 1

    def part(p):
        sel = idx[p]
        offset = p.start
        num = xp.zeros((n_s, *box_shape), dtype=CPLX)
        den = xp.zeros((n_s, *box_shape), dtype=REAL)
        o_weight = xp.zeros((w0, w1), dtype=REAL) if with_weight else None
        upd = xp.zeros((n_m, w0, w1), dtype=CPLX) if with_probe else None
        lo_dev = xp.asarray(lo)
        idx_dev = xp.asarray(sel)
        local_dev = idx_dev - block.first
        ramp_y, ramp_x = block.ramps
        # per slice: O_s, its sums and the propagators, as views made once per part
        obj_s, num_s, den_s = list(slices), list(num), list(den)
        q_fwd = list(propagators.forward) if n_s > 1 else []
        q_adj = list(propagators.adjoint) if n_s > 1 else []
        buffers = {}  # sub-chunk size -> (probes, psi, waves): a few sizes per part
        for s0, s1 in sub_chunks(len(sel), step):
            sub, loc = idx_dev[s0:s1], local_dev[s0:s1]
            nb = len(sub)
            c = _tiled(corners_dev[sub], n_m, xp)
            ry, rx = ramp_y[loc], ramp_x[loc]
            if nb not in buffers:
                buffers[nb] = _pass_buffers((n_m * nb, w0, w1), n_s, xp)
            probes, psi, waves = buffers[nb]
            for m in range(n_m):
                pk.ramp_multiply(probes.a[m * nb:(m + 1) * nb], modes[m], ry, rx, inv_n)
            probes.inverse()  # [1 FFT] probes shifted to their sub-pixel positions
            for s in range(n_s):  # φ_s = ψ_s O_s, then [2 FFTs per slice boundary]
                nxt = psi if s == last else waves[s + 1]  # ψ_{s+1} = F⁻¹[Q_s F[φ_s]]
                if s == 0 and with_weight:  # Σ|O_0|² in the same pass
                    pk.exit_waves(waves[0].a, obj_s[0], c, nxt.a, o_weight)
                else:
                    pk.transmit(waves[s].a, obj_s[s], c, nxt.a)
                nxt.forward()  # the last: [1 FFT] to the detector
                if s < last:
                    wk.broadcast_multiply(nxt.a, q_fwd[s])
                    nxt.inverse()
            revise(psi.a, loc, sub, offset + s0, offset + s1)
            psi.inverse()  # [1 FFT] revised exit waves
            # Δφ feeds the last slice's overlap sums and conj(O)Δφ in one pass
            pk.difference_updates(num_s[last], den_s[last], waves[last].a, obj_s[last], psi.a,
                                  c, lo_dev)  # fmt: skip
            for s in range(last - 1, -1, -1):  # [2 FFTs per slice boundary] back to slice s
                psi.forward()
                wk.broadcast_multiply(psi.a, q_adj[s])
                psi.inverse()
                pk.slice_updates(num_s[s], den_s[s], waves[s].a, obj_s[s], psi.a, c, lo_dev)
            if with_probe:  # Σ conj(O_j) Δψ_j, each brought back from its sub-pixel shift
                psi.forward()  # [1 FFT]
                for m in range(n_m):
                    pk.ramp_reduce(upd[m], psi.a[m * nb:(m + 1) * nb], ry.conj(), rx.conj())
        return num, den, upd, o_weight

    parts = backend.split_map(part, len(idx), xp, _min_part((w0, w1), n_s, n_m))
    num, den, upd, o_weight = parts[0]
    for p in parts[1:]:  # summed in place into the first part's arrays
        num += p[0]
        den += p[1]
        if with_weight:
            o_weight += p[3]
        if with_probe:
            upd += p[2]
    if obj.ndim == 2:
        num, den = num[0], den[0]
    if with_probe and probe_k.ndim == 2:
        upd = upd[0]
    return num, den, upd, o_weight


def direction_pass(obj, d_obj, probe_k, block, idx, corners_dev, reduce, xp,
                   d_probe_k=None, propagators: SlicePropagators | None = None) -> None:
    """For the positions ``idx`` of ``block``: the detector waves Ψ_j and their derivative
    Δ_j along the object direction ``d_obj`` (None: 0; of obj's shape) and the
    Fourier-space probe direction ``d_probe_k`` (None: 0), handed to
    ``reduce(psi_k, d_k, local, positions, s0, s1)``. One part per CPU core.

    Single slice: Δ_j = F[P_j dO_j + dP_j O_j]; 3 FFTs per position, 4 with a probe
    direction. S slices (``propagators``): the forward model and its tangent-linear model
    side by side, dψ_0 = dP_j, dφ_s = dψ_s O_s + ψ_s dO_s, dψ_{s+1} = F⁻¹[Q_s F[dφ_s]],
    Δ_j = F[dφ_{S−1}]: 4 more FFTs per slice boundary."""
    modes = _modes(probe_k)
    d_modes = None if d_probe_k is None else _modes(d_probe_k)
    n_m, w0, w1 = modes.shape
    inv_n = 1.0 / (w0 * w1)
    slices = obj if obj.ndim == 3 else obj[None]
    d_slices = d_obj if d_obj is None or d_obj.ndim == 3 else d_obj[None]
    n_s = slices.shape[0]
    step = _chunk((w0, w1), n_s, n_m) if xp is np else None  # GPU: sub_chunks' powers
    if n_s > 1 and (propagators is None or propagators.n_slices != n_s):
        raise ValueError(f"{n_s} object slices need {n_s - 1} propagators")

    def part(p):
        sel = idx[p]
        idx_dev = xp.asarray(sel)
        local_dev = idx_dev - block.first
        ramp_y, ramp_x = block.ramps
        for s0, s1 in sub_chunks(len(sel), step):
            sub, loc = idx_dev[s0:s1], local_dev[s0:s1]
            nb = len(sub)
            c = _tiled(corners_dev[sub], n_m, xp)
            ry, rx = ramp_y[loc], ramp_x[loc]
            shape = (n_m * nb, w0, w1)
            probes = backend.fft_buffer(shape, CPLX, xp, "probes")
            psi = backend.fft_buffer(shape, CPLX, xp, "psi")
            dpsi = backend.fft_buffer(shape, CPLX, xp, "dpsi")
            for m in range(n_m):
                pk.ramp_multiply(probes.a[m * nb:(m + 1) * nb], modes[m], ry, rx, inv_n)
            probes.inverse()  # [1 FFT]
            # slice 0: φ_0 = P_j O_0 (psi), dφ_0 = P_j dO_0 + dP_j O_0 (dpsi)
            pk.transmit(probes.a, slices[0], c, psi.a)
            if d_obj is not None:
                pk.transmit(probes.a, d_slices[0], c, dpsi.a)
            if d_probe_k is not None:  # dP_j · O_0, in the probes buffer (P_j is used up)
                for m in range(n_m):
                    pk.ramp_multiply(probes.a[m * nb:(m + 1) * nb], d_modes[m], ry, rx, inv_n)
                probes.inverse()  # [1 FFT]
                pk.transmit(probes.a, slices[0], c, probes.a)
                if d_obj is None:
                    dpsi.a[...] = probes.a
                else:
                    dpsi.a += probes.a
            elif d_obj is None:
                dpsi.a[...] = 0
            for s in range(1, n_s):  # [4 FFTs per slice boundary] on to slice s, then through it
                for buf in (psi, dpsi):  # ψ_s, dψ_s
                    buf.forward()
                    wk.broadcast_multiply(buf.a, propagators.forward[s - 1])
                    buf.inverse()
                pk.transmit(dpsi.a, slices[s], c, dpsi.a)  # dψ_s O_s
                if d_obj is not None:  # + ψ_s dO_s
                    pk.transmit(psi.a, d_slices[s], c, probes.a)
                    dpsi.a += probes.a
                pk.transmit(psi.a, slices[s], c, psi.a)  # φ_s = ψ_s O_s
            psi.forward()  # [1 FFT]
            dpsi.forward()  # [1 FFT]
            reduce(psi.a, dpsi.a, loc, sub, p.start + s0, p.start + s1)

    backend.split_map(part, len(idx), xp, _min_part((w0, w1), n_s, n_m))
