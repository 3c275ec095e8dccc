"""Loss kernels: per-element cross-entropy and squared error, and a float64 sum for reductions.

Cross-entropy works on (N, C, S): classes on axis 1, S spatial positions (1 for classification).
With S == 1 each sample's classes are one contiguous row; with S > 1 a task takes a tile of
positions and vectorises across them. Slices are indexed from 0 so that LLVM knows the indices are
non-negative and emits plain vector loads instead of wraparound gathers.
"""

import math

import numpy as np
from numba import prange

from numbaconv.cpu._common import (INNER_TILE, kernel, row_lse, row_max, tile_lse, tile_max,
                                   tile_task)

# Elements per task for the flat kernels.
CHUNK = 16384


@kernel
def cross_entropy(out, x, target):
    """``out[n, s] = logsumexp(x[n, :, s]) - x[n, target[n, s], s]``, computed stably.

    Parameters
    ----------
    out : (N, S) array, filled in place.
    x : (N, C, S) array of logits.
    target : (N, S) int64 array of class indices in [0, C).
    """
    n_, c_, s_ = x.shape
    if s_ == 1:
        x2 = x.reshape((n_, c_))
        for n in prange(n_):
            xr = x2[n]
            m = row_max(xr)
            out[n, 0] = row_lse(xr, m) + (m - xr[target[n, 0]])
        return
    tiles = (s_ + INNER_TILE - 1) // INNER_TILE
    for t in prange(n_ * tiles):
        n, i0, i1 = tile_task(t, tiles, s_)
        mx = tile_max(x, n, i0, i1)
        lse = tile_lse(x, n, i0, i1, mx)
        tr = target[n, i0:i1]
        orow = out[n, i0:i1]
        for i in range(i1 - i0):
            orow[i] = lse[i] + (mx[i] - x[n, tr[i], i0 + i])


@kernel
def cross_entropy_prob(out, x, target):
    """``out[n, s] = -sum_c target[n, c, s] * log_softmax(x)[n, c, s]``.

    Parameters
    ----------
    out : (N, S) array, filled in place.
    x : (N, C, S) array of logits.
    target : (N, C, S) array of class probabilities, x's dtype.
    """
    n_, c_, s_ = x.shape
    if s_ == 1:
        x2 = x.reshape((n_, c_))
        t2 = target.reshape((n_, c_))
        for n in prange(n_):
            xr = x2[n]
            tr = t2[n]
            m = row_max(xr)
            ls = row_lse(xr, m)
            acc = out.dtype.type(0)
            # Term by term, as torch does: a zero probability times a -inf log-prob gives NaN.
            for c in range(c_):
                acc += tr[c] * ((xr[c] - m) - ls)
            out[n, 0] = -acc
        return
    tiles = (s_ + INNER_TILE - 1) // INNER_TILE
    for t in prange(n_ * tiles):
        n, i0, i1 = tile_task(t, tiles, s_)
        mx = tile_max(x, n, i0, i1)
        lse = tile_lse(x, n, i0, i1, mx)
        orow = out[n, i0:i1]
        orow[:] = 0
        for c in range(c_):
            xr = x[n, c, i0:i1]
            tr = target[n, c, i0:i1]
            for i in range(i1 - i0):
                orow[i] -= tr[i] * ((xr[i] - mx[i]) - lse[i])


@kernel
def squared_error(out, x, t):
    """``out = (x - t) ** 2`` elementwise.

    Parameters
    ----------
    out, x, t : (L,) arrays of one dtype.
    """
    n = x.shape[0]
    for k in prange((n + CHUNK - 1) // CHUNK):
        lo = k * CHUNK
        hi = min(lo + CHUNK, n)
        xseg = x[lo:hi]
        tseg = t[lo:hi]
        oseg = out[lo:hi]
        for i in range(hi - lo):
            d = xseg[i] - tseg[i]
            oseg[i] = d * d


@kernel
def reduce_sum(out, x, scale):
    """``out[0] = sum(x) * scale``, accumulated in float64.

    Each task sums a fixed-size chunk into its own slot and the slots are added serially, so
    there are no races and the result does not depend on the number of threads.

    Parameters
    ----------
    out : (1,) array, filled in place.
    x : (L,) array.
    scale : float.
    """
    n = x.shape[0]
    chunks = (n + CHUNK - 1) // CHUNK
    partial = np.zeros(chunks, np.float64)
    for k in prange(chunks):
        lo = k * CHUNK
        hi = min(lo + CHUNK, n)
        xseg = x[lo:hi]
        s = 0.0
        for i in range(hi - lo):
            s += np.float64(xseg[i])
        partial[k] = s
    total = 0.0
    for k in range(chunks):
        total += partial[k]
    out[0] = total * scale


# ---- backward -------------------------------------------------------------------------------
# ``go`` is the gradient of the per-item loss times ``scale`` when ``per_item``; otherwise every
# item's gradient is ``scale`` alone (a reduced loss: grad_output, divided by the count for
# 'mean') and ``go`` is a stand-in that is never read.


@kernel
def _cross_entropy_backward(gx, x, target, go, scale, per_item):
    """gx[n, c, s] = g[n, s] * (softmax(x)[n, c, s] - (c == target[n, s]))."""
    n_, c_, s_ = x.shape
    sc = gx.dtype.type(scale)
    if s_ == 1:
        x2 = x.reshape((n_, c_))
        o2 = gx.reshape((n_, c_))
        for n in prange(n_):
            xr = x2[n]
            orow = o2[n]
            m = row_max(xr)
            ls = row_lse(xr, m)
            g = go[n, 0] * sc if per_item else sc
            for c in range(c_):
                orow[c] = g * math.exp((xr[c] - m) - ls)
            t = target[n, 0]
            # (y - 1) first: exact when the target holds nearly all the probability.
            orow[t] = g * (math.exp((xr[t] - m) - ls) - 1)
        return
    tiles = (s_ + INNER_TILE - 1) // INNER_TILE
    one = gx.dtype.type(1)
    zero = gx.dtype.type(0)
    for t in prange(n_ * tiles):
        n, i0, i1 = tile_task(t, tiles, s_)
        li = i1 - i0
        mx = tile_max(x, n, i0, i1)
        lse = tile_lse(x, n, i0, i1, mx)
        tr = target[n, i0:i1]
        g = np.full(li, sc, gx.dtype)
        if per_item:
            gr = go[n, i0:i1]
            for i in range(li):
                g[i] *= gr[i]
        for c in range(c_):
            xr = x[n, c, i0:i1]
            orow = gx[n, c, i0:i1]
            for i in range(li):
                hot = one if tr[i] == c else zero
                orow[i] = g[i] * (math.exp((xr[i] - mx[i]) - lse[i]) - hot)


@kernel
def _cross_entropy_prob_backward(gx, gt, x, target, go, scale, per_item):
    """gx[n, c, s] = g * (softmax(x)_c * sum_c' target_c' - target_c) and
    gt[n, c, s] = -g * log_softmax(x)_c, with g = g[n, s]."""
    n_, c_, s_ = x.shape
    sc = gx.dtype.type(scale)
    if s_ == 1:
        x2 = x.reshape((n_, c_))
        t2 = target.reshape((n_, c_))
        o2 = gx.reshape((n_, c_))
        q2 = gt.reshape((n_, c_))
        for n in prange(n_):
            xr = x2[n]
            tr = t2[n]
            orow = o2[n]
            qrow = q2[n]
            m = row_max(xr)
            ls = row_lse(xr, m)
            g = go[n, 0] * sc if per_item else sc
            tsum = gx.dtype.type(0)
            for c in range(c_):
                tsum += tr[c]
            for c in range(c_):
                lp = (xr[c] - m) - ls
                orow[c] = g * (math.exp(lp) * tsum - tr[c])
                qrow[c] = -g * lp
        return
    tiles = (s_ + INNER_TILE - 1) // INNER_TILE
    for t in prange(n_ * tiles):
        n, i0, i1 = tile_task(t, tiles, s_)
        li = i1 - i0
        mx = tile_max(x, n, i0, i1)
        lse = tile_lse(x, n, i0, i1, mx)
        g = np.full(li, sc, gx.dtype)
        if per_item:
            gr = go[n, i0:i1]
            for i in range(li):
                g[i] *= gr[i]
        tsum = np.zeros(li, gx.dtype)
        for c in range(c_):
            tr = target[n, c, i0:i1]
            for i in range(li):
                tsum[i] += tr[i]
        for c in range(c_):
            xr = x[n, c, i0:i1]
            tr = target[n, c, i0:i1]
            orow = gx[n, c, i0:i1]
            qrow = gt[n, c, i0:i1]
            for i in range(li):
                lp = (xr[i] - mx[i]) - lse[i]
                orow[i] = g[i] * (math.exp(lp) * tsum[i] - tr[i])
                qrow[i] = -g[i] * lp


@kernel
def _squared_error_backward(gx, gt, x, t, go, scale, per_item):
    """gx = (x - t) * scale * go (or * scale alone), gt = -gx; all 1-D."""
    n = x.shape[0]
    sc = gx.dtype.type(scale)
    for k in prange((n + CHUNK - 1) // CHUNK):
        lo = k * CHUNK
        hi = min(lo + CHUNK, n)
        xseg = x[lo:hi]
        tseg = t[lo:hi]
        oseg = gx[lo:hi]
        qseg = gt[lo:hi]
        if per_item:
            gseg = go[lo:hi]
            for i in range(hi - lo):
                v = (xseg[i] - tseg[i]) * sc * gseg[i]
                oseg[i] = v
                qseg[i] = -v
        else:
            for i in range(hi - lo):
                v = (xseg[i] - tseg[i]) * sc
                oseg[i] = v
                qseg[i] = -v


def _stand_in(x):
    # A C-contiguous 2-D array of x's dtype in place of a missing ``go`` (one specialisation).
    return x.reshape((x.shape[0], x.size // x.shape[0]))


def cross_entropy_backward(gx, x, target, go, scale):
    """Gradient of the per-item cross-entropy against class indices, w.r.t. the logits.

    Parameters
    ----------
    gx : (N, C, S) array, filled in place.
    x : (N, C, S) array of logits.
    target : (N, S) int64 array of class indices in [0, C).
    go : (N, S) array, the gradient of each item's loss, or None: every item's is ``scale``.
    scale : float, multiplies ``go`` (or stands for it).
    """
    if gx.size == 0:
        return
    per_item = go is not None
    _cross_entropy_backward(gx, x, target, go if per_item else _stand_in(x), float(scale),
                            per_item)


def cross_entropy_prob_backward(gx, gt, x, target, go, scale):
    """Gradients of the per-item cross-entropy against class probabilities.

    Parameters
    ----------
    gx, gt : (N, C, S) arrays, filled with the gradients w.r.t. the logits and the targets.
    x, target : (N, C, S) arrays (logits, probabilities).
    go, scale : as in :func:`cross_entropy_backward`.
    """
    if gx.size == 0:
        return
    per_item = go is not None
    _cross_entropy_prob_backward(gx, gt, x, target, go if per_item else _stand_in(x),
                                 float(scale), per_item)


def squared_error_backward(gx, gt, x, t, go, scale):
    """Gradients of ``(x - t) ** 2`` (``scale`` already holds the factor 2 and any 1 / count).

    Parameters
    ----------
    gx, gt : (L,) arrays, filled with ``(x - t) * scale * go`` and its negation.
    x, t : (L,) arrays.
    go : (L,) array or None (every element's gradient is ``scale``).
    scale : float.
    """
    if gx.size == 0:
        return
    per_item = go is not None
    _squared_error_backward(gx, gt, x, t, go if per_item else x, float(scale), per_item)
