"""Scalar math shared by the CPU and CUDA kernels.

These are plain Python functions that call no other function of this module (jitted code cannot
call plain Python functions). ``numbaconv.cpu`` wraps them with ``njit(inline="always")`` and
``numbaconv.cuda`` with ``cuda.jit(device=True)``, so the two backends compute the same formulas
and cannot drift apart. Nothing here imports numba.
"""

import math

# Activation codes passed to kernels (kernels take an int, not a string).
ACT_NONE = 0
ACT_RELU = 1
ACT_RELU6 = 2
ACT_LEAKY_RELU = 3  # uses the kernel argument ``alpha`` as negative_slope
ACT_SIGMOID = 4
ACT_TANH = 5
ACT_SILU = 6
ACT_GELU = 7  # exact, with erf
ACT_GELU_TANH = 8  # approximate='tanh'
ACT_HARDSWISH = 9

ACTIVATIONS = {
    "relu": ACT_RELU,
    "relu6": ACT_RELU6,
    "leaky_relu": ACT_LEAKY_RELU,
    "sigmoid": ACT_SIGMOID,
    "tanh": ACT_TANH,
    "silu": ACT_SILU,
    "gelu": ACT_GELU,
    "gelu_tanh": ACT_GELU_TANH,
    "hardswish": ACT_HARDSWISH,
}

_SQRT_HALF = 0.7071067811865476
_SQRT_2_OVER_PI = 0.7978845608028654


def sigmoid(v):
    """Logistic function of scalar ``v``."""
    # Two branches so that exp never overflows: stable for |v| up to the dtype's max.
    if v >= 0:
        return 1.0 / (1.0 + math.exp(-v))
    e = math.exp(v)
    return e / (1.0 + e)


def apply_act(v, act, alpha):
    """Return activation ``act`` (an ACT_* code) of scalar ``v``; NaN passes through."""
    if act == ACT_NONE:
        return v
    if act == ACT_RELU:
        # v > 0 is False for NaN, so test the negative side to let NaN through as torch does.
        return 0.0 if v <= 0 else v
    if act == ACT_RELU6:
        if v <= 0:
            return 0.0
        return 6.0 if v >= 6 else v
    if act == ACT_LEAKY_RELU:
        return v * alpha if v < 0 else v
    if act == ACT_SIGMOID or act == ACT_SILU:
        # sigmoid() inlined: jitted code cannot call the plain Python function.
        if v >= 0:
            s = 1.0 / (1.0 + math.exp(-v))
        else:
            e = math.exp(v)
            s = e / (1.0 + e)
        return s if act == ACT_SIGMOID else v * s
    if act == ACT_TANH:
        return math.tanh(v)
    if act == ACT_GELU:
        return 0.5 * v * (1.0 + math.erf(v * _SQRT_HALF))
    if act == ACT_GELU_TANH:
        return 0.5 * v * (1.0 + math.tanh(_SQRT_2_OVER_PI * (v + 0.044715 * v * v * v)))
    if act == ACT_HARDSWISH:
        if v <= -3:
            return v * 0.0  # -0.0, and NaN for -inf, as torch's x * relu6(x + 3) / 6
        if v >= 3:
            return v
        return v * (v + 3.0) / 6.0
    return v


def nan_max(m, v):
    """``max(m, v)`` where a NaN ``v`` wins (``v > m`` is False for NaN), as in PyTorch's max."""
    return v if (v > m or v != v) else m


def adaptive_window(i, size, osize):
    """Input range ``[floor(i*size/osize), ceil((i+1)*size/osize))`` of adaptive-pool output ``i``."""
    return (i * size) // osize, ((i + 1) * size + osize - 1) // osize
