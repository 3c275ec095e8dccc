"""Elementwise activation kernels over a flat array.

Each kernel sees its activation code as a constant, so LLVM folds ``apply_act``'s branches and
vectorises the loop (float32 exp/tanh/erfc are ``vecmath``'s straight-line versions, see
``_common.apply_act``). The transcendental activations get a kernel each: one kernel holding all
ten specialised loops ran them up to 15% slower (GELU), and compiled all ten on first use.
"""

from numba import prange

from numbaconv import _ops
from numbaconv.cpu._common import apply_act, helper, kernel

# Elements per parallel task: large enough to amortise scheduling, small enough to balance cores
# (a (64, 112, 112) image is 49 tasks).
CHUNK = 16384

_RELU = _ops.ACT_RELU
_RELU6 = _ops.ACT_RELU6
_LEAKY_RELU = _ops.ACT_LEAKY_RELU
_HARDSWISH = _ops.ACT_HARDSWISH


@helper
def _apply_range(out, x, lo, hi, act, alpha):
    # Slices indexed from 0: LLVM knows the index is non-negative (no wraparound select).
    xseg = x[lo:hi]
    oseg = out[lo:hi]
    for i in range(hi - lo):
        oseg[i] = apply_act(xseg[i], act, alpha)


@helper
def _apply(out, x, act, alpha):
    """``out[i] = act(x[i])`` in parallel tasks of CHUNK elements (inlined into each kernel)."""
    n = x.shape[0]
    for t in prange((n + CHUNK - 1) // CHUNK):
        lo = t * CHUNK
        _apply_range(out, x, lo, min(lo + CHUNK, n), act, alpha)


@kernel
def _piecewise(out, x, act, alpha):
    # The cheap, memory-bound activations share a kernel: one constant-code loop each.
    n = x.shape[0]
    for t in prange((n + CHUNK - 1) // CHUNK):
        lo = t * CHUNK
        hi = min(lo + CHUNK, n)
        if act == _RELU:
            _apply_range(out, x, lo, hi, _RELU, alpha)
        elif act == _RELU6:
            _apply_range(out, x, lo, hi, _RELU6, alpha)
        elif act == _LEAKY_RELU:
            _apply_range(out, x, lo, hi, _LEAKY_RELU, alpha)
        elif act == _HARDSWISH:
            _apply_range(out, x, lo, hi, _HARDSWISH, alpha)
        else:
            _apply_range(out, x, lo, hi, act, alpha)


@kernel
def _sigmoid(out, x, alpha):
    _apply(out, x, _ops.ACT_SIGMOID, alpha)


@kernel
def _tanh(out, x, alpha):
    _apply(out, x, _ops.ACT_TANH, alpha)


@kernel
def _silu(out, x, alpha):
    _apply(out, x, _ops.ACT_SILU, alpha)


@kernel
def _gelu(out, x, alpha):
    _apply(out, x, _ops.ACT_GELU, alpha)


@kernel
def _gelu_tanh(out, x, alpha):
    _apply(out, x, _ops.ACT_GELU_TANH, alpha)


_KERNELS = {
    _ops.ACT_SIGMOID: _sigmoid,
    _ops.ACT_TANH: _tanh,
    _ops.ACT_SILU: _silu,
    _ops.ACT_GELU: _gelu,
    _ops.ACT_GELU_TANH: _gelu_tanh,
}


def activation(out, x, act, alpha):
    """``out[i] = act(x[i])`` for a numbaconv._ops.ACT_* code ``act``.

    Parameters
    ----------
    out, x : (L,) arrays of one dtype; ``out`` may be ``x`` (in place).
    act : int, ACT_* code.
    alpha : float, the leaky_relu slope (ignored by the other activations).
    """
    special = _KERNELS.get(act)
    if special is None:
        _piecewise(out, x, act, alpha)
    else:
        special(out, x, alpha)
