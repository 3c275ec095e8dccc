"""2-D convolution on the CPU as a tiled implicit GEMM.

For each image and group, ``out[oc, p] = sum_k w[oc, k] * X[k, p]`` with ``k = (ic, kh, kw)``
and ``p`` an output position. The input is copied once per call into a zero-padded workspace
split by stride phase: plane ``(ph, pw)`` of channel ``c`` holds ``xpad[c, q*sh + ph, r*sw + pw]``.
Output positions are numbered over that plane's width ``Wq`` (``p = oh * Wq + ow``), so the
row of X for tap ``(ic, kh, kw)`` is the workspace itself, shifted by a fixed offset: every tap
reads contiguous memory, for any stride and dilation, and no im2col matrix is built. Columns
``ow >= OW`` of that grid are computed and dropped.

Weights are packed into panels of MR output channels (tap-major), cached per tracked weight
array. A register-blocked microkernel written with :mod:`numbaconv.cpu.simd` computes MR channels
x 2 or 3 vectors of positions over all taps with its accumulators in vector registers. Work is
split into tasks of (image, group, chunk of channel blocks, group of position tiles), planned
once per shape and thread count (:func:`_grid_schedule`): each worker gets a contiguous run of
tasks of equal modelled cost, so that 2 workers split even 2 or 5 tiles at batch 1 evenly. A
task sweeps each block's packed weights over its tiles (blocks outer), so the weights are read
from memory once per task rather than once per tile.

Small maps (OH*OW <= ROWS_MAP) take a row path instead: the positions of the whole batch are the
microkernel's rows and the output channels its vectors (:func:`rows_conv`), so a 2x2 map at
batch 8 fills whole vectors rather than 4 of 16 lanes.

Stride 1 without top/left padding reads the input itself. When the workspace would exceed the
input plus output size (padding that dwarfs a tiny image), :func:`_conv_gather` builds bounded
im2col chunks per task instead. :func:`_algorithm` makes that choice.
"""

import functools

import numba
import numpy as np
from numba import prange

from numbaconv._ops import ACT_NONE, ACT_RELU
from numbaconv.cpu import autotune, simd
from numbaconv.cpu._common import apply_act, helper, kernel
from numbaconv.cpu.depthwise import depthwise_conv2d
from numbaconv.cpu.winograd import nonfinite_probe as _nonfinite_probe
from numbaconv.cpu.winograd import winograd_applies, winograd_conv2d
from numbaconv.cpu.gemm import (MR, NVMAX, microkernel, pack, partition, row_microkernel,
                                split_tiles, tile_span)
from numbaconv.cpu.workspace import POOL, WEIGHTS, _Filled

KC = 64  # taps gathered per chunk by the fallback path


@helper
def _store_row(orow, a, bias, rrow, has_res, act, alpha):
    """``orow = act(a + bias (+ rrow))``; one loop per common activation with ``act`` constant,
    so LLVM vectorises it."""
    if has_res:
        for i in range(orow.shape[0]):
            orow[i] = apply_act(a[i] + bias + rrow[i], act, alpha)
    elif act == ACT_NONE:
        for i in range(orow.shape[0]):
            orow[i] = a[i] + bias
    elif act == ACT_RELU:
        for i in range(orow.shape[0]):
            orow[i] = apply_act(a[i] + bias, ACT_RELU, alpha)
    else:
        for i in range(orow.shape[0]):
            orow[i] = apply_act(a[i] + bias, act, alpha)


@helper
def _store(out, res, has_res, n, oc0, nrows, tile, nr, p0, plen, wq, b, has_bias, act, alpha):
    """Write ``act(tile + bias + residual)`` for grid positions [p0, p0 + plen) of output
    channels oc0 .. oc0 + nrows into out[n], dropping the grid's columns ``ow >= OW``."""
    ow_ = out.shape[3]
    oh_lo = p0 // wq
    oh_hi = (p0 + plen - 1) // wq
    zero = out.dtype.type(0)
    for r in range(nrows):
        bias = b[oc0 + r] if has_bias else zero
        for oh in range(oh_lo, oh_hi + 1):
            start = oh * wq
            c0 = max(0, p0 - start)
            c1 = min(ow_, p0 + plen - start)
            if c1 > c0:
                a0 = r * nr + start - p0
                rrow = res[n, oc0 + r, oh, c0:c1] if has_res else out[n, oc0 + r, oh, c0:c0]
                _store_row(out[n, oc0 + r, oh, c0:c1], tile[a0 + c0:a0 + c1], bias, rrow,
                           has_res, act, alpha)


# --------------------------------------------------------------------------------------------
# Main path: phase-split padded workspace, taps read in place
# --------------------------------------------------------------------------------------------

@helper
def _task(t, ntiles, nchunks, chunk, nbg, groups):
    """Decode flat task ``t`` of (image, group, chunk of MR-channel blocks, position tile), tiles
    fastest, so consecutive tasks of a thread reuse the chunk's packed weights from cache.

    Returns (image, group, tile, first block, end block) with blocks counted within the group.
    """
    jt = t % ntiles
    u = t // ntiles
    ch = u % nchunks
    u //= nchunks
    g = u % groups
    return u // groups, g, jt, ch * chunk, min(nbg, (ch + 1) * chunk)


@kernel
def _fill_workspace(ws, x, rph, cph, sh, sw, pt, pl, hq, wq):
    """ws[n, c, plane, q, r] = x[n, c, q*sh + rph[i] - pt, r*sw + cph[l] - pl] (0 outside).

    ``plane = i * len(cph) + l`` runs over the row phases rph and column phases cph the kernel's
    taps use. ws is flat and may be longer than needed.
    """
    n_, c_, h, w = x.shape
    npr = rph.shape[0]
    npc = cph.shape[0]
    zero = ws.dtype.type(0)
    rows = n_ * c_ * npr * npc * hq
    for t in prange(rows):
        q = t % hq
        u = t // hq
        l = u % npc
        u //= npc
        i = u % npr
        nc = u // npr
        c = nc % c_
        n = nc // c_
        dst = ws[t * wq:(t + 1) * wq]
        ih = q * sh + rph[i] - pt
        if ih < 0 or ih >= h:
            dst[:] = zero
            continue
        off = cph[l] - pl
        # Columns r whose source r*sw + off lies in [0, w): ceil divisions, off may be < 0.
        lo = min(wq, max(0, -(off // sw)))
        hi = max(lo, min(wq, -((off - w) // sw)))
        for r in range(lo):
            dst[r] = zero
        src = x[n, c, ih]
        if sw == 1:
            seg = src[lo + off:hi + off]
            d = dst[lo:hi]
            for r in range(hi - lo):
                d[r] = seg[r]
        else:
            for r in range(lo, hi):
                dst[r] = src[r * sw + off]
        for r in range(hi, wq):
            dst[r] = zero


@kernel
def _conv_grid(out, src, cstride, wq, cg, ap, nbg, tasks, soff, kofs, groups, b, has_bias, res,
               has_res, act, alpha):
    """Implicit-GEMM conv reading taps in place from ``src``.

    Parameters
    ----------
    out : (N, OC, OH, OW) array, filled in place.
    src : flat input laid out as (N, C, cstride), each channel a grid of width wq.
    cg : input channels per group.
    ap : packed weights from :func:`_pack`, ``nbg`` blocks of MR channels per group.
    tasks, soff : tasks from :func:`_grid_schedule`: rows (image * groups + group, first block,
        end block, first tile, end tile); worker k runs rows soff[k] .. soff[k + 1].
    kofs : (K,) int64, offset of tap k in a channel-group's input relative to the output
        position p = oh * wq + ow; K = cg * KH * KW.
    b, res : bias (OC,) and residual (shaped as out), used when has_bias / has_res.
    """
    n_, oc_, oh_, ow_ = out.shape
    k_ = kofs.shape[0]
    ocg = oc_ // groups
    lanes = simd.width(src)
    nr = NVMAX * lanes
    npos = (oh_ - 1) * wq + ow_
    n3, n2 = split_tiles(npos, lanes)
    c_ = cg * groups
    for wk in prange(soff.shape[0] - 1):
        tile = np.empty(MR * nr, dtype=out.dtype)
        for t in range(soff[wk], soff[wk + 1]):
            u = tasks[t, 0]
            n = u // groups
            g = u - n * groups
            # Blocks outer, tiles inner: a block's packed weights stay in L1/L2 while they
            # sweep the task's tiles, whose input stays in L2 (SRC_BYTES).
            for ob in range(tasks[t, 1], tasks[t, 2]):
                for jt in range(tasks[t, 3], tasks[t, 4]):
                    p0, plen = tile_span(jt, n3, npos, lanes)
                    microkernel(tile, ap, (g * nbg + ob) * k_ * MR, src,
                                (n * c_ + g * cg) * cstride + p0, kofs, 0, k_, plen, 0)
                    _store(out, res, has_res, n, g * ocg + ob * MR, min(MR, ocg - ob * MR),
                           tile, nr, p0, plen, wq, b, has_bias, act, alpha)


# --------------------------------------------------------------------------------------------
# Fallback: per-task im2col chunks with bounds checks, no workspace
# --------------------------------------------------------------------------------------------

@kernel
def _conv_gather(out, x, ap, nbg, chunk, groups, kh_, kw_, sh, sw, pt, pl, dh, dw, b, has_bias,
                 res, has_res, act, alpha):
    """Implicit-GEMM conv that gathers KC taps x one tile of positions at a time into a local
    buffer, for shapes where the padded workspace would outgrow input + output.

    Parameters as :func:`_conv_grid`, with x (N, C, H, W) read directly.
    """
    n_, c_, h, w = x.shape
    _, oc_, oh_, ow_ = out.shape
    ocg = oc_ // groups
    cg = c_ // groups
    taps = kh_ * kw_
    k_ = cg * taps
    lanes = simd.width(ap)
    nr = NVMAX * lanes
    npos = oh_ * ow_
    n3, n2 = split_tiles(npos, lanes)
    ntiles = n3 + n2
    nchunks = (nbg + chunk - 1) // chunk
    # Tap k of a chunk sits at row k % KC of the gather buffer.
    kofs = np.empty(k_, dtype=np.int64)
    for k in range(k_):
        kofs[k] = (k % KC) * nr
    zero = out.dtype.type(0)
    for t in prange(n_ * groups * nchunks * ntiles):
        n, g, jt, ob0, ob1 = _task(t, ntiles, nchunks, chunk, nbg, groups)
        p0, plen = tile_span(jt, n3, npos, lanes)
        accs = np.empty((ob1 - ob0) * MR * nr, dtype=out.dtype)
        buf = np.empty(KC * nr, dtype=out.dtype)
        for k0 in range(0, k_, KC):
            k1 = min(k_, k0 + KC)
            for k in range(k0, k1):
                ic = k // taps
                kh = (k - ic * taps) // kw_
                kw = k - ic * taps - kh * kw_
                xc = x[n, g * cg + ic]
                row = buf[(k - k0) * nr:(k - k0 + 1) * nr]
                for i in range(plen):
                    p = p0 + i
                    oh = p // ow_
                    ih = oh * sh - pt + kh * dh
                    iw = (p - oh * ow_) * sw - pl + kw * dw
                    if ih >= 0 and ih < h and iw >= 0 and iw < w:
                        row[i] = xc[ih, iw]
                    else:
                        row[i] = zero
            for ob in range(ob0, ob1):
                tile = accs[(ob - ob0) * MR * nr:(ob - ob0 + 1) * MR * nr]
                microkernel(tile, ap, (g * nbg + ob) * k_ * MR, buf, 0, kofs, k0, k1, plen,
                             1 if k0 > 0 else 0)
        for ob in range(ob0, ob1):
            _store(out, res, has_res, n, g * ocg + ob * MR, min(MR, ocg - ob * MR),
                   accs[(ob - ob0) * MR * nr:(ob - ob0 + 1) * MR * nr], nr, p0, plen, ow_, b,
                   has_bias, act, alpha)


# --------------------------------------------------------------------------------------------
# Small maps: output positions of the whole batch as rows, output channels as vectors
# --------------------------------------------------------------------------------------------
#
# On a 4x4 or 2x2 map the position-vectorised kernels above fill 16 or 4 of a tile's lanes per
# image (plus the grid's halo). Here the N*OH*OW positions of the batch are the microkernel's
# rows (MR per call) and the output channels its vectors: the input is copied once to NHWC with
# one extra zero pixel, and a table gives, per (tap, position), the pixel that tap reads (or
# the zero pixel), so a row's reduction runs over contiguous channels. Weights are packed into
# panels of 3 or 2 vectors of output channels, tap-major (:func:`_pack_rows`).

ROWS_MAP = 64  # largest OH*OW taken by the row path (measured: beyond it the grid path wins)
PBG = 16  # position blocks (of MR) per task: their accumulators stay in L1/L2


@kernel
def _fill_nhwc(xs, x):
    """``xs[((n*H + h)*W + w)*C + c] = x[n, c, h, w]``, then C zeros (the zero pixel)."""
    n_, c_, h, w = x.shape
    zero = xs.dtype.type(0)
    for t in prange(n_ * h):
        n = t // h
        i = t - n * h
        base = t * w * c_
        for j in range(w):
            dst = xs[base + j * c_:base + (j + 1) * c_]
            for c in range(c_):
                dst[c] = x[n, c, i, j]
    tail = xs[n_ * h * w * c_:(n_ * h * w + 1) * c_]
    for c in range(c_):
        tail[c] = zero


PACK_CB = 16  # input channels per packing task: its share of a panel stays in L1


@kernel
def _pack_rows(wp, w3, tofs, swap):
    """Row-path panels: ``wp[p0*K + (t*CIN + c)*bw + j]`` is the weight from input channel c to
    output channel p0 + j at tap t, for the output-channel tiles of :func:`split_tiles` (bw = 3
    or 2 vectors; zero past the last channel); K = taps * CIN. ``w3`` is the weight with its
    spatial dims flattened, tap t at ``tofs[t]``: ``swap`` 0: ``w3[oc, c, s]``; 1: ``w3[c, oc,
    s]`` (the data gradient, whose output channels are the forward's input channels). A task
    packs PACK_CB input channels of one tile, reading w's rows contiguously."""
    lanes = simd.width(wp)
    cout = w3.shape[1] if swap else w3.shape[0]
    cin = w3.shape[0] if swap else w3.shape[1]
    nt = tofs.shape[0]
    k_ = nt * cin
    n3, n2 = split_tiles(cout, lanes)
    ncb = (cin + PACK_CB - 1) // PACK_CB
    zero = wp.dtype.type(0)
    for task in prange((n3 + n2) * ncb):
        jt = task // ncb
        c0 = (task - jt * ncb) * PACK_CB
        c1 = min(cin, c0 + PACK_CB)
        p0, plen = tile_span(jt, n3, cout, lanes)
        bw = 3 * lanes if jt < n3 else 2 * lanes
        base = p0 * k_
        for t in range(nt):
            for c in range(c0, c1):
                dst = wp[base + (t * cin + c) * bw:base + (t * cin + c + 1) * bw]
                for j in range(plen, bw):
                    dst[j] = zero
        for j in range(plen):
            for c in range(c0, c1):
                src = w3[c, p0 + j] if swap else w3[p0 + j, c]
                o = base + c * bw + j
                for t in range(nt):
                    wp[o + t * cin * bw] = src[tofs[t]]


@kernel
def _conv_rows(out, xs, wp, rtab, ppad, ntap, cin, tasks, soff, tpc, b, has_bias, res, has_res,
               act, alpha, accs):
    """Conv by the row microkernel.

    Parameters
    ----------
    out : (N, OC, OH, OW) array (any strides), filled in place.
    xs : the input as NHWC plus a zero pixel (:func:`_fill_nhwc`), flat.
    wp : panels from :func:`_pack_rows`, CIN = ``cin`` input channels, ``ntap`` taps.
    rtab : (ntap * ppad,) int64, offset in xs of the pixel tap t reads for position p (n, oh, ow
        batch-major) at ``t*ppad + p``; the zero pixel where it falls in the padding or
        p >= N*OH*OW. ppad is a multiple of MR.
    tasks, soff : rows (output-channel tile, first position block, end block); worker k runs rows
        soff[k] .. soff[k + 1].
    tpc : taps per reduction chunk (a chunk's panel stays in L2 while it sweeps the blocks).
    b, res : bias (OC,) and residual (shaped as out), used when has_bias / has_res.
    accs : flat scratch of (workers = len(soff) - 1) * PBG * MR * NVMAX * lanes elements,
        pooled by the caller (allocated inside the kernel, it cost an allocation every call).
    """
    n_, oc_, oh_, ow_ = out.shape
    lanes = simd.width(wp)
    nr = NVMAX * lanes
    ohw = oh_ * ow_
    npos = n_ * ohw
    n3, n2 = split_tiles(oc_, lanes)
    k_ = ntap * cin
    zero = out.dtype.type(0)
    for wk in prange(soff.shape[0] - 1):
        acc = accs[wk * PBG * MR * nr:(wk + 1) * PBG * MR * nr]
        for ti in range(soff[wk], soff[wk + 1]):
            jt = tasks[ti, 0]
            pb0 = tasks[ti, 1]
            pb1 = tasks[ti, 2]
            p0, plen = tile_span(jt, n3, oc_, lanes)
            for t0 in range(0, ntap, tpc):
                t1 = min(ntap, t0 + tpc)
                for pb in range(pb0, pb1):
                    a = (pb - pb0) * MR * nr
                    row_microkernel(acc[a:a + MR * nr], wp, p0 * k_, jt < n3, xs, rtab, pb * MR,
                                    ppad, t0, t1, cin, 1 if t0 > 0 else 0)
            for pb in range(pb0, pb1):
                for r in range(min(MR, npos - pb * MR)):
                    p = pb * MR + r
                    n = p // ohw
                    s = p - n * ohw
                    oh = s // ow_
                    ow = s - oh * ow_
                    a = ((pb - pb0) * MR + r) * nr
                    for j in range(plen):
                        v = acc[a + j] + (b[p0 + j] if has_bias else zero)
                        if has_res:
                            v += res[n, p0 + j, oh, ow]
                        out[n, p0 + j, oh, ow] = apply_act(v, act, alpha)


def rows_applies(x_shape, oc, out_shape, groups):
    """Whether the row path (small maps, ungrouped) should run this conv: OH*OW <= ROWS_MAP,
    SIMD vectors, and its NHWC copy within the input + output size."""
    n_, c_ = x_shape[0], x_shape[1]
    return (groups == 1 and simd.LANES > 1 and out_shape[2] * out_shape[3] <= ROWS_MAP
            and n_ * out_shape[2] * out_shape[3] > 0 and oc > 0 and c_ > 0
            and c_ <= n_ * oc * out_shape[2] * out_shape[3])


@functools.lru_cache(maxsize=256)
def _rows_table(n_, h, w, c_, oh_, ow_, sh, sw, roffs, coffs):
    """(rtab, ppad) of :func:`_conv_rows` for input rows ``oh*sh + roffs[i]`` and columns
    ``ow*sw + coffs[j]`` (read-only, cached)."""
    npos = n_ * oh_ * ow_
    ppad = -(-npos // MR) * MR
    p = np.arange(ppad)
    img, s = p // (oh_ * ow_), p % (oh_ * ow_)
    q, r = s // ow_, s % ow_
    tab = np.full((len(roffs) * len(coffs), ppad), n_ * h * w * c_, np.int64)
    for i, ro in enumerate(roffs):
        for j, co in enumerate(coffs):
            ih, iw = q * sh + ro, r * sw + co
            ok = (p < npos) & (ih >= 0) & (ih < h) & (iw >= 0) & (iw < w)
            tab[i * len(coffs) + j, ok] = (((img * h + ih) * w + iw) * c_)[ok]
    tab = tab.reshape(-1)
    tab.flags.writeable = False
    return tab, ppad


@functools.lru_cache(maxsize=256)
def _rows_schedule(oc_, ppad, lanes, nwk):
    """(tasks (T, 3) int64, soff) of :func:`_conv_rows`: (channel tile, position-block run) in
    tile-major order, runs of at most PBG blocks, short enough to give each worker several, split
    into contiguous shares of equal cost (vectors x blocks)."""
    n3, n2 = split_tiles.py_func(oc_, lanes)
    nblk = ppad // MR
    per = min(PBG, nblk)
    while per > 1 and (n3 + n2) * -(-nblk // per) < 4 * nwk:
        per = -(-per // 2)
    rows, costs = [], []
    for jt in range(n3 + n2):
        for b0 in range(0, nblk, per):
            rows.append((jt, b0, min(nblk, b0 + per)))
            costs.append((3 if jt < n3 else 2) * (min(nblk, b0 + per) - b0))
    offs, _ = partition(costs, nwk)
    tasks = np.array(rows, np.int64).reshape(-1, 3)
    tasks.flags.writeable = False
    offs.flags.writeable = False
    return tasks, offs


def rows_panels(w, rows, cols, swap, dtype):
    """The packed weights of :func:`rows_conv` (a context manager; cached for tracked ``w``)."""
    lanes = simd.lanes_of(dtype)
    cout, cin = (w.shape[1], w.shape[0]) if swap else (w.shape[0], w.shape[1])
    n3, n2 = split_tiles.py_func(cout, lanes)
    size = (3 * n3 + 2 * n2) * lanes * len(rows) * len(cols) * cin
    tofs = np.array([i * w.shape[3] + j for i in rows for j in cols], np.int64)
    w3 = w.reshape(w.shape[0], w.shape[1], -1)
    return WEIGHTS.transformed(w, ("rows", lanes, tuple(rows), tuple(cols), swap), size, dtype,
                               lambda wp: _pack_rows(wp, w3, tofs, swap))


def rows_input(x):
    """A pooled NHWC copy of ``x`` plus a zero pixel, for :func:`rows_conv` (context manager)."""
    n_, c_, h, w = x.shape
    return _Filled(POOL.buffer((n_ * h * w + 1) * c_, x.dtype), lambda xs: _fill_nhwc(xs, x))


def rows_conv(out, xs, x_shape, wp, ntap, stride, roffs, coffs, b, residual, act, alpha):
    """Conv on the row path: ``out[n, o, oh, ow] = act(b[o] + residual + sum_{t, c} x[n, c,
    oh*sh + roffs[i], ow*sw + coffs[j]] * W[t][c, o])`` with t = (i, j), zero outside x.

    Parameters
    ----------
    out : (N, OC, OH, OW) array (any strides), filled in place.
    xs, x_shape : :func:`rows_input` of the input and the input's (N, C, H, W).
    wp : :func:`rows_panels`, ``ntap = len(roffs) * len(coffs)`` taps.
    stride : (sh, sw). roffs, coffs : tuples of int, each tap's row / column offset.
    b : (OC,) or None. residual : shaped as out, or None. act, alpha : epilogue activation.
    """
    n_, c_, h, w = x_shape
    oc_, oh_, ow_ = out.shape[1], out.shape[2], out.shape[3]
    rtab, ppad = _rows_table(n_, h, w, c_, oh_, ow_, stride[0], stride[1], tuple(roffs),
                             tuple(coffs))
    lanes = simd.lanes_of(out.dtype)
    tasks, soff = _rows_schedule(oc_, ppad, lanes, numba.get_num_threads())
    # Chunks of taps whose panel share (one output-channel tile) stays within L2.
    tpc = max(1, (1 << 20) // (c_ * NVMAX * lanes * out.dtype.itemsize))
    has_bias, has_res = b is not None, residual is not None
    with POOL.buffer((soff.shape[0] - 1) * PBG * MR * NVMAX * lanes, out.dtype) as accs:
        _conv_rows(out, xs, wp, rtab, ppad, ntap, c_, tasks, soff, tpc,
                   b if has_bias else _NO_BIAS[out.dtype], has_bias,
                   residual if has_res else _NO_RES[out.dtype], has_res, act, alpha, accs)


def rows_conv2d(out, x, w, b, residual, stride, padding, dilation, act, alpha):
    """Ungrouped conv2d on the row path (small maps); arguments as :func:`conv2d`."""
    kh_, kw_ = w.shape[2], w.shape[3]
    (pt, pl), (dh, dw) = padding, dilation
    roffs = tuple(i * dh - pt for i in range(kh_))
    coffs = tuple(j * dw - pl for j in range(kw_))
    with rows_panels(w, tuple(range(kh_)), tuple(range(kw_)), 0, out.dtype) as wp, \
            rows_input(x) as xs:
        rows_conv(out, xs, x.shape, wp, kh_ * kw_, stride, roffs, coffs, b, residual, act,
                  alpha)


# --------------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------------

# Stand-ins for a missing bias or residual, one per dtype, so that None allocates nothing.
_NO_BIAS = {np.dtype(t): np.empty(0, t) for t in (np.float32, np.float64)}
_NO_RES = {np.dtype(t): np.empty((0, 0, 0, 0), t) for t in (np.float32, np.float64)}


@functools.lru_cache(maxsize=256)
def _plan(cg, kh_, kw_, sh, sw, dh, dw, hq, wq):
    """Phases used by the taps and each tap's offset in the workspace (cached: not to be written).

    With stride 1 there is a single plane, so this also serves the input read in place.
    """
    rph = np.unique((np.arange(kh_) * dh) % sh)
    cph = np.unique((np.arange(kw_) * dw) % sw)
    plane = hq * wq
    cstride = len(rph) * len(cph) * plane
    ic = np.arange(cg)[:, None, None]
    kh = np.arange(kh_)[None, :, None] * dh
    kw = np.arange(kw_)[None, None, :] * dw
    pidx = np.searchsorted(rph, kh % sh) * len(cph) + np.searchsorted(cph, kw % sw)
    kofs = (ic * cstride + pidx * plane + (kh // sh) * wq + kw // sw).reshape(-1).astype(np.int64)
    return rph.astype(np.int64), cph.astype(np.int64), kofs, cstride


def _algorithm(x, out, kh_, kw_, stride, padding, dilation):
    """Pick the path: ('inplace' | 'workspace' | 'gather', hq, wq, workspace size)."""
    n_, c_, h, w = x.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    (sh, sw), (pt, pl), (dh, dw) = stride, padding, dilation
    # Extent of the padded input the taps actually touch (bottom/right padding from out's shape).
    hp = (oh_ - 1) * sh + dh * (kh_ - 1) + 1
    wp = (ow_ - 1) * sw + dw * (kw_ - 1) + 1
    if sh == 1 and sw == 1 and pt == 0 and pl == 0 and hp <= h and wp <= w:
        return "inplace", h, w, 0
    hq = -(-hp // sh)
    wq = -(-wp // sw)
    nplanes = len({(k * dh) % sh for k in range(kh_)}) * len({(k * dw) % sw for k in range(kw_)})
    size = n_ * c_ * nplanes * hq * wq
    if size > x.size + out.size:
        return "gather", 0, 0, 0
    return "workspace", hq, wq, size


def _chunk(tiles, nbg):
    """Channel blocks per task: all of a group's, unless that leaves too few tasks to keep every
    thread busy (batch 1, small images), then fewer."""
    want = 4 * numba.get_num_threads()
    nchunks = min(nbg, -(-want // max(tiles, 1)))
    return -(-nbg // nchunks)


SRC_BYTES = 1 << 20  # input a task's tiles span, swept once per block of weights (in L2)


@functools.lru_cache(maxsize=256)
def _grid_schedule(units, nbg, npos, lanes, pos_bytes, halo, plane, nwk, wbytes):
    """Tasks of :func:`_conv_grid` and each worker's share of them.

    ``units`` (image, group) pairs of ``nbg`` MR-channel blocks each; ``npos`` grid positions
    in tiles of 3 or 2 vectors (:func:`split_tiles`). Tiles are grouped so that the input a
    group reads (``pos_bytes`` per grid position, over its positions plus ``halo`` more, at
    most a ``plane`` of them) stays within SRC_BYTES. Workers split whichever is bigger, the
    input or the packed weights (``wbytes``): the tiles (a worker's run of tiles, cut inside a
    tile by its blocks where the shares meet) or the channel blocks (as few chunks as give
    every worker an equal share). Costs: vectors x blocks. Returns (tasks (T, 5) int64, soff
    (nwk + 1,) int64), read-only.
    """
    n3, n2 = split_tiles.py_func(npos, lanes)
    tcost = np.array([3.0] * n3 + [2.0] * n2)
    ntiles = n3 + n2
    nr = NVMAX * lanes
    per = 1
    while per < ntiles and pos_bytes * min((per + 1) * nr + halo, plane) <= SRC_BYTES:
        per += 1
    if units * pos_bytes * plane > wbytes:
        tasks, offs = _split_tiles(units, nbg, tcost, per, nwk)
    else:
        tasks, offs = _split_blocks(units, nbg, tcost, per, nwk)
    tasks = np.array(tasks, dtype=np.int64).reshape(-1, 5)
    offs = np.array(offs, dtype=np.int64)
    tasks.flags.writeable = False
    offs.flags.writeable = False
    return tasks, offs


def _split_blocks(units, nbg, tcost, per, nwk):
    """(unit, tile group, chunk of blocks) tasks, chunks fastest, in contiguous shares."""
    ntiles = len(tcost)
    ngrp = -(-ntiles // per)
    tb = [ntiles * i // ngrp for i in range(ngrp + 1)]
    gcost = [tcost[tb[i]:tb[i + 1]].sum() for i in range(ngrp)]
    best = None
    for nch in range(1, nbg + 1):
        cb = [nbg * i // nch for i in range(nch + 1)]
        rows = [(u, cb[c], cb[c + 1], tb[i], tb[i + 1])
                for u in range(units) for i in range(ngrp) for c in range(nch)]
        costs = [gcost[i] * (cb[c + 1] - cb[c])
                 for u in range(units) for i in range(ngrp) for c in range(nch)]
        offs, span = partition(costs, nwk)
        if best is None or span < best[2] * 0.999:
            best = (rows, offs, span)
        if span <= 1.02 * sum(costs) / nwk:
            break
    return best[0], best[1]


def _split_tiles(units, nbg, tcost, per, nwk):
    """Each worker a contiguous run of the (unit, tile, block) sequence of equal cost, as tasks:
    groups of up to ``per`` whole tiles, and the blocks of a tile cut where two runs meet."""
    ntiles = len(tcost)
    # Cost before (unit, tile, block) = unit * ucost + tcum[tile] + block * tcost[tile].
    tcum = np.concatenate([[0.0], np.cumsum(tcost * nbg)])
    ucost = tcum[-1]
    cuts = [0]
    for k in range(1, nwk):
        target = units * ucost * k / nwk
        u = min(units - 1, int(target // ucost))
        rem = target - u * ucost
        jt = min(ntiles - 1, int(np.searchsorted(tcum, rem, side="right")) - 1)
        ob = min(nbg, int(round((rem - tcum[jt]) / tcost[jt])))
        cuts.append(max(cuts[-1], (u * ntiles + jt) * nbg + ob))
    cuts.append(units * ntiles * nbg)
    rows, offs = [], [0]
    for k in range(nwk):
        f, f1 = cuts[k], cuts[k + 1]
        while f < f1:
            u, r = divmod(f, ntiles * nbg)
            jt, ob = divmod(r, nbg)
            if ob > 0 or f1 - f < nbg:  # part of a tile's blocks
                e = min(f1, f - ob + nbg)
                rows.append((u, ob, ob + e - f, jt, jt + 1))
                f = e
                continue
            nfull = min((f1 - f) // nbg, ntiles - jt)
            for g0 in range(0, nfull, per):
                rows.append((u, 0, nbg, jt + g0, jt + min(nfull, g0 + per)))
            f += nfull * nbg
        offs.append(len(rows))
    return rows, offs


def _drop_unread(x, kshape, oshape, stride, padding, dilation):
    """``(x, stride, padding)`` of the same convolution over only the input rows and columns
    its windows read, where a stride above 2 and longer than the kernel's extent skips some:
    each window's rows (columns) in a row of their own, zeros for padding, and the stride the
    extent. The copy is at most a third of the input (plus padding).

    Scratch then stays within the input's size whatever the stride: the depthwise rows path's
    held every input row between a task's first and last window and a column phase per unit
    of stride (a 1x1 kernel at stride 3999 on a 4000x4000 image asked for 7 GB), the dense
    rows path's a copy of the whole input. Stride 2 (ResNet's 1x1 downsampling) keeps its
    tuned paths, which need no copy.
    """
    exts = [(k - 1) * d + 1 for k, d in zip(kshape, dilation)]
    if all(s <= max(e, 2) for s, e in zip(stride, exts)):
        return x, stride, padding
    rows, cols = np.arange(x.shape[2]), np.arange(x.shape[3])
    stride, padding = list(stride), list(padding)
    for axis, ext in enumerate(exts):
        if stride[axis] <= max(ext, 2):
            continue
        idx = (np.arange(oshape[axis])[:, None] * stride[axis] - padding[axis]
               + np.arange(ext)[None, :]).ravel()
        if axis == 0:
            rows = idx
        else:
            cols = idx
        stride[axis], padding[axis] = ext, 0
    keep_r = (rows >= 0) & (rows < x.shape[2])
    keep_c = (cols >= 0) & (cols < x.shape[3])
    compact = np.zeros(x.shape[:2] + (rows.shape[0], cols.shape[0]), x.dtype)
    compact[:, :, np.flatnonzero(keep_r)[:, None], np.flatnonzero(keep_c)[None, :]] = \
        x[:, :, rows[keep_r][:, None], cols[keep_c][None, :]]
    return compact, tuple(stride), tuple(padding)


def conv2d(out, x, w, b, residual, stride, padding, dilation, groups, act, alpha):
    """2-D cross-correlation with bias, residual and a fused activation, as torch's conv2d.

    Runs the implicit GEMM, the depthwise kernel when every group has one input channel,
    Winograd F(4x4, 3x3) for float32 3x3 stride-1 convs with finite inputs, or the row path for
    small float32 maps (:func:`rows_conv2d`), as :mod:`numbaconv.cpu.autotune` picks (a shape heuristic
    unless ``NUMBACONV_AUTOTUNE=1``).

    Parameters
    ----------
    out : (N, OC, OH, OW) array, filled in place; its shape sets the bottom/right padding.
    x : (N, C, H, W) array.
    w : (OC, C // groups, KH, KW) array.
    b : (OC,) array or None.
    residual : array shaped as out, or None; added after the bias, before the activation.
    stride, padding, dilation : (h, w) int tuples; padding is (top, left).
    groups : int.
    act : numbaconv._ops.ACT_* code applied last; alpha its parameter.
    """
    x, stride, padding = _drop_unread(x, w.shape[2:], out.shape[2:], stride, padding, dilation)
    depthwise = groups == x.shape[1] and w.shape[1] == 1
    # float64 takes neither Winograd nor the row path: it is the precision mode (Winograd's
    # transforms add rounding), and with one algorithm its results do not depend on the input's
    # size, so a tiled or distributed conv equals the whole-image one exactly.
    single = out.dtype == np.float32
    wino = (single and not depthwise and w.shape[2] == 3 and w.shape[3] == 3
            and stride == (1, 1) and dilation == (1, 1) and groups == 1)
    rows = single and not depthwise and rows_applies(x.shape, w.shape[0], out.shape, groups)
    if not autotune.enabled():
        # The heuristic: no candidates to time, so nothing to build per call.
        if depthwise:
            depthwise_conv2d(out, x, w, b, residual, stride, padding, dilation, act, alpha)
        elif (wino and winograd_applies(x.shape, out.shape, padding, out.dtype)
              and winograd_conv2d(out, x, w, b, residual, padding, act, alpha, finite_only=True)):
            pass
        elif rows:
            rows_conv2d(out, x, w, b, residual, stride, padding, dilation, act, alpha)
        else:
            gemm_conv2d(out, x, w, b, residual, stride, padding, dilation, groups, act, alpha)
        return
    args = (out, x, w, b, residual, stride, padding, dilation, groups, act, alpha)
    runs = {"gemm": lambda: gemm_conv2d(*args)}
    default = "gemm"
    if depthwise:
        runs["depthwise"] = lambda: depthwise_conv2d(out, x, w, b, residual, stride, padding,
                                                     dilation, act, alpha)
        default = "depthwise"
    elif rows:
        runs["rows"] = lambda: rows_conv2d(out, x, w, b, residual, stride, padding, dilation, act,
                                           alpha)
        default = "rows"
    if wino and not depthwise:
        applies = winograd_applies(x.shape, out.shape, padding, out.dtype)
        # Winograd's transforms would spread a NaN or Inf to a whole 4x4 output tile; the scan
        # runs only where Winograd is a candidate at all.
        if _all_finite(x) and _weight_finite(w):
            runs["winograd"] = lambda: winograd_conv2d(out, x, w, b, residual, padding, act,
                                                       alpha)
            if applies:
                default = "winograd"
    key = ("conv2d", x.shape, w.shape, out.shape, stride, padding, dilation, groups, out.dtype.str)
    runs[autotune.choose(key, runs, default)]()


def _all_finite(a):
    return bool(np.isfinite(_nonfinite_probe(a.reshape(-1))))


def _weight_finite(w):
    """:func:`_all_finite` for a weight, kept in the weight cache like its transforms, so a
    tracked weight is scanned once per version rather than on every call."""
    with WEIGHTS.transformed(w, ("finite",), 1, np.float64,
                             lambda f: f.__setitem__(0, _nonfinite_probe(w.reshape(-1)))) as f:
        return bool(np.isfinite(f[0]))


def gemm_conv2d(out, x, w, b, residual, stride, padding, dilation, groups, act, alpha):
    """2-D cross-correlation as an implicit GEMM on the SIMD microkernel, for any geometry.

    Arguments as :func:`conv2d`.
    """
    has_bias = b is not None
    b = b if has_bias else _NO_BIAS[out.dtype]
    has_res = residual is not None
    res = residual if has_res else _NO_RES[out.dtype]
    key = (x.shape, w.shape, out.shape, out.dtype, stride, padding, dilation, groups,
           numba.get_num_threads())
    g = _GEMM_PLANS.get(key)
    if g is None:
        g = _gemm_plan(x, w, out, stride, padding, dilation, groups)
        if len(_GEMM_PLANS) >= 1024:
            _GEMM_PLANS.clear()
        _GEMM_PLANS[key] = g
    path, size, nbg, k_, chunk, cstride, wq, kofs, rph, cph, hq, tasks, soff = g
    (sh, sw), (pt, pl), (dh, dw) = stride, padding, dilation
    with WEIGHTS.transformed(w, ("panels", MR), groups * nbg * k_ * MR, out.dtype,
                             lambda ap: pack(ap, w.reshape(w.shape[0], k_), groups, nbg)) as ap:
        if path == "gather":
            _conv_gather(out, x, ap, nbg, chunk, groups, w.shape[2], w.shape[3], sh, sw, pt, pl,
                         dh, dw, b, has_bias, res, has_res, act, alpha)
        elif path == "inplace":
            _conv_grid(out, x.reshape(-1), cstride, wq, w.shape[1], ap, nbg, tasks, soff, kofs,
                       groups, b, has_bias, res, has_res, act, alpha)
        else:
            with POOL.buffer(size, out.dtype) as ws:
                _fill_workspace(ws, x, rph, cph, sh, sw, pt, pl, hq, wq)
                _conv_grid(out, ws, cstride, wq, w.shape[1], ap, nbg, tasks, soff, kofs, groups,
                           b, has_bias, res, has_res, act, alpha)


_GEMM_PLANS = {}  # (shapes, dtype, geometry, threads) -> _gemm_plan(...)


def _gemm_plan(x, w, out, stride, padding, dilation, groups):
    """Everything :func:`gemm_conv2d` derives from the shapes: (path, workspace size, blocks per
    group, taps, chunk (gather), channel stride, grid width, tap offsets, phases, hq, tasks,
    soff)."""
    oc_, cg, kh_, kw_ = w.shape
    k_ = cg * kh_ * kw_
    path, hq, wq, size = _algorithm(x, out, kh_, kw_, stride, padding, dilation)
    (sh, sw), (dh, dw) = stride, dilation
    nbg = -(-(oc_ // groups) // MR)
    if path == "gather":
        lanes = simd.lanes_of(out.dtype)
        tiles = x.shape[0] * groups * -(-(out.shape[2] * out.shape[3]) // (NVMAX * lanes))
        return path, size, nbg, k_, _chunk(tiles, nbg), 0, 0, None, None, None, 0, None, None
    rph, cph, kofs, cstride = _plan(cg, kh_, kw_, sh, sw, dh, dw, hq, wq)
    tasks, soff = _schedule(x.shape[0], groups, nbg, out, cg, rph, cph, kh_, kw_, sh, dh, hq,
                            wq)
    return path, size, nbg, k_, 0, cstride, wq, kofs, rph, cph, hq, tasks, soff


def _schedule(n_, groups, nbg, out, cg, rph, cph, kh_, kw_, sh, dh, hq, wq):
    """:func:`_grid_schedule` for a call: input bytes per grid position (all phase planes), the
    positions of halo the taps add below a group of tiles, and the packed weights' bytes."""
    lanes = simd.lanes_of(out.dtype)
    halo = ((kh_ - 1) * dh // sh + 1) * wq
    itemsize = out.dtype.itemsize
    return _grid_schedule(n_ * groups, nbg, (out.shape[2] - 1) * wq + out.shape[3], lanes,
                          cg * len(rph) * len(cph) * itemsize, halo, hq * wq,
                          numba.get_num_threads(), groups * nbg * MR * cg * kh_ * kw_ * itemsize)
