"""Float64 NumPy reference implementations of numbaconv.functional, written for clarity.

Every function has the same name and signature as its ``numbaconv.functional`` counterpart and
returns a float64 NumPy array (0-d for reduced losses). Nothing here imports numbaconv: these are
the independent oracle the kernels are tested against, and ``test_reference.py`` checks them
against PyTorch. They assume valid arguments (argument checking is numbaconv's job) but raise
``ValueError`` where no output can be formed.

Semantics follow ``torch.nn.functional``: NCHW layout, floor / ceil output sizes, 'same' padding
with the extra element after, NaN and Inf propagating through the arithmetic.
"""

import functools
import math

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "batch_norm", "conv1d", "conv2d",
    "cross_entropy", "gelu", "hardswish", "leaky_relu", "linear", "log_softmax", "max_pool2d",
    "max_pool2d_backward", "mse_loss", "relu", "relu6", "sigmoid", "silu", "softmax", "tanh",
]


def _quiet(func):
    """Run ``func`` with NumPy floating-point warnings off: NaN/Inf inputs are tested on purpose."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return func(*args, **kwargs)

    return wrapper


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _tuple(value, n):
    return (int(value),) * n if np.isscalar(value) else tuple(int(v) for v in value)


# ---------------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------------

@_quiet
def relu(input):
    return np.maximum(_f64(input), 0.0)  # np.maximum propagates NaN


@_quiet
def relu6(input):
    return np.minimum(np.maximum(_f64(input), 0.0), 6.0)


@_quiet
def leaky_relu(input, negative_slope=0.01):
    x = _f64(input)
    return np.where(x < 0, x * negative_slope, x)


@_quiet
def sigmoid(input):
    x = _f64(input)
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@_quiet
def tanh(input):
    return np.tanh(_f64(input))


@_quiet
def silu(input):
    x = _f64(input)
    return x * sigmoid(x)


_erf = np.frompyfunc(math.erf, 1, 1)


@_quiet
def gelu(input, approximate="none"):
    x = _f64(input)
    if approximate == "tanh":
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    if approximate != "none":
        raise ValueError(f"approximate={approximate!r}")
    return 0.5 * x * (1.0 + np.asarray(_erf(x / math.sqrt(2.0)), dtype=np.float64))


@_quiet
def hardswish(input):
    x = _f64(input)
    return x * np.minimum(np.maximum(x + 3.0, 0.0), 6.0) / 6.0


def _activation(y, activation):
    """conv2d's fused epilogue: a name, or ('leaky_relu', slope)."""
    if activation is None:
        return y
    if isinstance(activation, tuple):
        name, slope = activation
        assert name == "leaky_relu"
        return leaky_relu(y, slope)
    return {"relu": relu, "relu6": relu6, "leaky_relu": leaky_relu, "sigmoid": sigmoid,
            "tanh": tanh, "silu": silu, "gelu": gelu, "hardswish": hardswish}[activation](y)


# ---------------------------------------------------------------------------------------------
# Convolution
# ---------------------------------------------------------------------------------------------

def _same_pads(ksize, dilation):
    """torch's padding='same': total d*(k-1), the odd element after."""
    pads = []
    for k, d in zip(ksize, dilation):
        total = d * (k - 1)
        pads.append((total // 2, total - total // 2))
    return pads


@_quiet
def _conv2d_core(x, w, b, stride, pads, dilation, groups):
    """x (N, C, H, W), w (OC, C/groups, KH, KW); pads ((top, bottom), (left, right))."""
    n, c, _, _ = x.shape
    oc, cg, kh, kw = w.shape
    assert cg * groups == c and oc % groups == 0
    xp = np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))
    (sh, sw), (dh, dw) = stride, dilation
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1  # dilated kernel extent
    if xp.shape[2] < eh or xp.shape[3] < ew:
        raise ValueError(f"padded input {xp.shape[2:]} is smaller than the dilated kernel "
                         f"{(eh, ew)}")
    # (N, C, OH, OW, KH, KW): every output pixel's receptive field, dilated and strided.
    win = sliding_window_view(xp, (eh, ew), axis=(2, 3))[:, :, ::sh, ::sw, ::dh, ::dw]
    oh, ow = win.shape[2], win.shape[3]
    win = win.reshape(n, groups, cg, oh, ow, kh, kw)
    wg = w.reshape(groups, oc // groups, cg, kh, kw)
    out = np.einsum("ngchwij,gocij->ngohw", win, wg, optimize=True).reshape(n, oc, oh, ow)
    if b is not None:
        out = out + b.reshape(1, oc, 1, 1)
    return out


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           activation=None, residual=None):
    x, w, b = _f64(input), _f64(weight), _f64(bias)
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    stride, dilation = _tuple(stride, 2), _tuple(dilation, 2)
    if padding == "valid":
        pads = [(0, 0), (0, 0)]
    elif padding == "same":
        pads = _same_pads(w.shape[2:], dilation)
    else:
        pads = [(p, p) for p in _tuple(padding, 2)]
    out = _conv2d_core(x, w, b, stride, pads, dilation, groups)
    if residual is not None:
        out = out + _f64(residual).reshape(out.shape)
    out = _activation(out, activation)
    return out[0] if unbatched else out


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    x, w, b = _f64(input), _f64(weight), _f64(bias)
    unbatched = x.ndim == 2
    if unbatched:
        x = x[None]
    (stride,), (dilation,) = _tuple(stride, 1), _tuple(dilation, 1)
    if padding == "valid":
        pad = (0, 0)
    elif padding == "same":
        pad = _same_pads(w.shape[2:], (dilation,))[0]
    else:
        (p,) = _tuple(padding, 1)
        pad = (p, p)
    # A 1-D convolution is a 2-D one over images of height 1.
    out = _conv2d_core(x[:, :, None, :], w[:, :, None, :], b, (1, stride), [(0, 0), pad],
                       (1, dilation), groups)[:, :, 0, :]
    return out[0] if unbatched else out


# ---------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------

def _pool_size(size, k, s, p, d, ceil_mode):
    """torch's pooling_output_shape."""
    out = (size + 2 * p - d * (k - 1) - 1 + ((s - 1) if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1  # the last window must start inside the input or its left padding
    return out


def _as4d(x):
    return (x[None], True) if x.ndim == 3 else (x, False)


def _taps(xp, k, s, d, out_hw):
    """Yield, per kernel tap (i, j), the (N, C, OH, OW) slice of padded ``xp`` it reads."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = k, s, d, out_hw
    for i in range(kh):
        for j in range(kw):
            yield xp[:, :, i * dh: i * dh + (oh - 1) * sh + 1: sh,
                     j * dw: j * dw + (ow - 1) * sw + 1: sw]


def _pad_for(x, k, s, p, d, out_hw, value):
    """Pad H and W by p before and as much as the last window needs after."""
    pads = []
    for size, kk, ss, pp, dd, o in zip(x.shape[2:], k, s, p, d, out_hw):
        need = (o - 1) * ss + dd * (kk - 1) + 1  # padded length the windows span
        pads.append((pp, max(0, need - size - pp)))
    return np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]), constant_values=value)


@_quiet
def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False):
    x, unbatched = _as4d(_f64(input))
    k = _tuple(kernel_size, 2)
    s = k if stride is None else _tuple(stride, 2)
    p, d = _tuple(padding, 2), _tuple(dilation, 2)
    out_hw = tuple(_pool_size(n, *a, ceil_mode) for n, a in zip(x.shape[2:], zip(k, s, p, d)))
    if min(out_hw) < 1:
        raise ValueError(f"output size {out_hw} is too small")
    xp = _pad_for(x, k, s, p, d, out_hw, -np.inf)  # padding never wins a max
    out = functools.reduce(np.maximum, _taps(xp, k, s, d, out_hw))  # np.maximum keeps NaN
    return out[0] if unbatched else out


def max_pool2d_backward(grad_output, input, kernel_size, stride=None, padding=0, dilation=1,
                        ceil_mode=False):
    """Gradient of :func:`max_pool2d` w.r.t. ``input`` (an array, not numbaconv's 1-tuple): each
    window's gradient goes to its arg-max, the first maximum in scan order or the last NaN (as
    PyTorch picks it). A window with no tap inside the input (its output is -inf) adds nothing."""
    x, unbatched = _as4d(_f64(input))
    go = _as4d(_f64(grad_output))[0]
    (kh, kw), (sh, sw) = _tuple(kernel_size, 2), _tuple(kernel_size if stride is None else
                                                        stride, 2)
    (ph, pw), (dh, dw) = _tuple(padding, 2), _tuple(dilation, 2)
    grad = np.zeros_like(x)
    for oh in range(go.shape[2]):
        for ow in range(go.shape[3]):
            taps = [(oh * sh - ph + i * dh, ow * sw - pw + j * dw)
                    for i in range(kh) for j in range(kw)]
            taps = [(r, c) for r, c in taps if 0 <= r < x.shape[2] and 0 <= c < x.shape[3]]
            if not taps:
                continue
            rows, cols = np.array(taps).T
            vals = x[:, :, rows, cols]  # (N, C, taps)
            nan = np.isnan(vals)
            last_nan = len(taps) - 1 - np.argmax(nan[..., ::-1], axis=-1)
            first_max = np.argmax(np.where(nan, -np.inf, vals), axis=-1)
            pick = np.where(nan.any(axis=-1), last_nan, first_max)
            for n in range(x.shape[0]):
                for c in range(x.shape[1]):
                    grad[n, c, rows[pick[n, c]], cols[pick[n, c]]] += go[n, c, oh, ow]
    return grad[0] if unbatched else grad


@_quiet
def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True):
    x, unbatched = _as4d(_f64(input))
    k = _tuple(kernel_size, 2)
    s = k if stride is None else _tuple(stride, 2)
    p, d = _tuple(padding, 2), (1, 1)
    out_hw = tuple(_pool_size(n, *a, ceil_mode) for n, a in zip(x.shape[2:], zip(k, s, p, d)))
    if min(out_hw) < 1:
        raise ValueError(f"output size {out_hw} is too small")
    xp = _pad_for(x, k, s, p, d, out_hw, 0.0)
    total = functools.reduce(np.add, _taps(xp, k, s, d, out_hw))
    # Divisor per output row / column, as torch: the window clipped to the padded input
    # (count_include_pad) or to the input itself.
    divisors = []
    for size, kk, ss, pp, o in zip(x.shape[2:], k, s, p, out_hw):
        start = np.arange(o) * ss - pp
        end = np.minimum(start + kk, size + pp)
        if count_include_pad:
            divisors.append(end - start)
        else:
            divisors.append(np.minimum(end, size) - np.maximum(start, 0))
    out = total / (divisors[0][:, None] * divisors[1][None, :])
    return out[0] if unbatched else out


def _adaptive_bounds(size, out):
    """Input ranges [floor(i*size/out), ceil((i+1)*size/out)) of the output cells."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _adaptive(input, output_size, reduce):
    x, unbatched = _as4d(_f64(input))
    if np.isscalar(output_size):
        output_size = (output_size, output_size)
    oh, ow = (x.shape[2 + i] if v is None else int(v) for i, v in enumerate(output_size))
    out = np.empty(x.shape[:2] + (oh, ow))
    for i, (h0, h1) in enumerate(_adaptive_bounds(x.shape[2], oh)):
        for j, (w0, w1) in enumerate(_adaptive_bounds(x.shape[3], ow)):
            out[:, :, i, j] = reduce(x[:, :, h0:h1, w0:w1], axis=(2, 3))
    return out[0] if unbatched else out


@_quiet
def adaptive_avg_pool2d(input, output_size):
    return _adaptive(input, output_size, np.mean)


@_quiet
def adaptive_max_pool2d(input, output_size):
    return _adaptive(input, output_size, np.max)  # np.max propagates NaN


# ---------------------------------------------------------------------------------------------
# Dense
# ---------------------------------------------------------------------------------------------

@_quiet
def linear(input, weight, bias=None):
    x, w, b = _f64(input), _f64(weight), _f64(bias)
    out = x @ w.T if w.ndim == 2 else x @ w
    return out if b is None else out + b


@_quiet
def log_softmax(input, dim):
    x = _f64(input)
    if x.ndim == 0:
        return log_softmax(x[None], 0)[0]
    # Shift by the row max: exact for finite rows; an Inf or NaN in the row makes it NaN, as torch.
    shifted = x - np.max(x, axis=dim, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=dim, keepdims=True))


@_quiet
def softmax(input, dim):
    x = _f64(input)
    if x.ndim == 0:
        return softmax(x[None], 0)[0]
    e = np.exp(x - np.max(x, axis=dim, keepdims=True))
    return e / np.sum(e, axis=dim, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------

@_quiet
def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    if training:
        raise NotImplementedError("reference batch_norm covers inference only")
    x = _f64(input)
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    y = (x - _f64(running_mean).reshape(shape)) / np.sqrt(_f64(running_var).reshape(shape) + eps)
    if weight is not None:
        y = y * _f64(weight).reshape(shape)
    if bias is not None:
        y = y + _f64(bias).reshape(shape)
    return y


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------

def _reduce(loss, reduction):
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.asarray(np.sum(loss), dtype=np.float64)
    if reduction == "mean":
        return np.asarray(np.sum(loss) / loss.size if loss.size else np.nan, dtype=np.float64)
    raise ValueError(f"reduction={reduction!r}")


@_quiet
def cross_entropy(input, target, reduction="mean"):
    x = _f64(input)
    target = np.asarray(target)
    cdim = 1 if x.ndim >= 2 else 0  # the class dim
    logp = log_softmax(x, cdim)
    if np.issubdtype(target.dtype, np.floating):  # class probabilities, shaped like input
        loss = -np.sum(_f64(target) * logp, axis=cdim)
    else:  # class indices
        if target.size and (target.min() < 0 or target.max() >= x.shape[cdim]):
            raise ValueError("target out of range")
        idx = np.expand_dims(target.astype(np.int64), cdim)
        loss = -np.take_along_axis(logp, idx, axis=cdim).squeeze(cdim)
    return _reduce(loss, reduction)


@_quiet
def mse_loss(input, target, reduction="mean"):
    return _reduce((_f64(input) - _f64(target)) ** 2, reduction)


# ---------------------------------------------------------------------------------------------
# Gradients by central differences (the oracle for the backward ops)
# ---------------------------------------------------------------------------------------------

def numerical_grad(f, args, index, eps=1e-6):
    """``d sum(f(*args)) / d args[index]`` by central differences, in float64.

    ``args[index]`` is replaced by a float64 copy, which is perturbed one element at a time by
    ``±eps``; the other arguments are passed as given. ``f`` may return an array: the two
    evaluations are subtracted elementwise before summing, so terms that do not depend on the
    perturbed element cancel exactly and the rounding error stays that of the terms that do.
    Returns an array of that argument's shape.
    """
    args = list(args)
    x = np.array(args[index], dtype=np.float64)
    args[index] = x
    flat = x.reshape(-1)
    grad = np.empty(flat.size)
    with np.errstate(all="ignore"):
        for i in range(flat.size):
            old = flat[i]
            flat[i] = old + eps
            hi = np.asarray(f(*args), dtype=np.float64)
            flat[i] = old - eps
            lo = np.asarray(f(*args), dtype=np.float64)
            flat[i] = old
            grad[i] = np.sum(hi - lo) / (2 * eps)
    return grad.reshape(x.shape)


# ---------------------------------------------------------------------------------------------
# Transposed convolution
# ---------------------------------------------------------------------------------------------

def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1):
    """By its definition: input pixel (ih, iw) of channel ci adds ``x * weight[ci, co, i, j]`` to
    output pixel (ih*sh - ph + i*dh, iw*sw - pw + j*dw) of channel co (same group). The sums are
    formed on an uncropped grid (offset by the padding), then the padding is cut away."""
    x, w, b = _f64(input), _f64(weight), _f64(bias)
    unbatched = x.ndim == 3
    if unbatched:
        x = x[None]
    (sh, sw), (ph, pw) = _tuple(stride, 2), _tuple(padding, 2)
    (oph, opw), (dh, dw) = _tuple(output_padding, 2), _tuple(dilation, 2)
    n, cin, h, wd = x.shape
    _, coutg, kh, kw = w.shape
    cing = cin // groups
    oh = (h - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    ow = (wd - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    full = np.zeros((n, coutg * groups, oh + 2 * ph, ow + 2 * pw))
    for g in range(groups):
        xg = x[:, g * cing:(g + 1) * cing]
        wg = w[g * cing:(g + 1) * cing]
        for i in range(kh):
            for j in range(kw):
                # every input pixel of the group, weighted by tap (i, j), lands on a strided grid
                full[:, g * coutg:(g + 1) * coutg,
                     i * dh:i * dh + (h - 1) * sh + 1:sh,
                     j * dw:j * dw + (wd - 1) * sw + 1:sw] += np.einsum("nchw,co->nohw", xg,
                                                                         wg[:, :, i, j])
    out = full[:, :, ph:ph + oh, pw:pw + ow]
    if b is not None:
        out = out + b.reshape(1, -1, 1, 1)
    return out[0] if unbatched else out


# ---------------------------------------------------------------------------------------------
# Batch normalisation in training mode (batch statistics)
# ---------------------------------------------------------------------------------------------

def _batch_stats(x):
    """Per-channel mean and biased variance of ``x`` over every dim but 1, shaped to broadcast."""
    axes = (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True)
    return mean, ((x - mean) ** 2).mean(axis=axes, keepdims=True)


@_quiet
def batch_norm_training(input, weight=None, bias=None, eps=1e-5):
    """``batch_norm(..., training=True)``'s output: ``(x - mean) / sqrt(var + eps)`` with the
    batch's own mean and biased variance per channel (dim 1), then ``* weight + bias``."""
    x = _f64(input)
    mean, var = _batch_stats(x)
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    y = (x - mean) / np.sqrt(var + eps)
    if weight is not None:
        y = y * _f64(weight).reshape(shape)
    if bias is not None:
        y = y + _f64(bias).reshape(shape)
    return y


@_quiet
def batch_norm_running_update(running_mean, running_var, input, momentum=0.1):
    """The running statistics after one training-mode batch_norm call, as PyTorch updates them:
    ``(1 - momentum) * running + momentum * batch``, with the unbiased batch variance."""
    x = _f64(input)
    mean, var = _batch_stats(x)
    count = x.size // x.shape[1]
    new_mean = (1 - momentum) * _f64(running_mean) + momentum * mean.reshape(-1)
    new_var = (1 - momentum) * _f64(running_var) + momentum * var.reshape(-1) * count / (count - 1)
    return new_mean, new_var


# ---------------------------------------------------------------------------------------------
# Recurrent layers: one layer and direction over a (T, N, I) sequence, step by step
# ---------------------------------------------------------------------------------------------

def _sigmoid64(v):
    return 1.0 / (1.0 + np.exp(-v))


def _recurrent(cell, input, states, weight_ih, weight_hh, bias_ih, bias_hh, reverse, lengths):
    """Run ``cell(x_t, states) -> states`` (h first) over the steps in the direction's order.
    Item n keeps its states at steps t >= lengths[n] and outputs zeros there."""
    x = _f64(input)
    t_len, n = x.shape[:2]
    w_ih, w_hh = _f64(weight_ih), _f64(weight_hh)
    gh = w_ih.shape[0]
    b_ih = np.zeros(gh) if bias_ih is None else _f64(bias_ih)
    b_hh = np.zeros(gh) if bias_hh is None else _f64(bias_hh)
    lens = np.full(n, t_len) if lengths is None else np.asarray(lengths)
    out = np.zeros((t_len, n, w_hh.shape[1]))
    steps = range(t_len - 1, -1, -1) if reverse else range(t_len)
    for t in steps:
        xi = x[t] @ w_ih.T + b_ih
        new = cell(xi, states, w_hh, b_hh)
        live = (t < lens)[:, None]
        states = tuple(np.where(live, a, b) for a, b in zip(new, states))
        out[t] = np.where(live, states[0], 0.0)
    return (out,) + states


def _zeros_state(hx, input, weight_hh):
    n, h = np.shape(input)[1], np.shape(weight_hh)[1]
    return np.zeros((n, h)) if hx is None else _f64(hx)


@_quiet
def rnn(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, nonlinearity="tanh",
        reverse=False, lengths=None):
    """``(output, h_n)`` of ``h_t = act(W_ih x_t + b_ih + W_hh h_(t-1) + b_hh)``."""
    act = np.tanh if nonlinearity == "tanh" else (lambda v: np.maximum(v, 0.0))

    def cell(xi, states, w_hh, b_hh):
        return (act(xi + states[0] @ w_hh.T + b_hh),)

    return _recurrent(cell, input, (_zeros_state(hx, input, weight_hh),), weight_ih, weight_hh,
                      bias_ih, bias_hh, reverse, lengths)


@_quiet
def lstm(input, hx, cx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, reverse=False,
         lengths=None):
    """``(output, h_n, c_n)`` of PyTorch's LSTM cell, gates i, f, g, o."""

    def cell(xi, states, w_hh, b_hh):
        h, c = states
        i, f, g, o = np.split(xi + h @ w_hh.T + b_hh, 4, axis=1)
        c = _sigmoid64(f) * c + _sigmoid64(i) * np.tanh(g)
        return _sigmoid64(o) * np.tanh(c), c

    states = (_zeros_state(hx, input, weight_hh), _zeros_state(cx, input, weight_hh))
    return _recurrent(cell, input, states, weight_ih, weight_hh, bias_ih, bias_hh, reverse,
                      lengths)


@_quiet
def gru(input, hx, weight_ih, weight_hh, bias_ih=None, bias_hh=None, reverse=False,
        lengths=None):
    """``(output, h_n)`` of PyTorch's GRU cell, gates r, z, n with
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``."""

    def cell(xi, states, w_hh, b_hh):
        h = states[0]
        xr, xz, xn = np.split(xi, 3, axis=1)
        hr, hz, hn = np.split(h @ w_hh.T + b_hh, 3, axis=1)
        r, z = _sigmoid64(xr + hr), _sigmoid64(xz + hz)
        n = np.tanh(xn + r * hn)
        return ((1.0 - z) * n + z * h,)

    return _recurrent(cell, input, (_zeros_state(hx, input, weight_hh),), weight_ih, weight_hh,
                      bias_ih, bias_hh, reverse, lengths)
