"""Device functions and launch helpers shared by the CUDA kernels."""

import math

import numpy as np

from numbaconv import _cuda, _ops

cuda = _cuda.cuda()

# ---- float16: stored in half precision, computed in float32 -------------------------------------
# Kernels declared with ``half=True`` read float16 values through ``widen`` and sum them in
# ``acc_dtype(x.dtype)`` registers and shared tiles, so float16 data is computed on in float32
# and rounded to float16 once, at the store. For float32 and float64 both are the identity:
# those specialisations compile exactly as before, with no conversions.


def widen(v):
    """Scalar ``v`` as float32 if it is float16, else ``v`` unchanged."""
    return np.float32(v) if type(v) is np.float16 else v


@_cuda.overload(widen)
def _widen_cuda(v):
    if _cuda.is_float16(v):
        return lambda v: np.float32(v)
    return lambda v: v


def acc_dtype(dtype):
    """The scalar type (a class, e.g. ``np.float32``) that sums over arrays of ``dtype``
    accumulate in: float32 for float16 and float32, float64 for float64. Usable as a local or
    shared array's dtype and called to convert: ``acc_dtype(x.dtype)(0)``."""
    return np.float64 if dtype == np.float64 else np.float32


@_cuda.overload(acc_dtype)
def _acc_dtype_cuda(dtype):
    if str(dtype.dtype) == "float64":
        return lambda dtype: np.float64
    return lambda dtype: np.float32


sigmoid = _cuda.device_function(_ops.sigmoid)
apply_act = _cuda.device_function(_ops.apply_act)

THREADS = 256  # threads per block for 1-D grids

def device_id():
    """The current GPU's number (0 in the simulator, whose device has none)."""
    return getattr(cuda.get_current_device(), "id", 0)


def blocks(n, threads=THREADS):
    """Blocks needed to cover ``n`` items with ``threads`` per block (at least one)."""
    return max(1, (n + threads - 1) // threads)


nan_max = _cuda.device_function(_ops.nan_max)
adaptive_window = _cuda.device_function(_ops.adaptive_window)


def view(a, shape):
    """A view of C-contiguous device array ``a`` with another ``shape`` of the same size (no
    copy). A numba array's view is built directly: a third of ``reshape``'s host time, which
    counts in every launch of a small op."""
    if tuple(shape) == a.shape:
        return a
    if type(a).__name__ != "DeviceNDArray" or a.size == 0:  # the simulator's arrays, empty ones
        return a.reshape(shape)
    strides, step = [], a.dtype.itemsize
    for dim in reversed(shape):
        strides.append(step)
        step *= dim
    return type(a)(shape, tuple(reversed(strides)), a.dtype, gpu_data=a.gpu_data)


def flat(a):
    """A 1-D view of a C-contiguous device array (no copy)."""
    return view(a, (a.size,))


def _unravel4(idx, d1, d2, d3):
    # C-order (i0, i1, i2, i3) of flat index idx over an array of shape (any, d1, d2, d3).
    i3 = idx % d3
    t = idx // d3
    i2 = t % d2
    t = t // d2
    return t // d1, t % d1, i2, i3


unravel4 = _cuda.device_function(_unravel4)


def _max_sum_exp(x, a, b):
    # Over axis 1 of x[a, :, b]: the NaN-propagating max m and the float64 sum of exp(x - m)
    # (float16 x: in float32).
    m = acc_dtype(x.dtype)(-math.inf)
    for c in range(x.shape[1]):
        m = nan_max(m, widen(x[a, c, b]))
    s = 0.0
    for c in range(x.shape[1]):
        s += math.exp(widen(x[a, c, b]) - m)
    return m, s


max_sum_exp = _cuda.device_function(_max_sum_exp)


def _block_sum(red, tid, threads):
    # Tree-sums shared float64 array red[:threads] into red[0]; every thread of the block calls
    # it (threads a power of two). Ends with a barrier, so all threads may then read red[0].
    cuda.syncthreads()
    step = threads // 2
    while step > 0:
        if tid < step:
            red[tid] += red[tid + step]
        cuda.syncthreads()
        step //= 2


block_sum = _cuda.device_function(_block_sum)
