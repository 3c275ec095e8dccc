"""2-D convolution on the CPU as a tiled implicit GEMM.

For each image and group, ``out[oc, p] = sum_k w[oc, k] * X[k, p]`` with ``k = (ic, kh, kw)``
and ``p`` an output position. The input is copied once per call into a zero-padded workspace
split by stride phase: plane ``(ph, pw)`` of channel ``c`` holds ``xpad[c, q*sh + ph, r*sw + pw]``.
Output positions are numbered over that plane's width ``Wq`` (``p = oh * Wq + ow``), so the
row of X for tap ``(ic, kh, kw)`` is the workspace itself, shifted by a fixed offset: every tap
reads contiguous memory, for any stride and dilation, and no im2col matrix is built. Columns
``ow >= OW`` of that grid are computed and dropped.

Work is split into tasks of (image, group, block of OCB output channels, tile of JT positions),
all in one ``prange``, so both cores are busy at batch 1. A task accumulates its tile in a small
local array that stays in L1 while :func:`_microkernel` streams the taps through it.

Stride 1 without top/left padding reads the input itself. When the workspace would exceed the
input plus output size (padding that dwarfs a tiny image), :func:`_conv_gather` builds bounded
im2col chunks per task instead. :func:`_algorithm` makes that choice.
"""

import functools
import threading

import numpy as np
from numba import prange

from numbaconv._ops import ACT_NONE, ACT_RELU
from numbaconv.cpu._common import apply_act, helper, kernel

JT = 256  # output positions per task tile (padded-grid positions)
OCB = 32  # output channels per task tile; the accumulator is OCB * JT values (32 KiB float32)
KC = 64  # taps gathered per chunk by the fallback path
VEC = 16  # tile lengths are rounded up to whole vectors of this many values


# --------------------------------------------------------------------------------------------
# Microkernel: the one function that does the multiply-adds
# --------------------------------------------------------------------------------------------

@helper
def _microkernel(acc, nrows, w, wrow, k0, k1, src, base, kofs, jlen):
    """``acc[r*JT + j] += sum_{k0<=k<k1} w[wrow + r, k] * src[base + kofs[k] + j]``.

    For r < nrows, j < jlen. Four taps by four output channels per pass over the tile: each
    accumulator vector loaded and stored once per 16 fused multiply-adds. Slices are indexed
    from 0 so LLVM sees non-negative, contiguous indices and vectorises along j; the four rows
    of ``acc`` sit at fixed distances JT so its runtime alias checks collapse to one group.
    """
    r4 = nrows - nrows % 4
    kq = k1 - (k1 - k0) % 4
    for k in range(k0, kq, 4):
        o0 = base + kofs[k]
        o1 = base + kofs[k + 1]
        o2 = base + kofs[k + 2]
        o3 = base + kofs[k + 3]
        x0 = src[o0:o0 + jlen]
        x1 = src[o1:o1 + jlen]
        x2 = src[o2:o2 + jlen]
        x3 = src[o3:o3 + jlen]
        for r in range(0, r4, 4):
            wr = wrow + r
            w00 = w[wr, k]
            w01 = w[wr, k + 1]
            w02 = w[wr, k + 2]
            w03 = w[wr, k + 3]
            w10 = w[wr + 1, k]
            w11 = w[wr + 1, k + 1]
            w12 = w[wr + 1, k + 2]
            w13 = w[wr + 1, k + 3]
            w20 = w[wr + 2, k]
            w21 = w[wr + 2, k + 1]
            w22 = w[wr + 2, k + 2]
            w23 = w[wr + 2, k + 3]
            w30 = w[wr + 3, k]
            w31 = w[wr + 3, k + 1]
            w32 = w[wr + 3, k + 2]
            w33 = w[wr + 3, k + 3]
            a = acc[r * JT:(r + 4) * JT]
            for j in range(jlen):
                v0 = x0[j]
                v1 = x1[j]
                v2 = x2[j]
                v3 = x3[j]
                a[j] += w00 * v0 + w01 * v1 + w02 * v2 + w03 * v3
                a[JT + j] += w10 * v0 + w11 * v1 + w12 * v2 + w13 * v3
                a[2 * JT + j] += w20 * v0 + w21 * v1 + w22 * v2 + w23 * v3
                a[3 * JT + j] += w30 * v0 + w31 * v1 + w32 * v2 + w33 * v3
        for r in range(r4, nrows):
            wr = wrow + r
            w00 = w[wr, k]
            w01 = w[wr, k + 1]
            w02 = w[wr, k + 2]
            w03 = w[wr, k + 3]
            a = acc[r * JT:r * JT + jlen]
            for j in range(jlen):
                a[j] += w00 * x0[j] + w01 * x1[j] + w02 * x2[j] + w03 * x3[j]
    for k in range(kq, k1):
        o0 = base + kofs[k]
        x0 = src[o0:o0 + jlen]
        for r in range(nrows):
            w00 = w[wrow + r, k]
            a = acc[r * JT:r * JT + jlen]
            for j in range(jlen):
                a[j] += w00 * x0[j]


@helper
def _init_acc(acc, nrows, oc0, b, has_bias, plen):
    """Start rows [0, nrows) of a tile at the bias (or 0), so the epilogue only applies ``act``."""
    zero = acc.dtype.type(0)
    for r in range(nrows):
        acc[r * JT:r * JT + plen] = b[oc0 + r] if has_bias else zero


@helper
def _store_row(orow, a, act, alpha):
    # One loop per common activation with ``act`` constant, so LLVM vectorises it.
    if act == ACT_NONE:
        for i in range(orow.shape[0]):
            orow[i] = a[i]
    elif act == ACT_RELU:
        for i in range(orow.shape[0]):
            orow[i] = apply_act(a[i], ACT_RELU, alpha)
    else:
        for i in range(orow.shape[0]):
            orow[i] = apply_act(a[i], act, alpha)


@helper
def _store(out, n, oc0, nrows, acc, p0, plen, wq, act, alpha):
    """Write ``act(acc)`` for grid positions [p0, p0 + plen) of channels oc0.. into out[n]."""
    ow_ = out.shape[3]
    oh_lo = p0 // wq
    oh_hi = (p0 + plen - 1) // wq
    for r in range(nrows):
        for oh in range(oh_lo, oh_hi + 1):
            start = oh * wq
            c0 = max(0, p0 - start)
            c1 = min(ow_, p0 + plen - start)
            if c1 > c0:
                a0 = r * JT + start - p0
                _store_row(out[n, oc0 + r, oh, c0:c1], acc[a0 + c0:a0 + c1], act, alpha)


# --------------------------------------------------------------------------------------------
# Main path: phase-split padded workspace, taps read in place
# --------------------------------------------------------------------------------------------

@helper
def _task(t, njt, nob, groups, ocg, npos):
    """Decode flat task ``t`` of (image, group, channel block, position tile), tiles fastest.

    Returns (image, group, first output channel, channels in the block, first position,
    positions in the tile).
    """
    jt = t % njt
    u = t // njt
    ob = u % nob
    u //= nob
    g = u % groups
    p0 = jt * JT
    return (u // groups, g, g * ocg + ob * OCB, min(OCB, ocg - ob * OCB), p0,
            min(JT, npos - p0))


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
def _conv_grid(out, src, cstride, wq, cg, w2, b, has_bias, kofs, groups, act, alpha):
    """Implicit-GEMM conv reading taps in place from ``src``.

    Parameters
    ----------
    out : (N, OC, OH, OW) array, filled in place.
    src : flat input laid out as (N, C, cstride), each channel a grid of width wq (may be
        longer than that).
    cg : input channels per group.
    w2 : (OC, K) weights, K = C/groups * KH * KW.
    kofs : (K,) int64, offset of tap k in a channel-group's input relative to the output
        position p = oh * wq + ow.
    """
    n_, oc_, oh_, ow_ = out.shape
    k_ = w2.shape[1]
    ocg = oc_ // groups
    npos = (oh_ - 1) * wq + ow_
    njt = (npos + JT - 1) // JT
    nob = (ocg + OCB - 1) // OCB
    c_ = cg * groups
    kmax = 0
    for k in range(k_):
        kmax = max(kmax, kofs[k])
    ntask = n_ * groups * nob * njt
    for t in prange(ntask):
        n, g, oc0, nrows, p0, plen = _task(t, njt, nob, groups, ocg, npos)
        base = (n * c_ + g * cg) * cstride + p0
        # Whole vectors: positions past the tile are computed (never stored) where src has them.
        vlen = min(JT, (plen + VEC - 1) // VEC * VEC, src.shape[0] - base - kmax)
        vlen = max(vlen, plen)
        acc = np.empty(OCB * JT, dtype=out.dtype)
        _init_acc(acc, nrows, oc0, b, has_bias, vlen)
        _microkernel(acc, nrows, w2, oc0, 0, k_, src, base, kofs, vlen)
        _store(out, n, oc0, nrows, acc, p0, plen, wq, act, alpha)


# --------------------------------------------------------------------------------------------
# Fallback: per-task im2col chunks with bounds checks, no workspace
# --------------------------------------------------------------------------------------------

@kernel
def _conv_gather(out, x, w2, b, has_bias, groups, kh_, kw_, sh, sw, pt, pl, dh, dw, act, alpha):
    """Implicit-GEMM conv that gathers KC taps x JT positions at a time into a local buffer.

    Parameters
    ----------
    out : (N, OC, OH, OW) array, filled in place.
    x : (N, C, H, W) array.
    w2 : (OC, K) weights, K = C/groups * KH * KW.
    """
    n_, c_, h, w = x.shape
    _, oc_, oh_, ow_ = out.shape
    k_ = w2.shape[1]
    ocg = oc_ // groups
    cg = c_ // groups
    taps = kh_ * kw_
    npos = oh_ * ow_
    njt = (npos + JT - 1) // JT
    nob = (ocg + OCB - 1) // OCB
    # Tap k of a chunk sits at row k % KC of the gather buffer.
    kofs = np.empty(k_, dtype=np.int64)
    for k in range(k_):
        kofs[k] = (k % KC) * JT
    zero = out.dtype.type(0)
    for t in prange(n_ * groups * nob * njt):
        n, g, oc0, nrows, p0, plen = _task(t, njt, nob, groups, ocg, npos)
        acc = np.empty(OCB * JT, dtype=out.dtype)
        _init_acc(acc, nrows, oc0, b, has_bias, plen)
        buf = np.empty(KC * JT, dtype=out.dtype)
        for k0 in range(0, k_, KC):
            k1 = min(k_, k0 + KC)
            for k in range(k0, k1):
                ic = k // taps
                kh = (k - ic * taps) // kw_
                kw = k - ic * taps - kh * kw_
                xc = x[n, g * cg + ic]
                row = buf[(k - k0) * JT:(k - k0 + 1) * JT]
                for i in range(plen):
                    p = p0 + i
                    oh = p // ow_
                    ih = oh * sh - pt + kh * dh
                    iw = (p - oh * ow_) * sw - pl + kw * dw
                    if ih >= 0 and ih < h and iw >= 0 and iw < w:
                        row[i] = xc[ih, iw]
                    else:
                        row[i] = zero
            _microkernel(acc, nrows, w2, oc0, k0, k1, buf, 0, kofs, plen)
        _store(out, n, oc0, nrows, acc, p0, plen, ow_, act, alpha)


# --------------------------------------------------------------------------------------------
# Launcher
# --------------------------------------------------------------------------------------------

# Stand-in for a missing bias, one per dtype, so that b=None allocates nothing.
_NO_BIAS = {np.dtype(t): np.empty(0, t) for t in (np.float32, np.float64)}

# One reusable workspace per dtype; a call that finds it in use by another thread allocates its
# own rather than wait.
_WS_LOCK = threading.Lock()
_WS = {}


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
    size = n_ * c_ * nplanes * hq * wq + VEC  # VEC: slack for the rounded-up last tile
    if size > x.size + out.size:
        return "gather", 0, 0, 0
    return "workspace", hq, wq, size


def conv2d(out, x, w, b, stride, padding, dilation, groups, act, alpha):
    """2-D cross-correlation with bias and a fused activation, as torch's conv2d.

    Parameters
    ----------
    out : (N, OC, OH, OW) array, filled in place; its shape sets the bottom/right padding.
    x : (N, C, H, W) array.
    w : (OC, C // groups, KH, KW) array.
    b : (OC,) array or None.
    stride, padding, dilation : (h, w) int tuples; padding is (top, left).
    groups : int.
    act : numbaconv._ops.ACT_* code applied after the bias; alpha its parameter.
    """
    oc_, cg, kh_, kw_ = w.shape
    w2 = w.reshape(oc_, cg * kh_ * kw_)
    has_bias = b is not None
    if not has_bias:
        b = _NO_BIAS[out.dtype]
    path, hq, wq, size = _algorithm(x, out, kh_, kw_, stride, padding, dilation)
    (sh, sw), (pt, pl), (dh, dw) = stride, padding, dilation
    if path == "gather":
        _conv_gather(out, x, w2, b, has_bias, groups, kh_, kw_, sh, sw, pt, pl, dh, dw, act, alpha)
        return
    rph, cph, kofs, cstride = _plan(cg, kh_, kw_, sh, sw, dh, dw, hq, wq)
    if path == "inplace":
        _conv_grid(out, x.reshape(-1), cstride, wq, cg, w2, b, has_bias, kofs, groups, act, alpha)
        return
    owned = _WS_LOCK.acquire(blocking=False)
    try:
        ws = _WS.get(out.dtype) if owned else None
        if ws is None or ws.size < size:
            ws = np.empty(size, out.dtype)
            if owned:
                _WS[out.dtype] = ws
        _fill_workspace(ws, x, rph, cph, sh, sw, pt, pl, hq, wq)
        _conv_grid(out, ws, cstride, wq, cg, w2, b, has_bias, kofs, groups, act, alpha)
    finally:
        if owned:
            _WS_LOCK.release()
