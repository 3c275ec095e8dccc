"""CPU backend: ``@njit(parallel=True, cache=True)`` kernels, one module per op family.

Both backends (``numbaconv.cpu`` and ``numbaconv.cuda``) export the same launcher functions with
the same arguments. ``numbaconv.functional`` has already checked every argument, made the arrays
C-contiguous and of one float dtype (float32 or float64), and allocated the output, so a launcher
only fills ``out`` and returns None.

conv:       conv2d(out, x, w, b, residual, stride, padding, dilation, groups, act, alpha)
                x (N, C, H, W), w (OC, C // groups, KH, KW), b (OC,) or None, out (N, OC, OH, OW);
                residual None or shaped as out, added after the bias (before act);
                stride, padding (top, left), dilation are (h, w) int tuples; padding past the
                bottom/right edge is implied by out's shape; act is a numbaconv._ops.ACT_* code
                applied after the bias, alpha its parameter (leaky_relu slope).
pool:       max_pool2d(out, x, kernel, stride, padding, dilation)
            avg_pool2d(out, x, kernel, stride, padding, count_include_pad)
            adaptive_avg_pool2d(out, x), adaptive_max_pool2d(out, x)
                x (N, C, H, W), out (N, C, OH, OW); ceil_mode is already in out's shape.
activation: activation(out, x, act, alpha)       x, out 1-D
dense:      linear(out, x, w, b)                 x (M, K), w (N, K), b (N,) or None, out (M, N)
            softmax(out, x, log)                 x, out (outer, D, inner): softmax over axis 1
norm:       batch_norm(out, x, mean, var, weight, bias, eps)
                x, out (N, C, S); mean, var, weight, bias (C,)
loss:       cross_entropy(out, x, target)        x (N, C, S), target int64 (N, S) class indices
                                                 already checked to lie in [0, C); out (N, S)
            cross_entropy_prob(out, x, target)   target (N, C, S) class probabilities; out (N, S)
            squared_error(out, x, t)             x, t, out 1-D: out = (x - t) ** 2
            reduce_sum(out, x, scale)            x 1-D, out (1,): out[0] = sum(x) * scale,
                                                 accumulated in float64
"""

import os as _os

from numbaconv import _jitcache

from numbaconv.cpu import simd  # noqa: E402  (no kernels: fixes the vector width)

# Before any kernel module is imported: cached kernels compiled from older sources, or for
# another vector width, are dropped.
_jitcache.refresh(_os.path.dirname(_os.path.abspath(__file__)), [_jitcache.OPS_SOURCE],
                  settings=f"simd lanes {simd.LANES}")

from numbaconv.cpu.activation import activation  # noqa: E402
from numbaconv.cpu.conv import conv2d  # noqa: E402
from numbaconv.cpu.dense import linear, softmax  # noqa: E402
from numbaconv.cpu.loss import cross_entropy, cross_entropy_prob, reduce_sum, squared_error  # noqa: E402
from numbaconv.cpu.norm import batch_norm  # noqa: E402
from numbaconv.cpu.pool import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d  # noqa: E402

__all__ = [
    "activation", "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "batch_norm",
    "conv2d", "cross_entropy", "cross_entropy_prob", "linear", "max_pool2d", "reduce_sum",
    "softmax", "squared_error",
]
