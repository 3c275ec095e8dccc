"""Dropout's elementwise step: multiply by a keep mask times 1 / (1 - p).

The mask itself is drawn on the host by ``numbaconv.functional.dropout`` (NumPy's global RNG),
so this kernel serves the forward and the backward alike (the gradient is masked and scaled the
same way).
"""

from numba import prange

from numbaconv.cpu._common import helper, kernel

CHUNK = 16384  # elements per parallel task


@helper
def _masked_range(out, x, mask, lo, hi, keep):
    xs = x[lo:hi]
    ms = mask[lo:hi]
    os_ = out[lo:hi]
    zero = x.dtype.type(0)
    for i in range(hi - lo):
        # A product, not a select, so that a dropped NaN or Inf gives NaN as in torch (x * 0).
        os_[i] = xs[i] * (keep if ms[i] else zero)


@kernel
def dropout(out, x, mask, scale):
    """``out[i] = x[i] * (scale if mask[i] else 0)``.

    Parameters
    ----------
    out, x : (L,) arrays of one dtype; ``out`` is filled in place and may be ``x``.
    mask : (L,) bool array, True where the element is kept.
    scale : float, 1 / (1 - p) (0 when p == 1).
    """
    n = x.shape[0]
    keep = x.dtype.type(scale)
    for t in prange((n + CHUNK - 1) // CHUNK):
        lo = t * CHUNK
        _masked_range(out, x, mask, lo, min(lo + CHUNK, n), keep)
