"""Optimiser update kernels on the GPU: one thread per element of a flattened parameter.

The formulas are ``torch.optim``'s single-tensor paths, operation for operation, with the
hyper-parameters cast to the parameter's dtype as PyTorch does for its scalar arguments; the
gradient is only read.
"""

import math

from numbaconv import _cuda
from numbaconv.cuda._common import THREADS, blocks

cuda = _cuda.cuda()


@_cuda.kernel("void({T}[::1], {T}[::1], {T}[::1], float64, float64, float64, float64, boolean, "
              "boolean)")
def _sgd(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """SGD on p, g, buf (L,); buf is a stand-in when momentum is 0."""
    i = cuda.grid(1)
    if i >= p.shape[0]:
        return
    t = p.dtype.type
    d = g[i]
    if weight_decay != 0.0:
        d = d + t(weight_decay) * p[i]
    if momentum != 0.0:
        if first:
            b = d  # torch: the buffer starts as a copy of the first gradient
        else:
            b = buf[i] * t(momentum) + t(1.0 - dampening) * d
        buf[i] = b
        d = d + t(momentum) * b if nesterov else b
    p[i] = p[i] - t(lr) * d


def sgd(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """One SGD step on a flattened parameter, as ``torch.optim.SGD``.

    Parameters
    ----------
    p : (L,) device array, updated in place.
    g : (L,) device array, the gradient (read only).
    buf : (L,) device array (the momentum buffer, updated in place), or None when momentum is 0.
    lr, momentum, dampening, weight_decay : float.
    nesterov, first : bool; ``first`` starts the buffer as a copy of the gradient.
    """
    n = p.shape[0]
    if n == 0:
        return
    _sgd[blocks(n), THREADS](p, g, p if buf is None else buf, float(lr), float(momentum),
                             float(dampening), float(weight_decay), bool(nesterov), bool(first))


@_cuda.kernel("void({T}[::1], {T}[::1], {T}[::1], {T}[::1], {T}[::1], float64, float64, float64, "
              "float64, float64, float64, boolean)")
def _adam(p, g, m, v, vmax, step_size, beta1, beta2, eps, weight_decay, bc2_sqrt, amsgrad):
    """Adam on p, g, m, v, vmax (L,); vmax is a stand-in without amsgrad."""
    i = cuda.grid(1)
    if i >= p.shape[0]:
        return
    t = p.dtype.type
    d = g[i]
    if weight_decay != 0.0:
        d = d + t(weight_decay) * p[i]
    # exp_avg.lerp_(d, 1 - beta1): torch picks the formula by the weight's size
    w1 = t(1.0 - beta1)
    a = m[i]
    if abs(1.0 - beta1) < 0.5:
        a = a + w1 * (d - a)
    else:
        a = d - (d - a) * (t(1) - w1)
    m[i] = a
    s = v[i] * t(beta2)
    s = s + t(1.0 - beta2) * d * d
    v[i] = s
    if amsgrad:
        s = max(vmax[i], s)
        vmax[i] = s
    denom = math.sqrt(s) / t(bc2_sqrt) + t(eps)
    p[i] = p[i] + t(-step_size) * a / denom


def adam(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, step_size, beta1, beta2, eps, weight_decay,
         bias_correction2_sqrt):
    """One Adam step on a flattened parameter, as ``torch.optim.Adam``.

    Parameters
    ----------
    p : (L,) device array, updated in place.
    g : (L,) device array, the gradient (read only).
    exp_avg, exp_avg_sq : (L,) device arrays, updated in place.
    max_exp_avg_sq : (L,) device array updated in place (amsgrad), or None.
    step_size : float, ``lr / (1 - beta1 ** step)``.
    beta1, beta2, eps, weight_decay : float.
    bias_correction2_sqrt : float, ``(1 - beta2 ** step) ** 0.5``.
    """
    n = p.shape[0]
    if n == 0:
        return
    amsgrad = max_exp_avg_sq is not None
    _adam[blocks(n), THREADS](p, g, exp_avg, exp_avg_sq,
                              max_exp_avg_sq if amsgrad else exp_avg_sq, float(step_size),
                              float(beta1), float(beta2), float(eps), float(weight_decay),
                              float(bias_correction2_sqrt), amsgrad)
