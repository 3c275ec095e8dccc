"""Batch normalisation (inference form) with running statistics."""

import math

import numpy as np
from numba import prange

from numbaconv.cpu._common import kernel

# Elements of one (n, c) plane per parallel task.
CHUNK = 16384


@kernel
def batch_norm(out, x, mean, var, weight, bias, eps):
    """``out = (x - mean[c]) / sqrt(var[c] + eps) * weight[c] + bias[c]``.

    Parameters
    ----------
    out : (N, C, S) array, filled in place; may be ``x``.
    x : (N, C, S) array.
    mean, var, weight, bias : (C,) arrays.
    eps : float.
    """
    n_, c_, s_ = x.shape
    # Fold the four per-channel vectors into one scale and shift, once per call.
    scale = np.empty(c_, out.dtype)
    shift = np.empty(c_, out.dtype)
    for c in range(c_):
        inv = weight[c] / math.sqrt(var[c] + eps)
        scale[c] = inv
        shift[c] = bias[c] - mean[c] * inv
    tiles = (s_ + CHUNK - 1) // CHUNK
    for t in prange(n_ * c_ * tiles):
        nc = t // tiles
        s0 = (t - nc * tiles) * CHUNK
        s1 = min(s0 + CHUNK, s_)
        n = nc // c_
        c = nc - n * c_
        a = scale[c]
        b = shift[c]
        xr = x[n, c, s0:s1]
        orow = out[n, c, s0:s1]
        for s in range(s1 - s0):
            orow[s] = xr[s] * a + b
