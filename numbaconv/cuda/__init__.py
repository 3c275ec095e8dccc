"""CUDA backend: ``numba.cuda`` kernels (declared through ``numbaconv._cuda``), one module per op
family, with the same module and launcher names and arguments as ``numbaconv.cpu`` (its docstring
is the backend contract). Launchers compute the grid and launch on the default stream; arrays
are numba device arrays. The inference launchers (conv2d, linear, softmax, pooling, activation,
add, batch_norm) also take float16 arrays, computed in float32 (``_common.widen``).
"""

import os as _os

from numbaconv import _cuda, _jitcache

# Before any kernel module is imported: kernels are cached under the hash of these sources.
_jitcache.refresh(_os.path.dirname(_os.path.abspath(__file__)),
                  [_jitcache.OPS_SOURCE, _os.path.join(_os.path.dirname(_jitcache.OPS_SOURCE),
                                                       "_ops_backward.py")],
                  cache_impls=_cuda.cache_impls())

from numbaconv.cuda.activation import activation, activation_backward, add  # noqa: E402
from numbaconv.cuda.conv import conv2d  # noqa: E402
from numbaconv.cuda.conv_backward import (  # noqa: E402
    conv2d_backward_bias, conv2d_backward_input, conv2d_backward_weight)
from numbaconv.cuda.dense import linear, linear_backward, softmax, softmax_backward  # noqa: E402
from numbaconv.cuda.loss import (  # noqa: E402
    cross_entropy, cross_entropy_backward, cross_entropy_prob, cross_entropy_prob_backward,
    reduce_sum, squared_error, squared_error_backward)
from numbaconv.cuda.dropout import dropout  # noqa: E402
from numbaconv.cuda.norm import (  # noqa: E402
    batch_norm, batch_norm_backward, batch_norm_stats, batch_norm_update)
from numbaconv.cuda.optim import adam, sgd  # noqa: E402
from numbaconv.cuda.pool import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d  # noqa: E402
from numbaconv.cuda.rnn import rnn_backward, rnn_forward, swap01  # noqa: E402
from numbaconv.cuda.pool import (  # noqa: E402
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
