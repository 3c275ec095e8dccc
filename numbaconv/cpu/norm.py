"""Batch normalisation (inference form) with running statistics."""

import math

import numpy as np
from numba import prange

from numbaconv.cpu import simd
from numbaconv.cpu._common import helper, kernel
from numbaconv.cpu.vecmath import fma, prefetch

# Elements per parallel task.
CHUNK = 16384
# Elements ahead that the loop prefetches (input and output): the hardware prefetcher alone left
# it ~10% short of a plain copy's bandwidth.
PREFETCH = 2048


@helper
def _affine(orow, xr, a, b):
    """``orow = xr * a + b`` for contiguous 1-D segments, in explicit vectors (LLVM's own loop
    uses 256-bit ones on this host)."""
    lanes = simd.width(xr)
    m = xr.shape[0]
    full = m - m % lanes
    for s in range(0, full, lanes):
        prefetch(xr, s + PREFETCH, 0)
        prefetch(orow, s + PREFETCH, 1)
        simd.store(orow, s, fma(simd.load(xr, s), a, b))
    if full < m:
        simd.store_n(orow, full, fma(simd.load_n(xr, full, m - full), a, b), m - full)


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
    # Tasks are CHUNK consecutive elements of the flat (N * C * S) array, whatever the plane
    # size: a task walks the planes it covers, so 7x7 planes do not make a task each.
    xf = x.reshape((x.size,))
    of = out.reshape((out.size,))
    total = xf.shape[0]
    for t in prange((total + CHUNK - 1) // CHUNK):
        lo = t * CHUNK
        hi = min(lo + CHUNK, total)
        plane = lo // s_
        while lo < hi:
            end = min(hi, (plane + 1) * s_)
            c = plane % c_
            _affine(of[lo:end], xf[lo:end], scale[c], shift[c])
            lo = end
            plane += 1

