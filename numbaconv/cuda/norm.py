"""Batch normalisation on the GPU. The inference form takes float16 too, computed in float32."""

import math

import numpy as np

from numbaconv import _cuda
from numbaconv.cuda._common import THREADS, acc_dtype, block_sum, blocks, widen

cuda = _cuda.cuda()


@_cuda.kernel("void({T}[:, :, ::1], {T}[:, :, ::1], {T}[::1], {T}[::1], {T}[::1], {T}[::1], "
              "float64)", half=True)
def _batch_norm(out, x, mean, var, weight, bias, eps):
    """out = (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c]; one thread per element.

    out, x (N, C, S); mean, var, weight, bias (C,).
    """
    n_, c_, s_ = x.shape
    idx = cuda.grid(1)
    if idx >= n_ * c_ * s_:
        return
    s = idx % s_
    t = idx // s_
    c = t % c_
    n = t // c_
    # The per-channel scale in the input's precision (float32 for float16), as PyTorch:
    # 1 / sqrt(var + eps).
    acc_t = acc_dtype(x.dtype)
    inv = acc_t(1) / math.sqrt(widen(var[c]) + acc_t(eps))
    out[n, c, s] = (widen(x[n, c, s]) - widen(mean[c])) * inv * widen(weight[c]) + widen(bias[c])


def batch_norm(out, x, mean, var, weight, bias, eps):
    """Normalise with running statistics.

    Parameters
    ----------
    out : (N, C, S) device array, filled in place.
    x : (N, C, S) device array.
    mean, var, weight, bias : (C,) device arrays.
    eps : float.
    """
    _batch_norm[blocks(out.size), THREADS](out, x, mean, var, weight, bias, float(eps))


# ---------------------------------------------------------------------------------------------
# Training: batch statistics, running-stat updates, backward. Each per-channel reduction is one
# block (grid = C), its threads striding over the channel's N * S values and tree-summing float64
# partials in shared memory: no atomics, a fixed order.
# ---------------------------------------------------------------------------------------------

@_cuda.kernel("void({T}[::1], {T}[::1], {T}[:, :, ::1])")
def _batch_norm_stats(mean, var, x):
    """mean[c], var[c] = batch mean and biased variance of x[:, c, :] (N, C, S), two-pass in
    float64; one block per channel."""
    n_, c_, s_ = x.shape
    c = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    red = cuda.shared.array(THREADS, dtype=np.float64)
    count = n_ * s_
    acc = 0.0
    for i in range(tid, count, THREADS):
        acc += x[i // s_, c, i % s_]
    red[tid] = acc
    block_sum(red, tid, THREADS)
    m = red[0] / count
    cuda.syncthreads()  # everyone has read red[0] before it is overwritten
    acc = 0.0
    for i in range(tid, count, THREADS):
        d = x[i // s_, c, i % s_] - m
        acc += d * d
    red[tid] = acc
    block_sum(red, tid, THREADS)
    if tid == 0:
        mean[c] = m
        var[c] = red[0] / count


@_cuda.kernel("void({T}[::1], {T}[::1], {T}[::1], {T}[::1], float64, float64)")
def _batch_norm_update(running_mean, running_var, mean, var, momentum, unbias):
    """running = (1 - momentum) * running + momentum * batch (var times unbias); thread per c."""
    c = cuda.grid(1)
    if c < mean.shape[0]:
        keep = 1.0 - momentum
        running_mean[c] = keep * running_mean[c] + momentum * mean[c]
        running_var[c] = keep * running_var[c] + momentum * (var[c] * unbias)


@_cuda.kernel("void({T}[::1], {T}[::1], {T}[:, :, ::1], {T}[:, :, ::1], {T}[::1], {T}[::1], "
              "float64)")
def _batch_norm_grad_sums(gw, gb, go, x, mean, var, eps):
    """gb[c] = sum(go[:, c]), gw[c] = sum(go[:, c] * (x[:, c] - mean[c])) * invstd; one block
    per channel."""
    n_, c_, s_ = x.shape
    c = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    red = cuda.shared.array(THREADS, dtype=np.float64)
    red2 = cuda.shared.array(THREADS, dtype=np.float64)
    count = n_ * s_
    m = np.float64(mean[c])
    sg = 0.0
    sgx = 0.0
    for i in range(tid, count, THREADS):
        g = np.float64(go[i // s_, c, i % s_])
        sg += g
        sgx += g * (x[i // s_, c, i % s_] - m)
    red[tid] = sg
    red2[tid] = sgx
    block_sum(red, tid, THREADS)
    block_sum(red2, tid, THREADS)
    if tid == 0:
        gb[c] = red[0]
        gw[c] = red2[0] / math.sqrt(np.float64(var[c]) + eps)


@_cuda.kernel("void({T}[:, :, ::1], {T}[:, :, ::1], {T}[:, :, ::1], {T}[::1], {T}[::1], "
              "{T}[::1], {T}[::1], {T}[::1], float64, boolean)")
def _batch_norm_backward(gx, go, x, mean, var, weight, gw, gb, eps, training):
    """gx from go, x and the per-channel sums in gw, gb (see the CPU kernel's formula); one
    thread per element."""
    n_, c_, s_ = x.shape
    idx = cuda.grid(1)
    if idx >= n_ * c_ * s_:
        return
    s = idx % s_
    t = idx // s_
    c = t % c_
    n = t // c_
    invstd = 1.0 / math.sqrt(np.float64(var[c]) + eps)
    k = np.float64(weight[c]) * invstd
    if training:
        count = n_ * s_
        # gw holds sum(go * (x - mean)) * invstd.
        b = -k * invstd * np.float64(gw[c]) / count
        d = -k * np.float64(gb[c]) / count
        gx[n, c, s] = k * go[n, c, s] + b * (x[n, c, s] - mean[c]) + d
    else:
        gx[n, c, s] = k * go[n, c, s]


def batch_norm_stats(mean, var, x):
    """Per-channel batch mean and biased variance.

    Parameters
    ----------
    mean, var : (C,) device arrays, filled in place.
    x : (N, C, S) device array with N * S >= 1.
    """
    _batch_norm_stats[x.shape[1], THREADS](mean, var, x)


def batch_norm_update(running_mean, running_var, mean, var, momentum, count):
    """PyTorch's running-stat update in place (unbiased variance for running_var).

    Parameters
    ----------
    running_mean, running_var : (C,) device arrays, updated in place.
    mean, var : (C,) device arrays, the batch statistics.
    momentum : float.
    count : int, N * S (>= 2).
    """
    _batch_norm_update[blocks(mean.shape[0]), THREADS](
        running_mean, running_var, mean, var, float(momentum), count / (count - 1.0))


def batch_norm_backward(gx, gw, gb, go, x, mean, var, weight, eps, training):
    """Gradients of batch normalisation with statistics ``mean``, ``var`` (the batch's own in
    training mode, the running ones in eval mode).

    Parameters
    ----------
    gx : (N, C, S) device array, filled in place.
    gw, gb : (C,) device arrays, filled in place: sum(go * xhat) and sum(go) per channel.
    go, x : (N, C, S) device arrays.
    mean, var, weight : (C,) device arrays.
    eps : float.
    training : bool.
    """
    _batch_norm_grad_sums[x.shape[1], THREADS](gw, gb, go, x, mean, var, float(eps))
    _batch_norm_backward[blocks(gx.size), THREADS](gx, go, x, mean, var, weight, gw, gb,
                                                   float(eps), bool(training))
