"""Pooling on the GPU: max, average and their adaptive forms, with PyTorch's window rules.

Every kernel runs one thread per output element over a 1-D grid in C order, so neighbouring
threads read neighbouring windows of one (n, c) plane.
"""

import math

from numbaconv import _cuda
from numbaconv.cuda._common import THREADS, adaptive_window, blocks, nan_max, unravel4

cuda = _cuda.cuda()

_ARRAYS = "{T}[:, :, :, ::1], {T}[:, :, :, ::1]"


@_cuda.kernel(f"void({_ARRAYS}, UniTuple(int64, 8))")
def _max_pool2d(out, x, geom):
    """out (N, C, OH, OW), x (N, C, H, W);
    geom = (kernel h, kernel w, stride h, stride w, pad top, pad left, dilation h, dilation w).
    """
    n_, c_, h, w = x.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    kh, kw, sh, sw, ph, pw, dh, dw = geom
    idx = cuda.grid(1)
    if idx >= n_ * c_ * oh_ * ow_:
        return
    n, c, oh, ow = unravel4(idx, c_, oh_, ow_)
    ih0 = oh * sh - ph
    iw0 = ow * sw - pw
    m = x.dtype.type(-math.inf)  # the padding value
    for i in range(kh):
        ih = ih0 + i * dh
        if ih < 0 or ih >= h:
            continue
        for j in range(kw):
            iw = iw0 + j * dw
            if iw >= 0 and iw < w:
                m = nan_max(m, x[n, c, ih, iw])
    out[n, c, oh, ow] = m


@_cuda.kernel(f"void({_ARRAYS}, UniTuple(int64, 6), boolean)")
def _avg_pool2d(out, x, geom, count_include_pad):
    """out (N, C, OH, OW), x (N, C, H, W);
    geom = (kernel h, kernel w, stride h, stride w, pad top, pad left).
    """
    n_, c_, h, w = x.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    kh, kw, sh, sw, ph, pw = geom
    idx = cuda.grid(1)
    if idx >= n_ * c_ * oh_ * ow_:
        return
    n, c, oh, ow = unravel4(idx, c_, oh_, ow_)
    # PyTorch: the window clipped to the padded input gives the count_include_pad divisor; the
    # window clipped to the input itself gives the other divisor and the summed range.
    hs = oh * sh - ph
    ws = ow * sw - pw
    he = min(hs + kh, h + ph)
    we = min(ws + kw, w + pw)
    padded = (he - hs) * (we - ws)
    hs = max(hs, 0)
    ws = max(ws, 0)
    he = min(he, h)
    we = min(we, w)
    s = x.dtype.type(0)
    for ih in range(hs, he):
        for iw in range(ws, we):
            s += x[n, c, ih, iw]
    div = padded if count_include_pad else (he - hs) * (we - ws)
    out[n, c, oh, ow] = s / x.dtype.type(div)


@_cuda.kernel(f"void({_ARRAYS})")
def _adaptive_avg_pool2d(out, x):
    """out (N, C, OH, OW), x (N, C, H, W): output (i, j) averages rows
    [floor(i*H/OH), ceil((i+1)*H/OH)) and the columns given by the same rule."""
    n_, c_, h, w = x.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    idx = cuda.grid(1)
    if idx >= n_ * c_ * oh_ * ow_:
        return
    n, c, oh, ow = unravel4(idx, c_, oh_, ow_)
    hs, he = adaptive_window(oh, h, oh_)
    ws, we = adaptive_window(ow, w, ow_)
    s = x.dtype.type(0)
    for ih in range(hs, he):
        for iw in range(ws, we):
            s += x[n, c, ih, iw]
    out[n, c, oh, ow] = s / x.dtype.type((he - hs) * (we - ws))


@_cuda.kernel(f"void({_ARRAYS})")
def _adaptive_max_pool2d(out, x):
    """out (N, C, OH, OW), x (N, C, H, W): the windows of ``_adaptive_avg_pool2d``; NaN wins."""
    n_, c_, h, w = x.shape
    oh_, ow_ = out.shape[2], out.shape[3]
    idx = cuda.grid(1)
    if idx >= n_ * c_ * oh_ * ow_:
        return
    n, c, oh, ow = unravel4(idx, c_, oh_, ow_)
    hs, he = adaptive_window(oh, h, oh_)
    ws, we = adaptive_window(ow, w, ow_)
    m = x.dtype.type(-math.inf)
    for ih in range(hs, he):
        for iw in range(ws, we):
            m = nan_max(m, x[n, c, ih, iw])
    out[n, c, oh, ow] = m


def max_pool2d(out, x, kernel, stride, padding, dilation):
    """Max pooling with implicit -inf padding; a NaN in a window gives NaN, as in PyTorch.

    Parameters
    ----------
    out : (N, C, OH, OW) device array, filled in place (ceil_mode is already in its shape).
    x : (N, C, H, W) device array.
    kernel, stride, padding, dilation : (h, w) int tuples.
    """
    geom = tuple(int(v) for v in (*kernel, *stride, *padding, *dilation))
    _max_pool2d[blocks(out.size), THREADS](out, x, geom)


def avg_pool2d(out, x, kernel, stride, padding, count_include_pad):
    """Average pooling with PyTorch's divisor rules.

    Parameters
    ----------
    out : (N, C, OH, OW) device array, filled in place (ceil_mode is already in its shape).
    x : (N, C, H, W) device array.
    kernel, stride, padding : (h, w) int tuples.
    count_include_pad : bool, whether zero padding counts in the divisor.
    """
    geom = tuple(int(v) for v in (*kernel, *stride, *padding))
    _avg_pool2d[blocks(out.size), THREADS](out, x, geom, bool(count_include_pad))


def adaptive_avg_pool2d(out, x):
    """Adaptive average pooling.

    Parameters
    ----------
    out : (N, C, OH, OW) device array, filled in place.
    x : (N, C, H, W) device array.
    """
    _adaptive_avg_pool2d[blocks(out.size), THREADS](out, x)


def adaptive_max_pool2d(out, x):
    """Adaptive max pooling; NaN propagates.

    Parameters
    ----------
    out : (N, C, OH, OW) device array, filled in place.
    x : (N, C, H, W) device array.
    """
    _adaptive_max_pool2d[blocks(out.size), THREADS](out, x)
