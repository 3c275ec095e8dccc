"""Winograd F(4x4, 3x3) convolution for 3x3, stride-1, undilated, ungrouped conv2d on the CPU.

Each 4x4 tile of output positions comes from a 6x6 tile of (zero-padded) input:
``Y = A^T [sum_c (G g_c G^T) * (B^T d_c B)] A``, 36 products per channel and tile instead of the
direct conv's 144. The sum over channels is 36 independent GEMMs, one per position (xi, nu) of
the 6x6 transformed tile: ``M[xi,nu] (OC x T) = U[xi,nu] (OC x C) @ V[xi,nu] (C x T)``, with T
the tiles of all images (batched, so that 7x7 images still fill vectors at batch 32).

- Filters: ``U = G g G^T`` per (oc, c), computed in float64 and rounded once, stored as packed
  panels of MR output channels per (xi, nu) and cached for tracked weights (``WEIGHTS``).
- Input: ``V = B^T d B`` per (c, tile), laid out as 36 planes of panels (C x nr), nr = the
  microkernel's widest tile, so that each GEMM streams one contiguous panel. The vertical
  transform runs along input rows (contiguous vectors); :func:`load4_n` then splits a row into
  the 4 column phases of the tile grid, which makes the horizontal transform contiguous too.
  Tile rows shorter than ROW_MIN_TILES are gathered L tiles at a time to fill the vectors.
- GEMM: :func:`numbaconv.cpu.gemm.microkernel` with ``kofs[c] = c * panel row length``. Per
  panel, chunks of MR-channel blocks run their 36 GEMMs into per-worker scratch (each V panel
  slab reused by the chunk from L1/L2), then ``Y = A^T M A`` with bias, residual and the
  activation writes the 4x4 tiles into ``out``, dropping positions past its edge.

Two schedules (:func:`_plan`). Fused, for few channels: a task (a panel, a range of its
channel blocks) transforms the panel's input into the worker's own V, runs the GEMMs and writes
the output, so V never leaves that core's cache and no task waits for another. Blocked, for
many channels (a panel's V would not stay in cache): per block of tile rows, all workers
transform the input into a shared V, then all run the GEMMs. Either keeps its scratch within
the size of input + output when :func:`winograd_applies` says yes. The GEMM work of both is
cut into one contiguous run of (panel, channel block) pairs per worker, of equal modelled time
(:func:`_fused_tasks`, :func:`_blocked_tasks`): 5 panels split 2.5 : 2.5 between 2 workers,
not 3 : 2.

The transform matrices use the interpolation points 0, 1, -1, 1/2, -2 (and infinity) instead of
Lavin's 0, +-1, +-2: the same cost, and 2.5x less float32 error (measured on random data, max
error / sum|x*w| with 256 channels: 2.8e-7 against 6.9e-7).
"""

import collections
import functools
import math

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core.errors import TypingError
from numba.extending import intrinsic

from numbaconv._ops import ACT_NONE, ACT_RELU
from numbaconv.cpu import simd
from numbaconv.cpu._common import FASTMATH, apply_act, helper, kernel
from numbaconv.cpu.gemm import MR, NVMAX, microkernel, partition
from numbaconv.cpu.workspace import POOL, WEIGHTS

TILE = 4  # output tile side (m)
ALPHA = 6  # input tile side (m + r - 1)
NXI = ALPHA * ALPHA  # transformed positions per tile = GEMMs per conv

# Transform matrices for points (0, 1, -1, 1/2, -2, inf). The kernels hard-code BT and AT as
# sparse formulas (_bt, _at); tests check those against these matrices and the bilinear identity.
BT = np.array([
    [1.0, -1.5, -2.0, 1.5, 1.0, 0.0],
    [0.0, -1.0, 0.5, 2.5, 1.0, 0.0],
    [0.0, 1.0, -2.5, 0.5, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 0.5, -1.0, -0.5, 1.0, 0.0],
    [0.0, 1.0, -1.5, -2.0, 1.5, 1.0],
])
G = np.array([
    [1.0, 0.0, 0.0],
    [1 / 3, 1 / 3, 1 / 3],
    [-1 / 3, 1 / 3, -1 / 3],
    [-16 / 15, -8 / 15, -4 / 15],
    [1 / 15, -2 / 15, 4 / 15],
    [0.0, 0.0, 1.0],
])
AT = np.array([
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 0.5, -2.0, 0.0],
    [0.0, 1.0, 1.0, 0.25, 4.0, 0.0],
    [0.0, 1.0, -1.0, 0.125, -8.0, 1.0],
])

# Scheduling knobs, from measurements on the 2-core AVX-512 machine (see winograd_applies).
OB_CHUNK = 8  # MR-channel blocks per GEMM task (blocked schedule): M tiles in worker scratch
OB_CHUNK_FUSED = 4  # the same for the fused schedule, whose scratch also holds a V panel
FT_CHANNELS = 16  # input channels per filter-transform task
FUSED_V_BYTES = 1 << 20  # fused schedule when one panel's V (36 x C x nr) is at most this
# The blocked schedule pays two barriers and a pass over the filters per block: below this many
# GEMM FLOPs per block it lost to the direct conv (128ch@28 at batch 1: 7 tiles, 8 MFLOP per
# block, 0.6x; at batch 2: 35 tiles, 41 MFLOP, 1.2x; 512ch@28 at batch 1: 528 MFLOP, 1.8x).
MIN_BLOCK_FLOPS = 20e6
ROW_MIN_TILES = 8  # tiles per tile row from which the input transform runs along tile rows
V_BLOCK_BYTES = 4 << 20  # V scratch per block of tile rows (cache-sized), unless more is needed


def _routine(func):
    """Compile a large serial piece of a kernel as its own function (not inlined into the
    kernel's IR): the parallel kernels stay small, which keeps their compile time down."""
    return numba.njit(cache=True, fastmath=FASTMATH)(func)


# --------------------------------------------------------------------------------------------
# Interleaved vector access: 4 vectors <-> 4L consecutive elements (column phases of the tiles)
# --------------------------------------------------------------------------------------------

@intrinsic
def load4_n(typingctx, arr, idx, n):
    """Vectors (v0, v1, v2, v3) with ``v_f[i] = arr[idx + 4*i + f]``, from the first n of the
    4*lanes elements at idx (the rest read as zero, nothing past them is touched)."""
    vt = simd.vec_type(arr, "winograd.load4_n")

    def codegen(context, builder, sig, args):
        lanes = vt.lanes
        wide = ir.VectorType(context.get_value_type(vt.dtype), 4 * lanes)
        ptr = simd.address(context, builder, sig.args[0], args[0], args[1], wide)
        x = simd.masked_load(builder, ptr, simd.lane_mask(builder, args[2], 4 * lanes), wide)
        undef = ir.Constant(wide, ir.Undefined)
        phase = ir.VectorType(ir.IntType(32), lanes)
        parts = [builder.shuffle_vector(x, undef,
                                        ir.Constant(phase, [f + 4 * i for i in range(lanes)]))
                 for f in range(4)]
        return context.make_tuple(builder, sig.return_type, parts)

    return types.UniTuple(vt, 4)(arr, idx, n), codegen


@intrinsic
def store4_n(typingctx, arr, idx, v0, v1, v2, v3, n):
    """``arr[idx + 4*i + f] = v_f[i]`` for the first n of those 4*lanes elements."""
    vt = simd.vec_type(arr, "winograd.store4_n")
    if not all(v == vt for v in (v0, v1, v2, v3)):
        raise TypingError(f"winograd.store4_n: cannot store {v0} into {arr}")

    def codegen(context, builder, sig, args):
        lanes = vt.lanes
        wide = ir.VectorType(context.get_value_type(vt.dtype), 4 * lanes)

        def idx32(xs):
            return ir.Constant(ir.VectorType(ir.IntType(32), len(xs)), xs)

        a = builder.shuffle_vector(args[2], args[3], idx32(list(range(2 * lanes))))
        b = builder.shuffle_vector(args[4], args[5], idx32(list(range(2 * lanes))))
        x = builder.shuffle_vector(a, b, idx32([f * lanes + i for i in range(lanes)
                                                for f in range(4)]))
        ptr = simd.address(context, builder, sig.args[0], args[0], args[1], wide)
        simd.masked_store(builder, x, ptr, simd.lane_mask(builder, args[6], 4 * lanes))
        return context.get_dummy_value()

    return types.none(arr, idx, v0, v1, v2, v3, n), codegen


# --------------------------------------------------------------------------------------------
# Transforms of 6 values (simd vectors: one lane per tile or position)
# --------------------------------------------------------------------------------------------

@helper
def _sub(a, b, neg):
    return simd.fma(neg, b, a)


@helper
def _bt(like, d0, d1, d2, d3, d4, d5):
    """``B^T d`` for the 6 rows d0..d5 (16 operations)."""
    neg = simd.splat(like, -1.0)
    e = _sub(d3, d1, neg)
    f = _sub(d4, d2, neg)
    z0 = simd.fma(simd.splat(like, -2.0), d2, simd.fma(simd.splat(like, 1.5), e, simd.add(d0, d4)))
    z1 = simd.fma(simd.splat(like, 2.5), d3, simd.fma(simd.splat(like, 0.5), d2, _sub(d4, d1, neg)))
    z2 = simd.fma(simd.splat(like, 0.5), d3, simd.fma(simd.splat(like, -2.5), d2, simd.add(d4, d1)))
    z3 = simd.fma(simd.splat(like, 2.0), e, f)
    z4 = simd.fma(simd.splat(like, -0.5), e, f)
    z5 = simd.fma(simd.splat(like, 1.5), f, simd.fma(simd.splat(like, -2.0), d3, simd.add(d5, d1)))
    return z0, z1, z2, z3, z4, z5


@helper
def _at(like, m0, m1, m2, m3, m4, m5):
    """``A^T m`` for the 6 rows m0..m5 (12 operations)."""
    s12 = simd.add(m1, m2)
    d12 = _sub(m1, m2, simd.splat(like, -1.0))
    y0 = simd.add(simd.add(m0, s12), simd.add(m3, m4))
    y1 = simd.fma(simd.splat(like, -2.0), m4, simd.fma(simd.splat(like, 0.5), m3, d12))
    y2 = simd.fma(simd.splat(like, 4.0), m4, simd.fma(simd.splat(like, 0.25), m3, s12))
    y3 = simd.fma(simd.splat(like, -8.0), m4,
                  simd.fma(simd.splat(like, 0.125), m3, simd.add(d12, m5)))
    return y0, y1, y2, y3


# --------------------------------------------------------------------------------------------
# Filter transform
# --------------------------------------------------------------------------------------------

@helper
def _g(like, a0, a1, a2):
    """``G a`` for 3 vectors a0..a2 (the rows of a 3 x L block; like: an array of their
    dtype): the 6 rows of :data:`G`."""
    s = simd.add(a0, a2)
    third = simd.splat(like, 1.0 / 3.0)
    fifteenth = simd.splat(like, 1.0 / 15.0)
    return (a0, simd.mul(simd.add(s, a1), third),
            simd.mul(simd.fma(simd.splat(like, -1.0), s, a1), third),
            simd.mul(simd.fma(simd.splat(like, -16.0), a0,
                              simd.fma(simd.splat(like, -8.0), a1,
                                       simd.mul(simd.splat(like, -4.0), a2))), fifteenth),
            simd.mul(simd.fma(simd.splat(like, -2.0), a1,
                              simd.fma(simd.splat(like, 4.0), a2, a0)), fifteenth),
            a2)


@kernel
def _filter_transform(ap, w, nb):
    """``ap[((xi*6 + nu)*nb + ob)*C + c)*MR + r] = (G w[ob*MR + r, c] G^T)[xi, nu]``, zero for
    channels past OC; computed in float64, rounded once.

    A task takes MR output channels x FT_CHANNELS input channels: it gathers their 9 taps into
    rows of (c, r) pairs (g), transforms the rows as float64 vectors (G g, then (G g) G^T) and
    writes each of the 36 results as one contiguous run of ap.
    """
    oc_, c_ = w.shape[0], w.shape[1]
    nch = (c_ + FT_CHANNELS - 1) // FT_CHANNELS
    rl = FT_CHANNELS * MR  # row length of the task buffers
    for t in prange(nb * nch):
        ob = t // nch
        c0 = (t - ob * nch) * FT_CHANNELS
        c1 = min(c_, c0 + FT_CHANNELS)
        run = (c1 - c0) * MR
        g = np.zeros(9 * rl, np.float64)  # g[(3a + b) * rl + q]: tap (a, b) of pair q
        tg = np.empty(18 * rl, np.float64)  # (G g)[i, b] at (3i + b) * rl + q
        u = np.empty(NXI * rl, np.float64)  # (G g G^T)[i, j] at (6i + j) * rl + q
        for c in range(c0, c1):
            for r in range(min(MR, oc_ - ob * MR)):
                q = (c - c0) * MR + r
                for tap in range(9):
                    g[tap * rl + q] = w[ob * MR + r, c, tap // 3, tap - tap // 3 * 3]
        L = simd.width(g)
        for q in range(0, run, L):
            for b in range(3):
                z = _g(g, simd.load(g, b * rl + q), simd.load(g, (3 + b) * rl + q),
                       simd.load(g, (6 + b) * rl + q))
                for i in range(ALPHA):
                    simd.store(tg, (3 * i + b) * rl + q, z[i])
            for i in range(ALPHA):
                z = _g(g, simd.load(tg, 3 * i * rl + q), simd.load(tg, (3 * i + 1) * rl + q),
                       simd.load(tg, (3 * i + 2) * rl + q))
                for j in range(ALPHA):
                    simd.store(u, (ALPHA * i + j) * rl + q, z[j])
        for k in range(NXI):
            dst = ap[(k * nb + ob) * c_ * MR + c0 * MR:(k * nb + ob) * c_ * MR + c0 * MR + run]
            src = u[k * rl:k * rl + run]
            for q in range(run):
                dst[q] = src[q]


# --------------------------------------------------------------------------------------------
# Input transform: V columns of one channel
# --------------------------------------------------------------------------------------------

@helper
def _store6(v, o, stride, z, nv):
    """Store the 6 vectors of tuple z (first nv lanes) at o, o + stride, ..."""
    simd.store_n(v, o, z[0], nv)
    simd.store_n(v, o + stride, z[1], nv)
    simd.store_n(v, o + 2 * stride, z[2], nv)
    simd.store_n(v, o + 3 * stride, z[3], nv)
    simd.store_n(v, o + 4 * stride, z[4], nv)
    simd.store_n(v, o + 5 * stride, z[5], nv)


@helper
def _pwidth(jt, nr, pcols, lanes):
    """Row length of V panel jt: nr, but the last panel of pcols columns keeps only the vectors
    it uses (V then fits the memory bound better)."""
    return min(nr, (pcols - jt * nr + lanes - 1) // lanes * lanes)


@helper
def _store_v(v, vcol, c, c_, nr, pcols, xs, xi, z, nv, stage):
    """Store the 6 vectors z (nu = 0..5 of row xi, first nv lanes) at V column vcol of channel
    c, splitting them where they straddle two panels (stage: scratch of 6 * L). V holds pcols
    columns: in each of its 36 planes (xs apart) panel jt is (C, _pwidth(jt)) at jt * C * nr."""
    L = simd.width(v)
    jt = vcol // nr
    j0 = vcol - jt * nr
    o = jt * c_ * nr + c * _pwidth(jt, nr, pcols, L) + j0 + xi * ALPHA * xs
    if j0 + nv <= nr:
        _store6(v, o, xs, z, nv)
        return
    m = nr - j0
    o2 = (jt + 1) * c_ * nr + c * _pwidth(jt + 1, nr, pcols, L) + xi * ALPHA * xs
    _store6(stage, 0, L, z, L)
    for i in range(ALPHA):
        simd.store_n(v, o + i * xs, simd.load_n(stage, i * L, m), m)
        simd.store_n(v, o2 + i * xs, simd.load_n(stage, i * L + m, nv - m), nv - m)


@helper
def _row_len(tw, lanes):
    """Length of a row of the vertical-transform scratch: the ``load4_n`` of the horizontal
    transform stay inside it."""
    return TILE * tw + 4 * lanes + TILE


@helper
def _vertical(xf, xbase, h, w, ih0, pl, qa, qb, s, wb):
    """``B^T d`` of the 6 input rows ih0 .. ih0 + 5 (vertical transform) at padded columns
    [qa, qb) (q = input column + pl) into the 6 rows of s (wb apart), at column q. Rows outside
    the input count as zeros; columns outside it are not written (the caller zeroes s once)."""
    L = simd.width(s)
    ia = max(qa - pl, 0)
    ib = min(qb - pl, w)
    ok0 = ih0 >= 0 and ih0 < h
    ok1 = ih0 + 1 >= 0 and ih0 + 1 < h
    ok2 = ih0 + 2 >= 0 and ih0 + 2 < h
    ok3 = ih0 + 3 >= 0 and ih0 + 3 < h
    ok4 = ih0 + 4 >= 0 and ih0 + 4 < h
    ok5 = ih0 + 5 >= 0 and ih0 + 5 < h
    o0 = xbase + ih0 * w if ok0 else 0
    o1 = xbase + (ih0 + 1) * w if ok1 else 0
    o2 = xbase + (ih0 + 2) * w if ok2 else 0
    o3 = xbase + (ih0 + 3) * w if ok3 else 0
    o4 = xbase + (ih0 + 4) * w if ok4 else 0
    o5 = xbase + (ih0 + 5) * w if ok5 else 0
    for j in range(ia, ib, L):
        m = min(L, ib - j)
        # A row outside the input loads no lanes: zeros, and nothing read out of bounds.
        z = _bt(s, simd.load_n(xf, o0 + j, m if ok0 else 0),
                simd.load_n(xf, o1 + j, m if ok1 else 0),
                simd.load_n(xf, o2 + j, m if ok2 else 0),
                simd.load_n(xf, o3 + j, m if ok3 else 0),
                simd.load_n(xf, o4 + j, m if ok4 else 0),
                simd.load_n(xf, o5 + j, m if ok5 else 0))
        _store6(s, pl + j, wb, z, m)


@helper
def _input_row(v, xf, xbase, h, w, c_, c, ih0, pl, ka, kb, vcol, xs, nr, pcols, s, wb, stage):
    """Tiles ka .. kb of one tile row of channel c (6x6 input tiles starting at input row ih0,
    negative inside the top padding) into V columns vcol, vcol + 1, ...: for long tile rows.

    xf : the input, flat; its (h, w) plane of this image and channel starts at xbase.
    v : V, 36 planes xs apart, each (panels, C, nr). s : scratch, 6 rows of wb
    (:func:`_vertical`). stage : scratch (6 * L). Flat arrays and offsets only: slices in
    these loops would cost reference-count updates.
    """
    L = simd.width(v)
    _vertical(xf, xbase, h, w, ih0, pl, TILE * ka, TILE * kb + 2, s, wb)
    # Horizontal transform, L tiles at a time: tile k reads columns 4k .. 4k + 5 of each row of
    # s, i.e. its 4 column phases at 4k and phases 0, 1 at 4k + 4.
    for k0 in range(ka, kb, L):
        nv = min(L, kb - k0)
        for xi in range(ALPHA):
            q = xi * wb + TILE * k0
            d0, d1, d2, d3 = load4_n(s, q, 4 * L)
            d4, d5, _, _ = load4_n(s, q + 4, 4 * L)
            _store_v(v, vcol + k0 - ka, c, c_, nr, pcols, xs, xi, _bt(v, d0, d1, d2, d3, d4, d5),
                     nv, stage)


@helper
def _input_vec(v, xf, h, w, c_, c, col, ncols, vcol, th, tw, pt, pl, xs, nr, pcols, s, wb, stage,
               d):
    """Tiles col .. col + ncols (ncols <= L; tiles numbered over all images, tile rows of tw)
    of channel c into V columns vcol, ...: for short tile rows. Each tile row's tiles are
    gathered (as column phases) into their lanes of d (scratch, 36 * L), then transformed
    horizontally as full vectors. Other arguments as :func:`_input_row`.
    """
    L = simd.width(v)
    lane = 0
    while lane < ncols:
        gr = (col + lane) // tw
        k0 = col + lane - gr * tw
        seg = min(ncols - lane, tw - k0)
        n = gr // th
        _vertical(xf, (n * c_ + c) * h * w, h, w, TILE * (gr - n * th) - pt, pl, TILE * k0,
                  TILE * (k0 + seg) + 2, s, wb)
        for xi in range(ALPHA):
            q = xi * wb + TILE * k0
            d0, d1, d2, d3 = load4_n(s, q, 4 * L)
            d4, d5, _, _ = load4_n(s, q + 4, 4 * L)
            _store6(d, xi * ALPHA * L + lane, L, (d0, d1, d2, d3, d4, d5), seg)
        lane += seg
    for xi in range(ALPHA):
        o = xi * ALPHA * L
        z = _bt(v, simd.load(d, o), simd.load(d, o + L), simd.load(d, o + 2 * L),
                simd.load(d, o + 3 * L), simd.load(d, o + 4 * L), simd.load(d, o + 5 * L))
        _store_v(v, vcol, c, c_, nr, pcols, xs, xi, z, ncols, stage)


@_routine
def _input_span(v, xf, h, w, c_, c, col, ncols, vcol, th, tw, pt, pl, xs, nr, pcols, s, wb,
                stage, d):
    """Tiles col .. col + ncols of channel c into V columns vcol, ...: along tile rows when they
    are long (ROW_MIN_TILES), else gathered L at a time."""
    L = simd.width(v)
    if tw >= ROW_MIN_TILES:
        j = 0
        while j < ncols:
            gr = (col + j) // tw
            ka = col + j - gr * tw
            kb = min(tw, ka + ncols - j)
            n = gr // th
            _input_row(v, xf, (n * c_ + c) * h * w, h, w, c_, c, TILE * (gr - n * th) - pt, pl,
                       ka, kb, vcol + j, xs, nr, pcols, s, wb, stage)
            j += kb - ka
    else:
        for j in range(0, ncols, L):
            _input_vec(v, xf, h, w, c_, c, col + j, min(L, ncols - j), vcol + j, th, tw, pt, pl,
                       xs, nr, pcols, s, wb, stage, d)


# --------------------------------------------------------------------------------------------
# GEMMs, output transform and epilogue of one panel
# --------------------------------------------------------------------------------------------

@helper
def _vat(mt, o, ms):
    """A^T over the 6 rows xi of column nu of the 6x6 tile (M[6 * xi + nu] at o + 6*xi*ms)."""
    return _at(mt, simd.load(mt, o), simd.load(mt, o + 6 * ms), simd.load(mt, o + 12 * ms),
               simd.load(mt, o + 18 * ms), simd.load(mt, o + 24 * ms), simd.load(mt, o + 30 * ms))


@helper
def _store4(ybuf, o, nr, y):
    """Store the 4 vectors of tuple y at o, o + nr, ..."""
    simd.store(ybuf, o, y[0])
    simd.store(ybuf, o + nr, y[1])
    simd.store(ybuf, o + 2 * nr, y[2])
    simd.store(ybuf, o + 3 * nr, y[3])


@helper
def _output_row(of, oshape, mt, mbase, nr, plen, ybuf, oc, col, th, tw, bias, rf, has_res, act,
                alpha):
    """``Y = A^T M A`` for the plen tiles col .. col + plen (numbered over all images), output
    channel oc, then ``out = act(Y + bias (+ res))`` over the tiles' positions inside out.

    of, rf : out and the residual, flat; oshape : out's shape.
    mt[mbase + xi*MR*nr + j] holds M[xi] of tile col + j (xi = 6 * row + column in the tile).
    ybuf : scratch (16 * nr): Y[a, b] of tile col + j at (4a + b) * nr + j.
    """
    L = simd.width(mt)
    ms = MR * nr
    oc_, oh_, ow_ = oshape[1], oshape[2], oshape[3]
    for j in range(0, plen, L):
        o = mbase + j
        a00, a10, a20, a30 = _vat(mt, o, ms)
        a01, a11, a21, a31 = _vat(mt, o + ms, ms)
        a02, a12, a22, a32 = _vat(mt, o + 2 * ms, ms)
        a03, a13, a23, a33 = _vat(mt, o + 3 * ms, ms)
        a04, a14, a24, a34 = _vat(mt, o + 4 * ms, ms)
        a05, a15, a25, a35 = _vat(mt, o + 5 * ms, ms)
        _store4(ybuf, j, nr, _at(mt, a00, a01, a02, a03, a04, a05))
        _store4(ybuf, 4 * nr + j, nr, _at(mt, a10, a11, a12, a13, a14, a15))
        _store4(ybuf, 8 * nr + j, nr, _at(mt, a20, a21, a22, a23, a24, a25))
        _store4(ybuf, 12 * nr + j, nr, _at(mt, a30, a31, a32, a33, a34, a35))
    # Runs of consecutive tiles of one tile row fill contiguous segments of 4 output rows; the
    # 4 columns b of Y are interleaved into each.
    vb = simd.splat(mt, bias)
    vz = simd.splat(mt, 0)
    j = 0
    while j < plen:
        gr = (col + j) // tw
        k0 = col + j - gr * tw
        run = min(plen - j, tw - k0)
        n = gr // th
        i = gr - n * th
        for a in range(TILE):
            oh = TILE * i + a
            if oh >= oh_:
                break
            orow = ((n * oc_ + oc) * oh_ + oh) * ow_
            yo = a * TILE * nr + j
            for u in range(0, run, L):
                m = min(L, run - u)
                ow0 = TILE * (k0 + u)
                cnt = min(TILE * m, ow_ - ow0)
                if cnt <= 0:
                    break
                y0 = simd.add(simd.load_n(ybuf, yo + u, m), vb)
                y1 = simd.add(simd.load_n(ybuf, yo + nr + u, m), vb)
                y2 = simd.add(simd.load_n(ybuf, yo + 2 * nr + u, m), vb)
                y3 = simd.add(simd.load_n(ybuf, yo + 3 * nr + u, m), vb)
                if has_res:
                    r0, r1, r2, r3 = load4_n(rf, orow + ow0, cnt)
                    y0 = simd.add(y0, r0)
                    y1 = simd.add(y1, r1)
                    y2 = simd.add(y2, r2)
                    y3 = simd.add(y3, r3)
                if act == ACT_RELU:
                    # maximum propagates NaN and gives +0 for -0, as apply_act's relu.
                    y0 = simd.maximum(y0, vz)
                    y1 = simd.maximum(y1, vz)
                    y2 = simd.maximum(y2, vz)
                    y3 = simd.maximum(y3, vz)
                store4_n(of, orow + ow0, y0, y1, y2, y3, cnt)
                if act != ACT_NONE and act != ACT_RELU:
                    for q in range(orow + ow0, orow + ow0 + cnt):
                        of[q] = apply_act(of[q], act, alpha)
        j += run


@_routine
def _panel(of, oshape, v, voff, xs, kofs, c_, ap, nb, ob0, ob1, obchunk, mt, ybuf, col, plen,
           th, tw, b, has_bias, rf, has_res, act, alpha):
    """Output channel blocks ob0 .. ob1 of the plen tiles col .. col + plen, whose V panel is
    v[voff + xi * xs + kofs[c] + j] (xi = 0..35; kofs[c] = c * the panel's row length).

    The 36 GEMMs of a chunk of obchunk channel blocks go to mt (obchunk * 36 tiles of MR x nr);
    each V panel slab is reused by the chunk's blocks while it is in L1/L2. Then the output
    transform and epilogue per output channel.
    """
    L = simd.width(v)
    nr = NVMAX * L
    ms = MR * nr
    oc_ = oshape[1]
    zero = of.dtype.type(0)
    for cb0 in range(ob0, ob1, obchunk):
        cb1 = min(ob1, cb0 + obchunk)
        for xi in range(NXI):
            for ob in range(cb0, cb1):
                o = ((ob - cb0) * NXI + xi) * ms
                microkernel(mt[o:o + ms], ap, (xi * nb + ob) * c_ * MR, v, voff + xi * xs, kofs, 0,
                            c_, plen, 0)
        for ob in range(cb0, cb1):
            for r in range(min(MR, oc_ - ob * MR)):
                oc = ob * MR + r
                bias = b[oc] if has_bias else zero
                _output_row(of, oshape, mt, (ob - cb0) * NXI * ms + r * nr, nr, plen, ybuf, oc,
                            col, th, tw, bias, rf, has_res, act, alpha)


# --------------------------------------------------------------------------------------------
# The conv, two schedules
# --------------------------------------------------------------------------------------------

@kernel
def _winograd_fused(out, x, ap, nb, tasks, soff, obchunk, xs, kofs, scratch, th, tw, pt, pl, b,
                    has_bias, res, has_res, act, alpha):
    """Winograd F(4x4, 3x3) conv, one task per (panel of nr tiles, range of output channel
    blocks): the task transforms its panel's input into per-worker V, runs its GEMMs and
    writes its outputs. Nothing is shared between tasks, V stays in the worker's cache.

    Parameters
    ----------
    out : (N, OC, OH, OW), filled in place. x : (N, C, H, W).
    ap : transformed filters from :func:`_filter_transform`, nb blocks of MR channels.
    tasks, soff : from :func:`_fused_tasks`: rows (panel, first block, end block); worker k
        runs rows soff[k] .. soff[k + 1]. obchunk : channel blocks per GEMM pass.
    xs : stride of V's 36 planes (each C x nr). kofs : from :func:`_kofs`.
    scratch : the workers' scratch, each ``len(scratch) // len(soff) - 1`` long.
    th, tw : tiles per image side. pt, pl : top / left padding.
    b, res : bias (OC,) and residual (shaped as out), used when has_bias / has_res.
    """
    n_, c_, h, w = x.shape
    xf = x.reshape(-1)
    of = out.reshape(-1)
    rf = res.reshape(-1)
    L = simd.width(scratch)
    nr = NVMAX * L
    ms = MR * nr
    wb = _row_len(tw, L)
    nwk = soff.shape[0] - 1
    sstride = scratch.shape[0] // nwk
    tiles = n_ * th * tw
    zero = out.dtype.type(0)
    nv_ = NXI * xs
    nm = obchunk * NXI * ms
    ns_ = ALPHA * wb + ALPHA * L + NXI * L
    origin = np.int64(0)  # V's first column: an int64, not a literal 0, so that the routines
    # compiled for the blocked kernel serve this one too
    for wk in prange(nwk):
        base = wk * sstride
        v = scratch[base:base + nv_]
        mt = scratch[base + nv_:base + nv_ + nm]
        ybuf = scratch[base + nv_ + nm:base + nv_ + nm + 16 * nr]
        sv = scratch[base + nv_ + nm + 16 * nr:base + nv_ + nm + 16 * nr + ALPHA * wb]
        stage = scratch[base + nv_ + nm + 16 * nr + ALPHA * wb:
                        base + nv_ + nm + 16 * nr + ALPHA * wb + ALPHA * L]
        dv = scratch[base + nv_ + nm + 16 * nr + ALPHA * wb + ALPHA * L:
                     base + nv_ + nm + 16 * nr + ns_]
        for q in range(ALPHA * wb):
            sv[q] = zero
        for t in range(soff[wk], soff[wk + 1]):
            col = tasks[t, 0] * nr
            plen = min(nr, tiles - col)
            for c in range(c_):
                _input_span(v, xf, h, w, c_, c, col, plen, origin, th, tw, pt, pl, xs, nr, plen,
                            sv, wb, stage, dv)
            _panel(of, out.shape, v, origin, xs, kofs[_pwidth(0, nr, plen, L) // L - 1], c_, ap,
                   nb, tasks[t, 1], tasks[t, 2], obchunk, mt, ybuf, col, plen, th, tw, b,
                   has_bias, rf, has_res, act, alpha)


@kernel
def _winograd_blocked(out, x, ap, nb, v, xs, rows_blk, cchunk, obchunk, tasks, soff, kofs, scratch,
                      th, tw, pt, pl, b, has_bias, res, has_res, act, alpha):
    """Winograd F(4x4, 3x3) conv over blocks of tile rows: per block, all workers transform the
    input into the shared V (tasks of (tile row or vector of tiles, chunk of channels)), then
    run the GEMMs and the output transform (tasks of (panel, chunk of channel blocks)). For
    many channels, where one panel's V would not stay in a worker's cache.

    Parameters
    ----------
    v : V scratch for one block: 36 planes xs apart, each (panels, C, nr).
    rows_blk : tile rows per block. cchunk : channels per input-transform task. obchunk :
        channel blocks per GEMM pass. tasks, soff : from :func:`_blocked_tasks`, GEMM tasks
        (panel, first block, end block); worker k runs rows soff[i, k] .. soff[i, k + 1],
        i = 0 for full blocks, 1 for the last one. Others as :func:`_winograd_fused`.
    """
    n_, c_, h, w = x.shape
    xf = x.reshape(-1)
    of = out.reshape(-1)
    rf = res.reshape(-1)
    L = simd.width(v)
    nr = NVMAX * L
    ms = MR * nr
    wb = _row_len(tw, L)
    nwk = soff.shape[1] - 1
    sstride = scratch.shape[0] // nwk
    nrows = n_ * th
    nch = (c_ + cchunk - 1) // cchunk
    zero = out.dtype.type(0)
    for gr0 in range(0, nrows, rows_blk):
        nrb = min(rows_blk, nrows - gr0)
        pblk = nrb * tw
        col0 = gr0 * tw
        # Input-transform units: tile rows, or vectors of L tiles when tile rows are short.
        unit = tw if tw >= ROW_MIN_TILES else L
        nunit = (pblk + unit - 1) // unit
        for wk in prange(nwk):
            base = wk * sstride
            sv = scratch[base:base + ALPHA * wb]
            stage = scratch[base + ALPHA * wb:base + ALPHA * wb + ALPHA * L]
            dv = scratch[base + ALPHA * wb + ALPHA * L:base + ALPHA * wb + ALPHA * L + NXI * L]
            for q in range(ALPHA * wb):
                sv[q] = zero
            for t in range(wk, nunit * nch, nwk):
                u = t // nch
                cc = t - u * nch
                for c in range(cc * cchunk, min(c_, (cc + 1) * cchunk)):
                    _input_span(v, xf, h, w, c_, c, col0 + u * unit,
                                min(unit, pblk - u * unit), u * unit, th, tw, pt, pl, xs, nr, pblk,
                                sv, wb, stage, dv)
        last = 1 if gr0 + rows_blk >= nrows else 0
        for wk in prange(nwk):
            base = wk * sstride
            mt = scratch[base:base + obchunk * NXI * ms]
            ybuf = scratch[base + obchunk * NXI * ms:base + obchunk * NXI * ms + 16 * nr]
            for t in range(soff[last, wk], soff[last, wk + 1]):
                jt = tasks[t, 0]
                _panel(of, out.shape, v, jt * c_ * nr, xs, kofs[_pwidth(jt, nr, pblk, L) // L - 1],
                       c_, ap, nb, tasks[t, 1], tasks[t, 2], obchunk, mt, ybuf, col0 + jt * nr,
                       min(nr, pblk - jt * nr), th, tw, b, has_bias, rf, has_res, act, alpha)


@kernel
def nonfinite_probe(a):
    """Sum of ``v - v``: 0 when every value is finite, NaN otherwise (one vectorised pass)."""
    chunk = 1 << 14
    nchunk = (a.shape[0] + chunk - 1) // chunk
    total = a.dtype.type(0)
    for t in prange(nchunk):
        seg = a[t * chunk:min(a.shape[0], (t + 1) * chunk)]
        s = a.dtype.type(0)
        for i in range(seg.shape[0]):
            s += seg[i] - seg[i]
        total += s
    return total


# --------------------------------------------------------------------------------------------
# Launcher and heuristic
# --------------------------------------------------------------------------------------------

_NO_BIAS = {np.dtype(t): np.empty(0, t) for t in (np.float32, np.float64)}
_NO_RES = {np.dtype(t): np.empty((0, 0, 0, 0), t) for t in (np.float32, np.float64)}


@functools.lru_cache(maxsize=64)
def _kofs(c_, lanes):
    """(NVMAX, C) int64: kofs[i, c] = c * (i + 1) * lanes, the microkernel's row offsets in a V
    panel of i + 1 vectors per row."""
    return np.arange(1, NVMAX + 1, dtype=np.int64)[:, None] * lanes * np.arange(c_, dtype=np.int64)


def _fit_rows(nrows, tw, limit, lanes):
    """Tile rows per block, at most ``limit``, that waste the fewest microkernel columns: a
    block's columns (rows * tw) run as panels of 3 vectors, the last one as 2 or 3 vectors."""
    nr = NVMAX * lanes

    def cost(rows):
        cols = rows * tw
        full, rest = divmod(cols, nr)
        return full * NVMAX + (0 if rest == 0 else (2 if rest <= 2 * lanes else NVMAX))

    best, best_cost = limit, None
    for rows in range(limit, max(1, limit // 2) - 1, -1):
        nblk, last = divmod(nrows, rows)
        total = nblk * cost(rows) + (cost(last) if last else 0)
        if best_cost is None or total < best_cost:
            best, best_cost = rows, total
    return best


Plan = collections.namedtuple(
    "Plan", "fused th tw nb obchunk rows_blk cchunk xs vsize ssize nwk fits")
Plan.__doc__ = """How one call runs (see :func:`_plan`); ``fits``: its scratch stays within the size
of input + output."""


def _v_stride(cols_c, itemsize):
    """Stride of V's 36 planes of ``cols_c`` elements: one cache line off a multiple of 4 KiB,
    else the 36 stores of a transformed tile fall in one L1 set (and alias in store
    forwarding)."""
    return cols_c + (-cols_c) % (4096 // itemsize) + 64 // itemsize


def _plan(x_shape, oc_, out_shape, dtype):
    """Schedule and scratch sizes for one call: fused (one task per panel, V per worker) when
    a panel's V stays in cache (few channels) and the scratch fits, else blocked (V per block
    of tile rows). Cached per shape, worker count and scheduling knobs."""
    return _make_plan(tuple(x_shape), oc_, tuple(out_shape), np.dtype(dtype),
                      numba.get_num_threads(), simd.LANES,
                      (FUSED_V_BYTES, V_BLOCK_BYTES, OB_CHUNK, OB_CHUNK_FUSED, ROW_MIN_TILES))


@functools.lru_cache(maxsize=256)
def _make_plan(x_shape, oc_, out_shape, dtype, nwk, _lanes, _knobs):
    n_, c_, h, w = x_shape
    oh_, ow_ = out_shape[2], out_shape[3]
    itemsize = np.dtype(dtype).itemsize
    lanes = simd.lanes_of(np.dtype(dtype))
    nr = NVMAX * lanes
    th, tw = -(-oh_ // TILE), -(-ow_ // TILE)
    nb = -(-oc_ // MR)
    nrows = n_ * th
    budget = n_ * (c_ * h * w + oc_ * oh_ * ow_)  # elements: input + output (the bound)
    tscr = ALPHA * _row_len(tw, lanes) + ALPHA * lanes + NXI * lanes  # input-transform scratch
    yscr = 16 * nr  # output-transform scratch

    def mscr(obchunk):  # M tiles of a GEMM pass
        return NXI * obchunk * MR * nr
    if NXI * c_ * nr * itemsize <= FUSED_V_BYTES:
        # Panels too few for the workers are split by channel blocks (:func:`_fused_tasks`).
        obchunk = max(1, min(nb, OB_CHUNK_FUSED))
        xs = _v_stride(c_ * nr, itemsize)
        ssize = nwk * (NXI * xs + mscr(obchunk) + yscr + tscr)
        if ssize <= budget:
            return Plan(True, th, tw, nb, obchunk, 0, 0, xs, 0, ssize, nwk, True)
    # Blocked; the M tiles of fewer channel blocks per task when memory is short.
    for obchunk in (OB_CHUNK, OB_CHUNK // 2, OB_CHUNK // 4, 1):
        obchunk = max(1, min(nb, obchunk))
        ssize = nwk * max(mscr(obchunk) + yscr, tscr)
        # Tile rows per block: V of a block within V_BLOCK_BYTES (cache) and, with the workers'
        # scratch, within the input + output size; at least one tile row.
        per_row = NXI * c_ * tw
        rows_cache = V_BLOCK_BYTES // (per_row * itemsize)
        rows_budget = (budget - ssize) // (per_row + 1)
        limit = max(1, min(nrows, rows_cache, rows_budget))
        rows_blk = _fit_rows(nrows, tw, limit, lanes)
        npan = -(-(rows_blk * tw) // nr)
        # GEMM tasks (panel, chunk of obchunk channel blocks): enough for every worker.
        while obchunk > 1 and npan * -(-nb // obchunk) < 4 * nwk:
            obchunk = -(-obchunk // 2)
        ssize = nwk * max(mscr(obchunk) + yscr, tscr)
        xs = _v_stride(c_ * -(-(rows_blk * tw) // lanes) * lanes, itemsize)
        vsize = NXI * xs
        if vsize + ssize <= budget:
            break
    # Input-transform tasks: (unit, chunk of channels), enough for every worker.
    nunit = rows_blk if tw >= ROW_MIN_TILES else -(-(rows_blk * tw) // lanes)
    cchunk = max(1, min(c_, (nunit * c_) // (8 * nwk)))
    return Plan(False, th, tw, nb, obchunk, rows_blk, cchunk, xs, vsize, ssize, nwk,
                vsize + ssize <= budget)


def _block_cost(plen, c_, lanes):
    """Modelled time of one MR-channel block of a panel of plen tiles: the GEMMs (2 or 3
    vectors per microkernel step, whatever plen fills) and the output transform (~10 / C of a
    GEMM vector). Unit: one vector of GEMM."""
    nvec = -(-plen // lanes)
    return (NVMAX if plen > 2 * lanes else 2) + nvec * 10.0 / c_


def _split(items, nwk):
    """Contiguous shares of ``items`` ((panel, block, cost) in order) for nwk workers, as task
    rows (panel, first block, end block): a worker's run of blocks of one panel is one task.
    Returns (rows, offsets (nwk + 1,))."""
    offs, _ = partition([c for _, _, c in items], nwk)
    rows, soff = [], [0]
    for k in range(nwk):
        for i in range(offs[k], offs[k + 1]):
            jt, ob, _ = items[i]
            if i > offs[k] and rows[-1][0] == jt and rows[-1][2] == ob:
                rows[-1][2] = ob + 1
            else:
                rows.append([jt, ob, ob + 1])
        soff.append(len(rows))
    return rows, soff


def _frozen(a):
    a = np.array(a, dtype=np.int64)
    a.flags.writeable = False
    return a


@functools.lru_cache(maxsize=64)
def _fused_tasks(tiles, nb, c_, lanes, nwk):
    """Tasks of the fused schedule: (panel, first block, end block) rows and each worker's
    offsets into them. The (panel, block) sequence is cut into nwk runs of equal modelled time
    (a panel's input transform, ~2 GEMM vectors per vector of tiles, counted once), so that a
    short last panel or fewer panels than workers still split evenly: a panel cut between two
    workers is transformed by both."""
    nr = NVMAX * lanes
    items = []
    for jt in range(-(-tiles // nr)):
        plen = min(nr, tiles - jt * nr)
        cost = _block_cost(plen, c_, lanes)
        items += [(jt, ob, cost + (2.0 * -(-plen // lanes) if ob == 0 else 0.0))
                  for ob in range(nb)]
    rows, soff = _split(items, nwk)
    return _frozen(rows).reshape(-1, 3), _frozen(soff)


@functools.lru_cache(maxsize=64)
def _blocked_tasks(pblk, plast, nb, obchunk, c_, lanes, nwk):
    """GEMM tasks of the blocked schedule for a block of pblk tiles (row 0 of the offsets) and
    the last block of plast tiles (row 1): (chunk of obchunk blocks, panel, block) in that
    order, cut into nwk runs of equal modelled time, so that a worker's consecutive tasks share
    a chunk's filters."""
    nr = NVMAX * lanes
    rows, soff = [], []
    for p in (pblk, plast):
        items = []
        for cb in range(0, nb, obchunk):
            for jt in range(-(-p // nr)):
                cost = _block_cost(min(nr, p - jt * nr), c_, lanes)
                items += [(jt, ob, cost) for ob in range(cb, min(nb, cb + obchunk))]
        r, o = _split(items, nwk)
        soff.append([len(rows) + i for i in o])
        rows += r
    return _frozen(rows).reshape(-1, 3), _frozen(soff)


def winograd_applies(x_shape, out_shape, padding, dtype=np.float32):
    """Whether :func:`winograd_conv2d` should run this 3x3, stride-1, undilated, ungrouped conv
    (the caller checks those) rather than the direct implicit GEMM.

    Parameters
    ----------
    x_shape : (N, C, H, W). out_shape : (N, OC, OH, OW). padding : (top, left).
    dtype : float32 or float64.

    Yes when its scratch fits within the size of input + output (the issue's bound) and, for
    the blocked schedule (many channels), each block of tile rows has MIN_BLOCK_FLOPS of work.
    Measured on the 2-core AVX-512 machine against the direct conv and PyTorch, Winograd wins
    wherever this says yes (1.2-5x, also with untracked weights transformed on every call);
    it loses where few tiles meet large filters (7x7 and 14x14 images at batch 1: the
    transformed filters are 4x the weights, read for 4-16 tiles), cases that also break the
    memory bound. Unlike the direct conv, a NaN or Inf input spreads to whole 4x4 output
    tiles (inf - inf in the transforms).
    """
    if padding[0] < 0 or padding[1] < 0 or simd.LANES == 1:
        return False  # scalar builds: transforms without vectors, never measured to win
    pl = _plan(tuple(x_shape), out_shape[1], tuple(out_shape), dtype)
    if not pl.fits:
        return False
    if pl.fused:
        return True
    return 2.0 * NXI * out_shape[1] * x_shape[1] * pl.rows_blk * pl.tw >= MIN_BLOCK_FLOPS


def winograd_conv2d(out, x, w, b, residual, padding, act, alpha, finite_only=False):
    """3x3, stride-1, undilated, ungrouped conv2d by Winograd F(4x4, 3x3).

    Parameters
    ----------
    out : (N, OC, OH, OW) array, filled in place; its shape sets the bottom/right padding.
    x : (N, C, H, W) array. w : (OC, C, 3, 3) array. b : (OC,) array or None.
    residual : array shaped as out, or None; added after the bias, before the activation.
    padding : (top, left) ints.
    act : numbaconv._ops.ACT_* code applied last; alpha its parameter.
    finite_only : when True and x or w holds a NaN or Inf, return False without running (the
        transforms would spread it over whole 4x4 output tiles; the caller runs the direct
        conv). The weight's finiteness is kept with its cached transform.

    Returns
    -------
    bool : whether it ran.
    """
    dtype = out.dtype
    if finite_only and not math.isfinite(nonfinite_probe(x.reshape(-1))):
        return False
    oc_, c_ = w.shape[0], w.shape[1]
    has_bias = b is not None
    b = b if has_bias else _NO_BIAS[dtype]
    has_res = residual is not None
    res = residual if has_res else _NO_RES[dtype]
    pl = _plan(x.shape, oc_, out.shape, dtype)
    lanes = simd.lanes_of(dtype)
    kofs = _kofs(c_, lanes)
    pt, pleft = padding
    size = NXI * pl.nb * c_ * MR
    # One element past the transform holds the weight's probe (0 when finite, else NaN).
    with WEIGHTS.transformed(w, ("winograd", TILE, MR), size + 1, dtype,
                             lambda ap: _transform_filters(ap, w, pl.nb, size)) as ap:
        if finite_only and not math.isfinite(ap[size]):
            return False
        with POOL.buffer(pl.ssize, dtype) as scratch:
            if pl.fused:
                tasks, soff = _fused_tasks(x.shape[0] * pl.th * pl.tw, pl.nb, c_, lanes, pl.nwk)
                _winograd_fused(out, x, ap, pl.nb, tasks, soff, pl.obchunk, pl.xs, kofs,
                                scratch[:pl.ssize], pl.th, pl.tw, pt, pleft, b, has_bias, res,
                                has_res, act, alpha)
                return True
            nrows = x.shape[0] * pl.th
            last = nrows - (-(-nrows // pl.rows_blk) - 1) * pl.rows_blk
            tasks, soff = _blocked_tasks(pl.rows_blk * pl.tw, last * pl.tw, pl.nb, pl.obchunk,
                                         c_, lanes, pl.nwk)
            with POOL.buffer(pl.vsize, dtype) as v:
                _winograd_blocked(out, x, ap, pl.nb, v, pl.xs, pl.rows_blk, pl.cchunk,
                                  pl.obchunk, tasks, soff, kofs, scratch[:pl.ssize], pl.th, pl.tw,
                                  pt, pleft, b, has_bias, res, has_res, act, alpha)
    return True


def _transform_filters(ap, w, nb, size):
    _filter_transform(ap, w, nb)
    ap[size] = nonfinite_probe(w.reshape(-1))
