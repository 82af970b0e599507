"""Multislice ptychography: the forward model against the simulator's multislice, its
adjoint (dot-product test), mepie against ePIE and on a two-layer specimen, bad input."""

import numpy as np
import pytest

from ptyengine.multislice import ProbeWindow
from ptyengine.reconstruct.forward import exit_wave_pass, slice_propagators
from ptyengine.reconstruct.patterns import Block
from ptyengine.shift import ramps_2d

ENERGY, SEMIANGLE = 300e3, 25.0


def _waves(rng, shape, scale=1.0):
    return (scale * (rng.normal(size=shape) + 1j * rng.normal(size=shape))).astype(np.complex64)


def _pass(obj, probe_k, corners, frac, props, revise, with_probe=True):
    """exit_wave_pass over all positions as one block (box = the whole object)."""
    ramps = ramps_2d(frac, probe_k.shape, np)
    block = Block(slice(0, 1), 0, None, ramps)
    idx = np.arange(len(corners))
    box = obj.shape[-2:]
    return exit_wave_pass(obj, probe_k, block, idx, np.asarray(corners, np.int64),
                          np.zeros(2, np.int64), box, revise, with_probe, np, props)


def _capture(store, inv_n, add=None):
    """A revise hook that keeps Ψ (and, with ``add``, adds F[add] to it: Δφ = add)."""
    def revise(psi_k, local, positions, s0, s1):
        store[s0:s1] = psi_k
        if add is not None:
            psi_k += np.fft.fft2(add[s0:s1])
        psi_k *= inv_n
    return revise


@pytest.mark.parametrize("thicknesses", [[3.0], [20.0, 35.0, 10.0]])
def test_forward_equals_simulator_multislice(thicknesses):
    """The exit waves of the reconstruction's model are the simulator's (ProbeWindow), for
    the same slices, probe and band-limited propagators, to float precision."""
    rng = np.random.default_rng(0)
    w, d, n_s = 32, (0.12, 0.12), len(thicknesses)
    window = ProbeWindow.build(w, d, ENERGY, SEMIANGLE, {"C10": 40.0}, thicknesses,
                               (w, w), (1 / (w * d[0]),) * 2)
    field = (40, 44)
    phase = rng.normal(size=(n_s, *field)).astype(np.float32)
    t = np.exp(0.3j * phase).astype(np.complex64)
    positions = np.array([[1.03, 2.51], [3.3, 0.07], [4.0, 4.44]])
    sim, corner = window.exit_waves(t, positions)
    slab = window.prepare(t).padded  # the periodic field extended: windows need no wrap
    corners = corner % np.array(field)
    frac = positions / np.array(d) - np.floor(positions / np.array(d))
    props = slice_propagators((w, w), d, ENERGY, thicknesses, np, fraction=2 / 3)
    got = np.empty((len(positions), w, w), np.complex64)
    _pass(slab, window.probe_k, corners, frac, props, _capture(got, 1 / w**2))
    ref = np.fft.fft2(sim)
    err = np.abs(got - ref).max() / np.abs(ref).max()
    assert err < 2e-6, err


def test_adjoint_dot_product():
    """<∂φ/∂O_s x, y> = <x, num_s(y)> for every slice, and <∂φ/∂P̂ x, y> = <x, upd(y)>/N:
    the exit wave is linear in each slice and in the probe, so ∂φ/∂O_s x is the exit wave
    with slice s replaced by x."""
    rng = np.random.default_rng(1)
    w, d, thick = 24, (0.15, 0.15), [25.0, 40.0, 10.0]
    n_s, n = len(thick), 24 * 24
    probe_k = _waves(rng, (w, w))
    obj = np.exp(0.5j * rng.normal(size=(n_s, 40, 42))).astype(np.complex64)
    corners = np.array([[0, 0], [5, 9], [16, 18], [7, 3]])
    frac = rng.uniform(size=(4, 2))
    props = slice_propagators((w, w), d, ENERGY, thick, np)
    y = _waves(rng, (4, w, w))
    exit_k = np.empty_like(y)
    num, _, upd, _ = _pass(obj, probe_k, corners, frac, props, _capture(exit_k, 1 / n, y))

    def exit_wave(o, p):
        out = np.empty_like(y)
        _pass(o, p, corners, frac, props, _capture(out, 1 / n), with_probe=False)
        return np.fft.ifft2(out)

    for s in range(n_s):
        x = _waves(rng, obj.shape[1:])
        o = obj.copy()
        o[s] = x
        lhs = np.vdot(y, exit_wave(o, probe_k))
        rhs = np.vdot(num[s], x)
        assert abs(lhs - rhs) < 1e-4 * abs(lhs), (s, lhs, rhs)
    x = _waves(rng, (w, w))
    lhs = np.vdot(y, exit_wave(obj, x))
    rhs = np.vdot(upd, x) / n
    assert abs(lhs - rhs) < 1e-4 * abs(lhs), (lhs, rhs)


def test_single_slice_stack_is_the_2d_model():
    """A (1, Ny, Nx) object runs the single-slice arithmetic: the same sums, bit for bit."""
    rng = np.random.default_rng(2)
    w = 16
    probe_k = _waves(rng, (w, w))
    obj = np.exp(0.5j * rng.normal(size=(30, 31))).astype(np.complex64)
    corners, frac = np.array([[0, 0], [7, 9], [14, 15]]), rng.uniform(size=(3, 2))
    y = _waves(rng, (3, w, w))
    flat = _pass(obj, probe_k, corners, frac, None, _capture(np.empty_like(y), 1 / w**2, y))
    stack = _pass(obj[None], probe_k, corners, frac, None,
                  _capture(np.empty_like(y), 1 / w**2, y))
    for a, b in zip(flat, stack, strict=True):
        np.testing.assert_array_equal(a, b[0] if a.ndim == 2 and b.ndim == 3 else b)
