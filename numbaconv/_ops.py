"""Scalar math shared by the CPU and CUDA kernels.

These are plain Python functions that call no other function of this module (jitted code cannot
call plain Python functions). ``numbaconv.cpu`` wraps them with ``njit(inline="always")`` and
``numbaconv.cuda`` with ``cuda.jit(device=True)``, so the two backends compute the same formulas
and cannot drift apart. Nothing here imports numba.

Arithmetic stays in the argument's precision: constants are cast with ``type(v)(...)``, since a
bare float literal would promote float32 math to float64. ``exp``, ``tanh`` and ``erfc`` are looked
up as module globals so that a backend may bind its own: the CPU binds vectorisable float32
versions (``numbaconv.cpu.vecmath``; libm has no vector form without SVML), CUDA keeps these.
"""

from math import erfc, exp, tanh

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
    # exp of -|v| never overflows: 1 / (1 + e) for v >= 0, e / (1 + e) below; NaN passes.
    one = type(v)(1)
    e = exp(-abs(v))
    return (one if v >= 0 else e) / (one + e)


def apply_act(v, act, alpha):
    """Return activation ``act`` (an ACT_* code) of scalar ``v``; NaN passes through."""
    ty = type(v)
    zero = ty(0)
    one = ty(1)
    if act == ACT_NONE:
        return v
    if act == ACT_RELU:
        # v > 0 is False for NaN, so test the negative side to let NaN through as torch does.
        return zero if v <= zero else v
    if act == ACT_RELU6:
        if v <= zero:
            return zero
        six = ty(6)
        return six if v >= six else v
    if act == ACT_LEAKY_RELU:
        return v * ty(alpha) if v < zero else v
    if act == ACT_SIGMOID or act == ACT_SILU:
        # sigmoid() inlined: jitted code cannot call the plain Python function.
        e = exp(-abs(v))
        s = (one if v >= zero else e) / (one + e)
        return s if act == ACT_SIGMOID else v * s
    if act == ACT_TANH:
        return tanh(v)
    if act == ACT_GELU:
        # v Phi(v) with Phi(v) = erfc(-v / sqrt 2) / 2, not (1 + erf) / 2: no cancellation for
        # v < 0, where Phi is small.
        return ty(0.5) * v * erfc(v * ty(-_SQRT_HALF))
    if act == ACT_GELU_TANH:
        # (1 + tanh(u)) / 2 = sigmoid(2u), computed as above so that it keeps its precision for
        # v < 0; 2u = sqrt(8/pi) (v + 0.044715 v**3) is written v (a + b v**2).
        w = v * (ty(2 * _SQRT_2_OVER_PI) + ty(2 * _SQRT_2_OVER_PI * 0.044715) * (v * v))
        e = exp(-abs(w))
        return v * (one if v >= zero else e) / (one + e)
    if act == ACT_HARDSWISH:
        three = ty(3)
        if v <= -three:
            return v * zero  # -0.0, and NaN for -inf, as torch's x * relu6(x + 3) / 6
        if v >= three:
            return v
        return v * (v + three) * ty(1 / 6)
    return v


def nan_max(m, v):
    """``max(m, v)`` where a NaN ``v`` wins (``v > m`` is False for NaN), as in PyTorch's max."""
    return v if (v > m or v != v) else m


def adaptive_window(i, size, osize):
    """Input range ``[floor(i*size/osize), ceil((i+1)*size/osize))`` of adaptive-pool output ``i``."""
    return (i * size) // osize, ((i + 1) * size + osize - 1) // osize
