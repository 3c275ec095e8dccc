"""Compilation options, scalar helpers and softmax reductions shared by the CPU kernels."""

import math
import types

import numba
import numpy as np

from numbaconv import _ops
from numbaconv.cpu import vecmath

# 'reassoc' lets LLVM vectorise reductions; NaN and Inf keep their IEEE behaviour (no
# 'nnan'/'ninf'), so they pass through kernels as they do in PyTorch. No 'contract': whether
# LLVM fuses a multiply and an add into one FMA (one rounding instead of two) depends on how a
# loop is optimised, and numba optimises a parallel kernel's body twice over: alone, which is
# the code the compiling process runs, and again linked into the kernel, which is the code the
# on-disk cache keeps for every later process. With 'contract' the two roundings differed (an
# SGD step, then whole training runs, gave other weights with a warm cache than with a cold
# one). Multiply-adds that should fuse say so: simd.fma and vecmath.fma.
FASTMATH = {"reassoc"}


def kernel(func):
    """Compile a CPU kernel: parallel, cached on disk, with the shared fastmath flags.

    A float division by zero gives inf or NaN, as in IEEE arithmetic and PyTorch, instead of
    numba's default ZeroDivisionError (``error_model="numpy"``, which numba already applies to
    the bodies of ``prange`` loops): a zero variance with ``eps=0`` in batch_norm's eval mode,
    whose per-channel scale is computed before the parallel loop. Integer divisors are shapes
    and strides, checked positive before any kernel runs.
    """
    return numba.njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")(func)


def helper(func):
    """Compile a small function that kernels inline (serial, cached)."""
    return numba.njit(inline="always", cache=True, fastmath=FASTMATH)(func)


def _with_vecmath(func):
    """A copy of _ops formula ``func`` whose ``exp``, ``tanh`` and ``erfc`` are vecmath's: float32
    versions that LLVM vectorises (libm calls would not be), float64 ones that call libm."""
    scope = dict(func.__globals__, exp=vecmath.exp, tanh=vecmath.tanh, erfc=vecmath.erfc)
    return types.FunctionType(func.__code__, scope, func.__name__, func.__defaults__,
                              func.__closure__)


sigmoid = helper(_with_vecmath(_ops.sigmoid))
apply_act = helper(_with_vecmath(_ops.apply_act))


nan_max = helper(_ops.nan_max)
adaptive_window = helper(_ops.adaptive_window)


# Stable softmax pieces, shared by softmax and the cross-entropy losses. The max skips NaN
# (v > m is False for it); a NaN then reaches every output through exp and the sum.


@helper
def row_max(xr):
    """Largest value of a contiguous 1-D row (-inf when empty)."""
    m = xr.dtype.type(-np.inf)
    for i in range(xr.shape[0]):
        v = xr[i]
        m = v if v > m else m
    return m


@helper
def row_lse(xr, m):
    """``log(sum(exp(xr - m)))`` over a contiguous 1-D row."""
    s = xr.dtype.type(0)
    for i in range(xr.shape[0]):
        s += math.exp(xr[i] - m)
    return math.log(s)


# Tile forms: the reduction runs over axis 1 of x[n, :, i0:i1], vectorised across the tile's
# positions; slices are indexed from 0 so LLVM sees non-negative indices (no wraparound gathers).

INNER_TILE = 256  # positions per task when the reduced axis is strided


@helper
def tile_task(t, tiles, inner):
    """(n, i0, i1): task ``t`` of a prange over rows x ``tiles`` tiles of ``inner`` positions."""
    n = t // tiles
    i0 = (t - n * tiles) * INNER_TILE
    return n, i0, min(i0 + INNER_TILE, inner)


@helper
def tile_max(x, n, i0, i1):
    """Per-position maximum over axis 1 of ``x[n, :, i0:i1]``, as a new (i1 - i0,) array."""
    li = i1 - i0
    mx = np.full(li, x.dtype.type(-np.inf), x.dtype)
    for c in range(x.shape[1]):
        xr = x[n, c, i0:i1]
        for i in range(li):
            v = xr[i]
            a = mx[i]
            mx[i] = v if v > a else a
    return mx


@helper
def tile_lse(x, n, i0, i1, mx):
    """Per-position ``log(sum(exp(x[n, :, i] - mx)))`` for i in [i0, i1), as a new array."""
    li = i1 - i0
    sm = np.zeros(li, x.dtype)
    for c in range(x.shape[1]):
        xr = x[n, c, i0:i1]
        for i in range(li):
            sm[i] += math.exp(xr[i] - mx[i])
    for i in range(li):
        sm[i] = math.log(sm[i])
    return sm
