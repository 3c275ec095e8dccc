"""Batch normalisation (inference form) on the GPU."""

import math

from numbaconv import _cuda
from numbaconv.cuda._common import THREADS, blocks

cuda = _cuda.cuda()


@_cuda.kernel("void({T}[:, :, ::1], {T}[:, :, ::1], {T}[::1], {T}[::1], {T}[::1], {T}[::1], "
              "float64)")
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
    # The per-channel scale in the input's precision, as PyTorch: 1 / sqrt(var + eps).
    inv = x.dtype.type(1) / math.sqrt(var[c] + x.dtype.type(eps))
    out[n, c, s] = (x[n, c, s] - mean[c]) * inv * weight[c] + bias[c]


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
