"""Elementwise activation kernels over a flat array.

Each kernel sees its activation code as a constant, so LLVM folds the formula's branches. float32
runs in explicit SIMD vectors (``simd``, 16 lanes with AVX-512): LLVM's auto-vectoriser picks
256-bit vectors on this host, and the transcendental activations are compute-bound there
(sigmoid, GELU: ~0.3 ns per element on one core, as slow as memory). ``vecmath``'s float32 exp,
tanh and erfc take vectors as they are. float64 keeps the scalar ``apply_act`` loop (libm calls).
The transcendental activations get a kernel each: one kernel holding all ten specialised loops
ran them up to 15% slower (GELU), and compiled all ten on first use.
"""

import numpy as np
from numba import prange, types
from numba.extending import overload

from numbaconv import _ops, _ops_backward
from numbaconv.cpu import simd
from numbaconv.cpu._common import _with_vecmath, apply_act, helper, kernel
from numbaconv.cpu.vecmath import div, erfc, exp, exp_nonpos, prefetch, select, tanh

# Elements per parallel task: large enough to amortise scheduling, small enough to balance cores
# (a (64, 112, 112) image is 49 tasks).
CHUNK = 16384
# Elements ahead of the current vector that the float32 loop prefetches (input and output): the
# hardware prefetcher alone leaves the compute-heavy activations (GELU) ~15% short of memory speed.
PREFETCH = 2048

_RELU = _ops.ACT_RELU
_RELU6 = _ops.ACT_RELU6
_LEAKY_RELU = _ops.ACT_LEAKY_RELU
_SIGMOID = _ops.ACT_SIGMOID
_TANH = _ops.ACT_TANH
_SILU = _ops.ACT_SILU
_GELU = _ops.ACT_GELU
_GELU_TANH = _ops.ACT_GELU_TANH
_HARDSWISH = _ops.ACT_HARDSWISH

# The float32 constants of _ops.apply_act (it casts with type(v)(...)).
_F0 = np.float32(0)
_F1 = np.float32(1)
_F3 = np.float32(3)
_F6 = np.float32(6)
_HALF = np.float32(0.5)
_SIXTH = np.float32(1 / 6)
_M_SQRT_HALF = np.float32(-_ops._SQRT_HALF)
_GT_A = np.float32(2 * _ops._SQRT_2_OVER_PI)
_GT_B = np.float32(2 * _ops._SQRT_2_OVER_PI * 0.044715)


def _vact(v, act, alpha):
    """``_ops.apply_act`` on a float32 vector: the same formulas, branches as lane selects."""
    if act == _RELU:
        return select(v <= _F0, _F0, v)
    if act == _RELU6:
        return select(v <= _F0, _F0, select(v >= _F6, _F6, v))
    if act == _LEAKY_RELU:
        return select(v < _F0, v * np.float32(alpha), v)
    if act == _SIGMOID or act == _SILU:
        e = exp(-abs(v))
        s = div(select(v >= _F0, _F1, e), _F1 + e)
        return s if act == _SIGMOID else v * s
    if act == _TANH:
        return tanh(v)
    if act == _GELU:
        return _HALF * v * erfc(v * _M_SQRT_HALF)
    if act == _GELU_TANH:
        w = v * (_GT_A + _GT_B * (v * v))
        # A NaN v is NaN through v * ..., whatever e is.
        e = exp_nonpos(-abs(w))
        return div(v * select(v >= _F0, _F1, e), _F1 + e)
    if act == _HARDSWISH:
        # -0.0 (NaN for -inf) below -3, as torch's x * relu6(x + 3) / 6.
        return select(v <= -_F3, v * _F0, select(v >= _F3, v, v * (v + _F3) * _SIXTH))
    return v


_vact_jit = helper(_vact)


def _apply_range(out, x, lo, hi, act, alpha):
    """``out[i] = act(x[i])`` for i in [lo, hi): float32 in vectors, float64 in a scalar loop."""


@overload(_apply_range)
def _apply_range_overload(out, x, lo, hi, act, alpha):
    if x.dtype == types.float32:
        return _apply_range_vec
    return _apply_range_scalar


def _apply_range_vec(out, x, lo, hi, act, alpha):
    xseg = x[lo:hi]
    oseg = out[lo:hi]
    lanes = simd.width(xseg)
    n = hi - lo
    full = n - n % lanes
    for i in range(0, full, lanes):
        prefetch(xseg, i + PREFETCH, 0)
        prefetch(oseg, i + PREFETCH, 1)
        simd.store(oseg, i, _vact_jit(simd.load(xseg, i), act, alpha))
    if full < n:
        rest = n - full
        simd.store_n(oseg, full, _vact_jit(simd.load_n(xseg, full, rest), act, alpha), rest)


def _apply_range_scalar(out, x, lo, hi, act, alpha):
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
    _apply(out, x, _SIGMOID, alpha)


@kernel
def _tanh(out, x, alpha):
    _apply(out, x, _TANH, alpha)


@kernel
def _silu(out, x, alpha):
    _apply(out, x, _SILU, alpha)


@kernel
def _gelu(out, x, alpha):
    _apply(out, x, _GELU, alpha)


@kernel
def _gelu_tanh(out, x, alpha):
    _apply(out, x, _GELU_TANH, alpha)


_KERNELS = {
    _SIGMOID: _sigmoid,
    _TANH: _tanh,
    _SILU: _silu,
    _GELU: _gelu,
    _GELU_TANH: _gelu_tanh,
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


# ---------------------------------------------------------------------------------------------
# Sum: out = act(a + b) (residual connections, gradient accumulation)
# ---------------------------------------------------------------------------------------------

def _add_range(out, a, b, lo, hi, act, alpha):
    """``out[i] = act(a[i] + b[i])`` for i in [lo, hi)."""


@overload(_add_range)
def _add_range_overload(out, a, b, lo, hi, act, alpha):
    if a.dtype == types.float32:
        return _add_range_vec
    return _add_range_scalar


def _add_range_vec(out, a, b, lo, hi, act, alpha):
    aseg = a[lo:hi]
    bseg = b[lo:hi]
    oseg = out[lo:hi]
    lanes = simd.width(aseg)
    n = hi - lo
    full = n - n % lanes
    for i in range(0, full, lanes):
        v = simd.add(simd.load(aseg, i), simd.load(bseg, i))
        simd.store(oseg, i, _vact_jit(v, act, alpha))
    if full < n:
        rest = n - full
        v = simd.add(simd.load_n(aseg, full, rest), simd.load_n(bseg, full, rest))
        simd.store_n(oseg, full, _vact_jit(v, act, alpha), rest)


def _add_range_scalar(out, a, b, lo, hi, act, alpha):
    aseg = a[lo:hi]
    bseg = b[lo:hi]
    oseg = out[lo:hi]
    for i in range(hi - lo):
        oseg[i] = apply_act(aseg[i] + bseg[i], act, alpha)


@kernel
def _add(out, a, b, act, alpha):
    n = a.shape[0]
    for t in prange((n + CHUNK - 1) // CHUNK):
        lo = t * CHUNK
        hi = min(lo + CHUNK, n)
        # Constant codes for the common cases, so their formula folds.
        if act == _ops.ACT_NONE:
            _add_range(out, a, b, lo, hi, _ops.ACT_NONE, alpha)
        elif act == _RELU:
            _add_range(out, a, b, lo, hi, _RELU, alpha)
        else:
            _add_range(out, a, b, lo, hi, act, alpha)


def add(out, a, b, act, alpha):
    """``out[i] = act(a[i] + b[i])`` for a numbaconv._ops.ACT_* code ``act`` (ACT_NONE: the sum).

    Parameters
    ----------
    out, a, b : (L,) arrays of one dtype; ``out`` may be ``a`` or ``b`` (in place).
    act : int, ACT_* code.
    alpha : float, the leaky_relu slope (ignored by the other activations).
    """
    _add(out, a, b, act, alpha)


# ---------------------------------------------------------------------------------------------
# Backward: gx = go * act'(x)
# ---------------------------------------------------------------------------------------------

# _ops_backward.act_grad with vecmath's exp, tanh and erfc: straight-line float32 arithmetic, so
# LLVM vectorises the loops below (libm calls would keep them scalar).
act_grad = helper(_with_vecmath(_ops_backward.act_grad))


@helper
def _grad_range(gx, go, x, lo, hi, act, alpha):
    """``gx[i] = go[i] * act'(x[i])`` for i in [lo, hi); slices indexed from 0 (no wraparound
    checks), so the loop vectorises."""
    xs = x[lo:hi]
    gs = go[lo:hi]
    os_ = gx[lo:hi]
    for i in range(hi - lo):
        os_[i] = act_grad(xs[i], gs[i], act, alpha)


@kernel
def _piecewise_backward(gx, go, x, act, alpha):
    # One kernel for the cheap activations, one constant-code loop each (as the forward).
    n = x.shape[0]
    for t in prange((n + CHUNK - 1) // CHUNK):
        lo = t * CHUNK
        hi = min(lo + CHUNK, n)
        if act == _RELU:
            _grad_range(gx, go, x, lo, hi, _RELU, alpha)
        elif act == _RELU6:
            _grad_range(gx, go, x, lo, hi, _RELU6, alpha)
        elif act == _LEAKY_RELU:
            _grad_range(gx, go, x, lo, hi, _LEAKY_RELU, alpha)
        else:
            _grad_range(gx, go, x, lo, hi, _HARDSWISH, alpha)


@helper
def _grad_all(gx, go, x, act, alpha):
    n = x.shape[0]
    for t in prange((n + CHUNK - 1) // CHUNK):
        lo = t * CHUNK
        _grad_range(gx, go, x, lo, min(lo + CHUNK, n), act, alpha)


@kernel
def _sigmoid_backward(gx, go, x, alpha):
    _grad_all(gx, go, x, _SIGMOID, alpha)


@kernel
def _tanh_backward(gx, go, x, alpha):
    _grad_all(gx, go, x, _TANH, alpha)


@kernel
def _silu_backward(gx, go, x, alpha):
    _grad_all(gx, go, x, _SILU, alpha)


@kernel
def _gelu_backward(gx, go, x, alpha):
    _grad_all(gx, go, x, _GELU, alpha)


@kernel
def _gelu_tanh_backward(gx, go, x, alpha):
    _grad_all(gx, go, x, _GELU_TANH, alpha)


_BACKWARD_KERNELS = {
    _SIGMOID: _sigmoid_backward,
    _TANH: _tanh_backward,
    _SILU: _silu_backward,
    _GELU: _gelu_backward,
    _GELU_TANH: _gelu_tanh_backward,
}


def activation_backward(gx, go, x, act, alpha):
    """``gx[i] = go[i] * act'(x[i])`` for a numbaconv._ops.ACT_* code ``act`` (not ACT_NONE),
    with PyTorch autograd's values at the kinks (``numbaconv._ops_backward``).

    Parameters
    ----------
    gx, go, x : (L,) arrays of one dtype; ``gx`` is filled in place and may be ``go``.
    act : int, ACT_* code.
    alpha : float, the leaky_relu slope (ignored by the other activations).
    """
    special = _BACKWARD_KERNELS.get(act)
    if special is None:
        _piecewise_backward(gx, go, x, act, alpha)
    else:
        special(gx, go, x, alpha)
