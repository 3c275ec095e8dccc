"""Pooling kernels: max, average and their adaptive forms, with PyTorch's window rules.

Every kernel runs ``prange`` over one flattened index of (batch, channel, output row), so two cores
are busy even for one image, and uses the output row as its accumulator.
"""

import numpy as np
from numba import prange

from numbaconv.cpu._common import adaptive_window, helper, kernel, nan_max


@helper
def _ceil_div(a, b):
    # Python's // floors for negative ints too, so this is ceil for any sign of a (b > 0).
    return -((-a) // b)


@helper
def _col_range(off, sw, w, ow):
    """Output columns ``o`` in [lo, hi) whose tap ``o * sw + off`` lies inside [0, w)."""
    lo = max(0, _ceil_div(-off, sw))
    hi = min(ow, _ceil_div(w - off, sw))
    return lo, hi


@helper
def _row_index(r, c_, oh_):
    """(n, c, oh) of flat output-row index ``r`` over (N, C, OH)."""
    nc = r // oh_
    n = nc // c_
    return n, nc - n * c_, r - nc * oh_


@kernel
def max_pool2d(out, x, kernel, stride, padding, dilation):
    """Max pooling with implicit -inf padding; a NaN in a window gives NaN, as in PyTorch.

    Parameters
    ----------
    out : (N, C, OH, OW) array, filled in place (ceil_mode is already in its shape).
    x : (N, C, H, W) array.
    kernel, stride, padding, dilation : (h, w) int tuples.
    """
    n_, c_, h, w = x.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    for r in prange(n_ * c_ * oh_):
        n, c, oh = _row_index(r, c_, oh_)
        orow = out[n, c, oh]
        orow[:] = -np.inf
        h0 = oh * sh - ph
        for i in range(kh):
            ih = h0 + i * dh
            if ih < 0 or ih >= h:
                continue
            xrow = x[n, c, ih]
            # One pass over the output row per tap, over the columns whose tap is inside the
            # input. Slices indexed from 0 let LLVM drop negative-index wraparound (no gathers).
            for j in range(kw):
                off = j * dw - pw
                lo, hi = _col_range(off, sw, w, ow_)
                xseg = xrow[lo * sw + off:]
                oseg = orow[lo:hi]
                for o in range(hi - lo):
                    v = xseg[o * sw]
                    m = oseg[o]
                    oseg[o] = nan_max(m, v)


@kernel
def avg_pool2d(out, x, kernel, stride, padding, count_include_pad):
    """Average pooling with PyTorch's divisor rules.

    With ``count_include_pad`` the divisor is the window clipped to the padded input
    ([-pad, size + pad)); without it, the window clipped to the input itself.

    Parameters
    ----------
    out : (N, C, OH, OW) array, filled in place (ceil_mode is already in its shape).
    x : (N, C, H, W) array.
    kernel, stride, padding : (h, w) int tuples.
    count_include_pad : bool.
    """
    n_, c_, h, w = x.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    kh, kw = kernel
    sh, sw = stride
    ph, pw = padding
    for r in prange(n_ * c_ * oh_):
        n, c, oh = _row_index(r, c_, oh_)
        orow = out[n, c, oh]
        orow[:] = 0
        hstart = oh * sh - ph
        hend = min(hstart + kh, h + ph)
        hpad = hend - hstart
        hs = max(hstart, 0)
        he = min(hend, h)
        for ih in range(hs, he):
            xrow = x[n, c, ih]
            for j in range(kw):
                off = j - pw
                lo, hi = _col_range(off, sw, w, ow_)
                xseg = xrow[lo * sw + off:]
                oseg = orow[lo:hi]
                for o in range(hi - lo):
                    oseg[o] += xseg[o * sw]
        for o in range(ow_):
            wstart = o * sw - pw
            wend = min(wstart + kw, w + pw)
            if count_include_pad:
                div = hpad * (wend - wstart)
            else:
                div = max(he - hs, 0) * (min(wend, w) - max(wstart, 0))
            orow[o] = orow[o] / out.dtype.type(div)


@kernel
def adaptive_avg_pool2d(out, x):
    """Adaptive average pooling: output (i, j) averages rows [floor(i*H/OH), ceil((i+1)*H/OH))
    and the columns given by the same rule.

    Parameters
    ----------
    out : (N, C, OH, OW) array, filled in place.
    x : (N, C, H, W) array.
    """
    n_, c_, h, w = x.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    zero = out.dtype.type(0)
    for r in prange(n_ * c_ * oh_):
        n, c, oh = _row_index(r, c_, oh_)
        hs, he = adaptive_window(oh, h, oh_)
        if ow_ == 1:
            # Full-width windows (global pooling) are one contiguous run: a single long loop.
            seg = x[n, c].reshape((h * w,))[hs * w:he * w]
            s = zero
            for i in range(seg.shape[0]):
                s += seg[i]
            out[n, c, oh, 0] = s / out.dtype.type((he - hs) * w)
            continue
        for o in range(ow_):
            ws, we = adaptive_window(o, w, ow_)
            s = zero
            for ih in range(hs, he):
                xrow = x[n, c, ih, ws:we]
                for iw in range(we - ws):
                    s += xrow[iw]
            out[n, c, oh, o] = s / out.dtype.type((he - hs) * (we - ws))


@kernel
def adaptive_max_pool2d(out, x):
    """Adaptive max pooling over the windows of ``adaptive_avg_pool2d``; NaN propagates.

    Parameters
    ----------
    out : (N, C, OH, OW) array, filled in place.
    x : (N, C, H, W) array.
    """
    n_, c_, h, w = x.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    ninf = out.dtype.type(-np.inf)
    for r in prange(n_ * c_ * oh_):
        n, c, oh = _row_index(r, c_, oh_)
        hs, he = adaptive_window(oh, h, oh_)
        if ow_ == 1:
            # Full-width windows (global pooling) are one contiguous run: a single long loop.
            seg = x[n, c].reshape((h * w,))[hs * w:he * w]
            m = ninf
            for i in range(seg.shape[0]):
                v = seg[i]
                m = nan_max(m, v)
            out[n, c, oh, 0] = m
            continue
        for o in range(ow_):
            ws, we = adaptive_window(o, w, ow_)
            m = ninf
            for ih in range(hs, he):
                xrow = x[n, c, ih, ws:we]
                for iw in range(we - ws):
                    v = xrow[iw]
                    m = nan_max(m, v)
            out[n, c, oh, o] = m
