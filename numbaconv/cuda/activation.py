"""Elementwise activation over a flat array on the GPU. The forward kernels take float16 too:
``apply_act`` (shared with the CPU) runs on the value widened to float32, and the result is
rounded to float16 once at the store; relu and friends stay exact selections."""

from numbaconv import _cuda, _ops_backward
from numbaconv.cuda._common import THREADS, apply_act, blocks, widen

cuda = _cuda.cuda()


@_cuda.kernel("void({T}[::1], {T}[::1], int64, float64)", half=True)
def _activation(out, x, act, alpha):
    """out[i] = act(x[i]), one thread per element; out, x (L,); alpha: the leaky_relu slope."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        out[i] = apply_act(widen(x[i]), act, alpha)


def activation(out, x, act, alpha):
    """``out[i] = act(x[i])`` for a numbaconv._ops.ACT_* code ``act``.

    Parameters
    ----------
    out, x : (L,) device arrays of one dtype; ``out`` may be ``x`` (in place).
    act : int, ACT_* code.
    alpha : float, the leaky_relu slope (ignored by the other activations).
    """
    _activation[blocks(x.shape[0]), THREADS](out, x, int(act), float(alpha))


@_cuda.kernel("void({T}[::1], {T}[::1], {T}[::1], int64, float64)", half=True)
def _add(out, a, b, act, alpha):
    """out[i] = act(a[i] + b[i]), one thread per element; out, a, b (L,)."""
    i = cuda.grid(1)
    if i < a.shape[0]:
        out[i] = apply_act(widen(a[i]) + widen(b[i]), act, alpha)


def add(out, a, b, act, alpha):
    """``out[i] = act(a[i] + b[i])`` for a numbaconv._ops.ACT_* code ``act`` (ACT_NONE: the sum).

    Parameters
    ----------
    out, a, b : (L,) device arrays of one dtype; ``out`` may be ``a`` or ``b`` (in place).
    act : int, ACT_* code.
    alpha : float, the leaky_relu slope (ignored by the other activations).
    """
    _add[blocks(a.shape[0]), THREADS](out, a, b, int(act), float(alpha))


act_grad = _cuda.device_function(_ops_backward.act_grad)


@_cuda.kernel("void({T}[::1], {T}[::1], {T}[::1], int64, float64)")
def _activation_backward(gx, go, x, act, alpha):
    """gx[i] = go[i] * act'(x[i]), one thread per element; gx, go, x (L,)."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        gx[i] = act_grad(x[i], go[i], act, alpha)


def activation_backward(gx, go, x, act, alpha):
    """``gx[i] = go[i] * act'(x[i])`` for a numbaconv._ops.ACT_* code ``act``.

    Parameters
    ----------
    gx, go, x : (L,) device arrays of one dtype; ``gx`` is filled in place and may be ``go``.
    act : int, ACT_* code.
    alpha : float, the leaky_relu slope (ignored by the other activations).
    """
    _activation_backward[blocks(x.shape[0]), THREADS](gx, go, x, int(act), float(alpha))
