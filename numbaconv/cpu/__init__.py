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
            conv2d_backward_input(gx, go, w, b, stride, padding, dilation, groups)
                gx (N, C, H, W) filled with the gradient of conv2d's input for go (N, OC, OH,
                OW), plus b (C,) unless None: this is also conv_transpose2d's forward (its
                input as go, its output as gx); geometry arguments are the conv2d's
            conv2d_backward_weight(gw, go, x, stride, padding, dilation, groups)
                gw (OC, C // groups, KH, KW) = the weight gradient, summed over the batch
            conv2d_backward_bias(gb, go)     gb (OC,) = go summed over N, OH, OW
pool:       max_pool2d(out, x, kernel, stride, padding, dilation)
            avg_pool2d(out, x, kernel, stride, padding, count_include_pad)
            adaptive_avg_pool2d(out, x), adaptive_max_pool2d(out, x)
                x (N, C, H, W), out (N, C, OH, OW); ceil_mode is already in out's shape.
            max_pool2d_backward(gx, go, x, kernel, stride, padding, dilation)
            avg_pool2d_backward(gx, go, kernel, stride, padding, count_include_pad)
            adaptive_avg_pool2d_backward(gx, go), adaptive_max_pool2d_backward(gx, go, x)
                gx, x (N, C, H, W), go (N, C, OH, OW); gx filled with the input's gradient
                (max: to the first arg-max of each window in scan order, the last NaN if any)
activation: activation(out, x, act, alpha)       x, out 1-D
            activation_backward(gx, go, x, act, alpha)
                gx, go, x 1-D: gx = go * act'(x), torch's values at kinks (numbaconv._ops_backward)
            add(out, a, b, act, alpha)           out, a, b 1-D: out = act(a + b); out may alias
dense:      linear(out, x, w, b)                 x (M, K), w (N, K), b (N,) or None, out (M, N)
            softmax(out, x, log)                 x, out (outer, D, inner): softmax over axis 1
            linear_backward(gx, gw, gb, go, x, w)
                go (M, N) gradient of linear's out; gx (M, K) = go @ w, gw (N, K) = go.T @ x,
                gb (N,) = go summed over rows, or None
            softmax_backward(gx, go, x, log)     gx, go, x (outer, D, inner); y recomputed from x
norm:       batch_norm(out, x, mean, var, weight, bias, eps)
                x, out (N, C, S); mean, var, weight, bias (C,)
            batch_norm_stats(mean, var, x)      x (N, C, S), N * S >= 1; mean, var (C,) filled
                                                 with the batch mean and biased variance
            batch_norm_update(running_mean, running_var, mean, var, momentum, count)
                (C,) running stats updated in place, torch's rule (unbiased var, count = N * S)
            batch_norm_backward(gx, gw, gb, go, x, mean, var, weight, eps, training)
                gx, go, x (N, C, S); gw, gb, mean, var, weight (C,): gw = sum(go * xhat),
                gb = sum(go); training: mean/var are x's batch stats (gx through them too)
dropout:    dropout(out, x, mask, scale)         out, x 1-D, mask bool 1-D: x * (mask ? scale : 0)
loss:       cross_entropy(out, x, target)        x (N, C, S), target int64 (N, S) class indices
                                                 already checked to lie in [0, C); out (N, S)
            cross_entropy_prob(out, x, target)   target (N, C, S) class probabilities; out (N, S)
            squared_error(out, x, t)             x, t, out 1-D: out = (x - t) ** 2
            reduce_sum(out, x, scale)            x 1-D, out (1,): out[0] = sum(x) * scale,
                                                 accumulated in float64
            cross_entropy_backward(gx, x, target, go, scale)
                gx, x (N, C, S), target int64 (N, S); go (N, S) per-item loss gradient or None
                (then every item's gradient is scale; with go given it is go * scale)
            cross_entropy_prob_backward(gx, gt, x, target, go, scale)
                gx, gt, x, target (N, C, S): gradients w.r.t. logits and probabilities
            squared_error_backward(gx, gt, x, t, go, scale)
                all 1-D, go or None: gx = (x - t) * scale * go, gt = -gx (scale holds the 2)
optim:      sgd(p, g, buf, lr, momentum, dampening, weight_decay, nesterov, first)
            adam(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, step_size, beta1, beta2, eps,
                 weight_decay, bias_correction2_sqrt)
                p, g and the state 1-D of one length; p and the state updated in place, g read
                only; buf / max_exp_avg_sq None when momentum is 0 / without amsgrad; the
                hyper-parameters are Python floats, as in torch.optim (see numbaconv.optim)
rnn:        rnn_forward(mode, out, h_n, c_n, ws, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
                one layer and direction over a sequence; mode 0 RNN tanh, 1 RNN relu, 2 LSTM,
                3 GRU (G = 1, 1, 4, 3 gates); x (T, N, I), h0 (N, H), c0 (N, H) (LSTM) or None,
                w_ih (G*H, I), w_hh (G*H, H), b_ih, b_hh (G*H,) (zeros when absent), PyTorch's
                gate order; lengths int64 (N,) valid steps per item in [0, T] (the state is
                carried and the output zero past them); reverse: last step first. Fills out
                (T, N, H), h_n (N, H), c_n (N, H) or None, and ws, 1-D of T*N*(G+E)*H (E = 1
                for LSTM and GRU, else 0), a backend-private record for rnn_backward, or None
                when no backward follows
            rnn_backward(mode, gx, gh0, gc0, gw_ih, gw_hh, gb_ih, gb_hh, gout, gh_n, gc_n, x, h0,
                         c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse, out, ws)
                gradients of every input (gc0 None unless LSTM, gb_* None to skip) from those of
                out (T, N, H), h_n and c_n (zeros when absent); out and ws from rnn_forward
            swap01(out, x)                       out (B, A, C) = x (A, B, C) with axes 0, 1 swapped
"""

import os as _os

from numbaconv import _jitcache

from numbaconv.cpu import simd  # noqa: E402  (no kernels: fixes the vector width)

# Before any kernel module is imported: kernels are cached under the hash of these sources and
# the vector width.
_jitcache.refresh(_os.path.dirname(_os.path.abspath(__file__)),
                  [_jitcache.OPS_SOURCE, _os.path.join(_os.path.dirname(_jitcache.OPS_SOURCE),
                                                       "_ops_backward.py")],
                  settings=f"simd lanes {simd.LANES}")

from numbaconv.cpu.activation import activation, activation_backward, add  # noqa: E402
from numbaconv.cpu.conv import conv2d  # noqa: E402
from numbaconv.cpu.conv_backward import (  # noqa: E402
    conv2d_backward_bias, conv2d_backward_input, conv2d_backward_weight)
from numbaconv.cpu.dense import linear, linear_backward, softmax, softmax_backward  # noqa: E402
from numbaconv.cpu.loss import (  # noqa: E402
    cross_entropy, cross_entropy_backward, cross_entropy_prob, cross_entropy_prob_backward,
    reduce_sum, squared_error, squared_error_backward)
from numbaconv.cpu.dropout import dropout  # noqa: E402
from numbaconv.cpu.norm import (  # noqa: E402
    batch_norm, batch_norm_backward, batch_norm_stats, batch_norm_update)
from numbaconv.cpu.optim import adam, sgd  # noqa: E402
from numbaconv.cpu.pool import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d  # noqa: E402
from numbaconv.cpu.rnn import rnn_backward, rnn_forward, swap01  # noqa: E402
from numbaconv.cpu.pool import (  # noqa: E402
    adaptive_avg_pool2d_backward, adaptive_max_pool2d_backward, avg_pool2d_backward,
    max_pool2d_backward)

__all__ = [
    "activation", "adaptive_avg_pool2d", "adaptive_max_pool2d", "add", "avg_pool2d", "batch_norm",
    "conv2d", "cross_entropy", "cross_entropy_prob", "linear", "max_pool2d", "reduce_sum",
    "softmax", "squared_error",
    # training
    "adam", "cross_entropy_backward", "cross_entropy_prob_backward", "linear_backward", "sgd",
    "softmax_backward", "squared_error_backward",
    "conv2d_backward_bias", "conv2d_backward_input", "conv2d_backward_weight",
    # training: pooling, activations, batch norm, dropout
    "activation_backward", "adaptive_avg_pool2d_backward", "adaptive_max_pool2d_backward",
    "avg_pool2d_backward", "batch_norm_backward", "batch_norm_stats", "batch_norm_update",
    "dropout", "max_pool2d_backward",
    # recurrent layers
    "rnn_backward", "rnn_forward", "swap01",
]


# ---------------------------------------------------------------------------------------------
# Concurrent calls. Numba's workqueue threading layer (the one it falls back to when neither TBB
# nor OpenMP loads, or that NUMBA_THREADING_LAYER names) aborts the process ("Concurrent access
# has been detected") when two Python threads run parallel regions at once; TBB and OpenMP take
# them. Under workqueue, every launcher therefore holds one process-wide lock: threads take
# turns, each call still on every core.
# ---------------------------------------------------------------------------------------------

import functools as _functools  # noqa: E402
import threading as _threading  # noqa: E402

_LOCK = _threading.RLock()  # re-entrant: a launcher may call another
_LAYER = []  # the threading layer numba runs parallel regions on, once known


def threading_layer():
    """The threading layer numba runs numbaconv's parallel regions on ('tbb', 'omp' or
    'workqueue'); its thread pool is started if it was not yet."""
    if not _LAYER:
        import numba
        from numba.np.ufunc import parallel

        parallel._launch_threads()  # idempotent and thread-safe; numba picks the layer here
        _LAYER.append(numba.threading_layer())
    return _LAYER[0]


def _taking_turns(launcher):
    """``launcher``, run under :data:`_LOCK` when the threading layer is workqueue."""

    @_functools.wraps(launcher)
    def call(*args, **kwargs):
        if threading_layer() != "workqueue":
            return launcher(*args, **kwargs)
        with _LOCK:
            return launcher(*args, **kwargs)

    return call


for _name in __all__:
    globals()[_name] = _taking_turns(globals()[_name])
del _name
