"""Elementwise activation kernel over a flat array."""

from numba import prange

from numbaconv import _ops
from numbaconv.cpu._common import apply_act, helper, kernel

# Elements per parallel task: large enough to amortise scheduling, small enough to balance cores.
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


@kernel
def activation(out, x, act, alpha):
    """``out[i] = act(x[i])`` for a numbaconv._ops.ACT_* code ``act``.

    Parameters
    ----------
    out, x : (L,) arrays of one dtype; ``out`` may be ``x`` (in place).
    act : int, ACT_* code.
    alpha : float, the leaky_relu slope (ignored by the other activations).
    """
    n = x.shape[0]
    for t in prange((n + CHUNK - 1) // CHUNK):
        lo = t * CHUNK
        hi = min(lo + CHUNK, n)
        # A constant code lets LLVM fold apply_act's branches and vectorise the cheap
        # activations (hardswish 2x faster); the transcendental ones stay scalar libm calls.
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
