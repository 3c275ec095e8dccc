"""Dense kernels: linear (x @ w.T + b) and softmax / log_softmax over one axis."""

import math

import numpy as np
from numba import prange

from numbaconv.cpu import simd
from numbaconv.cpu._common import (INNER_TILE, helper, kernel, row_lse, row_max, tile_lse,
                                   tile_max, tile_task)
from numbaconv.cpu.gemm import MR, NVMAX, microkernel, pack, split_tiles, tile_span

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


# ---- backward -------------------------------------------------------------------------------

# Both products of linear's backward run on the SIMD GEMM microkernel (numbaconv.cpu.gemm):
# grad_input = go @ w (rows of go against rows of w) and grad_weight = go.T @ x (columns of go
# against rows of x). The left operand is packed into MR-row panels; a task owns an MR x tile
# block of the output and runs the whole reduction in registers, so the batch reduction of the
# weight gradient has one writer per element (no atomics).


@kernel
def _pack_cols(ap, a):
    """Panels of ``a.T``: ``ap[(ob*M + m)*MR + r] = a[m, ob*MR + r]`` (zero past a's N columns),
    the layout :func:`numbaconv.cpu.gemm.pack` gives the rows of a matrix."""
    m_, n_ = a.shape
    nb = (n_ + MR - 1) // MR
    zero = ap.dtype.type(0)
    for ob in prange(nb):
        dst = ap[ob * m_ * MR:(ob + 1) * m_ * MR]
        n0 = ob * MR
        nv = min(MR, n_ - n0)
        for m in range(m_):
            src = a[m, n0:n0 + nv]
            for r in range(nv):
                dst[m * MR + r] = src[r]
            for r in range(nv, MR):
                dst[m * MR + r] = zero


@kernel
def _pack_strips(bp, b):
    """Column strips of ``b`` (KR, C), one per microkernel tile (:func:`split_tiles`), each
    contiguous: ``bp[(jt*KR + k)*NR + j] = b[k, p0 + j]`` for tile jt's columns p0 + j."""
    kr, c_ = b.shape
    lanes = simd.width(bp)
    nr = NVMAX * lanes
    n3, n2 = split_tiles(c_, lanes)
    for jt in prange(n3 + n2):
        p0, plen = tile_span(jt, n3, c_, lanes)
        for k in range(kr):
            src = b[k, p0:p0 + plen]
            dst = bp[(jt * kr + k) * nr:(jt * kr + k) * nr + plen]
            for j in range(plen):
                dst[j] = src[j]


@kernel
def _panel_gemm(out, ap, bp, kofs, bias):
    """``out (R, C) = A @ B (+ bias)`` with A (R, KR) in MR-row panels ``ap`` and B (KR, C) in column
    strips ``bp`` (:func:`_pack_strips`), ``kofs = arange(KR) * NR``. A task = one strip x one
    panel; strips outer, so consecutive tasks (one thread's share) reuse a strip from L2.
    ``bias`` (C,) or None (the branch is compiled out)."""
    r_, c_ = out.shape
    kr = kofs.shape[0]
    lanes = simd.width(bp)
    nr = NVMAX * lanes
    n3, n2 = split_tiles(c_, lanes)
    nblocks = (r_ + MR - 1) // MR
    for t in prange(nblocks * (n3 + n2)):
        jt = t // nblocks
        ob = t - jt * nblocks
        p0, plen = tile_span(jt, n3, c_, lanes)
        tile = np.empty(MR * nr, dtype=out.dtype)
        microkernel(tile, ap, ob * kr * MR, bp, jt * kr * nr, kofs, 0, kr, plen, 0)
        for r in range(min(MR, r_ - ob * MR)):
            orow = out[ob * MR + r, p0:p0 + plen]
            trow = tile[r * nr:r * nr + plen]
            if bias is None:
                for j in range(plen):
                    orow[j] = trow[j]
            else:
                bseg = bias[p0:p0 + plen]
                for j in range(plen):
                    orow[j] = trow[j] + bseg[j]


def _gemm(out, ap, b):
    """``out = A @ b`` for A packed in ``ap`` (MR-row panels) and b (KR, C) row-major."""
    kr, c = b.shape
    lanes = simd.lanes_of(b.dtype)
    nr = NVMAX * lanes
    n3, n2 = split_tiles.py_func(c, lanes)
    bp = np.empty(max(1, (n3 + n2) * kr * nr), b.dtype)
    _pack_strips(bp, b)
    _panel_gemm(out, ap, bp, np.arange(kr, dtype=np.int64) * nr, None)


COL_BLOCK = 256  # columns per task of the bias gradient's column sums


@kernel
def _col_sum(out, a):
    """out (N,) = a (M, N) summed over rows; a task owns a block of columns (no races)."""
    m_, n_ = a.shape
    for t in prange((n_ + COL_BLOCK - 1) // COL_BLOCK):
        n0 = t * COL_BLOCK
        n1 = min(n0 + COL_BLOCK, n_)
        acc = out[n0:n1]
        acc[:] = 0
        for m in range(m_):
            row = a[m, n0:n1]
            for j in range(n1 - n0):
                acc[j] += row[j]


def linear_backward(gx, gw, gb, go, x, w):
    """Gradients of ``out = x @ w.T + b``.

    Parameters
    ----------
    gx : (M, K) array, filled with ``go @ w``.
    gw : (N, K) array, filled with ``go.T @ x``.
    gb : (N,) array filled with ``go.sum(0)``, or None (no bias).
    go : (M, N) array, the gradient of ``out``.
    x : (M, K) array.
    w : (N, K) array.
    """
    m, n = go.shape
    if gx.size:
        ap = np.empty(((m + MR - 1) // MR) * MR * n, go.dtype)
        pack(ap, go, 1, (m + MR - 1) // MR)
        _gemm(gx, ap, w)
    if gw.size:
        ap = np.empty(((n + MR - 1) // MR) * MR * m, go.dtype)
        _pack_cols(ap, go)
        _gemm(gw, ap, x)
    if gb is not None and gb.size:
        _col_sum(gb, go)


@kernel
def softmax_backward(gx, go, x, log):
    """Gradient of softmax (or log_softmax when ``log``) over axis 1, recomputed from ``x``.

    softmax: ``gx = y * (go - sum(go * y))``; log_softmax: ``gx = go - y * sum(go)``, with
    ``y = softmax(x)`` along the axis.

    Parameters
    ----------
    gx : (outer, D, inner) array, filled in place.
    go : (outer, D, inner) array, the gradient of the output.
    x : (outer, D, inner) array, the forward input.
    log : bool, log_softmax.
    """
    outer, d_, inner = x.shape
    if inner == 1:
        x2 = x.reshape((outer, d_))
        g2 = go.reshape((outer, d_))
        o2 = gx.reshape((outer, d_))
        for r in prange(outer):
            xr = x2[r]
            gr = g2[r]
            orow = o2[r]
            m = row_max(xr)
            ls = row_lse(xr, m)
            s = gx.dtype.type(0)
            if log:
                for d in range(d_):
                    s += gr[d]
                for d in range(d_):
                    orow[d] = gr[d] - math.exp((xr[d] - m) - ls) * s
            else:
                # y is parked in the output row between the two passes.
                for d in range(d_):
                    y = math.exp((xr[d] - m) - ls)
                    orow[d] = y
                    s += gr[d] * y
                for d in range(d_):
                    orow[d] = orow[d] * (gr[d] - s)
        return
    tiles = (inner + INNER_TILE - 1) // INNER_TILE
    for t in prange(outer * tiles):
        o, i0, i1 = tile_task(t, tiles, inner)
        li = i1 - i0
        mx = tile_max(x, o, i0, i1)
        ls = tile_lse(x, o, i0, i1, mx)
        sm = np.zeros(li, gx.dtype)
        if log:
            for d in range(d_):
                gr = go[o, d, i0:i1]
                for i in range(li):
                    sm[i] += gr[i]
            for d in range(d_):
                xr = x[o, d, i0:i1]
                gr = go[o, d, i0:i1]
                orow = gx[o, d, i0:i1]
                for i in range(li):
                    orow[i] = gr[i] - math.exp((xr[i] - mx[i]) - ls[i]) * sm[i]
        else:
            for d in range(d_):
                xr = x[o, d, i0:i1]
                gr = go[o, d, i0:i1]
                orow = gx[o, d, i0:i1]
                for i in range(li):
                    y = math.exp((xr[i] - mx[i]) - ls[i])
                    orow[i] = y
                    sm[i] += gr[i] * y
            for d in range(d_):
                gr = go[o, d, i0:i1]
                orow = gx[o, d, i0:i1]
                for i in range(li):
                    orow[i] = orow[i] * (gr[i] - sm[i])
