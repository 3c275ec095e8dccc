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
