"""numba.cuda versions of the kernels in :mod:`ptycho` (imported only when used)."""

import math

from numba import cuda


@cuda.jit
def fourier_modulus_gpu(psi_k, amplitude, index, mask, err, scale):
    """One thread per element: |Ψ| -> A, phase kept, times scale; err[b] += (|Ψ| − A)²
    atomically. Where mask is 0, Ψ keeps its modulus (times scale) and adds no error."""
    j, i, b = cuda.grid(3)
    if b < psi_k.shape[0] and i < psi_k.shape[1] and j < psi_k.shape[2]:
        v = psi_k[b, i, j]
        if mask[i, j] == 0:
            psi_k[b, i, j] = v * scale
            return
        mag = math.sqrt(v.real * v.real + v.imag * v.imag)
        a = amplitude[index[b], i, j]
        cuda.atomic.add(err, b, (mag - a) * (mag - a))
        if mag > 0:
            psi_k[b, i, j] = v * (a * scale / mag)
        else:
            psi_k[b, i, j] = a * scale


@cuda.jit
def ramp_multiply_gpu(out, wave, ry, rx, scale):
    j, i, b = cuda.grid(3)
    if b < out.shape[0] and i < out.shape[1] and j < out.shape[2]:
        out[b, i, j] = wave[i, j] * ry[b, i] * rx[b, j] * scale


@cuda.jit
def ramp_reduce_gpu(acc, u, ry, rx):
    """One thread per (i, j), looping over the batch: no atomics needed."""
    j, i, _ = cuda.grid(3)
    if i < acc.shape[0] and j < acc.shape[1]:
        s = acc[i, j]
        for b in range(u.shape[0]):
            s += u[b, i, j] * ry[b, i] * rx[b, j]
        acc[i, j] = s


@cuda.jit
def exit_waves_gpu(probes, obj, corners, psi, o_weight):
    j, i, b = cuda.grid(3)
    if b < probes.shape[0] and i < probes.shape[1] and j < probes.shape[2]:
        o = obj[corners[b, 0] + i, corners[b, 1] + j]
        psi[b, i, j] = probes[b, i, j] * o
        cuda.atomic.add(o_weight, (i, j), o.real * o.real + o.imag * o.imag)


@cuda.jit
def transmit_gpu(incident, obj, corners, out):
    j, i, b = cuda.grid(3)
    if b < incident.shape[0] and i < incident.shape[1] and j < incident.shape[2]:
        out[b, i, j] = incident[b, i, j] * obj[corners[b, 0] + i, corners[b, 1] + j]


@cuda.jit
def difference_updates_gpu(num_real, den, probes, obj, psi, corners, origin):
    j, i, b = cuda.grid(3)
    if b < psi.shape[0] and i < psi.shape[1] and j < psi.shape[2]:
        p = probes[b, i, j]
        o = obj[corners[b, 0] + i, corners[b, 1] + j]
        d = psi[b, i, j] - p * o
        prod = p.conjugate() * d
        y = corners[b, 0] - origin[0] + i
        x = corners[b, 1] - origin[1] + j
        cuda.atomic.add(num_real, (y, 2 * x), prod.real)
        cuda.atomic.add(num_real, (y, 2 * x + 1), prod.imag)
        cuda.atomic.add(den, (y, x), p.real * p.real + p.imag * p.imag)
        psi[b, i, j] = o.conjugate() * d


@cuda.jit
def slice_updates_gpu(num_real, den, incident, obj, delta, corners, origin):
    j, i, b = cuda.grid(3)
    if b < delta.shape[0] and i < delta.shape[1] and j < delta.shape[2]:
        p = incident[b, i, j]
        d = delta[b, i, j]
        prod = p.conjugate() * d
        y = corners[b, 0] - origin[0] + i
        x = corners[b, 1] - origin[1] + j
        cuda.atomic.add(num_real, (y, 2 * x), prod.real)
        cuda.atomic.add(num_real, (y, 2 * x + 1), prod.imag)
        cuda.atomic.add(den, (y, x), p.real * p.real + p.imag * p.imag)
        delta[b, i, j] = obj[corners[b, 0] + i, corners[b, 1] + j].conjugate() * d
