"""CPU kernels of the direct methods (:mod:`ptyengine.reconstruct.direct`, ``.ssb``).

``gather_cpu`` reads a block of stored patterns (uint16 and friends, as stored: no float
copy of the block) and sums the bright-field pixels of each group; ``trotter_sums_cpu``
accumulates SSB's trotter estimates of Φ(Q) from the scan spectra of a block of pixels,
with the aberration phases χ(k) − χ(k ∓ Q) evaluated as polynomials (no arrays of the
block's size). Both serial and GIL-free: the reading threads, or the parts of
:func:`ptyengine.backend.split_map`, run them side by side. Their twins are plain array
code against ``xp`` (:func:`ptyengine.reconstruct.direct.reduce_block`,
:func:`ptyengine.reconstruct.ssb.trotter_sums_xp`), which a GPU runs and the tests
compare with these.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def gather_cpu(patterns, pixels, starts, out):
    """out[g, p] = Σ_{i in group g} patterns[p, pixels[i]] for every pattern p.

    patterns: (P, Ky·Kx) in their stored dtype; pixels: (n,) int64 sorted by group, group
    g's at starts[g]:starts[g + 1]; out: (G, P), float32 (sums in float32, in the pixels'
    order) or, where every group is one pixel, the patterns' own dtype (a copy). Eight
    patterns at a time: their rows stay in cache while every group is gathered.
    """
    n_pat = patterns.shape[0]
    for p0 in range(0, n_pat, 8):
        p1 = min(p0 + 8, n_pat)
        for g in range(out.shape[0]):
            i0, i1 = starts[g], starts[g + 1]
            if i1 - i0 == 1:
                pix = pixels[i0]
                for p in range(p0, p1):
                    out[g, p] = patterns[p, pix]
            else:
                for p in range(p0, p1):
                    s = np.float32(0.0)
                    for i in range(i0, i1):
                        s += np.float32(patterns[p, pixels[i]])
                    out[g, p] = s


def chi_terms(aberrations: dict, wavelength: float):
    """(coef (T,), power (T,) int64, m (T,) int64, rot (T,) complex128, degree): χ(k) =
    Σ_t coef_t (k_y² + k_x²)^power_t Re[(k_x + i k_y)^m_t rot_t] rad, k in 1/Å — the
    Krivanek sum of :func:`ptyengine.physics.chi`, α^(n+1) cos m(φ − φ_nm) =
    λ^(n+1) |k|^(n+1−m) Re[(k_x + i k_y)^m e^{−imφ_nm}] (n + 1 − m is even); degree:
    the polynomial's, max(n + 1)."""
    from ptyengine.physics import ABERRATION_ORDERS, check_aberrations

    ab = check_aberrations(aberrations)
    coef, power, m_, rot = [], [], [], []
    for name, (n, m) in ABERRATION_ORDERS.items():
        c = ab.get(name, 0.0)
        if not c:
            continue
        coef.append(2 * math.pi / wavelength * c * wavelength ** (n + 1) / (n + 1))
        power.append((n + 1 - m) // 2)
        m_.append(m)
        rot.append(complex(np.exp(-1j * m * ab.get(f"phi{n}{m}", 0.0))))
    return (np.array(coef, np.float64), np.array(power, np.int64), np.array(m_, np.int64),
            np.array(rot, np.complex128), max([2 * p + m for p, m in zip(power, m_, strict=True)],
                                              default=0))  # fmt: skip


@numba.njit(nogil=True, cache=True)
def chi_poly(ky, kx, coef, power, m, rot):
    """χ(k) rad at one (ky, kx) 1/Å from :func:`chi_terms` (products only: no pow)."""
    k2 = ky * ky + kx * kx
    z = complex(kx, ky)
    out = 0.0
    for t in range(coef.shape[0]):
        zm = rot[t]
        for _ in range(m[t]):
            zm *= z
        r = coef[t] * zm.real
        for _ in range(power[t]):
            r *= k2
        out += r
    return out


#: steps of the phase recurrence between exact evaluations of χ (trotter_sums_cpu)
RESEED = 16


@numba.njit(nogil=True, cache=True)
def _seed(j, dy, kx, sgn, dqx, coef, power, m, rot, th, rr):
    """rr[0] = e^{iθ_j}, rr[d] = e^{iΔ^d θ_j} (d = 1..D) for θ_j = χ(dy, kx + sgn·j·dqx):
    the forward differences of a polynomial of degree D = len(th) − 1 in j."""
    deg = th.shape[0] - 1
    for t in range(deg + 1):
        th[t] = chi_poly(dy, kx + sgn * ((j + t) * dqx), coef, power, m, rot)
    for level in range(1, deg + 1):
        for t in range(deg, level - 1, -1):
            th[t] = th[t] - th[t - 1]
    for t in range(deg + 1):
        rr[t] = complex(math.cos(th[t]), math.sin(th[t]))


@numba.njit(nogil=True, cache=True)
def trotter_sums_cpu(half, ky, kx, use, qy, qx, dqx, lo, hi, coef, power, m, rot, degree,
                     num, count):  # fmt: skip
    """Add SSB's trotter estimates of Φ(Q)·I₀ of a block of pixels to ``num``, ``count``
    at the Q of the rfft half (columns ix < Sx//2 + 1, and every column of the Nyquist row
    of an even Sy); :func:`mirror_half` fills in the rest (Φ(−Q) = Φ*(Q) exactly).

    half: (b, Sy, Sx//2 + 1) complex64, the rfft2 over the scan of each pixel's image
    (G(−Q) = G*(Q) gives the other half); ky, kx: (b,) scan-frame k 1/Å; use: (b,) bool
    (pixels inside the disc, clear of its edge); qy (Sy,), qx (Sx,): the scan's
    frequencies (numpy's fftfreq order: qx[j mod Sx] = j·dqx, dqx = 1/(Sx·step_x)) 1/Å;
    lo, hi: (α/λ ∓ edge)² 1/Å²; χ from :func:`chi_terms`, a polynomial of ``degree`` in
    k; num: (Sy, Sx) complex128, count (Sy, Sx) int64.
    left  (|k−Q|² < lo, |k+Q|² > hi): −i G e^{−i(χ(k) − χ(k−Q))};
    right (|k+Q|² < lo, |k−Q|² > hi): +i G e^{+i(χ(k) − χ(k+Q))}.
    Each row of Q visits only the columns within √lo of ±k (a superset of the trotters;
    the tests decide, exactly as on the full grid), less those strictly inside the other
    disc (the triple overlap). Along a row χ(k ∓ Q) is a polynomial of ``degree`` in the
    column j, so e^{iχ} at the next trotter column follows from its forward differences by
    products (an exact evaluation after :data:`RESEED` steps).
    """
    sy, sx = qy.shape[0], qx.shape[0]
    h = half.shape[2]
    jmin, jmax = -(sx // 2), (sx - 1) // 2  # fftfreq's column index range
    nyquist = sy // 2 if sy % 2 == 0 else -1
    aberrated = coef.shape[0] > 0
    th = np.zeros(degree + 1)
    rr = np.zeros(degree + 1, np.complex128)
    for b in range(half.shape[0]):
        if not use[b]:
            continue
        kyb, kxb = ky[b], kx[b]
        c0 = chi_poly(kyb, kxb, coef, power, m, rot)
        ec0 = complex(math.cos(c0), math.sin(c0)) if aberrated else complex(1.0, 0.0)
        for iy in range(sy):
            dym, dyp = kyb - qy[iy], kyb + qy[iy]
            for side in range(2):  # 0: left, Q near +k; 1: right, Q near −k
                dy = dym if side == 0 else dyp
                r2 = lo - dy * dy
                if r2 <= 0:
                    continue
                w = math.sqrt(r2)
                centre = kxb if side == 0 else -kxb
                j0 = max(jmin, int(math.floor((centre - w) / dqx)) - 1)
                j1 = min(jmax, int(math.floor((centre + w) / dqx)) + 1)
                sgn = -1.0 if side == 0 else 1.0  # k ∓ Q: x = kx + sgn·q
                # the other disc (left: |k+Q|² > hi; right: |k−Q|² > hi): the columns
                # strictly inside it fail the test and are skipped, [s0, s1]
                dyo = dyp if side == 0 else dym
                ro2 = hi - dyo * dyo
                s0, s1 = 1, 0
                if ro2 > 0:
                    wo = math.sqrt(ro2)
                    co = -kxb if side == 0 else kxb
                    s0 = int(math.floor((co - wo) / dqx)) + 2
                    s1 = int(math.floor((co + wo) / dqx)) - 1
                js, age = j0, RESEED + 1  # the recurrence's column, steps since its seed
                j = j0
                while j <= j1:
                    if s0 <= j <= s1:
                        j = s1 + 1
                        continue
                    ix = j % sx
                    if ix >= h and iy != nyquist:  # only for j < 0, and every j up to −1
                        j = 0
                        continue
                    dxm, dxp = kxb - qx[ix], kxb + qx[ix]
                    minus = dym * dym + dxm * dxm
                    plus = dyp * dyp + dxp * dxp
                    if side == 0:
                        ok = minus < lo and plus > hi
                    else:
                        ok = plus < lo and minus > hi
                    if not ok:
                        j += 1
                        continue
                    e = complex(1.0, 0.0)
                    if aberrated:  # e^{iχ(k ∓ Q_j)}: stepped from the last column, or seeded
                        gap = j - js
                        if age + gap > RESEED:
                            _seed(j, dy, kxb, sgn, dqx, coef, power, m, rot, th, rr)
                            age = 0
                        else:
                            for _ in range(gap):
                                rr[0] *= rr[1]
                                for t in range(1, degree):
                                    rr[t] *= rr[t + 1]
                            age += gap
                        js = j
                        e = rr[0]
                    if side == 0:  # −i e^{−i(χ(k) − χ(k−Q))} = −i e^{−iχ(k)} e^{iχ(k−Q)}
                        ph = complex(0.0, -1.0) * ec0.conjugate() * e
                    else:  # +i e^{i(χ(k) − χ(k+Q))} = i e^{iχ(k)} e^{−iχ(k+Q)}
                        ph = complex(0.0, 1.0) * ec0 * e.conjugate()
                    if ix < h:
                        g = complex(half[b, iy, ix])
                    else:
                        g = complex(half[b, (sy - iy) % sy, sx - ix]).conjugate()
                    num[iy, ix] += g * ph
                    count[iy, ix] += 1
                    j += 1


def mirror_half(num, count) -> None:
    """Fill the columns ix ≥ Sx//2 + 1 of :func:`trotter_sums_cpu`'s sums (but the
    Nyquist row of an even Sy, which it sums itself) from Φ(−Q) = Φ*(Q): the pixels in
    the trotters of −Q are those of Q with left and right exchanged, each giving the
    complex conjugate of its estimate at Q (fftfreq's −q is exactly −(q))."""
    sy, sx = num.shape
    h = sx // 2 + 1
    if h >= sx:
        return
    rows = np.arange(sy)
    if sy % 2 == 0:
        rows = rows[rows != sy // 2]
    cols = np.arange(h, sx)
    src_r, src_c = (-rows) % sy, sx - cols
    num[np.ix_(rows, cols)] = np.conj(num[np.ix_(src_r, src_c)])
    count[np.ix_(rows, cols)] = count[np.ix_(src_r, src_c)]


@numba.njit(nogil=True, cache=True)
def drizzle_cpu(values, index, offsets, scales, weights, shifts, step_y, step_x, u, num,
                den):  # fmt: skip
    """tcBF's splat: for g in ``index``, sample (i, j) of image g, as (v − o_g)·s_g, times
    w_g added bilinearly to ``num`` at ((i − d_gy/step_y)·u, (j − d_gx/step_x)·u) and w_g
    to ``den`` alike (corners off the grid dropped). values: (n, Sy, Sx) float32 or the
    stack's stored counts (no float copy of the stack: o_g = ⟨I_g⟩, s_g = 1/⟨I_g⟩ give the
    relative contrast); index: (m,) int64; offsets, scales, weights: (n,); shifts: (n, 2)
    (dy, dx) Å; num, den: (Sy·u, Sx·u) float64, added to.

    With an integer ``u`` the fractional offsets are the same for every sample of an
    image: (i − o)·u = i·u + b + f, b = ⌊−o·u⌋, f = −o·u − b; so each image adds four
    shifted, scaled copies of itself, row by row over the columns that land on the grid
    (no test per sample). For u = 1 the four weights are separable, (1 − f_y, f_y) ⊗
    (1 − f_x, f_x): each image row's two horizontal taps are summed once and each grid
    row gets two image rows' (:func:`_splat_separable`: one pass over the grid per image;
    ~2·10⁹ uint16 samples/s per core, the former two-pass kernel 3.5·10⁸). A copy
    adds the same weight to every grid point it lands on: ``den`` is summed as row
    differences (two additions per row and corner, the running sums taken once at the
    end), for ``u`` = 1 (contiguous columns) and every u (one running sum per column
    residue mod u). Inner loops run over views from index 0 up: with indices numba
    cannot prove ≥ 0 it selects a wrap-around per element and LLVM vectorises the stores
    as scatters (most of the former kernel's cost)."""
    ny, nx = num.shape
    sy, sx = values.shape[1], values.shape[2]
    diff = np.zeros((ny, nx + u))  # den's row differences: +wf at a run's start, −wf past it
    hp, hc = np.zeros(nx), np.zeros(nx)  # u = 1: the horizontal taps of two image rows
    for gi in range(index.shape[0]):
        g = index[gi]
        w = weights[g]
        off, sc = offsets[g], scales[g]
        ty, tx = -shifts[g, 0] / step_y * u, -shifts[g, 1] / step_x * u
        # nothing lands (or a non-finite shift): skip before any index is formed from it
        if not (-(sy * u + 1) < ty < ny + 1 and -(sx * u + 1) < tx < nx + 1):
            continue
        by, bx = math.floor(ty), math.floor(tx)
        fy, fx = ty - by, tx - bx
        iby, ibx = int(by), int(bx)
        if u == 1:
            _splat_separable(values[g], w, off, sc, iby, ibx, fy, fx, num, diff, hp, hc)
            continue
        for cy in range(2):
            f_y = fy if cy else 1.0 - fy
            for cx in range(2):
                f = f_y * (fx if cx else 1.0 - fx)
                wf = w * f
                wfs = wf * sc
                ox = ibx + cx
                # columns j with 0 ≤ j·u + ox < nx
                j0 = max(0, (-ox + u - 1) // u)
                j1 = min(sx, (nx - ox + u - 1) // u)
                if j1 <= j0:
                    continue
                for i in range(sy):
                    yy = i * u + iby + cy
                    if yy < 0 or yy >= ny:
                        continue
                    # views from index 0 up: no wrap-around selects, no scatters
                    src, dst = values[g, i, j0:j1], num[yy, j0 * u + ox::u]
                    for t in range(j1 - j0):
                        dst[t] += (src[t] - off) * wfs
                    diff[yy, j0 * u + ox] += wf
                    diff[yy, j1 * u + ox] -= wf
    for yy in range(ny):  # the running sums, one per column residue mod u
        drow, d = den[yy], diff[yy]
        for r in range(u):
            acc = 0.0
            for xx in range(r, nx, u):
                acc += d[xx]
                drow[xx] += acc


@numba.njit(nogil=True, cache=True)
def _row_taps(row, off, c0, c1, ibx, xa, xb, h):
    """h[x − xa] = c0·(row[x − ibx] − off) + c1·(row[x − ibx − 1] − off) for x in [xa, xb)
    (a term whose column lies off the image is 0): one image row moved by ibx + fx
    columns, its two bilinear taps (c0 = (1 − fx)·a, c1 = fx·a) summed once. The loops
    run over views from index 0 up (an index numba can prove ≥ 0 needs no wrap-around
    select, and the loop vectorises without scatters)."""
    sx = row.shape[0]
    x0, x1 = max(xa, ibx + 1), min(xb, ibx + sx)  # both taps on the image
    if xa == ibx:  # column 0 of the image: its own tap only
        h[0] = c0 * (row[0] - off)
    k = (c0 + c1) * off
    if x1 > x0:
        src = row[x0 - ibx - 1:x1 - ibx]
        dst = h[x0 - xa:x1 - xa]
        for t in range(x1 - x0):
            dst[t] = c0 * src[t + 1] + c1 * src[t] - k
    if x1 == ibx + sx and x1 < xb:  # one past the image's last column: its right tap
        h[x1 - xa] = c1 * (row[sx - 1] - off)


@numba.njit(nogil=True, cache=True)
def _splat_separable(image, w, off, sc, iby, ibx, fy, fx, num, diff, hp, hc):
    """drizzle_cpu's splat of one image at u = 1, offset (iby + fy, ibx + fx) grid points:
    the bilinear weights are separable and the same for every sample, so each image row's
    horizontal taps are summed once (:func:`_row_taps`) and every grid row gets
    (1 − fy)·h_i + fy·h_{i−1} of the image rows i, i − 1 that land on it: one pass over
    the grid per image (the four corners as four passes cost twice the arithmetic and
    twice the grid's reads and writes). den's row differences as drizzle_cpu's."""
    ny, nx = num.shape
    sy, sx = image.shape
    xa, xb = max(0, ibx), min(nx, ibx + sx + 1)
    ya, yb = max(0, iby), min(ny, iby + sy + 1)
    if xb <= xa or yb <= ya:
        return
    m = xb - xa
    a = w * sc
    c0, c1 = (1.0 - fx) * a, fx * a
    cy0, cy1 = 1.0 - fy, fy
    # den: a row's run of grid columns gets w·r_y·(1 − fx) from column ibx on and
    # w·r_y·fx from ibx + 1 on (those on the grid)
    s0, e0 = max(0, ibx), min(sx + ibx, nx)
    s1, e1 = max(0, ibx + 1), min(sx + ibx + 1, nx)
    i = ya - iby - 1  # the image row above the first grid row
    prev = 0 <= i < sy
    if prev:
        _row_taps(image[i], off, c0, c1, ibx, xa, xb, hp)
    for yy in range(ya, yb):
        i = yy - iby
        cur = i < sy
        if cur:
            _row_taps(image[i], off, c0, c1, ibx, xa, xb, hc)
        nrow = num[yy, xa:xb]
        if cur and prev:
            for t in range(m):
                nrow[t] += cy0 * hc[t] + cy1 * hp[t]
        elif cur:
            for t in range(m):
                nrow[t] += cy0 * hc[t]
        elif prev:
            for t in range(m):
                nrow[t] += cy1 * hp[t]
        ry = w * ((cy0 if cur else 0.0) + (cy1 if prev else 0.0))
        if e0 > s0:
            diff[yy, s0] += ry * (1.0 - fx)
            diff[yy, e0] -= ry * (1.0 - fx)
        if e1 > s1:
            diff[yy, s1] += ry * fx
            diff[yy, e1] -= ry * fx
        hp, hc = hc, hp
        prev = cur
