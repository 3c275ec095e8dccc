"""Optimiser update kernels: one elementwise pass over a flattened parameter.

The formulas are ``torch.optim``'s single-tensor paths, operation for operation, with the
hyper-parameters cast to the parameter's dtype as PyTorch does for its scalar arguments; the
gradient is only read (weight decay is added to a copy, as in PyTorch).
"""

import math

from numba import prange

from numbaconv.cpu._common import kernel

CHUNK = 16384  # elements per task


@kernel
def _sgd(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    n = p.shape[0]
    t = p.dtype.type
    lr_, mom, damp, wd = t(lr), t(momentum), t(1.0 - dampening), t(weight_decay)
    use_wd = weight_decay != 0.0
    use_mom = momentum != 0.0
    for k in prange((n + CHUNK - 1) // CHUNK):
        lo = k * CHUNK
        hi = min(lo + CHUNK, n)
        pseg = p[lo:hi]
        gseg = g[lo:hi]
        bseg = buf[lo:hi]
        for i in range(hi - lo):
            d = gseg[i]
            if use_wd:
                d = d + wd * pseg[i]
            if use_mom:
                if first:
                    b = d  # torch: the buffer starts as a copy of the first gradient
                else:
                    b = bseg[i] * mom + damp * d
                bseg[i] = b
                d = d + mom * b if nesterov else b
            pseg[i] = pseg[i] - lr_ * d


def sgd(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first):
    """One SGD step on a flattened parameter, as ``torch.optim.SGD``.

    ``d = g + weight_decay * p``; with momentum ``buf = momentum * buf + (1 - dampening) * d``
    (``buf = d`` on the ``first`` step) and ``d = d + momentum * buf`` (nesterov) or ``buf``;
    then ``p -= lr * d``.

    Parameters
    ----------
    p : (L,) array, updated in place.
    g : (L,) array, the gradient (read only).
    buf : (L,) array (the momentum buffer, updated in place), or None when momentum is 0.
    lr, momentum, dampening, weight_decay : float.
    nesterov, first : bool.
    """
    if p.size == 0:
        return
    _sgd(p, g, p if buf is None else buf, float(lr), float(momentum), float(dampening),
         float(weight_decay), bool(nesterov), bool(first))


@kernel
def _adam(p, g, m, v, vmax, step_size, beta1, beta2, eps, weight_decay, bc2_sqrt, amsgrad):
    n = p.shape[0]
    t = p.dtype.type
    w1 = t(1.0 - beta1)
    b2, w2 = t(beta2), t(1.0 - beta2)
    neg_step, eps_, wd, bc2 = t(-step_size), t(eps), t(weight_decay), t(bc2_sqrt)
    use_wd = weight_decay != 0.0
    small = abs(1.0 - beta1) < 0.5  # torch's lerp picks its formula by the weight's size
    one = t(1)
    for k in prange((n + CHUNK - 1) // CHUNK):
        lo = k * CHUNK
        hi = min(lo + CHUNK, n)
        pseg = p[lo:hi]
        gseg = g[lo:hi]
        mseg = m[lo:hi]
        vseg = v[lo:hi]
        xseg = vmax[lo:hi]
        for i in range(hi - lo):
            d = gseg[i]
            if use_wd:
                d = d + wd * pseg[i]
            # exp_avg.lerp_(d, 1 - beta1)
            a = mseg[i]
            if small:
                a = a + w1 * (d - a)
            else:
                a = d - (d - a) * (one - w1)
            mseg[i] = a
            # exp_avg_sq.mul_(beta2).addcmul_(d, d, value=1 - beta2)
            s = vseg[i] * b2
            s = s + w2 * d * d
            vseg[i] = s
            if amsgrad:
                s = max(xseg[i], s)
                xseg[i] = s
            denom = math.sqrt(s) / bc2 + eps_
            pseg[i] = pseg[i] + neg_step * a / denom


def adam(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, step_size, beta1, beta2, eps, weight_decay,
         bias_correction2_sqrt):
    """One Adam step on a flattened parameter, as ``torch.optim.Adam``.

    ``d = g + weight_decay * p``, ``m = lerp(m, d, 1 - beta1)``,
    ``v = beta2 * v + (1 - beta2) * d * d`` (``vmax = max(vmax, v)`` used instead of v with
    amsgrad), ``p += -step_size * m / (sqrt(v) / bias_correction2_sqrt + eps)``.

    Parameters
    ----------
    p : (L,) array, updated in place.
    g : (L,) array, the gradient (read only).
    exp_avg, exp_avg_sq : (L,) arrays, updated in place.
    max_exp_avg_sq : (L,) array updated in place (amsgrad), or None.
    step_size : float, ``lr / (1 - beta1 ** step)``.
    beta1, beta2, eps, weight_decay : float.
    bias_correction2_sqrt : float, ``(1 - beta2 ** step) ** 0.5``.
    """
    if p.size == 0:
        return
    amsgrad = max_exp_avg_sq is not None
    _adam(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq if amsgrad else exp_avg_sq,
          float(step_size), float(beta1), float(beta2), float(eps), float(weight_decay),
          float(bias_correction2_sqrt), amsgrad)
