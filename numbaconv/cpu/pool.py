"""Pooling kernels: max, average and their adaptive forms, with PyTorch's window rules.

Pooling is separable: a window's maximum (or sum) is the maximum over its rows of the maxima over
its columns. Each output row first reduces its window's input rows into a scratch row, whole rows
at a time in SIMD vectors, then reduces each output's columns of that scratch row: contiguous
vectors for stride 1, the even lanes of two vectors for stride 2, a scalar loop otherwise. The
scratch row has margins holding the reduction's identity (-inf, or 0 for sums), so padding and
windows that run past the input need no bounds tests.

Adaptive pooling whose column windows are all k wide, k a power of two within a vector (56 -> 7
is 8), reduces the scratch row's columns in vectors too: pairwise halving steps (``_row_tree``)
that leave one window per lane, in order. Other adaptive windows reduce their columns in a scalar
loop.

Maxima propagate NaN as PyTorch's do (``nan_max``, and its vector form ``_nan_max``). Sums run
in the input's precision, as PyTorch's CPU pooling does, and averages multiply by 1 / divisor.

The flat output rows (N * C * OH) are cut into about TASKS equal parallel tasks, each with its
own scratch row, so two cores are busy even for one image.
"""

import numpy as np
from llvmlite import ir
from numba import prange, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic

from numbaconv.cpu import simd
from numbaconv.cpu._common import adaptive_window, helper, kernel, nan_max

TASKS = 64
PREFETCH_BYTES = 8192  # how far ahead of the current row the input is prefetched


@intrinsic
def _evens(typingctx, a, b):
    """Vector of lanes 0, 2, 4, ... of ``a`` followed by ``b``: the stride-2 elements of two
    consecutive loads."""
    if not (isinstance(a, simd.Vec) and a == b):
        raise TypingError(f"_evens needs two vectors of one type, got {a}, {b}")

    def codegen(context, builder, sig, args):
        lanes = sig.args[0].lanes
        mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [2 * i for i in range(lanes)])
        return builder.shuffle_vector(args[0], args[1], mask)

    return a(a, b), codegen


@intrinsic
def _odds(typingctx, a, b):
    """Vector of lanes 1, 3, 5, ... of ``a`` followed by ``b``."""
    if not (isinstance(a, simd.Vec) and a == b):
        raise TypingError(f"_odds needs two vectors of one type, got {a}, {b}")

    def codegen(context, builder, sig, args):
        lanes = sig.args[0].lanes
        mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes),
                           [2 * i + 1 for i in range(lanes)])
        return builder.shuffle_vector(args[0], args[1], mask)

    return a(a, b), codegen


@intrinsic
def _shift_in(typingctx, prev, cur):
    """Vector of the last lane of ``prev`` followed by the lanes of ``cur`` but its last: the
    values one position before those of ``cur`` when ``prev`` holds the ones before it."""
    if not (isinstance(prev, simd.Vec) and prev == cur):
        raise TypingError(f"_shift_in needs two vectors of one type, got {prev}, {cur}")

    def codegen(context, builder, sig, args):
        lanes = sig.args[0].lanes
        mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes),
                           [lanes - 1 + i for i in range(lanes)])
        return builder.shuffle_vector(args[0], args[1], mask)

    return prev(prev, cur), codegen


def _group_halves(second):
    """An intrinsic ``(a, b, s)``: of each group of ``2 * s`` lanes of ``a`` followed by ``b``, the
    first ``s`` lanes (the second ``s`` if ``second``), in order; ``s`` a power of two below the
    lanes, chosen at run time by a switch over the constant shuffles."""

    def typer(typingctx, a, b, s):
        if not (isinstance(a, simd.Vec) and a == b and isinstance(s, types.Integer)):
            raise TypingError(f"group halves need two vectors of one type and an int, got "
                              f"{a}, {b}, {s}")

        def codegen(context, builder, sig, args):
            va, vb, sv = args
            lanes = sig.args[0].lanes
            sizes = [1 << i for i in range(lanes.bit_length() - 1)]  # 1, 2, ..., lanes / 2
            if not sizes:
                return va
            i32 = ir.IntType(32)
            end = builder.append_basic_block("halves.end")
            cases = [builder.append_basic_block(f"halves.{g}") for g in sizes]
            switch = builder.switch(sv, cases[-1])
            results = []
            for g, block in zip(sizes, cases):
                switch.add_case(ir.Constant(sv.type, g), block)
                builder.position_at_end(block)
                mask = [(j // g) * 2 * g + j % g + (g if second else 0) for j in range(lanes)]
                results.append((builder.shuffle_vector(
                    va, vb, ir.Constant(ir.VectorType(i32, lanes), mask)), builder.block))
                builder.branch(end)
            builder.position_at_end(end)
            phi = builder.phi(va.type)
            for value, block in results:
                phi.add_incoming(value, block)
            return phi

        return a(a, b, s), codegen

    return intrinsic(typer)


_firsts = _group_halves(False)
_seconds = _group_halves(True)


@intrinsic
def _nan_max(typingctx, m, v):
    """Lane-wise ``nan_max(m, v)``: ``v`` where ``v > m`` or ``v`` is NaN, else ``m``.

    Three instructions on x86: ``max(v, m)`` (which is ``v > m ? v : m``), an unordered compare
    of both and a masked ``m + v``, NaN where either is (six for IEEE maximum,
    ``simd.maximum``; four for testing ``v`` alone, whose compare feeds the select). Between
    equal values it keeps ``m``, as PyTorch's strict ``>`` does.
    """
    if not (isinstance(m, simd.Vec) and m == v):
        raise TypingError(f"_nan_max needs two vectors of one type, got {m}, {v}")

    def codegen(context, builder, sig, args):
        mv, vv = args
        bigger = builder.select(builder.fcmp_ordered(">", vv, mv), vv, mv)
        return builder.select(builder.fcmp_unordered("uno", mv, vv), builder.fadd(mv, vv), bigger)

    return m(m, v), codegen


@intrinsic
def _load_fill(typingctx, arr, i, n, fill):
    """Vector of ``arr[i : i + n]`` with ``fill`` in the lanes from ``n`` on, reading nothing
    past ``arr[i + n - 1]`` (a masked load whose other lanes are ``fill``)."""
    vt = simd.vec_type(arr, "pool._load_fill")

    def codegen(context, builder, sig, args):
        lty = context.get_value_type(vt)
        ptr = simd.address(context, builder, sig.args[0], args[0], args[1], lty)
        fill = simd.splat_value(builder, context.cast(builder, args[3], sig.args[3], vt.dtype), lty)
        return simd.masked_load(builder, ptr, simd.lane_mask(builder, args[2], vt.lanes), lty,
                                fill)

    return vt(arr, i, n, fill), codegen


@intrinsic
def _prefetch(typingctx, arr, i):
    """Hint that ``arr[i]`` (1-D) will be read soon (``llvm.prefetch``, into all caches)."""
    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        ptr = builder.bitcast(builder.gep(data, [args[1]]), ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]),
            "llvm.prefetch.p0")
        builder.call(fn, [ptr, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(arr, i), codegen


@helper
def _ceil_div(a, b):
    # Python's // floors for negative ints too, so this is ceil for any sign of a (b > 0).
    return -((-a) // b)


@helper
def _row_index(r, c_, oh_):
    """(n, c, oh) of flat output-row index ``r`` over (N, C, OH)."""
    nc = r // oh_
    n = nc // c_
    return n, nc - n * c_, r - nc * oh_


@helper
def _next_row(n, c, oh, c_, oh_):
    """(n, c, oh) of the flat output row after (n, c, oh), without divisions."""
    oh += 1
    if oh == oh_:
        oh = 0
        c += 1
        if c == c_:
            c = 0
            n += 1
    return n, c, oh


@helper
def _task_rows(t, rows, per):
    """Flat output rows [lo, hi) of parallel task ``t`` (``per`` rows each)."""
    lo = t * per
    return lo, min(lo + per, rows)


@helper
def _tasks(rows):
    """(tasks, rows per task) for ``rows`` flat output rows."""
    per = max(1, _ceil_div(rows, TASKS))
    return _ceil_div(rows, per), per


# The reductions (compile-time constants): sums and NaN-propagating maxima.
SUM = 0
MAX = 1


@helper
def _vop(mode, a, b):
    return simd.add(a, b) if mode == SUM else _nan_max(a, b)


@helper
def _sop(mode, a, b):
    return a + b if mode == SUM else nan_max(a, b)


@helper
def _reduce_rows(mode, tmp, base, plane, r0, nr, dr, identity):
    """``tmp[base + w]`` = the ``mode`` reduction over the ``nr >= 1`` rows ``r0 + i * dr`` of
    ``plane[:, w]``, for every column w of the (H, W) ``plane``.

    The last vector is stored whole, with ``identity`` past the row's end: a masked store
    there would stall the loads of ``_reduce_cols`` that overlap it (no store forwarding).
    ``tmp`` must extend a vector past ``base + W``.
    """
    w_ = plane.shape[1]
    lanes = simd.width(tmp)
    first = plane[r0]
    full = w_ - w_ % lanes
    # (A range with a runtime step would divide for its trip count in every block.)
    for w0 in range(0, full, lanes):
        acc = simd.load(first, w0)
        for i in range(1, nr):
            acc = _vop(mode, acc, simd.load(plane[r0 + i * dr], w0))
        simd.store(tmp, base + w0, acc)
    if full < w_:
        n = w_ - full
        acc = _load_fill(first, full, n, identity)
        for i in range(1, nr):
            acc = _vop(mode, acc, _load_fill(plane[r0 + i * dr], full, n, identity))
        simd.store(tmp, base + full, acc)


@helper
def _tap(tmp, i, sw, lanes):
    """Vector of ``tmp[i + k * sw]``, k < lanes, for stride ``sw`` 1 or 2."""
    if sw == 1:
        return simd.load(tmp, i)
    return _evens(simd.load(tmp, i), simd.load(tmp, i + lanes))


@helper
def _reduce_cols(mode, orow, tmp, off, sw, kw, dw, factors):
    """``orow[o]`` = the ``mode`` reduction (times ``factors[o]`` for SUM) over taps j < kw of
    ``tmp[off + o * sw + j * dw]``.

    ``tmp`` must extend past the last tap of the last (lane-rounded) output block, and
    ``factors`` (unused for max) to a whole number of vectors.
    """
    ow_ = orow.shape[0]
    lanes = simd.width(tmp)
    if sw == 1 or sw == 2:
        for o0 in range(0, ow_, lanes):
            i = off + o0 * sw
            acc = _tap(tmp, i, sw, lanes)
            for j in range(1, kw):
                acc = _vop(mode, acc, _tap(tmp, i + j * dw, sw, lanes))
            if mode == SUM:
                acc = simd.mul(acc, simd.load(factors, o0))
            n = ow_ - o0
            if n >= lanes:
                simd.store(orow, o0, acc)
            else:
                simd.store_n(orow, o0, acc, n)
    else:
        for o in range(ow_):
            i = off + o * sw
            m = tmp[i]
            for j in range(1, kw):
                m = _sop(mode, m, tmp[i + j * dw])
            orow[o] = m * factors[o] if mode == SUM else m


@helper
def _cols(mode, xf, base, col, n, nr, step, identity):
    """Vector over lanes k of the ``mode`` reduction of ``xf[base + i * step + col + k]``,
    i < nr (>= 1): input rows ``step`` apart. Lanes from ``n`` on (``n`` may be <= 0) are
    ``identity`` and read nothing."""
    lanes = simd.width(xf)
    if n >= lanes:
        acc = simd.load(xf, base + col)
        for i in range(1, nr):
            acc = _vop(mode, acc, simd.load(xf, base + i * step + col))
    else:
        acc = _load_fill(xf, base + col, n, identity)
        for i in range(1, nr):
            acc = _vop(mode, acc, _load_fill(xf, base + i * step + col, n, identity))
    return acc


@helper
def _s2_fast(kw, sw, pw, dw):
    """Whether ``_row_s2`` serves a window: stride 2 with 3 taps after 1 padding or 2 taps."""
    return sw == 2 and dw == 1 and ((kw == 3 and pw == 1) or (kw == 2 and pw == 0))


@helper
def _row_s2(mode, of, obase, ow_, xf, base, nr, step, w_, pw, identity, factors):
    """One output row ``of[obase : obase + ow_]`` of a stride-2 pooling whose windows are
    columns (2o - 1, 2o, 2o + 1) (``pw`` 1) or (2o, 2o + 1) (``pw`` 0) of the ``mode``
    reduction of the ``nr`` input rows ``xf[base + i * step :][:w_]``; times ``factors[o]`` for
    SUM.

    Everything stays in registers: the rows' reduction over 2 * lanes columns is split into its
    even and odd columns, and column 2o - 1 is the odd vector shifted by one lane, the lane
    before coming from the previous block. (Storing the rows' reduction to scratch and loading
    it back at other offsets stalls on store forwarding.)
    """
    lanes = simd.width(xf)
    prev = simd.splat(xf, identity)
    for o0 in range(0, ow_, lanes):
        c = 2 * o0
        a = _cols(mode, xf, base, c, w_ - c, nr, step, identity)
        b = _cols(mode, xf, base, c + lanes, w_ - c - lanes, nr, step, identity)
        ev = _evens(a, b)
        od = _odds(a, b)
        if pw == 1:
            acc = _vop(mode, _vop(mode, _shift_in(prev, od), ev), od)
            prev = od
        else:
            acc = _vop(mode, ev, od)
        if mode == SUM:
            acc = simd.mul(acc, simd.load(factors, o0))
        n = ow_ - o0
        if n >= lanes:
            simd.store(of, obase + o0, acc)
        else:
            simd.store_n(of, obase + o0, acc, n)


@helper
def _prefetch_ahead(xf, start, count):
    """Prefetch the ``count`` elements PREFETCH_BYTES past ``xf[start]`` (one hint per line): the
    input the rows a few iterations on will read, so that its fetch overlaps this row's work."""
    step = 64 // xf.itemsize
    ahead = start + PREFETCH_BYTES // xf.itemsize
    stop = min(ahead + count, xf.shape[0])
    for i in range(ahead, stop, step):
        _prefetch(xf, i)


@helper
def _scratch(x, ow_, kw, sw, dw, pw, identity):
    """A scratch row for ``_reduce_cols``, all ``identity``; the input row goes at offset pw."""
    lanes = simd.width(x[0, 0, 0])
    blocks = _ceil_div(ow_, lanes) * lanes
    size = pw + max(x.shape[3] + lanes, sw * (blocks + lanes) + (kw - 1) * dw)
    return np.full(size, identity, x.dtype)


@helper
def _valid_taps(start, k, d, size):
    """Range (first, stop) of the taps ``start + i * d``, i < k, that lie in [0, size)."""
    i0 = max(0, _ceil_div(-start, d))
    i1 = min(k, _ceil_div(size - start, d))
    return start + i0 * d, start + max(i1, i0) * d


@kernel
def max_pool2d(out, x, kernel, stride, padding, dilation):
    """Max pooling with implicit -inf padding; a NaN in a window gives NaN, as in PyTorch.

    Parameters
    ----------
    out : (N, C, OH, OW) array, filled in place (ceil_mode is already in its shape).
    x : (N, C, H, W) array.
    kernel, stride, padding, dilation : (h, w) int tuples.
    """
    n_, c_, h, w = x.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    # Output row oh reduces the nr[oh] input rows r0[oh] + i * dh. With dilation, a window's taps
    # can all miss the input (the first in the padding, the next past the input's end): nr[oh]
    # = 0, or no column in range. Such outputs are -inf, as PyTorch's. Columns are covered by
    # the scratch row's -inf margins; rows are tested here.
    r0 = np.empty(oh_, np.intp)
    nr = np.empty(oh_, np.intp)
    for oh in range(oh_):
        first, stop = _valid_taps(oh * sh - ph, kh, dh, h)
        r0[oh] = first
        nr[oh] = (stop - first) // dh
    xf = x.reshape((x.size,))
    of = out.reshape((out.size,))
    rows = n_ * c_ * oh_
    tasks, per = _tasks(rows)
    fast = _s2_fast(kw, sw, pw, dw)
    for t in prange(tasks):
        lo, hi = _task_rows(t, rows, per)
        n, c, oh = _row_index(lo, c_, oh_)
        if fast:
            for r in range(lo, hi):
                if nr[oh] == 0:
                    of[r * ow_:(r + 1) * ow_] = -np.inf
                else:
                    base = ((n * c_ + c) * h + r0[oh]) * w
                    _prefetch_ahead(xf, base, sh * w)
                    _row_s2(MAX, of, r * ow_, ow_, xf, base, nr[oh], dh * w, w, pw, -np.inf, xf)
                n, c, oh = _next_row(n, c, oh, c_, oh_)
        else:
            tmp = _scratch(x, ow_, kw, sw, dw, pw, -np.inf)
            for _ in range(lo, hi):
                if nr[oh] == 0:
                    out[n, c, oh] = -np.inf
                else:
                    _prefetch_ahead(xf, ((n * c_ + c) * h + r0[oh]) * w, sh * w)
                    _reduce_rows(MAX, tmp, pw, x[n, c], r0[oh], nr[oh], dh, -np.inf)
                    _reduce_cols(MAX, out[n, c, oh], tmp, 0, sw, kw, dw, tmp)
                n, c, oh = _next_row(n, c, oh, c_, oh_)


@kernel
def avg_pool2d(out, x, kernel, stride, padding, count_include_pad):
    """Average pooling with PyTorch's divisor rules.

    With ``count_include_pad`` the divisor is the window clipped to the padded input
    ([-pad, size + pad)); without it, the window clipped to the input itself.

    Parameters
    ----------
    out : (N, C, OH, OW) array, filled in place (ceil_mode is already in its shape).
    x : (N, C, H, W) array.
    kernel, stride, padding : (h, w) int tuples.
    count_include_pad : bool.
    """
    n_, c_, h, w = x.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    # 1 / divisor of every output (oh, o), padded to whole vectors: a multiply per output
    # instead of a division (at most an ulp from PyTorch's sum / divisor).
    lanes = simd.width(out[0, 0, 0])
    inv = np.empty((oh_, _ceil_div(ow_, lanes) * lanes), out.dtype)
    r0 = np.empty(oh_, np.intp)
    r1 = np.empty(oh_, np.intp)
    for oh in range(oh_):
        hstart = oh * sh - ph
        r0[oh] = max(hstart, 0)
        r1[oh] = min(hstart + kh, h)
        hcount = min(hstart + kh, h + ph) - hstart if count_include_pad else r1[oh] - r0[oh]
        for o in range(inv.shape[1]):
            wstart = o * sw - pw
            wend = min(wstart + kw, w + pw)
            wcount = wend - wstart if count_include_pad else min(wend, w) - max(wstart, 0)
            inv[oh, o] = 1 / out.dtype.type(hcount * wcount) if o < ow_ else 0
    xf = x.reshape((x.size,))
    of = out.reshape((out.size,))
    rows = n_ * c_ * oh_
    tasks, per = _tasks(rows)
    fast = _s2_fast(kw, sw, pw, 1)
    for t in prange(tasks):
        lo, hi = _task_rows(t, rows, per)
        n, c, oh = _row_index(lo, c_, oh_)
        if fast:
            for r in range(lo, hi):
                base = ((n * c_ + c) * h + r0[oh]) * w
                _prefetch_ahead(xf, base, sh * w)
                _row_s2(SUM, of, r * ow_, ow_, xf, base, r1[oh] - r0[oh], w, w, pw, 0, inv[oh])
                n, c, oh = _next_row(n, c, oh, c_, oh_)
        else:
            tmp = _scratch(x, ow_, kw, sw, 1, pw, 0)
            for _ in range(lo, hi):
                _prefetch_ahead(xf, ((n * c_ + c) * h + r0[oh]) * w, sh * w)
                _reduce_rows(SUM, tmp, pw, x[n, c], r0[oh], r1[oh] - r0[oh], 1, 0)
                _reduce_cols(SUM, out[n, c, oh], tmp, 0, sw, kw, 1, inv[oh])
                n, c, oh = _next_row(n, c, oh, c_, oh_)


@helper
def _plane_max(seg, spill):
    """NaN-propagating maximum of the contiguous 1-D ``seg`` (``spill``: ``lanes`` scratch)."""
    lanes = simd.width(seg)
    full = seg.shape[0] - seg.shape[0] % lanes
    acc = simd.splat(seg, -np.inf)
    for i in range(0, full, lanes):
        acc = _nan_max(acc, simd.load(seg, i))
    simd.store(spill, 0, acc)
    m = spill[0]
    for i in range(1, lanes):
        m = nan_max(m, spill[i])
    for i in range(full, seg.shape[0]):
        m = nan_max(m, seg[i])
    return m


@helper
def _windows(size, osize):
    """(start, stop) arrays of the ``osize`` adaptive windows over ``size`` inputs."""
    lo = np.empty(osize, np.intp)
    hi = np.empty(osize, np.intp)
    for i in range(osize):
        lo[i], hi[i] = adaptive_window(i, size, osize)
    return lo, hi


@helper
def _row_tree(mode, orow, tmp, plane, r0, nr, k, identity):
    """``orow[o]`` = the ``mode`` reduction (the mean for SUM) of ``plane[r0 : r0 + nr,
    o * k : (o + 1) * k]`` for every o, when ``k`` (a power of two, at most the lanes) times
    ``orow``'s length is the width of the (H, W) ``plane``.

    The rows' reduction goes to ``tmp`` in whole vectors (``identity`` past W), then halving
    steps combine vector pairs: of each group of 2s lanes of the pair's lanes, the first s
    against the last s, s = k / 2, ..., 1, which leaves the windows in order, one per lane,
    with no scalar work. Every load reads back a whole vector stored at the same offset (store
    forwarding). ``tmp`` must extend a vector past W.
    """
    w_ = plane.shape[1]
    ow_ = orow.shape[0]
    lanes = simd.width(tmp)
    _reduce_rows(mode, tmp, 0, plane, r0, nr, 1, identity)
    nv = _ceil_div(w_, lanes)
    s = k // 2
    while s >= 1:
        half = _ceil_div(nv, 2)
        for i in range(half):
            a = simd.load(tmp, 2 * i * lanes)
            b = simd.load(tmp, (2 * i + 1) * lanes) if 2 * i + 1 < nv else simd.splat(tmp, identity)
            simd.store(tmp, i * lanes, _vop(mode, _firsts(a, b, s), _seconds(a, b, s)))
        nv = half
        s //= 2
    scale = simd.splat(tmp, 1 / tmp.dtype.type(nr * k))
    for o0 in range(0, ow_, lanes):
        acc = simd.load(tmp, o0)
        if mode == SUM:
            acc = simd.mul(acc, scale)
        if ow_ - o0 >= lanes:
            simd.store(orow, o0, acc)
        else:
            simd.store_n(orow, o0, acc, ow_ - o0)


@helper
def _adaptive(mode, out, x):
    n_, c_, h, w = x.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    hs, he = _windows(h, oh_)
    ws, we = _windows(w, ow_)
    identity = 0 if mode == SUM else -np.inf
    rows = n_ * c_ * oh_
    tasks, per = _tasks(rows)
    k = w // ow_
    # Column windows all k wide, k a power of two within a vector: reduced in registers.
    tree = w == k * ow_ and 1 <= k <= simd.width(x[0, 0, 0]) and k & (k - 1) == 0
    xf = x.reshape((x.size,))
    for t in prange(tasks):
        lo, hi = _task_rows(t, rows, per)
        tmp = np.empty(w + simd.width(x[0, 0, 0]), x.dtype)
        n, c, oh = _row_index(lo, c_, oh_)
        for _ in range(lo, hi):
            r0 = hs[oh]
            nr = he[oh] - r0
            orow = out[n, c, oh]
            if ow_ == 1:
                # Full-width windows (global pooling) are one contiguous run of the plane.
                seg = x[n, c].reshape((h * w,))[r0 * w:(r0 + nr) * w]
                if mode != SUM:
                    orow[0] = _plane_max(seg, tmp)
                else:
                    acc = out.dtype.type(0)
                    for i in range(seg.shape[0]):
                        acc += seg[i]
                    orow[0] = acc / out.dtype.type(nr * w)
            elif tree:
                _prefetch_ahead(xf, ((n * c_ + c) * h + r0) * w, nr * w)
                _row_tree(mode, orow, tmp, x[n, c], r0, nr, w // ow_, identity)
            else:
                _reduce_rows(mode, tmp, 0, x[n, c], r0, nr, 1, identity)
                for o in range(ow_):
                    m = tmp[ws[o]]
                    for iw in range(ws[o] + 1, we[o]):
                        m = _sop(mode, m, tmp[iw])
                    orow[o] = m / out.dtype.type(nr * (we[o] - ws[o])) if mode == SUM else m
            n, c, oh = _next_row(n, c, oh, c_, oh_)


@kernel
def adaptive_avg_pool2d(out, x):
    """Adaptive average pooling: output (i, j) averages rows [floor(i*H/OH), ceil((i+1)*H/OH))
    and the columns given by the same rule.

    Parameters
    ----------
    out : (N, C, OH, OW) array, filled in place.
    x : (N, C, H, W) array.
    """
    _adaptive(SUM, out, x)


@kernel
def adaptive_max_pool2d(out, x):
    """Adaptive max pooling over the windows of ``adaptive_avg_pool2d``; NaN propagates.

    Parameters
    ----------
    out : (N, C, OH, OW) array, filled in place.
    x : (N, C, H, W) array.
    """
    _adaptive(MAX, out, x)


# ---------------------------------------------------------------------------------------------
# Backward. Every output's gradient goes to the input elements of its window; windows overlap
# when the stride is below the kernel, so a parallel task owns whole (n, c) planes of the input
# gradient (zeroes them, then adds into them): no two tasks write one element.
# ---------------------------------------------------------------------------------------------

@helper
def _argmax_add(gf, xf, base, r0, nr, rstep, c0, nc, dw, g):
    """``gf[base + i] += g`` at the flat plane index i of the first maximum of ``xf[base:]``
    over the ``nr`` rows ``r0, r0 + rstep, ...`` (flat offsets) and the ``nc`` columns ``c0,
    c0 + dw, ...``, in scan order, or of the last NaN, as PyTorch's max pooling picks its index:
    a tap wins when it is greater than the best so far or NaN, and the first tap holds when
    every value is -inf. A window without taps inside the input (``nr`` or ``nc`` 0, which
    dilation allows) adds nothing: its output is -inf, not an element of the input."""
    if nr == 0 or nc == 0:
        return
    best = r0 + c0
    m = xf.dtype.type(-np.inf)
    for i in range(nr):
        rb = r0 + i * rstep + c0
        for j in range(nc):
            k = rb + j * dw
            v = xf[base + k]
            # Selects, not branches: which tap wins is data-dependent and mispredicts.
            take = (v > m) | (v != v)
            m = v if take else m
            best = k if take else best
    gf[base + best] += g


@helper
def _tap_counts(o_, k, s, p, d, size):
    """(first tap, number of taps inside [0, size)) of each of the ``o_`` windows."""
    first = np.empty(o_, np.intp)
    count = np.empty(o_, np.intp)
    for o in range(o_):
        a, b = _valid_taps(o * s - p, k, d, size)
        first[o] = a
        count[o] = (b - a) // d
    return first, count


@helper
def _out_range(off, sw, ow_, w):
    """Outputs ``o`` in [lo, hi) whose tap at input column ``o * sw + off`` lies in [0, w)."""
    return min(max(0, _ceil_div(-off, sw)), ow_), min(ow_, max(0, _ceil_div(w - off, sw)))


@kernel
def max_pool2d_backward(gx, go, x, kernel, stride, padding, dilation):
    """Gradient of max pooling: each output's gradient goes to its window's arg-max.

    Parameters
    ----------
    gx : (N, C, H, W) array, filled in place.
    go : (N, C, OH, OW) gradient of the pooled output.
    x : (N, C, H, W) the pooled input.
    kernel, stride, padding, dilation : (h, w) int tuples.
    """
    n_, c_, h, w = x.shape
    oh_, ow_ = go.shape[2], go.shape[3]
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    r0, nr = _tap_counts(oh_, kh, sh, ph, dh, h)
    c0, ncol = _tap_counts(ow_, kw, sw, pw, dw, w)
    xf = x.reshape((x.size,))
    gf = gx.reshape((gx.size,))
    gof = go.reshape((go.size,))
    plane = h * w
    for p in prange(n_ * c_):
        base = p * plane
        gf[base:base + plane] = 0
        ob = p * oh_ * ow_
        for oh in range(oh_):
            for ow in range(ow_):
                _argmax_add(gf, xf, base, r0[oh] * w, nr[oh], dh * w, c0[ow], ncol[ow], dw,
                            gof[ob + oh * ow_ + ow])


@kernel
def avg_pool2d_backward(gx, go, kernel, stride, padding, count_include_pad):
    """Gradient of average pooling: each output's gradient over its divisor, added to every
    input element of its window (PyTorch's divisor rules, as the forward).

    Parameters
    ----------
    gx : (N, C, H, W) array, filled in place.
    go : (N, C, OH, OW) gradient of the pooled output.
    kernel, stride, padding : (h, w) int tuples.
    count_include_pad : bool.
    """
    n_, c_, h, w = gx.shape
    oh_, ow_ = go.shape[2], go.shape[3]
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    inv = np.empty((oh_, ow_), gx.dtype)
    r0 = np.empty(oh_, np.intp)
    r1 = np.empty(oh_, np.intp)
    for oh in range(oh_):
        hstart = oh * sh - ph
        r0[oh] = max(hstart, 0)
        r1[oh] = min(hstart + kh, h)
        hcount = min(hstart + kh, h + ph) - hstart if count_include_pad else r1[oh] - r0[oh]
        for o in range(ow_):
            wstart = o * sw - pw
            wend = min(wstart + kw, w + pw)
            wcount = wend - wstart if count_include_pad else min(wend, w) - max(wstart, 0)
            inv[oh, o] = 1 / gx.dtype.type(hcount * wcount)
    # Tap j of output o is input column o * sw - pw + j: outputs [olo[j], ohi[j]) have it inside.
    olo = np.empty(kw, np.intp)
    ohi = np.empty(kw, np.intp)
    for j in range(kw):
        olo[j], ohi[j] = _out_range(j - pw, sw, ow_, w)
    gf = gx.reshape((gx.size,))
    gof = go.reshape((go.size,))
    plane = h * w
    for p in prange(n_ * c_):
        base = p * plane
        gf[base:base + plane] = 0
        ob = p * oh_ * ow_
        for oh in range(oh_):
            grow = gof[ob + oh * ow_:ob + (oh + 1) * ow_]
            irow = inv[oh]
            for ih in range(r0[oh], r1[oh]):
                for j in range(kw):
                    # A loop over outputs per tap: contiguous stores for stride 1.
                    rb = base + ih * w + j - pw
                    for o in range(olo[j], ohi[j]):
                        gf[rb + o * sw] += grow[o] * irow[o]


@kernel
def adaptive_avg_pool2d_backward(gx, go):
    """Gradient of adaptive average pooling.

    Parameters
    ----------
    gx : (N, C, H, W) array, filled in place.
    go : (N, C, OH, OW) gradient of the pooled output.
    """
    n_, c_, h, w = gx.shape
    oh_, ow_ = go.shape[2], go.shape[3]
    hs, he = _windows(h, oh_)
    ws, we = _windows(w, ow_)
    for p in prange(n_ * c_):
        n = p // c_
        c = p - n * c_
        gp = gx[n, c]
        gp[:, :] = 0
        gop = go[n, c]
        for oh in range(oh_):
            for ow in range(ow_):
                v = gop[oh, ow] / gx.dtype.type((he[oh] - hs[oh]) * (we[ow] - ws[ow]))
                for ih in range(hs[oh], he[oh]):
                    xrow = gp[ih]
                    for iw in range(ws[ow], we[ow]):
                        xrow[iw] += v


@kernel
def adaptive_max_pool2d_backward(gx, go, x):
    """Gradient of adaptive max pooling: each output's gradient goes to its window's arg-max
    (first maximum in scan order, the last NaN if any, as PyTorch).

    Parameters
    ----------
    gx : (N, C, H, W) array, filled in place.
    go : (N, C, OH, OW) gradient of the pooled output.
    x : (N, C, H, W) the pooled input.
    """
    n_, c_, h, w = x.shape
    oh_, ow_ = go.shape[2], go.shape[3]
    hs, he = _windows(h, oh_)
    ws, we = _windows(w, ow_)
    xf = x.reshape((x.size,))
    gf = gx.reshape((gx.size,))
    gof = go.reshape((go.size,))
    plane = h * w
    for p in prange(n_ * c_):
        base = p * plane
        gf[base:base + plane] = 0
        ob = p * oh_ * ow_
        for oh in range(oh_):
            for ow in range(ow_):
                _argmax_add(gf, xf, base, hs[oh] * w, he[oh] - hs[oh], w, ws[ow], we[ow] - ws[ow],
                            1, gof[ob + oh * ow_ + ow])
