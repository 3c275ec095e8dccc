"""Depthwise 2-D convolution on the CPU (groups == C, OC = multiplier * C), vectorised along
the output positions of each channel, with bias, residual and activation fused.

Two paths, chosen per call by :func:`_plan`:

* Rows (any kernel, stride, dilation and padding). A task is one (image, input channel, block of
  TR output rows). It copies the input rows the block reads into a small zero-padded buffer (in
  L1), split by column stride phase: buffer row ``i`` holds padded input row ``oh0*sh + i`` as
  ``sw`` planes, plane ``p`` holding columns ``q*sw + p`` (stride 2 is de-interleaved with
  vector shuffles); rows and planes start on cache lines. Every tap (kh, kw) then reads a
  contiguous run of the buffer at a fixed offset from the output position, so the inner loops
  have no bounds tests.
  The microkernels compute 8 output rows x one vector of columns with 8 independent
  accumulators started from the bias: :func:`_mk3x3s1` (3x3, stride 1, the MobileNet case) keeps
  the 9 weights in registers and loads each input vector once for the up to 3 output rows that
  use it; :func:`_mk8` is the generic tap loop. Stores are masked to the output width.
* Flat (stride 1, OW == W, rows narrower than half a vector: 7x7 planes). Output position
  ``p = oh*W + ow`` reads input position ``p + kofs[k]`` for tap k, so vectors run over a whole
  channel plane across row ends, with the lanes that fall in the padding masked off each load
  by a bit mask precomputed per geometry: a 7x7 plane takes 4 vectors instead of 8 row vectors
  that are less than half used. Four channels go through one call (:func:`_mk_flat4c`), sharing
  each mask load.

A task computes the ``multiplier`` output channels of its input channel. The epilogue adds the
residual (read before the store, so it may be the output itself) and applies relu / relu6 as
vector operations; other activations run in a pass over the task's output while it is in cache.
"""

import functools
import threading

import numba
import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core.errors import TypingError
from numba.extending import intrinsic

from numbaconv._ops import ACT_NONE, ACT_RELU, ACT_RELU6
from numbaconv.cpu import simd
from numbaconv.cpu._common import FASTMATH, apply_act, helper

# The kernels allocate nothing (their scratch comes from the launcher), so they are compiled
# without reference counting: Numba otherwise leaves atomic incref/decref calls around inlined
# helpers inside the hot loops, which cost more than the arithmetic there.
_kernel_nrt_free = numba.njit(parallel=True, cache=True, fastmath=FASTMATH, _nrt=False)

RB = 8  # output rows per rows-path microkernel call (independent accumulators)
FV = 4  # vectors of positions per flat-path microkernel call
CB = 4  # channels per flat-path task (and per call of _mk_flat4c)
BUF_BYTES = 24 << 10  # target size of a rows-path task's padded input buffer (L1 is 48 KiB)


# --------------------------------------------------------------------------------------------
# Intrinsics beyond numbaconv.cpu.simd (built with its codegen helpers)
# --------------------------------------------------------------------------------------------

@intrinsic
def _deinterleave(typingctx, arr, idx, n):
    """(even, odd): vectors of ``arr[idx : idx + 2n : 2]`` and ``arr[idx + 1 : idx + 2n : 2]``
    followed by zeros, for 0 <= n <= lanes; two masked loads (nothing past ``idx + 2n`` is read)
    and two shuffles. ``arr`` is 1-D C-contiguous, as for :mod:`simd`."""
    vt = simd.vec_type(arr, "depthwise._deinterleave")
    if not isinstance(n, types.Integer):
        raise TypingError(f"_deinterleave: the pair count must be an integer, got {n}")

    def codegen(context, builder, sig, args):
        lty = context.get_value_type(vt)
        ptr = simd.address(context, builder, sig.args[0], args[0], args[1], lty)
        two_n = builder.mul(args[2], ir.Constant(args[2].type, 2))
        lo = simd.masked_load(builder, ptr, simd.lane_mask(builder, two_n, vt.lanes), lty)
        rest = builder.sub(two_n, ir.Constant(args[2].type, vt.lanes))
        hi = simd.masked_load(builder, builder.gep(ptr, [ir.Constant(ir.IntType(64), 1)]),
                              simd.lane_mask(builder, rest, vt.lanes), lty)
        i32v = ir.VectorType(ir.IntType(32), vt.lanes)
        even = builder.shuffle_vector(lo, hi, ir.Constant(i32v, list(range(0, 2 * vt.lanes, 2))))
        odd = builder.shuffle_vector(lo, hi, ir.Constant(i32v, list(range(1, 2 * vt.lanes, 2))))
        return context.make_tuple(builder, sig.return_type, [even, odd])

    return types.UniTuple(vt, 2)(arr, idx, n), codegen


@intrinsic
def _load_bits(typingctx, arr, idx, bits):
    """``Vec`` of ``arr[idx + i]`` for the lanes i whose bit i of the integer ``bits`` is set, 0 in
    the others, which are not read (so their addresses may lie outside ``arr``)."""
    vt = simd.vec_type(arr, "depthwise._load_bits")

    def codegen(context, builder, sig, args):
        lty = context.get_value_type(vt)
        ptr = simd.address(context, builder, sig.args[0], args[0], args[1], lty)
        ibits = ir.IntType(vt.lanes)
        word = args[2]
        word = builder.trunc(word, ibits) if word.type.width > vt.lanes else \
            builder.zext(word, ibits) if word.type.width < vt.lanes else word
        mask = builder.bitcast(word, ir.VectorType(ir.IntType(1), vt.lanes))
        return simd.masked_load(builder, ptr, mask, lty)

    return vt(arr, idx, bits), codegen


# --------------------------------------------------------------------------------------------
# Rows-path microkernels: 8 output rows x one vector of columns
# --------------------------------------------------------------------------------------------

@helper
def _mk8(buf, o, rs, kofs, wf, woff, init):
    """Generic taps: row ``r``'s vector is ``init + sum_k wf[woff + k] * buf[o + r*rs + kofs[k]
    : ... + lanes]`` for r < 8."""
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = init
    for k in range(kofs.shape[0]):
        wv = simd.load1(wf, woff + k)
        p = o + kofs[k]
        a0 = simd.fma(wv, simd.load(buf, p), a0)
        a1 = simd.fma(wv, simd.load(buf, p + rs), a1)
        a2 = simd.fma(wv, simd.load(buf, p + 2 * rs), a2)
        a3 = simd.fma(wv, simd.load(buf, p + 3 * rs), a3)
        a4 = simd.fma(wv, simd.load(buf, p + 4 * rs), a4)
        a5 = simd.fma(wv, simd.load(buf, p + 5 * rs), a5)
        a6 = simd.fma(wv, simd.load(buf, p + 6 * rs), a6)
        a7 = simd.fma(wv, simd.load(buf, p + 7 * rs), a7)
    return a0, a1, a2, a3, a4, a5, a6, a7


@helper
def _mk3x3s1(buf, o, pitch, wf, woff, init):
    """3x3, stride 1, dilation 1: output row r reads buffer rows r, r+1, r+2. Each buffer row's
    three shifted vectors are loaded once and used for every output row that needs them."""
    w00 = simd.load1(wf, woff)
    w01 = simd.load1(wf, woff + 1)
    w02 = simd.load1(wf, woff + 2)
    w10 = simd.load1(wf, woff + 3)
    w11 = simd.load1(wf, woff + 4)
    w12 = simd.load1(wf, woff + 5)
    w20 = simd.load1(wf, woff + 6)
    w21 = simd.load1(wf, woff + 7)
    w22 = simd.load1(wf, woff + 8)
    a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = init
    # Buffer row i feeds output rows i (kernel row 0), i-1 (row 1) and i-2 (row 2).
    x0 = simd.load(buf, o)
    x1 = simd.load(buf, o + 1)
    x2 = simd.load(buf, o + 2)
    a0 = simd.fma(w00, x0, a0)
    a0 = simd.fma(w01, x1, a0)
    a0 = simd.fma(w02, x2, a0)
    p = o + pitch
    x0 = simd.load(buf, p)
    x1 = simd.load(buf, p + 1)
    x2 = simd.load(buf, p + 2)
    a0 = simd.fma(w10, x0, a0)
    a0 = simd.fma(w11, x1, a0)
    a0 = simd.fma(w12, x2, a0)
    a1 = simd.fma(w00, x0, a1)
    a1 = simd.fma(w01, x1, a1)
    a1 = simd.fma(w02, x2, a1)
    p += pitch
    x0 = simd.load(buf, p)
    x1 = simd.load(buf, p + 1)
    x2 = simd.load(buf, p + 2)
    a0 = simd.fma(w20, x0, a0)
    a0 = simd.fma(w21, x1, a0)
    a0 = simd.fma(w22, x2, a0)
    a1 = simd.fma(w10, x0, a1)
    a1 = simd.fma(w11, x1, a1)
    a1 = simd.fma(w12, x2, a1)
    a2 = simd.fma(w00, x0, a2)
    a2 = simd.fma(w01, x1, a2)
    a2 = simd.fma(w02, x2, a2)
    p += pitch
    x0 = simd.load(buf, p)
    x1 = simd.load(buf, p + 1)
    x2 = simd.load(buf, p + 2)
    a1 = simd.fma(w20, x0, a1)
    a1 = simd.fma(w21, x1, a1)
    a1 = simd.fma(w22, x2, a1)
    a2 = simd.fma(w10, x0, a2)
    a2 = simd.fma(w11, x1, a2)
    a2 = simd.fma(w12, x2, a2)
    a3 = simd.fma(w00, x0, a3)
    a3 = simd.fma(w01, x1, a3)
    a3 = simd.fma(w02, x2, a3)
    p += pitch
    x0 = simd.load(buf, p)
    x1 = simd.load(buf, p + 1)
    x2 = simd.load(buf, p + 2)
    a2 = simd.fma(w20, x0, a2)
    a2 = simd.fma(w21, x1, a2)
    a2 = simd.fma(w22, x2, a2)
    a3 = simd.fma(w10, x0, a3)
    a3 = simd.fma(w11, x1, a3)
    a3 = simd.fma(w12, x2, a3)
    a4 = simd.fma(w00, x0, a4)
    a4 = simd.fma(w01, x1, a4)
    a4 = simd.fma(w02, x2, a4)
    p += pitch
    x0 = simd.load(buf, p)
    x1 = simd.load(buf, p + 1)
    x2 = simd.load(buf, p + 2)
    a3 = simd.fma(w20, x0, a3)
    a3 = simd.fma(w21, x1, a3)
    a3 = simd.fma(w22, x2, a3)
    a4 = simd.fma(w10, x0, a4)
    a4 = simd.fma(w11, x1, a4)
    a4 = simd.fma(w12, x2, a4)
    a5 = simd.fma(w00, x0, a5)
    a5 = simd.fma(w01, x1, a5)
    a5 = simd.fma(w02, x2, a5)
    p += pitch
    x0 = simd.load(buf, p)
    x1 = simd.load(buf, p + 1)
    x2 = simd.load(buf, p + 2)
    a4 = simd.fma(w20, x0, a4)
    a4 = simd.fma(w21, x1, a4)
    a4 = simd.fma(w22, x2, a4)
    a5 = simd.fma(w10, x0, a5)
    a5 = simd.fma(w11, x1, a5)
    a5 = simd.fma(w12, x2, a5)
    a6 = simd.fma(w00, x0, a6)
    a6 = simd.fma(w01, x1, a6)
    a6 = simd.fma(w02, x2, a6)
    p += pitch
    x0 = simd.load(buf, p)
    x1 = simd.load(buf, p + 1)
    x2 = simd.load(buf, p + 2)
    a5 = simd.fma(w20, x0, a5)
    a5 = simd.fma(w21, x1, a5)
    a5 = simd.fma(w22, x2, a5)
    a6 = simd.fma(w10, x0, a6)
    a6 = simd.fma(w11, x1, a6)
    a6 = simd.fma(w12, x2, a6)
    a7 = simd.fma(w00, x0, a7)
    a7 = simd.fma(w01, x1, a7)
    a7 = simd.fma(w02, x2, a7)
    p += pitch
    x0 = simd.load(buf, p)
    x1 = simd.load(buf, p + 1)
    x2 = simd.load(buf, p + 2)
    a6 = simd.fma(w20, x0, a6)
    a6 = simd.fma(w21, x1, a6)
    a6 = simd.fma(w22, x2, a6)
    a7 = simd.fma(w10, x0, a7)
    a7 = simd.fma(w11, x1, a7)
    a7 = simd.fma(w12, x2, a7)
    p += pitch
    x0 = simd.load(buf, p)
    x1 = simd.load(buf, p + 1)
    x2 = simd.load(buf, p + 2)
    a7 = simd.fma(w20, x0, a7)
    a7 = simd.fma(w21, x1, a7)
    a7 = simd.fma(w22, x2, a7)
    return a0, a1, a2, a3, a4, a5, a6, a7


# --------------------------------------------------------------------------------------------
# Flat-path microkernel
# --------------------------------------------------------------------------------------------
# With stride 1 and as many output as input columns, output position p = oh*W + ow of a channel
# reads input position p + kofs[k] for tap k, so a vector of consecutive output positions (across
# row ends) reads consecutive input: no buffer, and the output is written in whole vectors.

@helper
def _mk_flat(xf, o, kofs, wf, woff, masks, mo, full, init):
    """Vectors ``a_v = init + sum_k wf[woff + k] * x[o + v*lanes + kofs[k] + lane]`` for v < 4,
    the load of (v, k) masked by ``masks[mo + v*taps + k]`` unless ``full`` (no lane masked)."""
    lanes = simd.width(xf)
    taps = kofs.shape[0]
    a0 = a1 = a2 = a3 = init
    if full:
        for k in range(taps):
            wv = simd.load1(wf, woff + k)
            p = o + kofs[k]
            a0 = simd.fma(wv, simd.load(xf, p), a0)
            a1 = simd.fma(wv, simd.load(xf, p + lanes), a1)
            a2 = simd.fma(wv, simd.load(xf, p + 2 * lanes), a2)
            a3 = simd.fma(wv, simd.load(xf, p + 3 * lanes), a3)
    else:
        # One slice per vector, indexed by the loop counter: LLVM then sees non-negative
        # indices and drops the negative-index wraparound arithmetic from the loop.
        m0 = masks[mo:mo + taps]
        m1 = masks[mo + taps:mo + 2 * taps]
        m2 = masks[mo + 2 * taps:mo + 3 * taps]
        m3 = masks[mo + 3 * taps:mo + 4 * taps]
        for k in range(taps):
            wv = simd.load1(wf, woff + k)
            p = o + kofs[k]
            a0 = simd.fma(wv, _load_bits(xf, p, m0[k]), a0)
            a1 = simd.fma(wv, _load_bits(xf, p + lanes, m1[k]), a1)
            a2 = simd.fma(wv, _load_bits(xf, p + 2 * lanes, m2[k]), a2)
            a3 = simd.fma(wv, _load_bits(xf, p + 3 * lanes, m3[k]), a3)
    return a0, a1, a2, a3


@helper
def _mk_flat4c(xf, o, cs, kofs, wf, woff, masks, mo, i0, i1, i2, i3):
    """:func:`_mk_flat` for 4 channels at once (input o + j*cs, weights woff + j*taps, start
    i_j): each mask is loaded once for 4 loads, and 16 accumulators hide the FMA latency.
    Returns the 4 vectors of channel 0, then of channel 1, ..."""
    lanes = simd.width(xf)
    taps = kofs.shape[0]
    a0 = a1 = a2 = a3 = i0
    b0 = b1 = b2 = b3 = i1
    c0 = c1 = c2 = c3 = i2
    d0 = d1 = d2 = d3 = i3
    m0 = masks[mo:mo + taps]
    m1 = masks[mo + taps:mo + 2 * taps]
    m2 = masks[mo + 2 * taps:mo + 3 * taps]
    m3 = masks[mo + 3 * taps:mo + 4 * taps]
    for k in range(taps):
        p = o + kofs[k]
        wa = simd.load1(wf, woff + k)
        wb = simd.load1(wf, woff + taps + k)
        wc = simd.load1(wf, woff + 2 * taps + k)
        wd = simd.load1(wf, woff + 3 * taps + k)
        m = m0[k]
        a0 = simd.fma(wa, _load_bits(xf, p, m), a0)
        b0 = simd.fma(wb, _load_bits(xf, p + cs, m), b0)
        c0 = simd.fma(wc, _load_bits(xf, p + 2 * cs, m), c0)
        d0 = simd.fma(wd, _load_bits(xf, p + 3 * cs, m), d0)
        p += lanes
        m = m1[k]
        a1 = simd.fma(wa, _load_bits(xf, p, m), a1)
        b1 = simd.fma(wb, _load_bits(xf, p + cs, m), b1)
        c1 = simd.fma(wc, _load_bits(xf, p + 2 * cs, m), c1)
        d1 = simd.fma(wd, _load_bits(xf, p + 3 * cs, m), d1)
        p += lanes
        m = m2[k]
        a2 = simd.fma(wa, _load_bits(xf, p, m), a2)
        b2 = simd.fma(wb, _load_bits(xf, p + cs, m), b2)
        c2 = simd.fma(wc, _load_bits(xf, p + 2 * cs, m), c2)
        d2 = simd.fma(wd, _load_bits(xf, p + 3 * cs, m), d2)
        p += lanes
        m = m3[k]
        a3 = simd.fma(wa, _load_bits(xf, p, m), a3)
        b3 = simd.fma(wb, _load_bits(xf, p + cs, m), b3)
        c3 = simd.fma(wc, _load_bits(xf, p + 2 * cs, m), c3)
        d3 = simd.fma(wd, _load_bits(xf, p + 3 * cs, m), d3)
    return a0, a1, a2, a3, b0, b1, b2, b3, c0, c1, c2, c3, d0, d1, d2, d3


# --------------------------------------------------------------------------------------------
# Epilogue
# --------------------------------------------------------------------------------------------

@helper
def _finish(v, rf, o, n, has_res, act, zero, neg1, neg6):
    """``act(v + rf[o:o+n])`` for one vector (v holds conv + bias), for the activations that
    are vector operations (relu, relu6); the others run afterwards in :func:`_act_pass`. The
    residual is read before anything is stored, so it may be the output itself."""
    if has_res:
        v = simd.add(v, simd.load_n(rf, o, n))
    if act == ACT_RELU:
        # maximum propagates NaN, as apply_act does.
        v = simd.maximum(v, zero)
    elif act == ACT_RELU6:
        # min(v, 6) as -max(-v, -6): the layer has no vector minimum; negation is exact.
        v = simd.mul(simd.maximum(simd.mul(simd.maximum(v, zero), neg1), neg6), neg1)
    return v


@helper
def _store8(of, rf, has_res, act, o, ow_, nr, ncol, a0, a1, a2, a3, a4, a5, a6, a7):
    """Store the first ``nr`` of 8 row vectors, ``ncol`` lanes each, at of[o], of[o + ow_],
    ..., through :func:`_finish`."""
    zero = simd.splat(of, 0)
    neg1 = simd.splat(of, -1)
    neg6 = simd.splat(of, -6)
    a0 = _finish(a0, rf, o, ncol, has_res, act, zero, neg1, neg6)
    a1 = _finish(a1, rf, o + ow_, ncol, has_res and nr > 1, act, zero, neg1, neg6)
    a2 = _finish(a2, rf, o + 2 * ow_, ncol, has_res and nr > 2, act, zero, neg1, neg6)
    a3 = _finish(a3, rf, o + 3 * ow_, ncol, has_res and nr > 3, act, zero, neg1, neg6)
    a4 = _finish(a4, rf, o + 4 * ow_, ncol, has_res and nr > 4, act, zero, neg1, neg6)
    a5 = _finish(a5, rf, o + 5 * ow_, ncol, has_res and nr > 5, act, zero, neg1, neg6)
    a6 = _finish(a6, rf, o + 6 * ow_, ncol, has_res and nr > 6, act, zero, neg1, neg6)
    a7 = _finish(a7, rf, o + 7 * ow_, ncol, has_res and nr > 7, act, zero, neg1, neg6)
    if nr == RB and ncol == simd.width(of):
        simd.store(of, o, a0)
        simd.store(of, o + ow_, a1)
        simd.store(of, o + 2 * ow_, a2)
        simd.store(of, o + 3 * ow_, a3)
        simd.store(of, o + 4 * ow_, a4)
        simd.store(of, o + 5 * ow_, a5)
        simd.store(of, o + 6 * ow_, a6)
        simd.store(of, o + 7 * ow_, a7)
        return
    # Rows past the image's last row store nothing (all lanes masked off).
    simd.store_n(of, o, a0, ncol)
    simd.store_n(of, o + ow_, a1, ncol if nr > 1 else 0)
    simd.store_n(of, o + 2 * ow_, a2, ncol if nr > 2 else 0)
    simd.store_n(of, o + 3 * ow_, a3, ncol if nr > 3 else 0)
    simd.store_n(of, o + 4 * ow_, a4, ncol if nr > 4 else 0)
    simd.store_n(of, o + 5 * ow_, a5, ncol if nr > 5 else 0)
    simd.store_n(of, o + 6 * ow_, a6, ncol if nr > 6 else 0)
    simd.store_n(of, o + 7 * ow_, a7, ncol if nr > 7 else 0)


@helper
def _store_flat(of, rf, has_res, act, o, left, a0, a1, a2, a3):
    """Store 4 consecutive vectors at of[o:], only the first ``left`` positions, through
    :func:`_finish`."""
    lanes = simd.width(of)
    zero = simd.splat(of, 0)
    neg1 = simd.splat(of, -1)
    neg6 = simd.splat(of, -6)
    n0 = min(left, lanes)
    n1 = min(max(left - lanes, 0), lanes)
    n2 = min(max(left - 2 * lanes, 0), lanes)
    n3 = min(max(left - 3 * lanes, 0), lanes)
    a0 = _finish(a0, rf, o, n0, has_res, act, zero, neg1, neg6)
    a1 = _finish(a1, rf, o + lanes, n1, has_res and n1 > 0, act, zero, neg1, neg6)
    a2 = _finish(a2, rf, o + 2 * lanes, n2, has_res and n2 > 0, act, zero, neg1, neg6)
    a3 = _finish(a3, rf, o + 3 * lanes, n3, has_res and n3 > 0, act, zero, neg1, neg6)
    if n3 == lanes:
        simd.store(of, o, a0)
        simd.store(of, o + lanes, a1)
        simd.store(of, o + 2 * lanes, a2)
        simd.store(of, o + 3 * lanes, a3)
    else:
        # A vector with no position left stores nothing (all lanes masked off).
        simd.store_n(of, o, a0, n0)
        simd.store_n(of, o + lanes, a1, n1)
        simd.store_n(of, o + 2 * lanes, a2, n2)
        simd.store_n(of, o + 3 * lanes, a3, n3)


@helper
def _act_pass(seg, act, alpha):
    """``seg = act(seg)`` for the activations :func:`_finish` leaves, while seg is in cache."""
    for i in range(seg.shape[0]):
        seg[i] = apply_act(seg[i], act, alpha)


# --------------------------------------------------------------------------------------------
# Rows-path buffer
# --------------------------------------------------------------------------------------------

@helper
def _copy(dst, d, src, s, n):
    """dst[d : d + n] = src[s : s + n] in vectors, the last one masked."""
    lanes = simd.width(dst)
    for i in range(0, n - lanes + 1, lanes):
        simd.store(dst, d + i, simd.load(src, s + i))
    r = n % lanes
    if r:
        simd.store_n(dst, d + n - r, simd.load_n(src, s + n - r, r), r)


@helper
def _zero(dst, d, n):
    """dst[d : d + n] = 0 in vectors, the last one masked."""
    lanes = simd.width(dst)
    z = simd.splat(dst, 0)
    for i in range(0, n - lanes + 1, lanes):
        simd.store(dst, d + i, z)
    r = n % lanes
    if r:
        simd.store_n(dst, d + n - r, z, r)


@helper
def _fill(buf, xf, xbase, h, w, ih0, nrows, pitch, wq, wp, lead, sw, pl):
    """buf[lead + i*pitch + p*wp + q] = x[ih0 + i, q*sw + p - pl] (0 outside the image) for
    i < nrows, q < wq, p < sw.

    ``buf`` is a thread's buffer, zeroed once: with sw 1 and 2, columns that are padding in
    every row are never written, so rows inside the image copy only the image's columns.
    ``lead`` puts the first of those on a 64-byte boundary (unaligned stores split across cache
    lines and ran 1.6x slower). Each stride has its own row loop (one loop with a branch per row
    ran several times slower).
    """
    # Rows [i0, i1) lie inside the image.
    i0 = min(nrows, max(0, -ih0))
    i1 = max(i0, min(nrows, h - ih0))
    _zero(buf, lead, i0 * pitch)
    _zero(buf, lead + i1 * pitch, (nrows - i1) * pitch)
    s0 = xbase + ih0 * w
    lanes = simd.width(buf)
    if sw == 1:
        # Columns q whose source q - pl lies in [0, w).
        lo = min(wq, pl)
        hi = max(lo, min(wq, w + pl))
        for i in range(i0, i1):
            _copy(buf, lead + i * pitch + lo, xf, s0 + i * w + lo - pl, hi - lo)
    elif sw == 2:
        # Columns where both phases' sources 2q - pl and 2q + 1 - pl lie in [0, w).
        lo = min(wq, (pl + 1) // 2)
        hi = max(lo, min(wq, (w - 2 + pl) // 2 + 1))
        # Outside [lo, hi) at most two entries are pixels, the others always padding: column
        # lo - 1 of the odd plane (image column 0) when pl is odd, and column hi of the even
        # plane (image column 2*hi - pl) when that lies in the image.
        left = pl % 2 == 1 and lo >= 1
        right = hi < wq and 2 * hi - pl < w
        for i in range(i0, i1):
            d = lead + i * pitch
            s = s0 + i * w - pl
            q = lo
            while q + lanes <= hi:
                # A constant pair count: LLVM turns the masked loads into plain ones.
                ev, od = _deinterleave(xf, s + 2 * q, lanes)
                simd.store(buf, d + q, ev)
                simd.store(buf, d + wp + q, od)
                q += lanes
            if q < hi:
                ev, od = _deinterleave(xf, s + 2 * q, hi - q)
                simd.store_n(buf, d + q, ev, hi - q)
                simd.store_n(buf, d + wp + q, od, hi - q)
            if left:
                buf[d + wp + lo - 1] = xf[s + 2 * lo - 1]
            if right:
                buf[d + hi] = xf[s + 2 * hi]
    else:
        zero = buf.dtype.type(0)
        for i in range(i0, i1):
            for p in range(sw):
                for q in range(wq):
                    iw = q * sw + p - pl
                    buf[lead + i * pitch + p * wp + q] = xf[s0 + i * w + iw] \
                        if iw >= 0 and iw < w else zero


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
# ``geom`` is an int64 array of the call's geometry (see _plan): N, C, H, W, multiplier, OH, OW,
# then per path: rows: sh, pt, sw, pl, tr (output rows per task), nbr (buffer rows), pitch
# (buffer row length), wq (columns used per phase plane), fast (1: 3x3 stride 1 dilation 1),
# wp (phase-plane stride), lead (buffer offset of row 0);
# flat: gpt (groups of FV vectors per task).


@helper
def _rows_task(of, xf, wf, bf, has_bias, rf, has_res, act, alpha, geom, kofs, buf, t):
    """Rows-path task t: image n, input channel c, output rows [oh0, oh0 + tr), all ``mult``
    output channels of c, with buf this thread's buffer."""
    c_, h, w, mult, oh_, ow_ = geom[1], geom[2], geom[3], geom[4], geom[5], geom[6]
    sh, pt, sw, pl = geom[7], geom[8], geom[9], geom[10]
    tr, nbr, pitch, wq, fast = geom[11], geom[12], geom[13], geom[14], geom[15]
    wp, lead = geom[16], geom[17]
    lanes = simd.width(of)
    taps = kofs.shape[0]
    rs = sh * pitch
    nrb = (oh_ + tr - 1) // tr
    rb = t % nrb
    nc = t // nrb
    c = nc % c_
    n = nc // c_
    oh0 = rb * tr
    _fill(buf, xf, nc * h * w, h, w, oh0 * sh - pt, nbr, pitch, wq, wp, lead, sw, pl)
    rows = min(tr, oh_ - oh0)
    for j in range(mult):
        oc = c * mult + j
        init = simd.splat(of, bf[oc] if has_bias else 0)
        obase = ((n * c_ * mult + oc) * oh_ + oh0) * ow_
        for r0 in range(0, rows, RB):
            nr = min(RB, rows - r0)
            for ow0 in range(0, ow_, lanes):
                bo = lead + r0 * rs + ow0
                if fast:
                    a0, a1, a2, a3, a4, a5, a6, a7 = _mk3x3s1(buf, bo, pitch, wf, oc * 9, init)
                else:
                    a0, a1, a2, a3, a4, a5, a6, a7 = _mk8(buf, bo, rs, kofs, wf, oc * taps, init)
                _store8(of, rf, has_res, act, obase + r0 * ow_ + ow0, ow_, nr,
                        min(lanes, ow_ - ow0), a0, a1, a2, a3, a4, a5, a6, a7)
        if act != ACT_NONE and act != ACT_RELU and act != ACT_RELU6:
            _act_pass(of[obase:obase + rows * ow_], act, alpha)


@_kernel_nrt_free
def _depthwise_rows(of, xf, wf, bf, has_bias, rf, has_res, act, alpha, geom, kofs, bufs):
    """Depthwise conv, rows path, over flat arrays.

    Parameters
    ----------
    of, rf : output and residual, flat (N, OC, OH, OW); rf is read when has_res.
    xf : input, flat (N, C, H, W).
    wf : weights, flat (OC, KH, KW); bf : bias (OC,), read when has_bias.
    act, alpha : activation code and parameter.
    geom : int64 geometry (see above).
    kofs : (KH*KW,) int64, offset of tap (kh, kw) in the buffer from the output position.
    bufs : (threads, >= lead + nbr * pitch + lanes) scratch, one 64-byte aligned row per
        thread; the tasks are split into one static run per row.
    """
    n_, c_, oh_, tr = geom[0], geom[1], geom[5], geom[11]
    ntask = n_ * c_ * ((oh_ + tr - 1) // tr)
    nth = min(bufs.shape[0], ntask)
    # One run of tasks per thread, so that each zeroes its buffer only once (see _fill).
    for tid in prange(nth):
        buf = bufs[tid]
        buf[:] = 0
        for t in range(tid * ntask // nth, (tid + 1) * ntask // nth):
            _rows_task(of, xf, wf, bf, has_bias, rf, has_res, act, alpha, geom, kofs, buf, t)


@helper
def _flat_channel(of, xf, wf, bf, has_bias, rf, has_res, act, alpha, geom, kofs, masks, full,
                  xo, oc, ob, g0, g1):
    """Groups [g0, g1) of output channel oc (output at ob) from the input plane at xo."""
    lanes = simd.width(of)
    taps = kofs.shape[0]
    po = geom[5] * geom[6]
    init = simd.splat(of, bf[oc] if has_bias else 0)
    for g in range(g0, g1):
        p0 = g * FV * lanes
        a0, a1, a2, a3 = _mk_flat(xf, xo + p0, kofs, wf, oc * taps, masks, g * FV * taps,
                                  full[g], init)
        _store_flat(of, rf, has_res, act, ob + p0, po - p0, a0, a1, a2, a3)
    if act != ACT_NONE and act != ACT_RELU and act != ACT_RELU6:
        _act_pass(of[ob + g0 * FV * lanes:ob + min(po, g1 * FV * lanes)], act, alpha)


@_kernel_nrt_free
def _depthwise_flat(of, xf, wf, bf, has_bias, rf, has_res, act, alpha, geom, kofs, masks, full):
    """Depthwise conv, flat path (stride 1, OW == W), over flat arrays.

    Parameters as :func:`_depthwise_rows`, and
    kofs : (taps,) int64, input offset of tap (kh, kw) from the output position,
        (kh*dh - pt) * W + kw*dw - pl.
    masks : (groups * FV * taps,) int64; bit i of masks[(g*FV + v)*taps + k] is set when lane i
        of vector v of group g is an output position whose tap k reads inside the image.
    full : (groups,) bool, every mask of the group full (its loads need no mask).

    A task is (image, block of CB channels, block of gpt groups); with multiplier 1 a whole
    block of CB channels runs through :func:`_mk_flat4c`.
    """
    n_, c_, h, w, mult, oh_, ow_, gpt = (geom[0], geom[1], geom[2], geom[3], geom[4], geom[5],
                                         geom[6], geom[7])
    lanes = simd.width(of)
    taps = kofs.shape[0]
    po = oh_ * ow_
    pi = h * w
    ngroups = full.shape[0]
    nblk = (ngroups + gpt - 1) // gpt
    ncb = (c_ + CB - 1) // CB
    for t in prange(n_ * ncb * nblk):
        blk = t % nblk
        u = t // nblk
        cb = u % ncb
        n = u // ncb
        g0 = blk * gpt
        g1 = min(ngroups, g0 + gpt)
        c0 = cb * CB
        c1 = min(c_, c0 + CB)
        if mult == 1 and c1 - c0 == CB:
            xo = (n * c_ + c0) * pi
            ob = (n * c_ + c0) * po
            i0 = simd.splat(of, bf[c0] if has_bias else 0)
            i1 = simd.splat(of, bf[c0 + 1] if has_bias else 0)
            i2 = simd.splat(of, bf[c0 + 2] if has_bias else 0)
            i3 = simd.splat(of, bf[c0 + 3] if has_bias else 0)
            for g in range(g0, g1):
                p0 = g * FV * lanes
                (a0, a1, a2, a3, b0, b1, b2, b3, e0, e1, e2, e3, d0, d1, d2,
                 d3) = _mk_flat4c(xf, xo + p0, pi, kofs, wf, c0 * taps, masks, g * FV * taps,
                                  i0, i1, i2, i3)
                left = po - p0
                _store_flat(of, rf, has_res, act, ob + p0, left, a0, a1, a2, a3)
                _store_flat(of, rf, has_res, act, ob + po + p0, left, b0, b1, b2, b3)
                _store_flat(of, rf, has_res, act, ob + 2 * po + p0, left, e0, e1, e2, e3)
                _store_flat(of, rf, has_res, act, ob + 3 * po + p0, left, d0, d1, d2, d3)
            if act != ACT_NONE and act != ACT_RELU and act != ACT_RELU6:
                for j in range(CB):
                    o = ob + j * po
                    _act_pass(of[o + g0 * FV * lanes:o + min(po, g1 * FV * lanes)], act, alpha)
        else:
            for c in range(c0, c1):
                for j in range(mult):
                    oc = c * mult + j
                    _flat_channel(of, xf, wf, bf, has_bias, rf, has_res, act, alpha, geom, kofs,
                                  masks, full, (n * c_ + c) * pi, oc, (n * c_ * mult + oc) * po,
                                  g0, g1)


# --------------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------------

# Stand-ins for a missing bias or residual, one per dtype, so that None allocates nothing.
_NO_BIAS = {np.dtype(t): np.empty(0, t) for t in (np.float32, np.float64)}
_NO_RES = {np.dtype(t): np.empty(0, t) for t in (np.float32, np.float64)}


def _rows_per_task(n_, c_, oh_, sh, kh_, dh, pitch, itemsize, threads):
    """Output rows per rows-path task: a multiple of RB whose buffer fits BUF_BYTES, fewer when
    that leaves too few tasks to keep every thread busy (batch 1, few channels)."""
    span = (kh_ - 1) * dh + 1
    fit = max(1, (BUF_BYTES // (pitch * itemsize) - span) // sh + 1)
    tr = max(RB, fit // RB * RB)
    tr = min(tr, -(-oh_ // RB) * RB)
    while tr > RB and n_ * c_ * -(-oh_ // tr) < 4 * threads:
        tr -= RB
    return tr


def _flat_plan(h, w, oh_, kh_, kw_, pt, pl, dh, dw, lanes):
    """(kofs, masks, full) for :func:`_depthwise_flat` (cached: not to be written)."""
    po = oh_ * w
    ngroups = -(-po // (FV * lanes))
    pos = np.arange(ngroups * FV * lanes)
    oh, ow = pos // w, pos % w
    inside = pos < po
    bit = np.left_shift(1, np.arange(lanes, dtype=np.int64))
    kofs, masks = [], []
    for kh in range(kh_):
        for kw in range(kw_):
            ih = oh + kh * dh - pt
            iw = ow + kw * dw - pl
            ok = inside & (ih >= 0) & (ih < h) & (iw >= 0) & (iw < w)
            masks.append((ok.reshape(-1, lanes) * bit).sum(axis=1))
            kofs.append((kh * dh - pt) * w + kw * dw - pl)
    masks = np.stack(masks, axis=1)  # (vectors, taps)
    full = (masks == (1 << lanes) - 1).reshape(ngroups, -1).all(axis=1)
    return np.array(kofs, np.int64), masks.reshape(-1).astype(np.int64), full


@functools.lru_cache(maxsize=256)
def _plan(xshape, wshape, oshape, stride, padding, dilation, dtype, threads):
    """('flat', geom, kofs, masks, full) or ('rows', geom, kofs, scratch per thread), cached per
    call geometry (the arrays are shared: not to be written)."""
    n_, c_, h, wd = xshape
    oc_, _, kh_, kw_ = wshape
    oh_, ow_ = oshape[2], oshape[3]
    (sh, sw), (pt, pl), (dh, dw) = stride, padding, dilation
    lanes = simd.lanes_of(dtype)
    head = [n_, c_, h, wd, oc_ // c_, oh_, ow_]
    if sh == 1 and sw == 1 and ow_ == wd and 2 * ow_ <= lanes:
        kofs, masks, full = _flat_plan(h, wd, oh_, kh_, kw_, pt, pl, dh, dw, lanes)
        # Groups per task: whole channels unless that leaves threads idle.
        gpt = -(-full.shape[0] // max(1, -(-4 * threads // (n_ * -(-c_ // CB)))))
        return "flat", np.array(head + [gpt], np.int64), kofs, masks, full
    al = 64 // dtype.itemsize  # elements per cache line
    wq = ow_ + (kw_ - 1) * dw // sw
    # Phase planes and rows start on cache lines, and ``lead`` puts the first column the fill
    # copies there too (see _fill).
    wp = -(-wq // al) * al if sw > 1 else wq
    pitch = -(-(sw * wp) // al) * al
    lead = (-min(wq, (pl + 1) // 2 if sw == 2 else pl)) % al if sw <= 2 else 0
    tr = _rows_per_task(n_, c_, oh_, sh, kh_, dh, pitch, dtype.itemsize, threads)
    nbr = (tr - 1) * sh + (kh_ - 1) * dh + 1
    kh = np.arange(kh_)[:, None] * dh
    kw = np.arange(kw_)[None, :] * dw
    kofs = (kh * pitch + (kw % sw) * wp + kw // sw).reshape(-1).astype(np.int64)
    fast = int(kh_ == 3 and kw_ == 3 and sh == 1 and sw == 1 and dh == 1 and dw == 1)
    geom = np.array(head + [sh, pt, sw, pl, tr, nbr, pitch, wq, fast, wp, lead], np.int64)
    # Whole cache lines per thread (no false sharing between threads).
    per = -(-(lead + nbr * pitch + lanes) // al) * al
    return "rows", geom, kofs, per


_LOCAL = threading.local()


def _scratch(threads, per, dtype):
    """(threads, per) array whose rows start on 64-byte boundaries, for the rows path: one per
    calling thread and dtype, grown when too small (a few tens of KiB), so that steady-state
    calls allocate nothing. Its contents are not kept between calls."""
    views = getattr(_LOCAL, "views", None)
    if views is None:
        views = _LOCAL.views = {}
        _LOCAL.raw = {}
    view = views.get((dtype, threads, per))
    if view is None:
        if len(views) > 64:  # many geometries: forget the views, keep the memory
            views.clear()
        al = 64 // dtype.itemsize
        raw = _LOCAL.raw.get(dtype)
        if raw is None or raw.size < threads * per + al:
            raw = _LOCAL.raw[dtype] = np.empty(threads * per + al, dtype)
            views.clear()  # views of the old array
        a = (-raw.ctypes.data % 64) // dtype.itemsize
        view = views[(dtype, threads, per)] = raw[a:a + threads * per].reshape(threads, per)
    return view


def depthwise_conv2d(out, x, w, b, residual, stride, padding, dilation, act, alpha):
    """Depthwise 2-D cross-correlation (torch's conv2d with groups == C), fused epilogue:
    ``out = act(conv(x, w) + b + residual)``.

    Parameters
    ----------
    out : (N, OC, OH, OW) array, filled in place; OC = multiplier * C; its shape sets the
        bottom/right padding.
    x : (N, C, H, W) array.
    w : (OC, 1, KH, KW) array; output channel oc reads input channel oc // multiplier.
    b : (OC,) array or None.
    residual : array shaped as out (it may be out itself), or None.
    stride, padding, dilation : (h, w) int tuples; padding is (top, left).
    act : numbaconv._ops.ACT_* code applied last; alpha its parameter.
    """
    if out.size == 0:
        return
    dt = out.dtype
    threads = numba.get_num_threads()
    plan = _plan(x.shape, w.shape, out.shape, tuple(stride), tuple(padding), tuple(dilation), dt,
                 threads)
    of = out.reshape(-1)
    xf = np.ascontiguousarray(x).reshape(-1)
    wf = np.ascontiguousarray(w).reshape(-1)
    bf = b if b is not None else _NO_BIAS[dt]
    rf = np.ascontiguousarray(residual).reshape(-1) if residual is not None else _NO_RES[dt]
    if plan[0] == "flat":
        _, geom, kofs, masks, full = plan
        _depthwise_flat(of, xf, wf, bf, b is not None, rf, residual is not None, act, alpha,
                        geom, kofs, masks, full)
        return
    _, geom, kofs, per = plan
    _depthwise_rows(of, xf, wf, bf, b is not None, rf, residual is not None, act, alpha, geom,
                    kofs, _scratch(threads, per, dt))
