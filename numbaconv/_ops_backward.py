"""Scalar derivative formulas shared by the CPU and CUDA backward kernels.

The backward counterpart of ``numbaconv._ops`` and written the same way: plain Python functions
that call nothing else from this module, constants cast with ``type(v)(...)``, and ``exp``,
``tanh`` and ``erfc`` looked up as module globals so that the CPU can bind its vectorisable
float32 versions (``numbaconv.cpu.vecmath``) while CUDA keeps ``math``'s. Nothing here imports
numba.

The derivatives are PyTorch autograd's, including at the kinks and for NaN and Inf inputs:
relu'(0) = 0, relu6' is 0 at 0 and at 6, leaky_relu' at 0 is the slope, hardswish' is 0 at -3
and 1 at 3, and a NaN input gives the gradient torch's comparisons give it (relu, relu6,
hardswish: passed through; leaky_relu: times the slope; the smooth ones: NaN).
"""

from math import erfc, exp, tanh

from numbaconv._ops import (ACT_GELU, ACT_GELU_TANH, ACT_HARDSWISH, ACT_LEAKY_RELU, ACT_RELU,
                            ACT_RELU6, ACT_SIGMOID, ACT_SILU, ACT_TANH)

_SQRT_HALF = 0.7071067811865476
_INV_SQRT_2PI = 0.3989422804014327
_SQRT_2_OVER_PI = 0.7978845608028654
_KAPPA = 0.044715


def act_grad(v, g, act, alpha):
    """Gradient ``g * act'(v)`` of activation ``act`` (an ACT_* code) at input ``v``."""
    ty = type(v)
    zero = ty(0)
    one = ty(1)
    if act == ACT_RELU:
        # torch's threshold_backward: x <= 0 gives 0, anything else (NaN too) passes g.
        return zero if v <= zero else g
    if act == ACT_RELU6:
        # hardtanh_backward(0, 6): 0 at and beyond both ends.
        return zero if (v <= zero or v >= ty(6)) else g
    if act == ACT_LEAKY_RELU:
        return g if v > zero else g * ty(alpha)
    if act == ACT_SIGMOID or act == ACT_SILU:
        e = exp(-abs(v))
        s = (one if v >= zero else e) / (one + e)
        if act == ACT_SIGMOID:
            return g * ((one - s) * s)
        # torch: g * s * (1 + x * (1 - s)), NaN at +-inf as there.
        return g * (s * (one + v * (one - s)))
    if act == ACT_TANH:
        t = tanh(v)
        return g * (one - t * t)
    if act == ACT_GELU:
        # Phi(v) + v phi(v); Phi through erfc as in the forward (no cancellation for v < 0).
        cdf = ty(0.5) * erfc(v * ty(-_SQRT_HALF))
        pdf = exp(ty(-0.5) * v * v) * ty(_INV_SQRT_2PI)
        return g * (cdf + v * pdf)
    if act == ACT_GELU_TANH:
        # torch's derivative of v (1 + tanh u) / 2, u = sqrt(2/pi) (v + k v**3):
        #   (1 + tanh u) / 2 + v / 2 (1 - tanh(u)**2) u',  u' = sqrt(2/pi) (1 + 3 k v**2),
        # written with s = (1 + tanh u) / 2 = sigmoid(2u) and 1 - tanh(u)**2 = 4 s (1 - s), both
        # from exp(-|2u|) as in the forward, so that they keep their precision for v < 0.
        v2 = v * v
        e = exp(-abs(v * (ty(2 * _SQRT_2_OVER_PI) + ty(2 * _SQRT_2_OVER_PI * _KAPPA) * v2)))
        r = one / (one + e)
        s = (one if v >= zero else e) * r
        s1 = (e if v >= zero else one) * r  # 1 - s
        du = ty(_SQRT_2_OVER_PI) + ty(3 * _KAPPA * _SQRT_2_OVER_PI) * v2
        # Capped: where v**2 overflows, s (1 - s) is 0 and the term must stay 0 (torch's
        # float32 kernel gives NaN there; NaN only for v = +-inf, as torch's float64).
        cap = ty(1e30)
        du = du if du < cap else cap
        return g * (s + ty(2) * v * (s * s1) * du)
    if act == ACT_HARDSWISH:
        if v <= ty(-3):
            return zero
        if v < ty(3):
            return g * (v * ty(1 / 3) + ty(0.5))
        return g
    return g
