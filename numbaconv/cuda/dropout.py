"""Dropout's elementwise step on the GPU: multiply by a keep mask times 1 / (1 - p).

The mask is drawn on the host (NumPy's global RNG, so ``np.random.seed`` makes a run repeatable
on both devices) and copied in by ``numbaconv.functional.dropout``.
"""

from numbaconv import _cuda
from numbaconv.cuda._common import THREADS, blocks

cuda = _cuda.cuda()


@_cuda.kernel("void({T}[::1], {T}[::1], boolean[::1], float64)")
def _dropout(out, x, mask, scale):
    """out[i] = x[i] * (scale if mask[i] else 0), one thread per element."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        # A product, not a select: a dropped NaN or Inf gives NaN, as in torch.
        out[i] = x[i] * (x.dtype.type(scale) if mask[i] else x.dtype.type(0))


def dropout(out, x, mask, scale):
    """``out[i] = x[i] * (scale if mask[i] else 0)``.

    Parameters
    ----------
    out, x : (L,) device arrays of one dtype; ``out`` is filled in place and may be ``x``.
    mask : (L,) bool device array, True where the element is kept.
    scale : float, 1 / (1 - p) (0 when p == 1).
    """
    _dropout[blocks(x.shape[0]), THREADS](out, x, mask, float(scale))
