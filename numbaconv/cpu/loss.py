"""Loss kernels: per-element cross-entropy and squared error, and a float64 sum for reductions.

Cross-entropy works on (N, C, S): classes on axis 1, S spatial positions (1 for classification).
With S == 1 each sample's classes are one contiguous row; with S > 1 a task takes a tile of
positions and vectorises across them. Slices are indexed from 0 so that LLVM knows the indices are
non-negative and emits plain vector loads instead of wraparound gathers.
"""

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
