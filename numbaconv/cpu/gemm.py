"""Register-blocked GEMM microkernels on :mod:`numbaconv.cpu.simd` vectors, and weight packing.

The microkernel computes ``tile[r*NR + j] (+)= sum_k ap[aoff + k*MR + r] * src[sbase + kofs[k] + j]``
for r < MR rows and j < nvalid columns, NR = NVMAX vectors. ``ap`` is a packed panel (MR values
per reduction step, contiguous); ``src`` rows are anywhere, at offsets ``kofs`` from ``sbase``,
so the same kernel serves implicit-GEMM conv (rows are shifted input planes), Winograd's
batched GEMMs and plain matrices. MR x NV accumulators stay in vector registers for the whole
reduction (24 of AVX-512's 32 registers for NV=3); per step, NV loads and MR broadcasts feed
MR*NV fused multiply-adds. Loads are masked to the valid columns, so a tile never reads past
them. ``init`` 0 starts from zero, 1 adds to what ``tile`` holds (reductions done in chunks).
"""

import numpy as np
from numba import prange

from numbaconv.cpu import simd
from numbaconv.cpu._common import helper, kernel

MR = 8  # rows per microkernel call (rows of a packed panel)
NVMAX = 3  # vectors of columns per microkernel call (the widest tile)


@helper
def _mk3(tile, ap, aoff, src, sbase, kofs, k0, k1, nvalid, init):
    L = simd.width(src)
    nr = NVMAX * L
    n0 = min(nvalid, L)
    n1 = min(max(nvalid - L, 0), L)
    n2 = min(max(nvalid - 2 * L, 0), L)
    if init:
        c00 = simd.load(tile, 0)
        c01 = simd.load(tile, L)
        c02 = simd.load(tile, 2 * L)
        c10 = simd.load(tile, nr)
        c11 = simd.load(tile, nr + L)
        c12 = simd.load(tile, nr + 2 * L)
        c20 = simd.load(tile, 2 * nr)
        c21 = simd.load(tile, 2 * nr + L)
        c22 = simd.load(tile, 2 * nr + 2 * L)
        c30 = simd.load(tile, 3 * nr)
        c31 = simd.load(tile, 3 * nr + L)
        c32 = simd.load(tile, 3 * nr + 2 * L)
        c40 = simd.load(tile, 4 * nr)
        c41 = simd.load(tile, 4 * nr + L)
        c42 = simd.load(tile, 4 * nr + 2 * L)
        c50 = simd.load(tile, 5 * nr)
        c51 = simd.load(tile, 5 * nr + L)
        c52 = simd.load(tile, 5 * nr + 2 * L)
        c60 = simd.load(tile, 6 * nr)
        c61 = simd.load(tile, 6 * nr + L)
        c62 = simd.load(tile, 6 * nr + 2 * L)
        c70 = simd.load(tile, 7 * nr)
        c71 = simd.load(tile, 7 * nr + L)
        c72 = simd.load(tile, 7 * nr + 2 * L)
    else:
        c00 = c01 = c02 = c10 = c11 = c12 = c20 = c21 = c22 = c30 = c31 = c32 = \
            c40 = c41 = c42 = c50 = c51 = c52 = c60 = c61 = c62 = c70 = c71 = c72 = \
            simd.splat(src, 0)
    for k in range(k0, k1):
        o = sbase + kofs[k]
        x0 = simd.load_n(src, o, n0)
        x1 = simd.load_n(src, o + L, n1)
        x2 = simd.load_n(src, o + 2 * L, n2)
        a = aoff + k * MR
        w = simd.load1(ap, a)
        c00 = simd.fma(w, x0, c00)
        c01 = simd.fma(w, x1, c01)
        c02 = simd.fma(w, x2, c02)
        w = simd.load1(ap, a + 1)
        c10 = simd.fma(w, x0, c10)
        c11 = simd.fma(w, x1, c11)
        c12 = simd.fma(w, x2, c12)
        w = simd.load1(ap, a + 2)
        c20 = simd.fma(w, x0, c20)
        c21 = simd.fma(w, x1, c21)
        c22 = simd.fma(w, x2, c22)
        w = simd.load1(ap, a + 3)
        c30 = simd.fma(w, x0, c30)
        c31 = simd.fma(w, x1, c31)
        c32 = simd.fma(w, x2, c32)
        w = simd.load1(ap, a + 4)
        c40 = simd.fma(w, x0, c40)
        c41 = simd.fma(w, x1, c41)
        c42 = simd.fma(w, x2, c42)
        w = simd.load1(ap, a + 5)
        c50 = simd.fma(w, x0, c50)
        c51 = simd.fma(w, x1, c51)
        c52 = simd.fma(w, x2, c52)
        w = simd.load1(ap, a + 6)
        c60 = simd.fma(w, x0, c60)
        c61 = simd.fma(w, x1, c61)
        c62 = simd.fma(w, x2, c62)
        w = simd.load1(ap, a + 7)
        c70 = simd.fma(w, x0, c70)
        c71 = simd.fma(w, x1, c71)
        c72 = simd.fma(w, x2, c72)
    simd.store(tile, 0, c00)
    simd.store(tile, L, c01)
    simd.store(tile, 2 * L, c02)
    simd.store(tile, nr, c10)
    simd.store(tile, nr + L, c11)
    simd.store(tile, nr + 2 * L, c12)
    simd.store(tile, 2 * nr, c20)
    simd.store(tile, 2 * nr + L, c21)
    simd.store(tile, 2 * nr + 2 * L, c22)
    simd.store(tile, 3 * nr, c30)
    simd.store(tile, 3 * nr + L, c31)
    simd.store(tile, 3 * nr + 2 * L, c32)
    simd.store(tile, 4 * nr, c40)
    simd.store(tile, 4 * nr + L, c41)
    simd.store(tile, 4 * nr + 2 * L, c42)
    simd.store(tile, 5 * nr, c50)
    simd.store(tile, 5 * nr + L, c51)
    simd.store(tile, 5 * nr + 2 * L, c52)
    simd.store(tile, 6 * nr, c60)
    simd.store(tile, 6 * nr + L, c61)
    simd.store(tile, 6 * nr + 2 * L, c62)
    simd.store(tile, 7 * nr, c70)
    simd.store(tile, 7 * nr + L, c71)
    simd.store(tile, 7 * nr + 2 * L, c72)


@helper
def _mk2(tile, ap, aoff, src, sbase, kofs, k0, k1, nvalid, init):
    L = simd.width(src)
    nr = NVMAX * L
    n0 = min(nvalid, L)
    n1 = min(max(nvalid - L, 0), L)
    if init:
        c00 = simd.load(tile, 0)
        c01 = simd.load(tile, L)
        c10 = simd.load(tile, nr)
        c11 = simd.load(tile, nr + L)
        c20 = simd.load(tile, 2 * nr)
        c21 = simd.load(tile, 2 * nr + L)
        c30 = simd.load(tile, 3 * nr)
        c31 = simd.load(tile, 3 * nr + L)
        c40 = simd.load(tile, 4 * nr)
        c41 = simd.load(tile, 4 * nr + L)
        c50 = simd.load(tile, 5 * nr)
        c51 = simd.load(tile, 5 * nr + L)
        c60 = simd.load(tile, 6 * nr)
        c61 = simd.load(tile, 6 * nr + L)
        c70 = simd.load(tile, 7 * nr)
        c71 = simd.load(tile, 7 * nr + L)
    else:
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = c60 = c61 = \
            c70 = c71 = simd.splat(src, 0)
    for k in range(k0, k1):
        o = sbase + kofs[k]
        x0 = simd.load_n(src, o, n0)
        x1 = simd.load_n(src, o + L, n1)
        a = aoff + k * MR
        w = simd.load1(ap, a)
        c00 = simd.fma(w, x0, c00)
        c01 = simd.fma(w, x1, c01)
        w = simd.load1(ap, a + 1)
        c10 = simd.fma(w, x0, c10)
        c11 = simd.fma(w, x1, c11)
        w = simd.load1(ap, a + 2)
        c20 = simd.fma(w, x0, c20)
        c21 = simd.fma(w, x1, c21)
        w = simd.load1(ap, a + 3)
        c30 = simd.fma(w, x0, c30)
        c31 = simd.fma(w, x1, c31)
        w = simd.load1(ap, a + 4)
        c40 = simd.fma(w, x0, c40)
        c41 = simd.fma(w, x1, c41)
        w = simd.load1(ap, a + 5)
        c50 = simd.fma(w, x0, c50)
        c51 = simd.fma(w, x1, c51)
        w = simd.load1(ap, a + 6)
        c60 = simd.fma(w, x0, c60)
        c61 = simd.fma(w, x1, c61)
        w = simd.load1(ap, a + 7)
        c70 = simd.fma(w, x0, c70)
        c71 = simd.fma(w, x1, c71)
    simd.store(tile, 0, c00)
    simd.store(tile, L, c01)
    simd.store(tile, nr, c10)
    simd.store(tile, nr + L, c11)
    simd.store(tile, 2 * nr, c20)
    simd.store(tile, 2 * nr + L, c21)
    simd.store(tile, 3 * nr, c30)
    simd.store(tile, 3 * nr + L, c31)
    simd.store(tile, 4 * nr, c40)
    simd.store(tile, 4 * nr + L, c41)
    simd.store(tile, 5 * nr, c50)
    simd.store(tile, 5 * nr + L, c51)
    simd.store(tile, 6 * nr, c60)
    simd.store(tile, 6 * nr + L, c61)
    simd.store(tile, 7 * nr, c70)
    simd.store(tile, 7 * nr + L, c71)


@helper
def microkernel(tile, ap, aoff, src, sbase, kofs, k0, k1, nvalid, init):
    """The 3-vector kernel for wide tiles, the 2-vector one for the rest (see :func:`split_tiles`)."""
    if nvalid > 2 * simd.width(src):
        _mk3(tile, ap, aoff, src, sbase, kofs, k0, k1, nvalid, init)
    else:
        _mk2(tile, ap, aoff, src, sbase, kofs, k0, k1, nvalid, init)


@helper
def split_tiles(npos, lanes):
    """Split ``npos`` positions into tiles of 3 vectors and (at the end) 2-vector tiles.

    Returns (tiles of 3 vectors, tiles of 2 vectors). A lone leftover vector would waste two
    thirds of a 3-vector pass, so 3+1 becomes 2+2; a single vector is a (masked) 2-vector tile.
    """
    nvec = (npos + lanes - 1) // lanes
    n3 = nvec // 3
    r = nvec - 3 * n3
    if r == 0:
        return n3, 0
    if r == 2:
        return n3, 1
    if n3 > 0:
        return n3 - 1, 2
    return 0, 1


@helper
def tile_span(jt, n3, npos, lanes):
    """First position and length of tile ``jt``."""
    if jt < n3:
        p0 = jt * 3 * lanes
        return p0, min(3 * lanes, npos - p0)
    p0 = (3 * n3 + 2 * (jt - n3)) * lanes
    return p0, min(2 * lanes, npos - p0)


@kernel
def pack(ap, w2, groups, nbg):
    """Packed panels: ``ap[((g*nbg + ob)*K + k)*MR + r] = w2[g*ocg + ob*MR + r, k]``, zero for
    rows past the group's ``ocg`` output channels, so the microkernel reads MR weights per tap
    from one contiguous run."""
    oc_, k_ = w2.shape
    ocg = oc_ // groups
    zero = ap.dtype.type(0)
    for blk in prange(groups * nbg):
        g = blk // nbg
        ob = blk - g * nbg
        dst = ap[blk * k_ * MR:(blk + 1) * k_ * MR]
        for r in range(MR):
            o = ob * MR + r
            if o < ocg:
                src = w2[g * ocg + o]
                for k in range(k_):
                    dst[k * MR + r] = src[k]
            else:
                for k in range(k_):
                    dst[k * MR + r] = zero


def partition(costs, nwk):
    """Offsets (nwk + 1,) that split tasks of ``costs`` (in order) into nwk contiguous runs of
    near-equal total cost, and the cost of the largest run.

    Worker k takes tasks offs[k] .. offs[k + 1]: a task goes to the worker whose share of the
    total its midpoint falls in. Contiguous runs keep a worker's consecutive tasks on shared
    data (the same weights or input), which round-robin would scatter.
    """
    costs = np.asarray(costs, dtype=np.float64)
    cum = np.cumsum(costs)
    total = cum[-1] if len(cum) else 0.0
    mids = cum - costs / 2
    offs = np.searchsorted(mids, total * np.arange(nwk + 1) / nwk).astype(np.int64)
    offs[0], offs[-1] = 0, len(costs)
    spans = np.add.reduceat(np.append(costs, 0.0), offs[:-1]) if len(costs) else np.zeros(nwk)
    spans[offs[:-1] == offs[1:]] = 0.0  # reduceat gives the next cost for an empty run
    return offs, float(spans.max())


# --------------------------------------------------------------------------------------------
# Row microkernel: MR rows that each broadcast from their own place (small-map convolution)
# --------------------------------------------------------------------------------------------
#
# ``tile[r*NR + j] (+)= sum_{t0 <= t < t1} sum_{c < cn} xs[rtab[t*tstride + r0 + r] + c]
#                                                      * bp[boff + (t*cn + c)*bw + j]``
# for r < MR and j < bw (3 or 2 vectors, the panel's width; the panel is zero past the valid
# columns, so loads need no mask). Row r reads a contiguous run of ``cn`` values per t from where
# ``rtab`` points: an output position's pixel (all channels, NHWC) for tap t, or a zero pixel.
# Positions are the rows and output channels the vectors, so a map of 2x2 or 4x4 positions
# batched over N fills every lane, and no position outside the map is computed.


@helper
def _mkr3(tile, bp, boff, xs, rtab, r0, tstride, t0, t1, cn, init):
    L = simd.width(bp)
    nr = NVMAX * L
    bw = 3 * L
    if init:
        c00 = simd.load(tile, 0)
        c01 = simd.load(tile, L)
        c02 = simd.load(tile, 2 * L)
        c10 = simd.load(tile, nr)
        c11 = simd.load(tile, nr + L)
        c12 = simd.load(tile, nr + 2 * L)
        c20 = simd.load(tile, 2 * nr)
        c21 = simd.load(tile, 2 * nr + L)
        c22 = simd.load(tile, 2 * nr + 2 * L)
        c30 = simd.load(tile, 3 * nr)
        c31 = simd.load(tile, 3 * nr + L)
        c32 = simd.load(tile, 3 * nr + 2 * L)
        c40 = simd.load(tile, 4 * nr)
        c41 = simd.load(tile, 4 * nr + L)
        c42 = simd.load(tile, 4 * nr + 2 * L)
        c50 = simd.load(tile, 5 * nr)
        c51 = simd.load(tile, 5 * nr + L)
        c52 = simd.load(tile, 5 * nr + 2 * L)
        c60 = simd.load(tile, 6 * nr)
        c61 = simd.load(tile, 6 * nr + L)
        c62 = simd.load(tile, 6 * nr + 2 * L)
        c70 = simd.load(tile, 7 * nr)
        c71 = simd.load(tile, 7 * nr + L)
        c72 = simd.load(tile, 7 * nr + 2 * L)
    else:
        c00 = c01 = c02 = c10 = c11 = c12 = c20 = c21 = c22 = c30 = c31 = c32 = \
            c40 = c41 = c42 = c50 = c51 = c52 = c60 = c61 = c62 = c70 = c71 = c72 = \
            simd.splat(bp, 0)
    for t in range(t0, t1):
        ro = t * tstride + r0
        b0 = rtab[ro]
        b1 = rtab[ro + 1]
        b2 = rtab[ro + 2]
        b3 = rtab[ro + 3]
        b4 = rtab[ro + 4]
        b5 = rtab[ro + 5]
        b6 = rtab[ro + 6]
        b7 = rtab[ro + 7]
        o = boff + t * cn * bw
        for c in range(cn):
            x0 = simd.load(bp, o)
            x1 = simd.load(bp, o + L)
            x2 = simd.load(bp, o + 2 * L)
            o += bw
            w = simd.load1(xs, b0 + c)
            c00 = simd.fma(w, x0, c00)
            c01 = simd.fma(w, x1, c01)
            c02 = simd.fma(w, x2, c02)
            w = simd.load1(xs, b1 + c)
            c10 = simd.fma(w, x0, c10)
            c11 = simd.fma(w, x1, c11)
            c12 = simd.fma(w, x2, c12)
            w = simd.load1(xs, b2 + c)
            c20 = simd.fma(w, x0, c20)
            c21 = simd.fma(w, x1, c21)
            c22 = simd.fma(w, x2, c22)
            w = simd.load1(xs, b3 + c)
            c30 = simd.fma(w, x0, c30)
            c31 = simd.fma(w, x1, c31)
            c32 = simd.fma(w, x2, c32)
            w = simd.load1(xs, b4 + c)
            c40 = simd.fma(w, x0, c40)
            c41 = simd.fma(w, x1, c41)
            c42 = simd.fma(w, x2, c42)
            w = simd.load1(xs, b5 + c)
            c50 = simd.fma(w, x0, c50)
            c51 = simd.fma(w, x1, c51)
            c52 = simd.fma(w, x2, c52)
            w = simd.load1(xs, b6 + c)
            c60 = simd.fma(w, x0, c60)
            c61 = simd.fma(w, x1, c61)
            c62 = simd.fma(w, x2, c62)
            w = simd.load1(xs, b7 + c)
            c70 = simd.fma(w, x0, c70)
            c71 = simd.fma(w, x1, c71)
            c72 = simd.fma(w, x2, c72)
    simd.store(tile, 0, c00)
    simd.store(tile, L, c01)
    simd.store(tile, 2 * L, c02)
    simd.store(tile, nr, c10)
    simd.store(tile, nr + L, c11)
    simd.store(tile, nr + 2 * L, c12)
    simd.store(tile, 2 * nr, c20)
    simd.store(tile, 2 * nr + L, c21)
    simd.store(tile, 2 * nr + 2 * L, c22)
    simd.store(tile, 3 * nr, c30)
    simd.store(tile, 3 * nr + L, c31)
    simd.store(tile, 3 * nr + 2 * L, c32)
    simd.store(tile, 4 * nr, c40)
    simd.store(tile, 4 * nr + L, c41)
    simd.store(tile, 4 * nr + 2 * L, c42)
    simd.store(tile, 5 * nr, c50)
    simd.store(tile, 5 * nr + L, c51)
    simd.store(tile, 5 * nr + 2 * L, c52)
    simd.store(tile, 6 * nr, c60)
    simd.store(tile, 6 * nr + L, c61)
    simd.store(tile, 6 * nr + 2 * L, c62)
    simd.store(tile, 7 * nr, c70)
    simd.store(tile, 7 * nr + L, c71)
    simd.store(tile, 7 * nr + 2 * L, c72)


@helper
def _mkr2(tile, bp, boff, xs, rtab, r0, tstride, t0, t1, cn, init):
    L = simd.width(bp)
    nr = NVMAX * L
    bw = 2 * L
    if init:
        c00 = simd.load(tile, 0)
        c01 = simd.load(tile, L)
        c10 = simd.load(tile, nr)
        c11 = simd.load(tile, nr + L)
        c20 = simd.load(tile, 2 * nr)
        c21 = simd.load(tile, 2 * nr + L)
        c30 = simd.load(tile, 3 * nr)
        c31 = simd.load(tile, 3 * nr + L)
        c40 = simd.load(tile, 4 * nr)
        c41 = simd.load(tile, 4 * nr + L)
        c50 = simd.load(tile, 5 * nr)
        c51 = simd.load(tile, 5 * nr + L)
        c60 = simd.load(tile, 6 * nr)
        c61 = simd.load(tile, 6 * nr + L)
        c70 = simd.load(tile, 7 * nr)
        c71 = simd.load(tile, 7 * nr + L)
    else:
        c00 = c01 = c10 = c11 = c20 = c21 = c30 = c31 = c40 = c41 = c50 = c51 = c60 = c61 = \
            c70 = c71 = simd.splat(bp, 0)
    for t in range(t0, t1):
        ro = t * tstride + r0
        b0 = rtab[ro]
        b1 = rtab[ro + 1]
        b2 = rtab[ro + 2]
        b3 = rtab[ro + 3]
        b4 = rtab[ro + 4]
        b5 = rtab[ro + 5]
        b6 = rtab[ro + 6]
        b7 = rtab[ro + 7]
        o = boff + t * cn * bw
        for c in range(cn):
            x0 = simd.load(bp, o)
            x1 = simd.load(bp, o + L)
            o += bw
            w = simd.load1(xs, b0 + c)
            c00 = simd.fma(w, x0, c00)
            c01 = simd.fma(w, x1, c01)
            w = simd.load1(xs, b1 + c)
            c10 = simd.fma(w, x0, c10)
            c11 = simd.fma(w, x1, c11)
            w = simd.load1(xs, b2 + c)
            c20 = simd.fma(w, x0, c20)
            c21 = simd.fma(w, x1, c21)
            w = simd.load1(xs, b3 + c)
            c30 = simd.fma(w, x0, c30)
            c31 = simd.fma(w, x1, c31)
            w = simd.load1(xs, b4 + c)
            c40 = simd.fma(w, x0, c40)
            c41 = simd.fma(w, x1, c41)
            w = simd.load1(xs, b5 + c)
            c50 = simd.fma(w, x0, c50)
            c51 = simd.fma(w, x1, c51)
            w = simd.load1(xs, b6 + c)
            c60 = simd.fma(w, x0, c60)
            c61 = simd.fma(w, x1, c61)
            w = simd.load1(xs, b7 + c)
            c70 = simd.fma(w, x0, c70)
            c71 = simd.fma(w, x1, c71)
    simd.store(tile, 0, c00)
    simd.store(tile, L, c01)
    simd.store(tile, nr, c10)
    simd.store(tile, nr + L, c11)
    simd.store(tile, 2 * nr, c20)
    simd.store(tile, 2 * nr + L, c21)
    simd.store(tile, 3 * nr, c30)
    simd.store(tile, 3 * nr + L, c31)
    simd.store(tile, 4 * nr, c40)
    simd.store(tile, 4 * nr + L, c41)
    simd.store(tile, 5 * nr, c50)
    simd.store(tile, 5 * nr + L, c51)
    simd.store(tile, 6 * nr, c60)
    simd.store(tile, 6 * nr + L, c61)
    simd.store(tile, 7 * nr, c70)
    simd.store(tile, 7 * nr + L, c71)


@helper
def row_microkernel(tile, bp, boff, wide, xs, rtab, r0, tstride, t0, t1, cn, init):
    """The row kernel (see above) on a panel of 3 vectors when ``wide``, else of 2."""
    if wide:
        _mkr3(tile, bp, boff, xs, rtab, r0, tstride, t0, t1, cn, init)
    else:
        _mkr2(tile, bp, boff, xs, rtab, r0, tstride, t0, t1, cn, init)
