"""Dense kernels on the GPU: linear (x @ w.T + b) through the tiled GEMM of
:mod:`numbaconv.cuda.gemm`, and softmax / log_softmax over one axis. Both take float16 too,
computing in float32 (float32 tiles and accumulators; exp in float32) and rounding to float16
once at the store."""

import math

import numpy as np

from numbaconv import _cuda
from numbaconv._ops import ACT_NONE
from numbaconv.cuda import gemm
from numbaconv.cuda._common import (THREADS, acc_dtype, block_sum, blocks, max_sum_exp, nan_max,
                                    view, widen)

cuda = _cuda.cuda()

def linear(out, x, w, b):
    """``out = x @ w.T + b``: the tiled GEMM of :mod:`numbaconv.cuda.gemm`, as the 1x1
    convolution of M one-pixel images with K channels into N channels.

    Parameters
    ----------
    out : (M, N) device array, filled in place; every array has one dtype, float16, float32 or
        float64.
    x : (M, K) device array.
    w : (N, K) device array.
    b : (N,) device array or None.
    """
    if out.size == 0:  # a zero grid dimension is a launch error
        return
    (m, n), k = out.shape, x.shape[1]
    as_image = [view(a, shape) for a, shape in ((out, (m, n, 1, 1)), (x, (m, k, 1, 1)),
                                                (w, (n, k, 1, 1)))]
    one = (1, 1)
    gemm.conv2d(*as_image, b, None, one, (0, 0), one, 1, ACT_NONE, 0.0)


# Softmax over contiguous rows (inner == 1): one block per row reduces with ROW_THREADS threads.
ROW_THREADS = 128
ROW_MIN_D = 32  # shorter rows, and strided axes, use one thread per row instead


@_cuda.kernel("void({T}[:, :, ::1], {T}[:, :, ::1], boolean)", half=True)
def _softmax_block(out, x, log):
    """Softmax over axis 1 of (outer, D, inner) arrays, one block of ROW_THREADS per
    (outer, inner) row: block-wide max, then a float64 sum of exp(x - max)."""
    outer, d_, inner = x.shape
    r = cuda.blockIdx.x
    o = r // inner
    i = r - o * inner
    tid = cuda.threadIdx.x
    acc_t = acc_dtype(x.dtype)  # float16: the max, shifts and exp in float32
    red_max = cuda.shared.array(ROW_THREADS, dtype=acc_t)
    red_sum = cuda.shared.array(ROW_THREADS, dtype=np.float64)
    m = acc_t(-math.inf)
    for d in range(tid, d_, ROW_THREADS):
        m = nan_max(m, widen(x[o, d, i]))
    red_max[tid] = m
    cuda.syncthreads()
    step = ROW_THREADS // 2
    while step > 0:
        if tid < step:
            red_max[tid] = nan_max(red_max[tid], red_max[tid + step])
        cuda.syncthreads()
        step //= 2
    m = red_max[0]
    s = 0.0
    for d in range(tid, d_, ROW_THREADS):
        s += math.exp(widen(x[o, d, i]) - m)
    red_sum[tid] = s
    block_sum(red_sum, tid, ROW_THREADS)
    total = red_sum[0]
    if log:
        ls = math.log(total)
        for d in range(tid, d_, ROW_THREADS):
            out[o, d, i] = (widen(x[o, d, i]) - m) - ls
    else:
        for d in range(tid, d_, ROW_THREADS):
            out[o, d, i] = math.exp(widen(x[o, d, i]) - m) / total


@_cuda.kernel("void({T}[:, :, ::1], {T}[:, :, ::1], boolean)", half=True)
def _softmax_thread(out, x, log):
    """Softmax over axis 1 of (outer, D, inner) arrays, one thread per (outer, inner) row;
    neighbouring threads read neighbouring inner positions (coalesced when inner is large)."""
    outer, d_, inner = x.shape
    r = cuda.grid(1)
    if r >= outer * inner:
        return
    o = r // inner
    i = r - o * inner
    m, s = max_sum_exp(x, o, i)  # m is float32 for float16 data
    if log:
        ls = math.log(s)
        for d in range(d_):
            out[o, d, i] = (widen(x[o, d, i]) - m) - ls
    else:
        for d in range(d_):
            out[o, d, i] = math.exp(widen(x[o, d, i]) - m) / s


def softmax(out, x, log):
    """Softmax (or log_softmax when ``log``) over axis 1, stable for any finite input.

    ``softmax = exp(x - max) / sum(exp(x - max))``, ``log_softmax = x - max - log(sum(...))``;
    the sum is accumulated in float64.

    Parameters
    ----------
    out : (outer, D, inner) device array, filled in place.
    x : (outer, D, inner) device array.
    log : bool, compute log_softmax.
    """
    outer, d, inner = x.shape
    if out.size == 0:
        return
    if inner == 1 and d >= ROW_MIN_D:
        _softmax_block[outer, ROW_THREADS](out, x, bool(log))
    else:
        _softmax_thread[blocks(outer * inner), THREADS](out, x, bool(log))


# ---- backward -------------------------------------------------------------------------------
# One thread per output element, the reduction in a register: every element has one writer (no
# atomics), and neighbouring threads take neighbouring k, so the loads along K coalesce.


@_cuda.kernel("void({T}[:, ::1], {T}[:, ::1], {T}[:, ::1])")
def _linear_grad_input(gx, go, w):
    """gx (M, K) = go (M, N) @ w (N, K); one thread per element of gx."""
    m_, k_ = gx.shape
    idx = cuda.grid(1)
    if idx >= m_ * k_:
        return
    m = idx // k_
    k = idx - m * k_
    acc = gx.dtype.type(0)
    for n in range(w.shape[0]):
        acc += go[m, n] * w[n, k]
    gx[m, k] = acc


@_cuda.kernel("void({T}[:, ::1], {T}[:, ::1], {T}[:, ::1])")
def _linear_grad_weight(gw, go, x):
    """gw (N, K) = go (M, N).T @ x (M, K); one thread per element of gw."""
    n_, k_ = gw.shape
    idx = cuda.grid(1)
    if idx >= n_ * k_:
        return
    n = idx // k_
    k = idx - n * k_
    acc = gw.dtype.type(0)
    for m in range(x.shape[0]):
        acc += go[m, n] * x[m, k]
    gw[n, k] = acc


@_cuda.kernel("void({T}[::1], {T}[:, ::1])")
def _linear_grad_bias(gb, go):
    """gb (N,) = go (M, N) summed over rows; one thread per output feature."""
    n = cuda.grid(1)
    if n >= gb.shape[0]:
        return
    acc = gb.dtype.type(0)
    for m in range(go.shape[0]):
        acc += go[m, n]
    gb[n] = acc


def linear_backward(gx, gw, gb, go, x, w):
    """Gradients of ``out = x @ w.T + b``.

    Parameters
    ----------
    gx : (M, K) device array, filled with ``go @ w``.
    gw : (N, K) device array, filled with ``go.T @ x``.
    gb : (N,) device array filled with ``go.sum(0)``, or None (no bias).
    go : (M, N) device array, the gradient of ``out``.
    x : (M, K) device array.
    w : (N, K) device array.
    """
    if gx.size:  # a zero grid dimension is a launch error
        _linear_grad_input[blocks(gx.size), THREADS](gx, go, w)
    if gw.size:
        _linear_grad_weight[blocks(gw.size), THREADS](gw, go, x)
    if gb is not None and gb.size:
        _linear_grad_bias[blocks(gb.size), THREADS](gb, go)


@_cuda.kernel("void({T}[:, :, ::1], {T}[:, :, ::1], {T}[:, :, ::1], boolean)")
def _softmax_backward(gx, go, x, log):
    """Softmax / log_softmax gradient over axis 1 of (outer, D, inner) arrays, one thread per
    (outer, inner) row; y = softmax(x) is recomputed with a float64 sum."""
    outer, d_, inner = x.shape
    r = cuda.grid(1)
    if r >= outer * inner:
        return
    o = r // inner
    i = r - o * inner
    m, s = max_sum_exp(x, o, i)
    ls = math.log(s)
    acc = 0.0
    if log:
        for d in range(d_):
            acc += go[o, d, i]
        for d in range(d_):
            gx[o, d, i] = go[o, d, i] - math.exp((x[o, d, i] - m) - ls) * acc
    else:
        for d in range(d_):
            acc += go[o, d, i] * math.exp((x[o, d, i] - m) - ls)
        for d in range(d_):
            gx[o, d, i] = math.exp((x[o, d, i] - m) - ls) * (go[o, d, i] - acc)


def softmax_backward(gx, go, x, log):
    """Gradient of softmax (or log_softmax when ``log``) over axis 1, recomputed from ``x``.

    softmax: ``gx = y * (go - sum(go * y))``; log_softmax: ``gx = go - y * sum(go)``.

    Parameters
    ----------
    gx, go, x : (outer, D, inner) device arrays; gx is filled in place.
    log : bool, log_softmax.
    """
    outer, _, inner = x.shape
    if gx.size == 0:
        return
    _softmax_backward[blocks(outer * inner), THREADS](gx, go, x, bool(log))
