"""Dense kernels: linear (x @ w.T + b) and softmax / log_softmax over one axis."""

import math

import numpy as np
from numba import prange

from numbaconv.cpu._common import (INNER_TILE, helper, kernel, row_lse, row_max, tile_lse,
                                   tile_max, tile_task)

# linear: each task owns an (MB x NB) block of out and walks K in KB steps, so the x and w panels
# it reads (2 * 32 * 1024 * 4 bytes in float32) stay in L2 while 4x4 register tiles reuse them.
MB = 32
NB = 32
KB = 1024


@helper
def _add_row(out, m, m1, n, n1, a0, a1, a2, a3):
    # Adds one register-tile row into out, skipping the repeated edge rows and columns.
    if m < m1:
        out[m, n] += a0
        if n + 1 < n1:
            out[m, n + 1] += a1
        if n + 2 < n1:
            out[m, n + 2] += a2
        if n + 3 < n1:
            out[m, n + 3] += a3


@kernel
def _linear(out, x, w, b, has_bias):
    m_, k_ = x.shape
    n_ = w.shape[0]
    zero = out.dtype.type(0)
    mblocks = (m_ + MB - 1) // MB
    nblocks = (n_ + NB - 1) // NB
    for t in prange(mblocks * nblocks):
        mb = t // nblocks
        nb = t - mb * nblocks
        m0 = mb * MB
        m1 = min(m0 + MB, m_)
        n0 = nb * NB
        n1 = min(n0 + NB, n_)
        for m in range(m0, m1):
            for n in range(n0, n1):
                out[m, n] = b[n] if has_bias else zero
        for k0 in range(0, k_, KB):
            k1 = min(k0 + KB, k_)
            for m in range(m0, m1, 4):
                # Rows past the block end repeat the last row: computed, never stored.
                i0 = m
                i1 = min(m + 1, m1 - 1)
                i2 = min(m + 2, m1 - 1)
                i3 = min(m + 3, m1 - 1)
                # Row slices indexed from 0: LLVM then knows k >= 0 and drops the negative-index
                # wraparound that would otherwise turn every load into a gather.
                x0 = x[i0, k0:k1]
                x1 = x[i1, k0:k1]
                x2 = x[i2, k0:k1]
                x3 = x[i3, k0:k1]
                for n in range(n0, n1, 4):
                    j1 = min(n + 1, n1 - 1)
                    j2 = min(n + 2, n1 - 1)
                    j3 = min(n + 3, n1 - 1)
                    w0 = w[n, k0:k1]
                    w1 = w[j1, k0:k1]
                    w2 = w[j2, k0:k1]
                    w3 = w[j3, k0:k1]
                    a00 = a01 = a02 = a03 = zero
                    a10 = a11 = a12 = a13 = zero
                    a20 = a21 = a22 = a23 = zero
                    a30 = a31 = a32 = a33 = zero
                    # 16 dot products along contiguous K: vectorised reductions (reassoc).
                    for k in range(k1 - k0):
                        v0 = x0[k]
                        v1 = x1[k]
                        v2 = x2[k]
                        v3 = x3[k]
                        u0 = w0[k]
                        u1 = w1[k]
                        u2 = w2[k]
                        u3 = w3[k]
                        a00 += v0 * u0
                        a01 += v0 * u1
                        a02 += v0 * u2
                        a03 += v0 * u3
                        a10 += v1 * u0
                        a11 += v1 * u1
                        a12 += v1 * u2
                        a13 += v1 * u3
                        a20 += v2 * u0
                        a21 += v2 * u1
                        a22 += v2 * u2
                        a23 += v2 * u3
                        a30 += v3 * u0
                        a31 += v3 * u1
                        a32 += v3 * u2
                        a33 += v3 * u3
                    _add_row(out, m, m1, n, n1, a00, a01, a02, a03)
                    _add_row(out, m + 1, m1, n, n1, a10, a11, a12, a13)
                    _add_row(out, m + 2, m1, n, n1, a20, a21, a22, a23)
                    _add_row(out, m + 3, m1, n, n1, a30, a31, a32, a33)


# Stand-in for a missing bias, one per dtype, so that b=None allocates nothing.
_NO_BIAS = {np.dtype(t): np.empty(0, t) for t in (np.float32, np.float64)}


def linear(out, x, w, b):
    """``out = x @ w.T + b``.

    Parameters
    ----------
    out : (M, N) array, filled in place.
    x : (M, K) array.
    w : (N, K) array.
    b : (N,) array or None.
    """
    if b is None:
        _linear(out, x, w, _NO_BIAS[out.dtype], False)
    else:
        _linear(out, x, w, b, True)


@kernel
def softmax(out, x, log):
    """Softmax (or log_softmax when ``log``) over axis 1, stable for any finite input.

    ``softmax = exp(x - max) / sum(exp(x - max))``, ``log_softmax = x - max - log(sum(...))``.

    Parameters
    ----------
    out : (outer, D, inner) array, filled in place.
    x : (outer, D, inner) array.
    log : bool, compute log_softmax.
    """
    outer, d_, inner = x.shape
    if inner == 1:
        # Contiguous rows: one task per row, every pass a unit-stride loop.
        x2 = x.reshape((outer, d_))
        o2 = out.reshape((outer, d_))
        for r in prange(outer):
            xr = x2[r]
            orow = o2[r]
            m = row_max(xr)
            if log:
                ls = row_lse(xr, m)
                for d in range(d_):
                    orow[d] = (xr[d] - m) - ls
            else:
                s = out.dtype.type(0)
                for d in range(d_):
                    e = math.exp(xr[d] - m)
                    orow[d] = e
                    s += e
                for d in range(d_):
                    orow[d] = orow[d] / s
        return
    # Strided axis: a task takes a tile of inner positions and vectorises across them; the
    # slices are indexed from 0 so LLVM sees non-negative indices (no wraparound gathers).
    tiles = (inner + INNER_TILE - 1) // INNER_TILE
    for t in prange(outer * tiles):
        o, i0, i1 = tile_task(t, tiles, inner)
        li = i1 - i0
        mx = tile_max(x, o, i0, i1)
        if log:
            ls = tile_lse(x, o, i0, i1, mx)
            for d in range(d_):
                xr = x[o, d, i0:i1]
                orow = out[o, d, i0:i1]
                for i in range(li):
                    orow[i] = (xr[i] - mx[i]) - ls[i]
        else:
            # exp is stored on the way and divided afterwards: one exp per element.
            sm = np.zeros(li, out.dtype)
            for d in range(d_):
                xr = x[o, d, i0:i1]
                orow = out[o, d, i0:i1]
                for i in range(li):
                    e = math.exp(xr[i] - mx[i])
                    sm[i] += e
                    orow[i] = e
            for d in range(d_):
                orow = out[o, d, i0:i1]
                for i in range(li):
                    orow[i] = orow[i] / sm[i]
