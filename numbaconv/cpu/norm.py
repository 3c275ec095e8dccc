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



# ---------------------------------------------------------------------------------------------
# Training: batch statistics, running-stat updates, backward. Per-channel sums are reduced
# without races: a parallel task sums one (n, c) plane into its own slot of a float64 partials
# array, and the partials are added per channel afterwards, in a fixed order.
# ---------------------------------------------------------------------------------------------

@helper
def _plane_sum(xs):
    """float64 sum of the contiguous 1-D segment ``xs``."""
    acc = 0.0
    for i in range(xs.shape[0]):
        acc += np.float64(xs[i])
    return acc


@helper
def _plane_sq_dev(xs, m):
    """float64 sum of ``(xs[i] - m) ** 2`` over the contiguous segment ``xs``."""
    acc = 0.0
    for i in range(xs.shape[0]):
        d = np.float64(xs[i]) - m
        acc += d * d
    return acc


@helper
def _row_sum(part, c):
    """``part[c].sum()`` as a plain loop: in a parallel kernel ``.sum()`` becomes a parallel
    region of its own, and one per channel cost ~2.5 us each (1.3 ms for 512 channels)."""
    acc = 0.0
    for n in range(part.shape[1]):
        acc += part[c, n]
    return acc


@kernel
def batch_norm_stats(mean, var, x):
    """Per-channel batch mean and biased variance over N and S, two-pass in float64.

    Parameters
    ----------
    mean, var : (C,) arrays, filled in place (the input's dtype).
    x : (N, C, S) array with N * S >= 1.
    """
    n_, c_, s_ = x.shape
    part = np.empty((c_, n_), np.float64)
    for p in prange(n_ * c_):
        c = p // n_
        n = p - c * n_
        part[c, n] = _plane_sum(x[n, c])
    count = n_ * s_
    m64 = np.empty(c_, np.float64)
    for c in range(c_):
        m64[c] = _row_sum(part, c) / count
    for p in prange(n_ * c_):
        c = p // n_
        n = p - c * n_
        part[c, n] = _plane_sq_dev(x[n, c], m64[c])
    for c in range(c_):
        mean[c] = m64[c]
        var[c] = _row_sum(part, c) / count


@kernel
def batch_norm_update(running_mean, running_var, mean, var, momentum, count):
    """PyTorch's running-stat update, in place: ``r = (1 - momentum) * r + momentum * batch``,
    with the unbiased variance ``var * count / (count - 1)`` for ``running_var``.

    Parameters
    ----------
    running_mean, running_var : (C,) arrays, updated in place.
    mean, var : (C,) batch mean and biased variance.
    momentum : float.
    count : int, N * S values per channel (>= 2).
    """
    keep = 1.0 - momentum
    unbias = count / (count - 1.0)
    for c in prange(mean.shape[0]):
        running_mean[c] = keep * running_mean[c] + momentum * mean[c]
        running_var[c] = keep * running_var[c] + momentum * (var[c] * unbias)


@helper
def _grad_sums(gs, xs, m):
    """float64 sums of ``gs`` and of ``gs * (xs - m)`` over contiguous segments."""
    sg = 0.0
    sgx = 0.0
    for i in range(gs.shape[0]):
        g = np.float64(gs[i])
        sg += g
        sgx += g * (np.float64(xs[i]) - m)
    return sg, sgx


@helper
def _grad_affine(out, gs, xs, a, b, m, d, training):
    """``out = a * gs + b * (xs - m) + d`` over contiguous segments (``a * gs`` in eval mode,
    where x does not enter: a NaN there must not reach the gradient)."""
    if training:
        for i in range(out.shape[0]):
            out[i] = a * gs[i] + b * (xs[i] - m) + d
    else:
        for i in range(out.shape[0]):
            out[i] = a * gs[i]


@kernel
def batch_norm_backward(gx, gw, gb, go, x, mean, var, weight, eps, training):
    """Gradients of batch normalisation with the statistics ``mean``, ``var``.

    Training mode (``mean``, ``var`` the batch's own statistics, which depend on x), with
    ``xhat = (x - mean) * invstd`` and M = N * S values per channel::

        gx = weight * invstd * (go - sum(go) / M - xhat * sum(go * xhat) / M)

    Eval mode (running statistics, constants): ``gx = go * weight * invstd``. In both,
    ``gw = sum(go * xhat)`` and ``gb = sum(go)`` over N and S.

    Parameters
    ----------
    gx : (N, C, S) array, filled in place.
    gw, gb : (C,) arrays, filled in place.
    go, x : (N, C, S) arrays.
    mean, var, weight : (C,) arrays.
    eps : float.
    training : bool.
    """
    n_, c_, s_ = x.shape
    sg = np.empty((c_, n_), np.float64)
    sgx = np.empty((c_, n_), np.float64)
    for p in prange(n_ * c_):
        c = p // n_
        n = p - c * n_
        sg[c, n], sgx[c, n] = _grad_sums(go[n, c], x[n, c], np.float64(mean[c]))
    count = n_ * s_
    a = np.empty(c_, gx.dtype)
    b = np.empty(c_, gx.dtype)
    d = np.empty(c_, gx.dtype)
    for c in range(c_):
        sum_g = _row_sum(sg, c)
        sum_gxm = _row_sum(sgx, c)
        invstd = 1.0 / math.sqrt(np.float64(var[c]) + eps)
        gb[c] = sum_g
        gw[c] = sum_gxm * invstd
        k = np.float64(weight[c]) * invstd
        a[c] = k
        if training and count > 0:
            b[c] = -k * invstd * invstd * sum_gxm / count
            d[c] = -k * sum_g / count
        else:
            b[c] = 0
            d[c] = 0
    for p in prange(n_ * c_):
        n = p // c_
        c = p - n * c_
        _grad_affine(gx[n, c], go[n, c], x[n, c], a[c], b[c], mean[c], d[c], training)
