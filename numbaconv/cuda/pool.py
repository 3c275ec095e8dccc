"""Pooling on the GPU: max, average and their adaptive forms, with PyTorch's window rules.

Every kernel runs one thread per output element over a 1-D grid in C order, so neighbouring
threads read neighbouring windows of one (n, c) plane. The forward kernels take float16 too: max
pooling selects (exact), average pooling sums in float32 and rounds once at the store.
"""

import math

import numpy as np

from numbaconv import _cuda
from numbaconv.cuda._common import (THREADS, acc_dtype, adaptive_window, blocks, nan_max,
                                    unravel4, widen)

cuda = _cuda.cuda()

_ARRAYS = "{T}[:, :, :, ::1], {T}[:, :, :, ::1]"


@_cuda.kernel(f"void({_ARRAYS}, UniTuple(int64, 8))", half=True)
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
    # float16 compares as float32 (native registers, no half-precision calls); the maximum is
    # one of the inputs, so it converts back exactly.
    m = acc_dtype(x.dtype)(-math.inf)  # the padding value
    for i in range(kh):
        ih = ih0 + i * dh
        if ih < 0 or ih >= h:
            continue
        for j in range(kw):
            iw = iw0 + j * dw
            if iw >= 0 and iw < w:
                m = nan_max(m, widen(x[n, c, ih, iw]))
    out[n, c, oh, ow] = m


@_cuda.kernel(f"void({_ARRAYS}, UniTuple(int64, 6), boolean)", half=True)
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
    acc_t = acc_dtype(x.dtype)  # float32 for float16 data
    s = acc_t(0)
    for ih in range(hs, he):
        for iw in range(ws, we):
            s += widen(x[n, c, ih, iw])
    div = padded if count_include_pad else (he - hs) * (we - ws)
    out[n, c, oh, ow] = s / acc_t(div)


@_cuda.kernel(f"void({_ARRAYS})", half=True)
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
    acc_t = acc_dtype(x.dtype)  # float32 for float16 data
    s = acc_t(0)
    for ih in range(hs, he):
        for iw in range(ws, we):
            s += widen(x[n, c, ih, iw])
    out[n, c, oh, ow] = s / acc_t((he - hs) * (we - ws))


@_cuda.kernel(f"void({_ARRAYS})", half=True)
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
    m = acc_dtype(x.dtype)(-math.inf)  # float16 compares as float32, as in _max_pool2d
    for ih in range(hs, he):
        for iw in range(ws, we):
            m = nan_max(m, widen(x[n, c, ih, iw]))
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


# ---------------------------------------------------------------------------------------------
# Backward, without atomics: max pooling first records each output's arg-max (one thread per
# output), then every input element gathers the gradients of the windows that chose it (one
# thread per input element), so each element of the input gradient has one writer and the sums
# run in a fixed order.
# ---------------------------------------------------------------------------------------------

@_cuda.kernel("void(int64[:, :, :, ::1], {T}[:, :, :, ::1], UniTuple(int64, 8))")
def _max_pool2d_argmax(idx_out, x, geom):
    """idx_out (N, C, OH, OW): flat index ih * W + iw of each window's arg-max in x (N, C, H, W),
    the first maximum in scan order or the last NaN, as PyTorch; geom as in ``_max_pool2d``."""
    n_, c_, h, w = x.shape
    oh_, ow_ = idx_out.shape[2], idx_out.shape[3]
    kh, kw, sh, sw, ph, pw, dh, dw = geom
    idx = cuda.grid(1)
    if idx >= n_ * c_ * oh_ * ow_:
        return
    n, c, oh, ow = unravel4(idx, c_, oh_, ow_)
    ih0 = oh * sh - ph
    iw0 = ow * sw - pw
    m = x.dtype.type(-math.inf)
    best = -1
    for i in range(kh):
        ih = ih0 + i * dh
        if ih < 0 or ih >= h:
            continue
        for j in range(kw):
            iw = iw0 + j * dw
            if iw >= 0 and iw < w:
                v = x[n, c, ih, iw]
                # The first valid tap holds when every value is -inf.
                if best < 0 or v > m or v != v:
                    m = v
                    best = ih * w + iw
    idx_out[n, c, oh, ow] = best


@_cuda.kernel("void({T}[:, :, :, ::1], {T}[:, :, :, ::1], int64[:, :, :, ::1], "
              "UniTuple(int64, 8))")
def _max_pool2d_backward(gx, go, idx_in, geom):
    """gx (N, C, H, W) = the sum of go (N, C, OH, OW) over the windows whose arg-max (idx_in)
    is this element; one thread per input element."""
    n_, c_, h, w = gx.shape
    oh_, ow_ = go.shape[2], go.shape[3]
    kh, kw, sh, sw, ph, pw, dh, dw = geom
    idx = cuda.grid(1)
    if idx >= n_ * c_ * h * w:
        return
    n, c, ih, iw = unravel4(idx, c_, h, w)
    me = ih * w + iw
    s = gx.dtype.type(0)
    for i in range(kh):
        t = ih + ph - i * dh
        if t < 0 or t % sh != 0 or t // sh >= oh_:
            continue
        oh = t // sh
        for j in range(kw):
            u = iw + pw - j * dw
            if u < 0 or u % sw != 0 or u // sw >= ow_:
                continue
            ow = u // sw
            if idx_in[n, c, oh, ow] == me:
                s += go[n, c, oh, ow]
    gx[n, c, ih, iw] = s


@_cuda.kernel(f"void({_ARRAYS}, UniTuple(int64, 6), boolean)")
def _avg_pool2d_backward(gx, go, geom, count_include_pad):
    """gx (N, C, H, W): the sum over the windows holding this element of go (N, C, OH, OW) over
    the window's divisor; geom as in ``_avg_pool2d``; one thread per input element."""
    n_, c_, h, w = gx.shape
    oh_, ow_ = go.shape[2], go.shape[3]
    kh, kw, sh, sw, ph, pw = geom
    idx = cuda.grid(1)
    if idx >= n_ * c_ * h * w:
        return
    n, c, ih, iw = unravel4(idx, c_, h, w)
    s = gx.dtype.type(0)
    for i in range(kh):
        t = ih + ph - i
        if t < 0 or t % sh != 0 or t // sh >= oh_:
            continue
        oh = t // sh
        hs = oh * sh - ph
        he = min(hs + kh, h + ph)
        hpad = he - hs
        hin = min(he, h) - max(hs, 0)
        for j in range(kw):
            u = iw + pw - j
            if u < 0 or u % sw != 0 or u // sw >= ow_:
                continue
            ow = u // sw
            ws = ow * sw - pw
            we = min(ws + kw, w + pw)
            div = hpad * (we - ws) if count_include_pad else hin * (min(we, w) - max(ws, 0))
            s += go[n, c, oh, ow] / gx.dtype.type(div)
    gx[n, c, ih, iw] = s


@_cuda.kernel(f"void({_ARRAYS})")
def _adaptive_avg_pool2d_backward(gx, go):
    """gx (N, C, H, W): the sum of go (N, C, OH, OW) over the adaptive windows holding this
    element, each over its window's size; one thread per input element."""
    n_, c_, h, w = gx.shape
    oh_, ow_ = go.shape[2], go.shape[3]
    idx = cuda.grid(1)
    if idx >= n_ * c_ * h * w:
        return
    n, c, ih, iw = unravel4(idx, c_, h, w)
    s = gx.dtype.type(0)
    # Windows are ordered: those holding ih start at floor(ih * OH / H).
    oh = (ih * oh_) // h
    while oh < oh_:
        hs, he = adaptive_window(oh, h, oh_)
        if hs > ih:
            break
        if ih < he:
            ow = (iw * ow_) // w
            while ow < ow_:
                ws, we = adaptive_window(ow, w, ow_)
                if ws > iw:
                    break
                if iw < we:
                    s += go[n, c, oh, ow] / gx.dtype.type((he - hs) * (we - ws))
                ow += 1
        oh += 1
    gx[n, c, ih, iw] = s


@_cuda.kernel("void(int64[:, :, :, ::1], {T}[:, :, :, ::1])")
def _adaptive_max_pool2d_argmax(idx_out, x):
    """idx_out (N, C, OH, OW): flat index ih * W + iw of each adaptive window's arg-max in x,
    as ``_max_pool2d_argmax``."""
    n_, c_, h, w = x.shape
    oh_, ow_ = idx_out.shape[2], idx_out.shape[3]
    idx = cuda.grid(1)
    if idx >= n_ * c_ * oh_ * ow_:
        return
    n, c, oh, ow = unravel4(idx, c_, oh_, ow_)
    hs, he = adaptive_window(oh, h, oh_)
    ws, we = adaptive_window(ow, w, ow_)
    m = x.dtype.type(-math.inf)
    best = hs * w + ws
    for ih in range(hs, he):
        for iw in range(ws, we):
            v = x[n, c, ih, iw]
            if v > m or v != v:
                m = v
                best = ih * w + iw
    idx_out[n, c, oh, ow] = best


@_cuda.kernel("void({T}[:, :, :, ::1], {T}[:, :, :, ::1], int64[:, :, :, ::1])")
def _adaptive_max_pool2d_backward(gx, go, idx_in):
    """gx (N, C, H, W): the sum of go over the adaptive windows whose arg-max (idx_in) is this
    element; one thread per input element."""
    n_, c_, h, w = gx.shape
    oh_, ow_ = go.shape[2], go.shape[3]
    idx = cuda.grid(1)
    if idx >= n_ * c_ * h * w:
        return
    n, c, ih, iw = unravel4(idx, c_, h, w)
    me = ih * w + iw
    s = gx.dtype.type(0)
    oh = (ih * oh_) // h
    while oh < oh_:
        hs, he = adaptive_window(oh, h, oh_)
        if hs > ih:
            break
        if ih < he:
            ow = (iw * ow_) // w
            while ow < ow_:
                ws, we = adaptive_window(ow, w, ow_)
                if ws > iw:
                    break
                if iw < we and idx_in[n, c, oh, ow] == me:
                    s += go[n, c, oh, ow]
                ow += 1
        oh += 1
    gx[n, c, ih, iw] = s


def max_pool2d_backward(gx, go, x, kernel, stride, padding, dilation):
    """Gradient of max pooling: each output's gradient goes to its window's arg-max.

    Parameters
    ----------
    gx : (N, C, H, W) device array, filled in place.
    go : (N, C, OH, OW) device array, the gradient of the pooled output.
    x : (N, C, H, W) device array, the pooled input.
    kernel, stride, padding, dilation : (h, w) int tuples.
    """
    geom = tuple(int(v) for v in (*kernel, *stride, *padding, *dilation))
    arg = _cuda.empty(go.shape, np.int64)  # scratch: each window's arg-max
    _max_pool2d_argmax[blocks(go.size), THREADS](arg, x, geom)
    _max_pool2d_backward[blocks(gx.size), THREADS](gx, go, arg, geom)


def avg_pool2d_backward(gx, go, kernel, stride, padding, count_include_pad):
    """Gradient of average pooling (PyTorch's divisor rules).

    Parameters
    ----------
    gx : (N, C, H, W) device array, filled in place.
    go : (N, C, OH, OW) device array, the gradient of the pooled output.
    kernel, stride, padding : (h, w) int tuples.
    count_include_pad : bool.
    """
    geom = tuple(int(v) for v in (*kernel, *stride, *padding))
    _avg_pool2d_backward[blocks(gx.size), THREADS](gx, go, geom, bool(count_include_pad))


def adaptive_avg_pool2d_backward(gx, go):
    """Gradient of adaptive average pooling.

    Parameters
    ----------
    gx : (N, C, H, W) device array, filled in place.
    go : (N, C, OH, OW) device array.
    """
    _adaptive_avg_pool2d_backward[blocks(gx.size), THREADS](gx, go)


def adaptive_max_pool2d_backward(gx, go, x):
    """Gradient of adaptive max pooling (arg-max as PyTorch picks it).

    Parameters
    ----------
    gx : (N, C, H, W) device array, filled in place.
    go : (N, C, OH, OW) device array.
    x : (N, C, H, W) device array, the pooled input.
    """
    arg = _cuda.empty(go.shape, np.int64)
    _adaptive_max_pool2d_argmax[blocks(go.size), THREADS](arg, x)
    _adaptive_max_pool2d_backward[blocks(gx.size), THREADS](gx, go, arg)
