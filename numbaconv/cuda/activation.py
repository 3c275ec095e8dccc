"""Elementwise activation over a flat array on the GPU."""

from numbaconv import _cuda
from numbaconv.cuda._common import THREADS, apply_act, blocks

cuda = _cuda.cuda()


@_cuda.kernel("void({T}[::1], {T}[::1], int64, float64)")
def _activation(out, x, act, alpha):
    """out[i] = act(x[i]), one thread per element; out, x (L,); alpha: the leaky_relu slope."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        out[i] = apply_act(x[i], act, alpha)


def activation(out, x, act, alpha):
    """``out[i] = act(x[i])`` for a numbaconv._ops.ACT_* code ``act``.

    Parameters
    ----------
    out, x : (L,) device arrays of one dtype; ``out`` may be ``x`` (in place).
    act : int, ACT_* code.
    alpha : float, the leaky_relu slope (ignored by the other activations).
    """
    _activation[blocks(x.shape[0]), THREADS](out, x, int(act), float(alpha))
