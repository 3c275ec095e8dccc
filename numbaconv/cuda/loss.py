"""Loss kernels on the GPU: per-item cross-entropy and squared error, and a float64 sum."""

import math

import numpy as np

from numbaconv import _cuda
from numbaconv.cuda._common import THREADS, block_sum, blocks, max_sum_exp

cuda = _cuda.cuda()


@_cuda.kernel("void({T}[:, ::1], {T}[:, :, ::1], int64[:, ::1])")
def _cross_entropy(out, x, target):
    """out[n, s] = logsumexp(x[n, :, s]) - x[n, target[n, s], s]; one thread per (n, s).

    out (N, S); x (N, C, S); target (N, S) class indices in [0, C).
    """
    n_, c_, s_ = x.shape
    idx = cuda.grid(1)
    if idx >= n_ * s_:
        return
    n = idx // s_
    s = idx - n * s_
    m, acc = max_sum_exp(x, n, s)
    # (max - x_t) first: exact cancellation when the target holds the max, even at 1e30.
    out[n, s] = (m - x[n, target[n, s], s]) + math.log(acc)


@_cuda.kernel("void({T}[:, ::1], {T}[:, :, ::1], {T}[:, :, ::1])")
def _cross_entropy_prob(out, x, target):
    """out[n, s] = -sum_c target[n, c, s] * log_softmax(x[n, :, s])[c]; one thread per (n, s).

    out (N, S); x, target (N, C, S).
    """
    n_, c_, s_ = x.shape
    idx = cuda.grid(1)
    if idx >= n_ * s_:
        return
    n = idx // s_
    s = idx - n * s_
    m, acc = max_sum_exp(x, n, s)
    lse = math.log(acc)
    tot = 0.0
    for c in range(c_):
        tot += target[n, c, s] * ((m - x[n, c, s]) + lse)
    out[n, s] = tot


@_cuda.kernel("void({T}[::1], {T}[::1], {T}[::1])")
def _squared_error(out, x, t):
    """out[i] = (x[i] - t[i]) ** 2; out, x, t (L,)."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        d = x[i] - t[i]
        out[i] = d * d


@_cuda.kernel("void({T}[::1], float64[::1])")
def _sum_partials(x, partial):
    """partial[block] = float64 sum of this block's grid-stride share of x (L,)."""
    red = cuda.shared.array(THREADS, dtype=np.float64)
    tid = cuda.threadIdx.x
    acc = 0.0
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        acc += x[i]
    red[tid] = acc
    block_sum(red, tid, THREADS)
    if tid == 0:
        partial[cuda.blockIdx.x] = red[0]


@_cuda.kernel("void({T}[::1], float64[::1], float64)")
def _sum_final(out, partial, scale):
    """out[0] = sum(partial) * scale, by one block, in a fixed order (deterministic)."""
    red = cuda.shared.array(THREADS, dtype=np.float64)
    tid = cuda.threadIdx.x
    acc = 0.0
    for i in range(tid, partial.shape[0], THREADS):
        acc += partial[i]
    red[tid] = acc
    block_sum(red, tid, THREADS)
    if tid == 0:
        out[0] = red[0] * scale


def cross_entropy(out, x, target):
    """Per-item cross-entropy against class indices.

    Parameters
    ----------
    out : (N, S) device array, filled in place.
    x : (N, C, S) device array of logits.
    target : (N, S) int64 device array, class indices already checked to lie in [0, C).
    """
    _cross_entropy[blocks(out.size), THREADS](out, x, target)


def cross_entropy_prob(out, x, target):
    """Per-item cross-entropy against class probabilities.

    Parameters
    ----------
    out : (N, S) device array, filled in place.
    x, target : (N, C, S) device arrays (logits, probabilities).
    """
    _cross_entropy_prob[blocks(out.size), THREADS](out, x, target)


def squared_error(out, x, t):
    """``out = (x - t) ** 2`` elementwise.

    Parameters
    ----------
    out, x, t : (L,) device arrays.
    """
    _squared_error[blocks(x.shape[0]), THREADS](out, x, t)


# The first pass of reduce_sum uses at most this many blocks (grid-stride beyond), which bounds
# the float64 scratch array and the second pass's work.
MAX_PARTIALS = 1024


def reduce_sum(out, x, scale):
    """``out[0] = sum(x) * scale``, accumulated in float64 in a fixed order.

    Two passes: per-block float64 partial sums into a scratch array, then one block sums them.

    Parameters
    ----------
    out : (1,) device array, filled in place.
    x : (L,) device array.
    scale : float.
    """
    nb = min(blocks(x.shape[0]), MAX_PARTIALS)
    partial = _cuda.empty(nb, np.float64)
    _sum_partials[nb, THREADS](x, partial)
    _sum_final[1, THREADS](out, partial, float(scale))


# ---- backward -------------------------------------------------------------------------------
# ``go`` is the gradient of the per-item loss times ``scale`` when ``per_item``; otherwise every
# item's gradient is ``scale`` alone and ``go`` is a stand-in that is never read.


@_cuda.kernel("void({T}[:, :, ::1], {T}[:, :, ::1], int64[:, ::1], {T}[:, ::1], float64, boolean)")
def _cross_entropy_backward(gx, x, target, go, scale, per_item):
    """gx[n, c, s] = g * (softmax(x)[n, c, s] - (c == target[n, s])); one thread per (n, s).

    gx, x (N, C, S); target (N, S); go (N, S) or a stand-in.
    """
    n_, c_, s_ = x.shape
    idx = cuda.grid(1)
    if idx >= n_ * s_:
        return
    n = idx // s_
    s = idx - n * s_
    m, acc = max_sum_exp(x, n, s)
    ls = math.log(acc)
    g = scale * go[n, s] if per_item else scale
    t = target[n, s]
    for c in range(c_):
        y = math.exp((x[n, c, s] - m) - ls)
        gx[n, c, s] = g * (y - 1.0) if c == t else g * y


@_cuda.kernel("void({T}[:, :, ::1], {T}[:, :, ::1], {T}[:, :, ::1], {T}[:, :, ::1], {T}[:, ::1], "
              "float64, boolean)")
def _cross_entropy_prob_backward(gx, gt, x, target, go, scale, per_item):
    """gx = g * (softmax(x) * sum_c target - target), gt = -g * log_softmax(x) along axis 1 of
    (N, C, S) arrays; one thread per (n, s)."""
    n_, c_, s_ = x.shape
    idx = cuda.grid(1)
    if idx >= n_ * s_:
        return
    n = idx // s_
    s = idx - n * s_
    m, acc = max_sum_exp(x, n, s)
    ls = math.log(acc)
    g = scale * go[n, s] if per_item else scale
    tsum = 0.0
    for c in range(c_):
        tsum += target[n, c, s]
    for c in range(c_):
        lp = (x[n, c, s] - m) - ls
        gx[n, c, s] = g * (math.exp(lp) * tsum - target[n, c, s])
        gt[n, c, s] = -g * lp


@_cuda.kernel("void({T}[::1], {T}[::1], {T}[::1], {T}[::1], {T}[::1], float64, boolean)")
def _squared_error_backward(gx, gt, x, t, go, scale, per_item):
    """gx = (x - t) * scale * go (or * scale alone), gt = -gx; all (L,)."""
    i = cuda.grid(1)
    if i >= x.shape[0]:
        return
    v = (x[i] - t[i]) * x.dtype.type(scale)
    if per_item:
        v *= go[i]
    gx[i] = v
    gt[i] = -v


def _stand_in(x):
    # A C-contiguous 2-D view of x in place of a missing ``go`` (never read).
    return x.reshape(x.shape[0], x.size // x.shape[0])


def cross_entropy_backward(gx, x, target, go, scale):
    """Gradient of the per-item cross-entropy against class indices, w.r.t. the logits.

    Parameters
    ----------
    gx : (N, C, S) device array, filled in place.
    x : (N, C, S) device array of logits.
    target : (N, S) int64 device array of class indices in [0, C).
    go : (N, S) device array, the gradient of each item's loss, or None: every item's is
        ``scale``.
    scale : float, multiplies ``go`` (or stands for it).
    """
    if gx.size == 0:
        return
    per_item = go is not None
    n, _, s = x.shape
    _cross_entropy_backward[blocks(n * s), THREADS](
        gx, x, target, go if per_item else _stand_in(x), float(scale), per_item)


def cross_entropy_prob_backward(gx, gt, x, target, go, scale):
    """Gradients of the per-item cross-entropy against class probabilities.

    Parameters
    ----------
    gx, gt : (N, C, S) device arrays, filled with the gradients w.r.t. logits and targets.
    x, target : (N, C, S) device arrays (logits, probabilities).
    go, scale : as in :func:`cross_entropy_backward`.
    """
    if gx.size == 0:
        return
    per_item = go is not None
    n, _, s = x.shape
    _cross_entropy_prob_backward[blocks(n * s), THREADS](
        gx, gt, x, target, go if per_item else _stand_in(x), float(scale), per_item)


def squared_error_backward(gx, gt, x, t, go, scale):
    """Gradients of ``(x - t) ** 2`` (``scale`` already holds the factor 2 and any 1 / count).

    Parameters
    ----------
    gx, gt : (L,) device arrays, filled with ``(x - t) * scale * go`` and its negation.
    x, t : (L,) device arrays.
    go : (L,) device array or None (every element's gradient is ``scale``).
    scale : float.
    """
    if gx.size == 0:
        return
    per_item = go is not None
    _squared_error_backward[blocks(x.shape[0]), THREADS](
        gx, gt, x, t, go if per_item else x, float(scale), per_item)
